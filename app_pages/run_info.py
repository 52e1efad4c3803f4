"""Run: what the selected run is (dataset, model, accuracy, layers, evaluation sets, attacks, timings, library
versions) and how to make another one."""
import json

import pandas as pd
import streamlit as st

from app_pages import charts, loaders, state
from app_pages._text import md
from core.evaluation import best_setting
from precompute.stages import STAGE_NAMES

run = state.current_run()
m = run.manifest
cfg = m["config"]
s = run.summary
model = loaders.model_info(run)
rep = loaders.report(run) or {}

st.title(f"Run {md(cfg['name'])}")
charts.how_to_read("How to read this: everything the app shows was computed once by the precompute pipeline; this "
                   "page says on what data, with which model and attacks, and how long each stage took.")

acc = model.get("test_accuracy")
c = st.columns(4)
c[0].metric("Dataset", md(cfg["data"]["dataset"]))
c[1].metric("Model", md(s.get("model", cfg["model"]["name"])))
c[2].metric("Test accuracy", "–" if acc is None else f"{acc:.2%}",
            help=f"on {md(model.get('n_test', '?'))} test images; trained on {md(model.get('n_train', '?'))}")
c[3].metric("Neighbours stored (K_max)", md(s["k_max"]))
if model.get("warning"):
    st.warning(md(model["warning"]))
d = s["defaults"]
st.markdown(f"**Layers tapped** (input → output): {', '.join(md(la) for la in s['layers'])}  \n"
            f"**Processing modes**: {', '.join(state.MODE_NAMES.get(x) or md(x) for x in s['modes'])}  \n"
            f"**Defaults**: {state.MODE_NAMES.get(d['mode']) or md(d['mode'])}, "
            f"{state.FN_NAMES.get(d['fn']) or md(d['fn'])}, k = {md(d['k'])}  \n"
            f"**Trained here**: {'yes' if model.get('trained_here') else 'no (pretrained weights)'}"
            + (f", {len(model['losses'])} epochs" if model.get("losses") else ""))
b = best_setting(rep)
if b:
    st.markdown(f"**Best setting** (report, k = {md(rep['k'])}): layer {md(b['layer'])}, "
                f"{state.MODE_NAMES.get(b['mode']) or md(b['mode'])}, {state.FN_NAMES.get(b['fn']) or md(b['fn'])}: "
                f"aggregated EER accuracy **{b['aggr']:.1%}**")

st.subheader("Evaluation sets")


def _params(p) -> str:
    """Attack parameters as 'eps=0.1, steps=20' (the manifest holds a dict, or its repr in older runs)."""
    if isinstance(p, str):
        try:
            import ast

            p = ast.literal_eval(p)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return p
    if not isinstance(p, dict):
        return "" if p is None else str(p)
    return ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("attack", "targeted"))


rows = []
for name in state.ordered_sets(run, nonempty=False):
    v = s["sets"][name]
    rows.append({"set": name, "images": v.get("n"), "attempted": v.get("attempted"),
                 "success rate": v.get("success_rate"), "mean L2": v.get("mean_l2"), "mean L∞": v.get("mean_linf"),
                 "mean L∞ (/255)": None if v.get("mean_linf") is None else 255 * v["mean_linf"],
                 "seconds": v.get("seconds"), "parameters": _params(v.get("params"))})
st.dataframe(pd.DataFrame(rows), hide_index=True, key="run_sets", placeholder="–",
             column_config={"success rate": st.column_config.NumberColumn(format="percent"),
                            "mean L2": st.column_config.NumberColumn(format="%.3f"),
                            "mean L∞": st.column_config.NumberColumn(format="%.3f"),
                            "mean L∞ (/255)": st.column_config.NumberColumn(format="%.1f")})
st.caption("Adversarial sets keep only successful attacks (targeted: the prediction reached the random target "
           "class); 'noise' keeps noisy images still classified correctly. Norms are in [0, 1] pixel units.")

if rep.get("findings"):
    st.subheader("The paper's findings on this run")
    for f in rep["findings"]:
        st.markdown(f"- **{'Holds' if f['holds'] else 'Does not hold'}**: {md(f['claim'])}. "
                    f"{md(f['evidence'])}.")

left, right = st.columns(2)
with left:
    st.subheader("Stage times")
    stages = [{"stage": k, "seconds": m["stages"][k].get("seconds"), "status": m["stages"][k].get("status")}
              for k in STAGE_NAMES if k in m["stages"]]
    stages.append({"stage": "total", "seconds": sum(x["seconds"] or 0 for x in stages), "status": ""})
    st.dataframe(pd.DataFrame(stages), hide_index=True, key="run_stages",
                 column_config={"seconds": st.column_config.NumberColumn(format="%.1f")})
with right:
    st.subheader("Library versions")
    st.dataframe(pd.DataFrame([{"library": k, "version": v} for k, v in m.get("versions", {}).items()]),
                 hide_index=True, key="run_versions")

st.subheader("Make another run")
st.markdown("Runs live in `data/runs/<name>/` (or `$KNNGUARD_RUNS_DIR`); every run there appears in the sidebar. "
            "A finished stage is skipped when run again, so a killed run resumes.")
st.code("""# the default run (Fashion-MNIST CNN, a few minutes on a laptop CPU)
python -m precompute --config precompute/configs/fmnist.toml
# what would run, without running it
python -m precompute --config precompute/configs/fmnist.toml --dry-run
# another run with changed settings (each --set is type-checked; unknown keys are refused)
python -m precompute --config precompute/configs/fmnist.toml --set name=fmnist-k100 --set scoring.k=100
# recompute from a stage on
python -m precompute --config precompute/configs/fmnist.toml --from evalsets
# the layers a model can tap
python -m precompute --list-layers precompute/configs/fmnist.toml""", language="bash")
with st.expander("Full configuration of this run"):
    st.code(json.dumps(cfg, indent=2), language="json")
