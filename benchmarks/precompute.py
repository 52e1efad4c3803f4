"""Precompute time: every stage of a run from its manifest, the whole run, which stage dominates and why;
optionally re-run the tail of the pipeline on a copy of the run to time it here and now.

    python -m benchmarks.precompute                                # read data/runs/fmnist/manifest.json
    python -m benchmarks.precompute --rerun neighbours             # + re-run neighbours..report on a copy
    python -m benchmarks.precompute --train-steps 30               # + time 30 training steps, project the stage

The manifest's times are those of the machine that built the run (its ``versions.cpu_count`` is recorded);
the re-run is timed on this one, on a temporary copy (the run itself is not touched). ``--train-steps`` times training steps of the run's model here and now, to tell a slow machine (or a loaded one,
as when the run was built) from a slow stage.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.summary import publish

log = logging.getLogger(__name__)

TARGET_S = 600.0  # DESIGN §6: under 10 minutes on 2 CPU cores
AIM_S = 300.0


def _why(name: str, m: dict) -> str:
    """One line on what a stage's time is made of, from the manifest."""
    cfg, s = m.get("config", {}), m.get("summary", {})
    sets = s.get("sets", {})
    if name == "train":
        mc = cfg.get("model", {})
        return (f"{mc.get('epochs')} epochs over {s.get('n_train', cfg.get('data', {}).get('n_train') or 'all')} "
                f"training images, forward + backward of {mc.get('name')} (batch {mc.get('batch_size')})")
    if name == "evalsets":
        att = s.get("attack_seconds", {})
        if att:
            parts = ", ".join(f"{a} {t:.0f} s ({sets.get(a, {}).get('attempted', '?')} imgs)"
                              for a, t in sorted(att.items(), key=lambda x: -x[1]))
            return f"attacks: {parts}"
        return "attacks on the authentic images"
    if name == "neighbours":
        nq = sum(v.get("n", 0) for v in sets.values())
        pairs = len(s.get("layers", [])) * len(s.get("modes", []))
        return (f"{nq} evaluation images × {pairs} (layer, mode) searches at k = {s.get('k_max')} "
                "(plus one forward pass per set)")
    if name == "features":
        return f"one forward pass over the training set, {len(s.get('layers', []))} taps"
    if name == "processing":
        return f"PCA fits ({', '.join(s.get('modes', []))}) per layer"
    if name == "index":
        return "faiss index builds per (layer, mode)"
    if name == "report":
        return "scores and ROC for every (layer, mode, fn) and the k sweep"
    return ""


def probe_train(run: str | Path, *, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Time ``steps`` training steps of the run's model as :func:`precompute.stages.train.train` does them (channels_last,
    AdamW, the config's batch size) on the run's training images, and project the train stage at this load."""
    import copy

    import torch

    from core.data.datasets import to_float
    from core.detector import Detector

    det = Detector.load(run, verify="none", modes=[])
    cfg = det.run.manifest["config"]["model"]
    images = det.run.load_npy("train_images.npy", mmap=True) if det.run.is_recorded("train_images.npy") else None
    if images is None:
        return {"skipped": "the run keeps no training images"}
    n, bs = len(det.train_labels), int(cfg["batch_size"])
    model = copy.deepcopy(det.model)
    for p in model.parameters():
        p.requires_grad_(True)
    fmt = torch.channels_last
    model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.get("lr", 1e-3)))
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(np.asarray(det.train_labels))
    times = []
    for i in range(warmup + steps):
        idx = np.sort(rng.choice(n, bs, replace=False))
        t0 = time.perf_counter()
        x = torch.from_numpy(to_float(np.asarray(images[idx]))).contiguous(memory_format=fmt)
        loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    total_steps = int(cfg["epochs"]) * ((n + bs - 1) // bs)
    return {"steps": steps, "batch_size": bs, "step_s_median": step_s, "step_s_min": float(min(times)),
            "train_steps": total_steps, "train_projection_s": step_s * total_steps,
            "threads": torch.get_num_threads()}


def rerun(run: str | Path, from_stage: str, *, progress: bool = False) -> dict[str, float]:
    """Copy ``run`` to a temporary folder, re-run it from ``from_stage`` on; return {stage: seconds}."""
    import torch

    from core.runs.folder import RunDir
    from precompute.context import Context
    from precompute.runner import run_stages, stage_keys
    from precompute.stages import STAGE_NAMES

    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmp:
        dst = Path(tmp) / Path(run).name
        shutil.copytree(run, dst)
        copy = RunDir(dst)
        cfg = copy.manifest["config"]
        keys = stage_keys(cfg)
        stale = [s for s in STAGE_NAMES[:STAGE_NAMES.index(from_stage)] if not copy.stage_done(s, keys[s])]
        if stale:  # the run is being rebuilt, or was built by other code: re-running would redo these too
            raise RuntimeError(f"stages before {from_stage!r} are not done in {run} ({', '.join(stale)}): "
                               "finish the run first")
        device = torch.device("cuda" if torch.cuda.is_available() and cfg.get("device") != "cpu" else "cpu")
        ctx = Context(cfg=cfg, run=copy, device=device, progress=progress)
        t0 = time.perf_counter()
        times = {k: float(v) for k, v in run_stages(ctx, from_stage=from_stage).items() if v}
        times["total"] = time.perf_counter() - t0
        return times


def run(run: str = str(C.DEFAULT_RUN), *, rerun_from: str | None = None, threads: int = 0, train_steps: int = 0,
        out_dir: str | None = None) -> dict[str, Any]:
    """Read the stage times; optionally re-run; print the table; write ``precompute.json``."""
    from core.runs.folder import RunDir

    nthreads = C.set_threads(threads)
    mach = C.machine()
    r = RunDir(run)
    if not r.exists():
        raise SystemExit(f"no run at {run}: build it with `python -m precompute --config "
                         "precompute/configs/fmnist.toml`")
    m = r.manifest
    from precompute.stages import STAGE_NAMES

    order = {name: i for i, name in enumerate(STAGE_NAMES)}
    stages = dict(sorted(m.get("stages", {}).items(), key=lambda kv: order.get(kv[0], len(order))))
    rows = [{"stage": name, "seconds": float(st.get("seconds") or 0.0), "status": st.get("status"),
             "why": _why(name, m)} for name, st in stages.items()]
    total = sum(x["seconds"] for x in rows)
    for x in rows:
        x["share"] = x["seconds"] / total if total else float("nan")
    dom = max(rows, key=lambda x: x["seconds"]) if rows else None
    finished = all(stages.get(name, {}).get("status") == "done" for name in STAGE_NAMES)
    result: dict[str, Any] = {
        "machine": mach,
        "settings": {"run": str(run), "threads": nthreads, "rerun_from": rerun_from},
        "run_built_with": {"versions": m.get("versions", {}), "device": m.get("config", {}).get("device"),
                           "finished": finished},
        "stages": rows, "total_seconds": total, "dominant": dom and {"stage": dom["stage"], "seconds": dom["seconds"],
                                                                     "share": dom["share"], "why": dom["why"]},
        "attack_seconds": m.get("summary", {}).get("attack_seconds", {}),
        "targets": {"total<600s": finished and total < TARGET_S, "total<300s (aim)": finished and total < AIM_S}}
    if train_steps:
        result["train_probe"] = probe_train(run, steps=train_steps)
        tp = result["train_probe"]
        if "train_projection_s" in tp:  # the whole run with the train stage as it would take here and now
            result["total_with_train_projection_s"] = total - next(
                (x["seconds"] for x in rows if x["stage"] == "train"), 0.0) + tp["train_projection_s"]
    if rerun_from:
        log.info("re-running %s from %s", run, rerun_from)
        try:
            result["rerun"] = rerun(run, rerun_from)
        except RuntimeError as e:
            result["rerun_skipped"] = str(e)
            log.warning("re-run skipped: %s", e)
    publish("precompute", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--rerun", metavar="STAGE", help="re-run this stage and the ones after it on a copy of the run")
    p.add_argument("--train-steps", type=int, default=0, metavar="N",
                   help="time N training steps here and project the train stage (0 = no probe)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(a.run, rerun_from=a.rerun, threads=a.threads, train_steps=a.train_steps, out_dir=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
