"""The Attack page's "attack the detector too" switch: the same PGD run oblivious (λ = 0) and adaptive (λ > 0,
aimed at the chosen layers) on the current image, with each one's scores per layer and the operating point's
verdict."""
from __future__ import annotations

import logging
import threading

import numpy as np
import streamlit as st

from app_ui import attack_limits, cache, operating_point
from app_ui.charts import bars
from app_ui.text import md

logger = logging.getLogger(__name__)
#: Interactive cap on the PGD steps of the panel.
MAX_STEPS = 100
NORMS = {"linf": ("L∞", 0.0, 0.5, 0.1, 0.005), "l2": ("L2", 0.0, 10.0, 2.0, 0.1)}


#: Surrogates kept at once (each holds the chosen layers' training features): every session shares them.
SURROGATES_KEPT = 4


def aimed_layers(layers: list[str], aim: list[str]) -> tuple[str, ...]:
    """The run's ``layers`` that ``aim`` names, once each and in the run's order: the one key of a surrogate.

    A multiselect's value comes from the browser: a crafted request may repeat a layer (Streamlit keeps duplicates)
    or name none of the run's, and each distinct tuple was a new surrogate with its own copy of the features."""
    wanted = set(aim)
    return tuple(la for la in layers if la in wanted)


@st.cache_resource(show_spinner="Preparing the detector's surrogate (training features of the chosen layers)…",
                   max_entries=SURROGATES_KEPT)
def _surrogate(path: str, stamp: int, layers: tuple[str, ...], mode: str):
    from core.attacks import KnnSurrogate

    return KnnSurrogate.from_detector(cache.loaded_detector(path, stamp), layers=list(layers), mode=mode)


def _attack(det, sur, norm: str, x: np.ndarray, target: int, lam: float, eps: float, steps: int, seed: int,
            cancel=None):
    from core.attacks import AdaptiveL2, AdaptiveLinf, to_uint8

    cls = AdaptiveLinf if norm == "linf" else AdaptiveL2
    res = cls(sur, eps=eps, lam=lam, steps=steps, refresh=5, cancel=cancel)(det.model, x, target=np.array([target]),
                                                                          seed=seed)
    return to_uint8(res.x_adv)[0]


def show(run, image: np.ndarray, pred0: int) -> None:
    """The switch, its settings and, once run, the oblivious and adaptive results on ``image`` (uint8 (H, W, C))
    predicted ``pred0``."""
    from core.data.datasets import to_float

    st.divider()
    if not st.toggle("Attack the detector too (adaptive attack)", key="adp_on",
                     help="Runs PGD twice toward the same target: once fooling the CNN only (oblivious), once also "
                          "pulling the image's features toward training images of the target class at the chosen "
                          "layers, weighted by λ (Carlini & Wagner 2017; Sitawarin & Wagner 2019)."):
        return
    classes = cache.classes(run)
    op = cache.report(run).get("operating_point") or {}
    layers = run.layers
    op_layer = op.get("layer") if op.get("layer") in layers else layers[-1]
    mode = op.get("processing") or run.mode
    c1, c2, c3 = st.columns(3)
    norm = c1.radio("Budget", list(NORMS), key="adp_norm", horizontal=True, format_func=lambda n: NORMS[n][0])
    label, lo, hi, default, step = NORMS[norm]
    eps = c1.slider(f"{label} budget ε", lo, hi, default, step=step, key=f"adp_eps_{norm}")
    lam = c2.select_slider("λ (weight of the detector term)", [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0], value=5.0,
                           key="adp_lam")
    aim = c2.multiselect("Target layer(s)", layers, default=[op_layer], key="adp_layers",
                         help="Layers whose kNN neighbourhood the attack pulls toward the target class.")
    others = [c for c in range(len(classes)) if c != pred0]
    target = c3.selectbox("Target class", others, key="adp_target", format_func=lambda c: classes[c])
    steps = c3.slider("PGD steps", 5, MAX_STEPS, 40, key="adp_steps")
    aim = aimed_layers(layers, aim)
    if not aim:
        st.warning("Choose at least one target layer.")
        return
    if st.button("Run oblivious and adaptive", key="adp_run", type="primary", icon=":material/bolt:"):
        det = cache.detector(run)
        sur = _surrogate(run.path, run.stamp, aim, mode)
        x = to_float(image[None])
        try:
            out = {}
            for name, lam_v in (("oblivious", 0.0), ("adaptive", float(lam))):
                cancel = threading.Event()  # set at the deadline: the attack stops at its next step
                out[name] = attack_limits.run_bounded(_attack, det, sur, norm, x, int(target), lam_v, float(eps),
                                                      int(steps), 0, cancel, cancel=cancel,
                                                      owner=attack_limits.session_owner())
        except (attack_limits.AttackTimeout, attack_limits.AttackBusy) as e:
            st.error(f"Not finished: {e}. Lower the steps and run it again.", icon=":material/timer_off:")
            return
        except Exception as e:  # noqa: BLE001 - the attack's own failure: said here, its traceback in the log
            logger.exception("adaptive attack failed")
            st.error(f"The attack failed ({type(e).__name__}; the server log has the details). Run it again.",
                     icon=":material/error:")
            return
        st.session_state["adp_result"] = {"image": image.tobytes(), "adv": out, "layers": tuple(aim), "norm": norm,
                                          "eps": float(eps), "lam": float(lam), "target": int(target)}
    _results(run, image, pred0, layers, classes)


def _results(run, image: np.ndarray, pred0: int, layers: list[str], classes: list[str]) -> None:
    """The oblivious and adaptive results kept in the session for ``image``: verdicts, table and score charts."""
    res = st.session_state.get("adp_result")
    if res is None or res["image"] != image.tobytes():
        st.caption("Press **Run oblivious and adaptive** to compare the two on the current image.")
        return
    thresholds = operating_point.thresholds(run)  # the one operating point every page uses
    at = operating_point.op_layer(run)
    before = cache.inspect(run, image)
    rows, figs, verdicts = [], [], []
    for name, adv in res["adv"].items():
        after = cache.inspect(run, adv)
        pred = int(after.predicted[0])
        sc = {la: float(after.scores[la][0]) for la in layers}
        fooled = pred != pred0
        ok = operating_point.trusts(run, sc[at], thresholds[at])
        verdict = ("not fooled" if not fooled else "**slips through** (trusted)" if ok else "**caught** (rejected)")
        verdicts.append(verdict)
        d = adv.astype(np.float64) - image.astype(np.float64)
        rows.append({"attack": name, "prediction": classes[pred],
                     "verdict at the operating point": verdict.replace("**", ""),  # a table shows no Markdown
                     "L∞": float(np.abs(d).max() / 255), "L2": float(np.linalg.norm(d) / 255),
                     **{f"score {la}": sc[la] for la in layers}})
        figs.append((name, sc, classes[pred]))
    st.markdown(f"**Toward {md(classes[res['target']])}**, {NORMS[res['norm']][0]} ε = {res['eps']:g}, "
                f"λ = {res['lam']:g}, aimed at {md(', '.join(res['layers']))}. Verdict at layer {md(at)}, threshold "
                f"{thresholds[at]:.4f} ({operating_point.trust_text(run)}).")
    for r, v in zip(rows, verdicts):
        st.markdown(f"- {r['attack']}: {md(r['prediction'])}, {v}")
    st.dataframe(rows, hide_index=True, key="adp_table")
    b = {la: float(before.scores[la][0]) for la in layers}
    cols = st.columns(len(figs))
    for col, (name, sc, cls_name) in zip(cols, figs):
        bars.show(bars.before_after_spec(layers, b, sc, thresholds, title=f"{name}: before and after ({cls_name})"),
                    key=f"adp_chart_{name}", where=col)
