"""Failure cases (paper Table 3): adversarial images caught with the lowest scores and missed with the highest,
at the EER threshold, each with its nearest training image of the predicted class (from stored neighbours, else a
search of the run's index within that class)."""
import streamlit as st

from app_ui import cache, current_image, navigation, operating_point, selection
from app_ui.charts import bars
from app_ui.text import md
from app_ui.widgets import images
from core.evaluation.paper_figures import FailureCase

run = selection.current_run()
data = cache.rundata(run)
classes = cache.classes(run)
layers = run.layers
attacks = selection.attack_sets(run)

st.title("Failure cases")
bars.how_to_read("How to read this: left, adversarial images the detector caught most surely (lowest scores); "
                   "right, those that fooled it most (highest scores). The training image beside each is the "
                   "nearest one of the class the CNN was tricked into: a missed attack often really looks like that "
                   "class.")
if not attacks:
    st.warning("This run has no adversarial images.")
    navigation.end_page()

st.session_state.setdefault("fail_attacks", list(attacks))
c1, c2, c3 = st.columns([1, 3, 1])
layer = operating_point.layer_select(run, "fail_layer", "Layer", where=c1, persist_state="session",
                               help="Shared by every page (Inspect opens at it).")
chosen = c2.multiselect("Attacks", attacks, key="fail_attacks", persist_state="session",
                        format_func=lambda a: f"{a} ({selection.attack_title(a)})")
n_show = c3.slider("Images per side", 2, 16, 6, key="fail_n", persist_state="session")
if not chosen:
    st.warning("Choose at least one attack.")
    navigation.end_page()

th = operating_point.thresholds(run)[layer]
cases = cache.failure_cases(run, layer, chosen, n_show, threshold=th, strict=operating_point.strict(run))
st.markdown(f"Threshold at {md(layer)} (the shared operating point, "
            f"{'set on the Threshold page' if operating_point.overridden(run, layer) else 'chosen on validation'}): "
            f"**{th:.3f}**, trust {operating_point.trust_text(run)} ({run.settings_text}) — on {md(', '.join(chosen))}: "
            f"caught {cases.n_caught} of {cases.n_total} adversarial images, missed {cases.n_total - cases.n_caught}.")


def _card(case: FailureCase, kind: str) -> None:
    true, pred, score = case.true, case.predicted, case.score
    with st.container(border=True):
        b, c = st.columns([2, 1.25], vertical_alignment="center")
        adv = data.evalset(case.set)["images"][case.index]
        nn = case.nearest
        nn_img = None if nn is None else cache.train_image(run, nn[0])
        where = f"{md(case.set)} #{case.index}"
        if nn is None:
            images.show_image(adv, f"{where} · no training image of class {md(classes[pred])} in this run", size=104,
                              where=b)
        elif nn_img is not None:  # the pair as one image: one element and one file per card
            pair = images.side_by_side([adv, nn_img], size=104)
            b.image(pair, caption=f"{where} · nearest {md(classes[pred])} (d²={nn[1]:.3g})", width=pair.shape[1])
        else:
            images.show_image(adv, f"{where} · nearest {md(classes[pred])}: training id {nn[0]} (d²={nn[1]:.3g})",
                              size=104, where=b)
        c.markdown(f"actual **{md(classes[true])}**  \npredicted **{md(classes[pred])}**  \nscore **{score:.3f}**  \n"
                   f":{'blue' if operating_point.trusts(run, score, th) else 'orange'}"
                   f"[**{'✓ trusted' if operating_point.trusts(run, score, th) else '✗ rejected'}**] ({kind})")
        if c.button("Inspect", key=f"fail_go_{case.set}_{case.index}", icon=":material/search:"):
            current_image.set_current_from_set(run, case.set, case.index)
            st.session_state["inspect_source"] = "Evaluation set"
            st.session_state["inspect_set"] = case.set
            st.session_state["inspect_index"] = case.index
            st.session_state[operating_point.LAYER] = layer  # Inspect opens at this page's layer
            st.switch_page(navigation.PAGES["inspect"])


left, right = st.columns(2, gap="large")
for col, title, group, kind in ((left, "Caught, lowest scores", cases.caught, "caught"),
                                (right, "Missed, highest scores", cases.missed, "missed")):
    with col:
        st.subheader(f"{title} ({len(group)})")
        if not group:
            st.caption("None at this threshold.")
        st.caption("adversarial image · nearest training image of the predicted class · classes and score")
        for case in group:
            _card(case, kind)
