"""Failure cases (paper Table 3): adversarial images caught with the lowest scores and missed with the highest,
at the EER threshold, each with its nearest training image of the predicted class (from stored neighbours)."""
import numpy as np
import streamlit as st

from core import metrics
from app_pages import _common as ui

run = ui.current_run()
data = ui.rundata(run)
classes = ui.classes(run)
layers = run.layers
attacks = ui.attack_sets(run)

st.title("Failure cases")
ui.how_to_read("How to read this: left, adversarial images the detector caught most surely (lowest scores); "
               "right, those that fooled it most (highest scores). The training image beside each is the nearest "
               "one of the class the CNN was tricked into: a missed attack often really looks like that class.")
if not attacks:
    st.warning("This run has no adversarial images.")
    st.stop()

rep = ui.report(run) or {}
best = rep.get("headline", {}).get("best", {}).get("layer", layers[-1])
st.session_state.setdefault("fail_layer", best if best in layers else layers[-1])
st.session_state.setdefault("fail_attacks", list(attacks))
c1, c2, c3 = st.columns([1, 3, 1])
layer = c1.selectbox("Layer", layers, key="fail_layer", persist_state="session")
chosen = c2.multiselect("Attacks", attacks, key="fail_attacks", persist_state="session",
                        format_func=lambda a: f"{a} ({ui.attack_title(a)})")
n_show = c3.slider("Images per side", 2, 16, 6, key="fail_n", persist_state="session")
if not chosen:
    st.warning("Choose at least one attack.")
    st.stop()

pos = ui.positives(run, layer)
per_set = {a: ui.set_scores(run, a, layer) for a in chosen}
th = float(metrics.roc(pos, np.concatenate(list(per_set.values()))).eer_threshold)
items = [(a, i, float(s)) for a, sc in per_set.items() for i, s in enumerate(np.nan_to_num(sc))]
caught = sorted((x for x in items if x[2] < th), key=lambda x: x[2])[:n_show]
missed = sorted((x for x in items if x[2] >= th), key=lambda x: -x[2])[:n_show]
n_caught = sum(1 for x in items if x[2] < th)
st.markdown(f"EER threshold at {ui.md(layer)} on {ui.md(', '.join(chosen))}: **{th:.3f}** ({run.settings_text}) — "
            f"caught {n_caught} of {len(items)} adversarial images, missed {len(items) - n_caught}.")


def _nearest_of_class(name: str, idx: int, cls: int) -> tuple[int, float] | None:
    nb = data.neighbours(name, layer, run.mode)
    hit = np.flatnonzero(data.train_labels[nb.I[idx]] == cls)
    return (int(nb.I[idx, hit[0]]), float(nb.D[idx, hit[0]])) if len(hit) else None


def _card(name: str, idx: int, score: float, kind: str) -> None:
    e = data.evalset(name)
    true, pred = int(e["true"][idx]), int(e["predicted"][idx])
    with st.container(border=True):
        a, b, c = st.columns([1, 1, 1.25], vertical_alignment="center")
        ui.show_image(e["images"][idx], f"{ui.md(name)} #{idx}", size=104, where=a)
        nn = _nearest_of_class(name, idx, pred)
        nn_img = None if nn is None else ui.train_image(run, nn[0])
        if nn is None:
            b.caption(f"No training {ui.md(classes[pred])} among its {run.k_max} stored nearest neighbours.")
        elif nn_img is not None:
            ui.show_image(nn_img, f"nearest {ui.md(classes[pred])} (d²={nn[1]:.3g})", size=104, where=b)
        else:
            b.caption(f"nearest {ui.md(classes[pred])}: training id {nn[0]} (d²={nn[1]:.3g})")
        c.markdown(f"actual **{ui.md(classes[true])}**  \npredicted **{ui.md(classes[pred])}**  \nscore **{score:.3f}**  \n"
                   f":{'orange' if score < th else 'blue'}[**{ui.REJECTED if score < th else ui.TRUSTED}**] "
                   f"({kind})")
        if c.button("Inspect", key=f"fail_go_{name}_{idx}", icon=":material/search:"):
            ui.set_current_from_set(run, name, idx)
            st.session_state["inspect_source"] = "Evaluation set"
            st.session_state["inspect_set"] = name
            st.session_state["inspect_index"] = idx
            st.switch_page(ui.PAGES["inspect"])


left, right = st.columns(2, gap="large")
for col, title, group, kind in ((left, "Caught, lowest scores", caught, "caught"),
                                (right, "Missed, highest scores", missed, "missed")):
    with col:
        st.subheader(f"{title} ({len(group)})")
        if not group:
            st.caption("None at this threshold.")
        st.caption("adversarial image · nearest training image of the predicted class · classes and score")
        for name, idx, score in group:
            _card(name, idx, score, kind)
