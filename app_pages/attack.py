"""Attack: run an adversarial attack live on the current image (from Inspect) and see, layer by layer, whether
the kNN scores of the new predicted class fall under the threshold (the detector notices) or not."""
import logging
import time

import numpy as np
import streamlit as st

from app_ui import attack_limits, cache, navigation, operating_point, selection
from app_ui import current_image as current
from app_ui.charts import bars
from app_ui.text import md
from app_ui.widgets import adaptive_panel, detector_verdicts, images
from app_ui.widgets.downloads import adversarial_downloads
from core.attacks import ATTACKS, available, param_spec, run_attack, to_uint8
from core.data.datasets import to_float
from core.evaluation.paper_figures import perturbation_norms

logger = logging.getLogger("app_pages.attack")  # a page runs as __main__
run = selection.current_run()
classes = cache.classes(run)
layers = run.layers

#: Interactive caps on iteration counts (the spec allows more; the precompute runs may use more).
#: Every run is also bounded in wall time: ``bounded.run_bounded`` (``bounded.ATTACK_TIMEOUT_S``, 20 s by default).
CAPS = {"steps": 100, "max_iter": 100, "binary_search_steps": 5, "grid_steps": 8, "binary_steps": 8,
        "random_starts": 3, "candidates": 10}
#: One line per attack for a student.
ABOUT = {"fgsm": "One step of size eps against the gradient of the target class's loss (Goodfellow et al.).",
         "ifgsm": "FGSM repeated in small steps, kept within eps of the original (the paper's iterative attack).",
         "pgd": "Like iterative FGSM, but starting from a random point within eps (Madry et al.).",
         "cw": "Carlini-Wagner L2: searches the smallest change that reaches the target with a margin; slow.",
         "deepfool": "Steps to the nearest decision boundary: the smallest change that flips the class (untargeted).",
         "lbfgs": "The paper's box-constrained L-BFGS: minimise the change plus C × target loss; slow."}
#: Float parameters best chosen on a log scale.
LOG_PARAMS = {"step", "learning_rate", "initial_const", "c_start"}

st.title("Attack the image live")
bars.how_to_read("How to read this: the attack nudges pixels to push the CNN to another class. Left bars are the "
                   "scores before, right bars after. A layer whose score falls under its threshold (✗) has noticed "
                   "the attack; one that stays ✓ was fooled too.")

cur = current.current_image(run)
image = cur["image"]
before = cache.inspect(run, image)
pred0 = int(before.predicted[0])
thresholds = operating_point.thresholds(run)
b = {la: float(before.scores[la][0]) for la in layers}
top = st.container()  # the overall verdict, once: of the adversarial image after an attack, else of this one


def _log_options(lo: float, hi: float, default: float) -> list[float]:
    vals = {default}
    for e in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1):
        for m in (1, 2, 5):
            v = float(f"{m * 10.0 ** e:.6g}")
            if lo <= v <= hi:
                vals.add(v)
    return sorted(vals)


def _param_widget(where, attack: str, name: str, spec: dict):
    key = f"atk_{attack}_{name}"
    lo, hi, default = spec["min"], spec["max"], spec["default"]
    if spec["type"] == "int":
        hi = min(hi, CAPS.get(name, hi))
        return where.slider(name, int(lo), int(hi), int(min(max(default, lo), hi)), step=1, key=key,
                            help=spec["help"], persist_state="session")
    if name in LOG_PARAMS and lo > 0:
        return where.select_slider(name, _log_options(lo, hi, default), value=default, key=key, help=spec["help"],
                                   format_func=lambda v: f"{v:g}", persist_state="session")
    step = 10.0 ** np.floor(np.log10((hi - lo) / 200))
    fmt = f"%.{max(0, int(-np.log10(step)))}f"
    help_ = spec["help"] + (" — shown with /255 below." if name == "eps" else "")
    return where.slider(name, float(lo), float(hi), float(default), step=float(step), format=fmt, key=key,
                        help=help_, persist_state="session")


c1, c2 = st.columns([1, 3])
with c1:
    name = st.selectbox("Attack", available(), key="atk_name", format_func=lambda a: ATTACKS[a].title,
                        persist_state="session")
    cls = ATTACKS[name]
    st.caption(ABOUT.get(name, cls.title))
    others = [c for c in range(len(classes)) if c != pred0]
    aimed = cls.targeted
    if len(cls.modes) > 1:
        aimed = st.radio("Aim", [False, True], index=int(cls.targeted), key=f"atk_aimed_{name}", horizontal=True,
                         format_func=lambda t: "a target class" if t else "any other class",
                         persist_state="session",
                         help="Untargeted: any change of the prediction counts (the paper's success rule). "
                              "Targeted: the attack aims at one class.")
    if aimed:
        target = st.selectbox("Target class", ["random"] + others, key="atk_target",
                              format_func=lambda c: "a random wrong class" if c == "random" else classes[c],
                              persist_state="session")
    else:
        target = None
        st.caption(f"{cls.title}, untargeted: any class but the current prediction counts as success.")
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="atk_seed", persist_state="session",
                           help="Seeds the random target and the attack's random start.")
with c2:
    spec = param_spec(name)
    pcols = st.columns(min(3, len(spec)) or 1)
    params = {p: _param_widget(pcols[i % len(pcols)], name, p, sp) for i, (p, sp) in enumerate(spec.items())}
    if "eps" in params:
        st.caption(f"eps = {params['eps']:.3f} = {255 * params['eps']:.1f}/255 per pixel (L∞ budget)")
    clicked = st.button(f"Run {cls.title}", key="atk_run", type="primary", icon=":material/bolt:")

if target == "random":
    rng = np.random.default_rng(int(seed))
    target_cls = int(rng.choice(others))
else:
    target_cls = None if target is None else int(target)

adaptive_panel.show(run, image, pred0)  # "attack the detector too" (issue 15), after the attack controls

if clicked:
    x = to_float(image[None])
    slow = name in ("cw", "lbfgs", "deepfool")
    with st.spinner(f"Running {cls.title}{' (this one takes a while)' if slow else ''}… "
                    "(the first attack also loads the attack library, a few seconds)"):
        t0 = time.perf_counter()
        model = cache.detector(run).model
        params = {p: (min(v, CAPS[p]) if p in CAPS else v) for p, v in params.items()}  # never past the caps
        try:
            res = attack_limits.run_bounded(run_attack, name, model, x,
                                      target=None if target_cls is None else np.array([target_cls]),
                                      seed=int(seed), targeted=aimed, owner=attack_limits.session_owner(),
                                      **params)
        except (ValueError, TypeError) as e:
            st.error(f"The attack refused these settings: {e}")
            navigation.end_page()
        except attack_limits.AttackTimeout as e:
            st.error(f"{cls.title} {e} (the limit of one live attack): lower the steps or iterations, or pick a "
                     "faster attack, and run it again.", icon=":material/timer_off:")
            navigation.end_page()
        except attack_limits.AttackBusy as e:
            st.error(f"Not started: {e}. Wait a few seconds and run it again.", icon=":material/hourglass_top:")
            navigation.end_page()
        except Exception as e:  # noqa: BLE001 - the attack's own failure: said here, its traceback in the log
            logger.exception("live %s attack failed", name)
            st.error(f"{cls.title} failed ({type(e).__name__}; the server log has the details). Run it again; if "
                     "it fails again, pick other settings or another attack.", icon=":material/error:")
            navigation.end_page()
        seconds = time.perf_counter() - t0
    adv = to_uint8(res.x_adv)[0]
    st.session_state["atk_result"] = {"key": cur["key"], "adv": adv, "attack": name, "title": cls.title,
                                      "target": target_cls, "success": bool(res.success[0]),
                                      "params": res.params, "seconds": seconds}

out = st.session_state.get("atk_result")
if out is None or out["key"] != cur["key"] or out["attack"] != name:  # a result of another attack is not shown
    with top:
        operating_point.overall_box(run, b, key="atk_overall")
        operating_point.ood_box(run, before)
    st.divider()
    i1, i2 = st.columns([1, 2.5], gap="medium")
    images.show_image(image, f"current image: {md(cur['source'])} (choose another on the Inspect page)", size=200,
                      where=i1)
    with i2:
        st.markdown(f"**The CNN says {md(classes[pred0])}** ({before.top5[0][1]:.0%}) · detector: {run.settings_text}")
        st.info(f"Set the parameters and press **Run {cls.title}** to attack this image.",
                icon=":material/arrow_upward:")
        bars.show(bars.layer_scores_spec(layers, b, thresholds, title=f"kNN score of '{classes[pred0]}' per layer"),
                    key="atk_before_chart")  # as on Inspect
    navigation.end_page()

adv = out["adv"]
after = cache.inspect(run, adv)
pred1 = int(after.predicted[0])
norms = perturbation_norms(image[None], adv[None])
pert, amp = images.perturbation_image(image, adv)

a = {la: float(after.scores[la][0]) for la in layers}
with top:
    st.caption("After the attack: the verdict on the adversarial image.")
    overall = operating_point.overall_box(run, a, key="atk_overall")
    operating_point.ood_box(run, after, what="the adversarial image")
st.divider()
changed_class = pred1 != pred0
if out["target"] is not None and out["success"]:
    sentence = f"The attack succeeded: the CNN now says {md(classes[pred1])}, its target."
elif changed_class:
    sentence = f"The attack succeeded: the CNN now says {md(classes[pred1])}" + (
        f" (it aimed at {md(classes[out['target']])})." if out["target"] is not None else ".")
else:
    sentence = f"The attack failed: the CNN still says {md(classes[pred0])}."
if changed_class:
    sentence += (" The detector caught it: the verdict is ✗ rejected." if not overall.trusted else
                 " The detector did not catch it: the verdict is ✓ trusted.")
st.markdown(f"### {sentence}")
linf, l2, changed = float(norms.linf[0]), float(norms.l2[0]), float(norms.changed[0])
st.caption(f"{out['title']}: {md(classes[pred0])} → {md(classes[pred1])} · {out['seconds']:.2f} s · "
           f"L∞ = {linf:.3f} ({linf * 255:.0f}/255) · L2 = {l2:.3f} · pixels changed: {changed:.0%}")

noticed = [la for la in layers if not operating_point.trusts(run, a[la], thresholds[la])]
i1, i2, i3, msg = st.columns([1, 1, 1, 1.5], gap="medium")
images.show_image(image, f"original, {md(cur['source'])}: {md(classes[pred0])} ({before.top5[0][1]:.0%})", size=200,
                  where=i1)
images.show_image(adv, f"adversarial: {md(classes[pred1])} ({after.top5[0][1]:.0%})", size=200, where=i2)
images.show_image(pert, f"perturbation ×{amp:.0f}: grey = unchanged, light = raised, dark = lowered", size=200,
              where=i3)
with msg:
    if pred1 == pred0:
        st.info("The prediction did not change, so there is nothing to detect: raise eps or the iterations, or "
                "pick another target.")
    else:
        st.markdown(f"Per layer: {len(noticed)} of {len(layers)} reject the new prediction"
                    + (f" ({md(', '.join(noticed))})." if noticed else "."))
    if st.button("Inspect the adversarial image", key="atk_to_inspect", icon=":material/search:"):
        current.set_current(adv, source=f"{out['title']} of {cur['source']}")
        st.switch_page(navigation.PAGES["inspect"])
bars.show(bars.before_after_spec(layers, b, a, thresholds,
                                     title=f"Score per layer: before ({classes[pred0]}) and after ({classes[pred1]})"),
            key="atk_chart")
detector_verdicts.verdicts_expander(run, adv, "Peer detectors on the adversarial image (Deep kNN, Mahalanobis, "
                                    "LID, max softmax, …)", key="atk_peers")
adversarial_downloads(out, source=cur["source"])  # i13b: the adversarial image and its parameters as files
