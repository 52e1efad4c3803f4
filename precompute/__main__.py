"""Precompute a knnguard run: train/load the model, index training features, make and score evaluation sets.

    python -m precompute --config precompute/configs/fmnist.toml            # the embedded default
    python -m precompute --config precompute/configs/fmnist.toml --dry-run  # what would run
    python -m precompute --config ... --from evalsets                      # recompute from a stage on
    python -m precompute --config ... --set evalsets.n_authentic=200       # override a value (type-checked)
    python -m precompute --list-layers precompute/configs/fmnist.toml      # tappable node names
    python -m precompute --sign data/runs/fmnist                           # HMAC-sign the manifest (core.runs.signing)

Finished stages are skipped (their inputs and file hashes are in ``manifest.json``); a killed run resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import time

__all__ = ["main"]

log = logging.getLogger("precompute")


def _parser() -> argparse.ArgumentParser:
    from precompute.stages import STAGE_NAMES

    p = argparse.ArgumentParser(prog="python -m precompute", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML config (precompute/configs/*.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. evalsets.n_authentic=200 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="list the stages that would run, then stop")
    p.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, help="recompute from this stage on")
    p.add_argument("--list-layers", metavar="CONFIG", help="print the model's tappable node names and exit")
    p.add_argument("--verify", metavar="RUN_DIR", help="check every file of a run against its manifest's sha256 "
                   "(full hashes; loading large runs checks sizes only) and exit")
    p.add_argument("--sign", metavar="RUN_DIR", help="hash-check every file of a run, then write manifest.sig, an "
                   "HMAC-SHA256 of its manifest with the key $KNNGUARD_SIGNING_KEY or "
                   "~/.config/knnguard/signing.key (created, mode 0600, if missing), and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: device = 'cuda' but no CUDA device is available; use device = 'auto'")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per rank
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def _threads(n: int) -> None:
    from core._util.threads import set_process_threads

    set_process_threads(n or os.cpu_count() or 1)


def _verify(path: str) -> int:
    from core.errors import ArtefactError
    from core.runs.folder import RunDir

    run = RunDir(path)
    if not run.exists():
        print(f"error: {path} has no manifest.json", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        run.verify(full=True)
        sig = run.check_signature()
    except ArtefactError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    n = len(run.manifest["files"])
    size = sum(f["size"] for f in run.manifest["files"].values())
    print(f"OK: {n} files, {size / 1e6:.1f} MB match their sha256 ({time.perf_counter() - t0:.1f} s); "
          f"signature: {sig}")
    return 0


def _sign(path: str) -> int:
    from core.errors import ArtefactError, SigningKeyError
    from core.runs.folder import RunDir
    from core.runs.signing import SIGNATURE

    run = RunDir(path)
    try:
        key = run.sign()
    except (ArtefactError, SigningKeyError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"signed: {run.path / SIGNATURE} (key {key}; keep it outside the run and private)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (the run's lock, when taken, is released on return)."""
    with contextlib.ExitStack() as held:
        return _main(argv, held)


def _main(argv: list[str] | None, held: contextlib.ExitStack) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from core.config import loader as cfgmod

    if args.verify:
        return _verify(args.verify)
    if args.sign:
        return _sign(args.sign)
    try:
        cfg = cfgmod.load(args.list_layers or args.config, args.overrides)
    except cfgmod.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list_layers:
        return _list_layers(cfg)
    if not args.config:
        print("error: --config is required (e.g. precompute/configs/fmnist.toml)", file=sys.stderr)
        return 2

    from core.runs.folder import RunDir
    from precompute.context import Context
    from precompute.runner import pending, run_stages

    run = RunDir(os.path.join(cfg["runs_dir"], cfg["name"]))
    rank = int(os.environ.get("RANK", "0"))
    refused = _take_run(run, cfg, lock=not args.dry_run and rank == 0, held=held)
    if refused is not None:
        return refused
    ctx = Context(cfg=cfg, run=run, device=_device(cfg["device"]), progress=not args.no_progress)
    if args.dry_run:
        from precompute.stages import STAGE_NAMES

        todo = STAGE_NAMES[STAGE_NAMES.index(args.from_stage):] if args.from_stage else pending(ctx)
        print(f"run folder: {run.path}")
        print("would run: " + (", ".join(todo) if todo else "nothing (complete)"))
        return 0
    _threads(cfg["threads"])
    refused = _check_data(ctx)
    if refused is not None:
        return refused

    t0 = time.perf_counter()

    def on_stage(name: str, seconds: float, skipped: bool) -> None:
        print(f"[{name:>10}] {'skipped (done, took ' + format(seconds, '.1f') + ' s)' if skipped else format(seconds, '.1f') + ' s'}",
              flush=True)

    try:
        run_stages(ctx, from_stage=args.from_stage, on_stage=on_stage)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: cannot write the run folder {run.path}: {e.strerror} ({e.filename or ''}). Files already "
              "there are intact (every write is atomic); free space or fix permissions and run again to resume.",
              file=sys.stderr)
        return 1
    if rank != 0:
        return 0
    print(f"total {time.perf_counter() - t0:.1f} s; run folder {run.path}")
    report = run.path / "report.md"
    if report.exists():
        text = report.read_text()
        start, end = text.find("## Operating point"), text.find("## The paper's findings")
        if 0 <= start < end:
            print(text[start:end].strip())
    return 0


def _check_data(ctx) -> int | None:
    """Read the data sets' sizes and refuse, before any work, sizes or models they cannot fit; exit status or None."""
    from core.config import loader as cfgmod
    from precompute.stages import train as training

    try:
        train, test, classes = ctx.sources()  # a missing dataset fails here, before any work
        cfgmod.check_sizes(ctx.cfg, n_train=len(train), n_test=len(test))
        if training.wants_training(ctx.cfg["model"]):
            from core.models import zoo

            training.check_outputs(zoo.from_config(ctx.cfg["model"])[0], len(classes), ctx.spec().size)
    except (FileNotFoundError, ValueError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None


def _list_layers(cfg: dict) -> int:
    """Print the model's tappable node names, marking the default taps."""
    from core.models import zoo

    model, _ = zoo.from_config({**cfg["model"], "weights": "none", "state_dict": ""})
    default = set(cfg["features"]["layers"] or
                  (zoo.layers(cfg["model"]["name"]) if cfg["model"]["name"] != "custom" else []))
    for node in zoo.graph_nodes(model):
        print(node + ("   (default tap)" if node in default else ""))
    return 0


def _take_run(run, cfg: dict, *, lock: bool, held: contextlib.ExitStack) -> int | None:
    """Check the run folder is ours (and, with ``lock``, hold its lock); the exit status if refused, else None.

    Under torchrun, rank 0 holds the lock for every rank.
    """
    from precompute import runlock

    try:
        runlock.check_owned(run.path)
        if lock:
            held.enter_context(runlock.hold(run.path))
    except (runlock.NotARun, runlock.RunBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot lock the run folder {run.path}: {e.strerror} ({e.filename or ''})", file=sys.stderr)
        return 1
    old = run.manifest.get("config") if run.exists() else None
    if old and old.get("model", {}).get("name") != cfg["model"]["name"]:
        print(f"error: {run.path} holds a run of model {old['model']['name']!r}, not {cfg['model']['name']!r}; "
              "choose another name (--set name=...) or delete the folder", file=sys.stderr)
        return 2
    return None


if __name__ == "__main__":
    raise SystemExit(main())
