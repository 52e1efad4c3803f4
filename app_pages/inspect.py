"""Inspect: one image's prediction, its kNN score at every layer against the threshold, and its nearest
training images. The image comes from an evaluation set (by index or at random) or from an upload."""
import numpy as np
import streamlit as st

from app_ui import cache, operating_point, selection
from app_ui import current_image as current
from app_ui.charts import bars
from app_ui.text import md
from app_ui.widgets import detector_verdicts, images

#: Neighbours shown per row.
SHOWN = 8

run = selection.current_run()
data = cache.rundata(run)
classes = cache.classes(run)
sets = selection.ordered_sets(run)

st.title("Inspect an image")
bars.how_to_read("How to read this: the CNN predicts a class; each hidden layer then asks its k nearest training "
                   "images whether they agree. A high score (blue, ✓) means the neighbours agree: trust the "
                   "prediction. A score under that layer's threshold (orange, ✗) means: don't trust it.")

cur = current.current_image(run)
# The widgets follow the current image when it was set elsewhere (Failure cases, Attack).
if cur["set"] is not None:
    st.session_state.setdefault("inspect_set", cur["set"])
    st.session_state.setdefault("inspect_index", cur["index"])
st.session_state.setdefault("inspect_source", "Evaluation set")
st.session_state.setdefault("inspect_set", selection.first_set(run))
st.session_state.setdefault("inspect_index", 0)


def _from_set() -> None:
    name = st.session_state["inspect_set"]
    n = len(data.evalset(name)["images"])
    st.session_state["inspect_index"] = int(min(st.session_state["inspect_index"], n - 1))
    current.set_current_from_set(run, name, st.session_state["inspect_index"])


def _random() -> None:
    name = st.session_state["inspect_set"]
    st.session_state["inspect_index"] = int(np.random.default_rng().integers(len(data.evalset(name)["images"])))
    current.set_current_from_set(run, name, st.session_state["inspect_index"])


def _uploaded() -> None:
    f = st.session_state.get("inspect_upload")
    if f is None:
        st.session_state.pop("upload_error", None)
        return
    err = current.handle_upload(run, f.getvalue(), invert=st.session_state.get("inspect_invert", False))
    st.session_state["upload_error"] = err
    if err and "current" not in st.session_state:  # the failed upload dropped an earlier one: back to the set
        _from_set()


def _source() -> None:
    """Back to the chosen evaluation image, or to the last upload."""
    if st.session_state["inspect_source"] == "Evaluation set":
        _from_set()
    elif st.session_state.get("upload_array") is not None:
        _invert()


def _invert() -> None:
    arr = st.session_state.get("upload_array")
    if arr is not None:
        inv = st.session_state.get("inspect_invert", False)
        current.set_current(255 - arr if inv else arr, source="your upload" + (" (inverted)" if inv else ""))


src_col, pick_col = st.columns([1, 3])
with src_col:
    source = st.radio("Image source", ["Evaluation set", "Upload"], key="inspect_source", on_change=_source,
                      persist_state="session")
with pick_col:
    if source == "Evaluation set":
        if st.session_state["inspect_set"] not in sets:
            st.session_state["inspect_set"] = sets[0]
        c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
        name = c1.selectbox("Evaluation set", sets, key="inspect_set", format_func=lambda s: selection.set_label(run, s),
                            on_change=_from_set, persist_state="session")
        n = len(data.evalset(name)["images"])
        st.session_state["inspect_index"] = int(min(st.session_state["inspect_index"], n - 1))
        c2.number_input(f"Index (0–{n - 1})", 0, n - 1, step=1, key="inspect_index", on_change=_from_set,
                        persist_state="session")
        c3.button("Random", key="inspect_random", on_click=_random, icon=":material/casino:")
    else:
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        c1.file_uploader("Upload a photo (PNG, JPEG, WebP, BMP, GIF, TIFF)", key="inspect_upload",
                         on_change=_uploaded,
                         help="Converted and resized to the model's input the way its transforms do; "
                              "nothing is stored.")
        if data.evalset(sets[0])["images"].shape[-1] == 1:  # grey model input (Fashion-MNIST)
            c2.checkbox("Invert colours", key="inspect_invert", on_change=_invert, persist_state="session",
                        help="Fashion-MNIST shows light clothes on a black background: invert a photo of a "
                             "dark object on a light background to match.")
        if st.session_state.get("upload_error"):
            st.error(st.session_state["upload_error"], icon=":material/broken_image:")
        elif st.session_state.get("upload_note") and cur["source"].startswith("your upload"):
            st.caption(f"Your upload was {st.session_state['upload_note']} pixels to the model's input.")

cur = current.current_image(run)
image = cur["image"]
thresholds = operating_point.thresholds(run)  # stored data only: done while the detector loads in the background
cache.ood_references(run)
res = cache.inspect(run, image)
pred = int(res.predicted[0])
layers = run.layers
scores = {la: float(res.scores[la][0]) for la in layers}
operating_point.overall_box(run, scores, key="inspect_overall")
operating_point.ood_box(run, res)

img_col, pred_col, chart_col = st.columns([1.1, 1.2, 2.4])
with img_col:
    h, w, c = image.shape
    true = cur["true"]
    note = st.session_state.get("upload_note") if cur["source"].startswith("your upload") else None
    images.show_image(image, f"{md(cur['source'])} — as the model sees it ({h}×{w} {'grey' if c == 1 else 'RGB'}"
                      + (f", {note}" if note else "") + ")"
                      + (f"; true class: {md(classes[true])}" if true is not None else ""), size=224)
with pred_col:
    st.markdown(f"### Prediction: {md(classes[pred])}")
    st.caption(f"{100 * res.top5[0][1]:.1f} % softmax probability"
               + ("" if cur["true"] is None else (" · correct" if pred == cur["true"] else
                                                   f" · wrong: it is a {md(classes[cur['true']])}")))
    bars.show(bars.top_classes_spec([classes[ci] for ci, _ in res.top5], [p for _, p in res.top5]),
                key="inspect_top5")  # a Vega-Lite chart: the page then loads no data-grid code
with chart_col:
    bars.show(bars.layer_scores_spec(layers, scores, thresholds, title=f"kNN score of '{classes[pred]}' per layer"),
                key="inspect_layers")
detector_verdicts.verdicts_expander(run, image, "Peer detectors on this image (Deep kNN, Mahalanobis, LID, max "
                                    "softmax, …)", key="inspect_peers")

layer = operating_point.layer_select(run, "inspect_layer", "Layer for the per-layer verdict and the neighbours",
                               persist_state="session",
                               help="Shared by every page (the Threshold page's layer too); opens at the layer of "
                                    "the configuration chosen on validation.")
s, t = scores[layer], thresholds[layer]
ok = operating_point.trusts(run, s, t)
sign = ("≥" if ok else "<") if not operating_point.strict(run) else (">" if ok else "≤")
where = "set on the Threshold page" if operating_point.overridden(run, layer) else (
    "chosen on validation" if operating_point.validation(run)[1] else "that layer's EER threshold: this run has no split")
msg = (f"**{'✓ trusted' if ok else '✗ rejected'}** by layer {md(layer)}: score {s:.3f} {sign} threshold {t:.3f} "
       f"(the shared operating point, {where}).")
(st.success if ok else st.error)(msg, icon=":material/check_circle:" if ok else ":material/cancel:")

shown_ids = None
for title, nbs in (("Nearest training images", res.neighbours[layer]),
                   (f"Nearest training images of the predicted class ({md(classes[pred])})",
                    res.class_neighbours[layer])):
    nbs = type(nbs)(nbs.ids[:SHOWN], nbs.distances[:SHOWN], nbs.labels[:SHOWN])
    st.markdown(f"**{title}** at {md(layer)} (d² = squared distance in the processed feature space; of the "
                f"first {run.k} neighbours)")
    if shown_ids is not None and len(nbs.ids) and np.array_equal(nbs.ids, shown_ids):
        st.caption(f"The same {len(nbs.ids)} images as above: the nearest training images are all of the predicted "
                   "class.")
        continue
    shown_ids = nbs.ids
    if not len(nbs.ids):
        st.caption(f"None among the {run.k} nearest neighbours: no training image of this class is close, so "
                   "the score is 0.")
        continue
    caps = [f"{md(classes[int(lb)])} · d²={d:.3g}" for lb, d in zip(nbs.labels, nbs.distances)]
    imgs = [cache.train_image(run, i) for i in nbs.ids]
    if any(im is None for im in imgs):
        st.dataframe({"training id": nbs.ids, "class": [classes[int(lb)] for lb in nbs.labels],
                      "d²": nbs.distances}, hide_index=True)
    else:
        images.image_grid(imgs, caps, size=96)
