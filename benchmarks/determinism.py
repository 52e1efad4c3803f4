"""Are the default CNN's trained weights the same under other thread counts, core masks and CPU kernels?

    python -m benchmarks.determinism                  # 3000 training images, 1 epoch, 7 settings (about 3 min)
    python -m benchmarks.determinism --quick          # 1000 images

Each setting trains the default config's CNN (``precompute/configs/fmnist.toml``, the ``data`` and ``train``
stages on a subset) in a fresh process and records the sha256 of ``model.pt`` and the test accuracy. Settings:
the machine as it is; ``OMP_NUM_THREADS=1``; ``taskset -c 0`` (one core); and the CPU kernels another machine
would pick — torch's own (``ATEN_CPU_CAPABILITY=default``, i.e. no AVX2) and oneDNN's (``ONEDNN_MAX_CPU_ISA``
capped at AVX or SSE4.1). A setting that changes the hash changes the summation order of the training's floats:
the same config then trains other weights, and every figure of the run moves a little. Needs the Fashion-MNIST
idx files (``apt-get install -y dataset-fashion-mnist``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks import _common as C
from benchmarks import summary

#: (name, environment changes, command prefix)
SETTINGS: list[tuple[str, dict[str, str], list[str]]] = [
    ("as it is", {}, []),
    ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, []),
    ("taskset -c 0 (one core)", {}, ["taskset", "-c", "0"]),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, []),
    ("ONEDNN_MAX_CPU_ISA=AVX", {"ONEDNN_MAX_CPU_ISA": "AVX"}, []),
    ("ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, []),
]

CHILD = r"""
import hashlib, json, os, sys
sys.path.insert(0, sys.argv[1])
import torch
from core.runs.folder import RunDir
from core.config import config
from precompute.context import Context
from precompute.runner import stage_data, stage_keys, stage_train
tmp, n_train, epochs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = config.load(os.path.join(sys.argv[1], "precompute/configs/fmnist.toml"),
                  [f"runs_dir='{tmp}'", f"data_root='{tmp}'", "name=det", f"data.n_train={n_train}",
                   f"model.epochs={epochs}", "device='cpu'"])
run = RunDir(os.path.join(tmp, "det"))
run.path.mkdir(parents=True, exist_ok=True)
ctx = Context(cfg=cfg, run=run, device=torch.device("cpu"), progress=False)
ctx.keys = stage_keys(cfg)
stage_data(ctx)
stage_train(ctx)
info = json.loads((run.path / "model.json").read_text())
print(json.dumps({"sha256": hashlib.sha256((run.path / "model.pt").read_bytes()).hexdigest(),
                  "test_accuracy": info["test_accuracy"], "torch_capability": torch.backends.cpu.get_cpu_capability(),
                  "torch_threads": torch.get_num_threads()}))
"""


def train_once(env: dict[str, str], prefix: list[str], n_train: int, epochs: int) -> dict:
    """Train in a fresh process with ``env`` added and ``prefix`` before the interpreter; its JSON line."""
    tmp = tempfile.mkdtemp(prefix="knnguard-det-")
    try:
        proc = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(C.ROOT), tmp, str(n_train), str(epochs)],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"training failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(C.RESULTS), help="folder for the JSON result (default benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="1000 training images (a smoke run)")
    p.add_argument("--n-train", type=int, default=3000, help="training images (default 3000)")
    p.add_argument("--epochs", type=int, default=1)
    a = p.parse_args(argv)
    n_train = 1000 if a.quick else a.n_train
    if shutil.which("taskset") is None:
        print("taskset missing (util-linux): the one-core setting is skipped", file=sys.stderr)
    rows = []
    for name, env, prefix in SETTINGS:
        if prefix and shutil.which(prefix[0]) is None:
            continue
        r = train_once(env, prefix, n_train, a.epochs)
        rows.append({"setting": name, **r, "sha256": r["sha256"][:16]})
        print(f"{name:30s} {r['sha256'][:16]}  test accuracy {r['test_accuracy']:.4f}", flush=True)
    base = rows[0]["sha256"]
    threads_only = [r for r in rows if r["setting"] in ("OMP_NUM_THREADS=1", "taskset -c 0 (one core)")]
    kernels = [r for r in rows if r["setting"].startswith(("ATEN_", "ONEDNN_"))]
    result = {"command": "python -m benchmarks.determinism" + (" --quick" if a.quick else ""),
              "settings": {"n_train": n_train, "epochs": a.epochs, "config": "precompute/configs/fmnist.toml"},
              "rows": [{**r, "same_weights": r["sha256"] == base} for r in rows],
              "same_across_threads": all(r["sha256"] == base for r in threads_only),
              "kernels_changing_weights": sum(r["sha256"] != base for r in kernels), "kernels_tried": len(kernels)}
    summary.publish("determinism", result, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
