"""Precompute writes only its own run folders, one process at a time, and refuses out-of-range configs."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import loader, schema
from core.runs.folder import RunDir
from precompute.__main__ import main
from tests.conftest import ROOT, TINY, need_fmnist

FMNIST_TOML = str(ROOT / "precompute/configs/fmnist.toml")
SHIPPED = sorted((ROOT / "precompute/configs").glob("*.toml"))
LOCK = ".knnguard.lock"  # the lock file in a run folder


def _args(runs: Path, *extra: str) -> list[str]:
    return ["--config", FMNIST_TOML, "--no-progress", f"--set=runs_dir='{runs}'", f"--set=data_root='{runs}'",
            *[f"--set={s}" for s in TINY], *extra]


def _tree_hash(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (and the folders, as empty entries)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root) + "/"] = ""
        for f in files:
            p = os.path.join(folder, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


# ------------------------------------------------------------------ 10: only its own folders and files
def _user_folder(runs: Path) -> Path:
    user = runs / "tiny"
    (user / "sub").mkdir(parents=True)
    (user / "report.md").write_text("my own report\n")
    (user / "classes.json").write_text('["mine"]\n')
    (user / "draft.tmp").write_text("unsaved work\n")
    (user / "sub" / "notes.txt.tmp").write_text("more unsaved work\n")
    return user


@pytest.mark.parametrize("extra", [[], ["--dry-run"]])
def test_existing_user_folder_is_refused_and_untouched(tmp_path, capsys, extra):
    need_fmnist()
    user = _user_folder(tmp_path)
    before = _tree_hash(user)
    assert main(_args(tmp_path, *extra)) == 2
    assert "not a knnguard run" in capsys.readouterr().err
    assert _tree_hash(user) == before  # nothing deleted, overwritten or added (no lock file either)


def test_foreign_manifest_is_refused(tmp_path, capsys):
    need_fmnist()
    user = tmp_path / "tiny"
    user.mkdir()
    (user / "manifest.json").write_text('{"name": "my package", "version": 3}')
    before = _tree_hash(user)
    assert main(_args(tmp_path)) == 2
    assert "not a knnguard manifest" in capsys.readouterr().err
    assert _tree_hash(user) == before


def test_check_owned_accepts_new_empty_and_own_runs(tmp_path):
    from precompute import runlock

    runlock.check_owned(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    runlock.check_owned(tmp_path / "empty")
    run = RunDir(tmp_path / "run")
    run.save_json("a.json", {"x": 1})
    runlock.check_owned(run.path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(runlock.NotARun, match="not a folder"):
        runlock.check_owned(tmp_path / "file")


def test_clean_tmp_removes_only_its_own_temporary_names(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_json("a.json", {"x": 1})
    user = [run.path / "draft.tmp", run.path / "sub" / "x.npy.tmp", run.path / ".hidden.tmp"]
    for p in user:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("user data")
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from core._util.atomic import atomic_path
        with atomic_path({str(run.path / "sub" / "b.npy")!r}) as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    left = run.leftovers()
    assert len(left) == 1 and left[0].parent == run.path / "sub" and left[0].name.startswith(".b.npy.knnguard-")
    assert run.clean_tmp() == 1
    assert run.leftovers() == [] and all(p.read_text() == "user data" for p in user)


# ------------------------------------------------------------------ 11: one precompute per run
_HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "2024-01-02T03:04:05"}).encode())
    print("held", flush=True)
    sys.stdin.read()
""")


def test_second_precompute_is_refused_naming_the_holder(tmp_path, capsys):
    need_fmnist()
    run = tmp_path / "tiny"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run / LOCK)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_args(tmp_path)) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 2024-01-02T03:04:05" in err
        assert sorted(os.listdir(run)) == [LOCK]  # no work started
        assert main(_args(tmp_path, "--dry-run")) == 0  # a dry run reads only: no lock needed
    finally:
        holder.communicate("", timeout=30)


def test_two_real_precomputes_one_refused_then_lock_freed_by_kill(tmp_path):
    need_fmnist()
    runs = tmp_path / "runs"
    # the first: a full-size run (minutes of work), killed once the second has been turned away
    first = subprocess.Popen([sys.executable, "-m", "precompute", "--config", FMNIST_TOML, "--no-progress",
                              f"--set=runs_dir='{runs}'", f"--set=data_root='{runs}'", "--set=threads=1"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = runs / "fmnist" / LOCK
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first precompute stopped early"
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = subprocess.run([sys.executable, "-m", "precompute", "--config", FMNIST_TOML, "--no-progress",
                                 f"--set=runs_dir='{runs}'", f"--set=data_root='{runs}'", "--set=seed=1"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first precompute finished before the second started"
        assert second.returncode != 0
        assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from precompute import runlock

    with runlock.hold(runs / "fmnist"):  # the kernel dropped the dead holder's lock: no stale lock
        pass


def test_hold_is_exclusive_and_released(tmp_path):
    from precompute import runlock

    with runlock.hold(tmp_path / "r") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(runlock.RunBusy, match=f"pid {os.getpid()}"):
            with runlock.hold(tmp_path / "r"):
                pass
    with runlock.hold(tmp_path / "r"):
        pass


# ------------------------------------------------------------------ 12: ranges before any work
BAD = [
    ("features.batch_size", "0"), ("model.batch_size", "0"), ("features.chunk", "0"), ("threads", "-1"),
    ("data.n_train", "-5"), ("evalsets.noise_eps", "inf"), ("evalsets.noise_eps", "nan"), ("model.lr", "inf"),
    ("processing.pca_dim", "-3"), ("scoring.k_max", str(10 ** 12)), ("model.epochs", "-1"), ("model.epochs", "2.5"),
    ("scoring.k", "0"), ("scoring.k", "1001"), ("scoring.k_sweep", "[10, 0]"), ("scoring.k_sweep", "[10, 5000]"),
    ("scoring.k_sweep", "['ten']"), ("evalsets.n_errors", "-1"), ("index.nprobe", "0"), ("thumbs.size", "0"),
    ("model.weight_decay", "-0.1"), ("seed", "-1"), ("attacks.fgsm.eps", "5.0"), ("attacks.ifgsm.steps", "0"),
    ("attacks.fgsm.n", "0"), ("model.input_size", "[3, 0, 64]"), ("model.std", "[0.0, 0.2, 0.2]"),
]


@pytest.mark.parametrize("key, value", BAD)
def test_out_of_range_value_is_refused_with_its_fix(key, value):
    with pytest.raises(loader.ConfigError) as e:
        loader.load(FMNIST_TOML, [f"{key}={value}"])
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and "allowed:" in msg
    fix = re.search(r"fix: --set (\S+)$", msg).group(1)
    assert fix.startswith(f"{key}=")
    loader.load(FMNIST_TOML, [fix])  # the suggested value is valid


def test_k_max_above_n_train_is_refused():
    with pytest.raises(loader.ConfigError, match=r"'scoring.k_max' = 1000 .*data.n_train = 500"):
        loader.load(FMNIST_TOML, ["data.n_train=500"])


def test_out_of_range_fails_before_any_work(tmp_path, capsys):
    assert main(_args(tmp_path, "--set=threads=-1")) == 2
    assert "'threads' = -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _numeric_leaves(node, path=()):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _numeric_leaves(v, path + (k,))
        elif (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
                (isinstance(v, list) and any(isinstance(x, (int, float)) for x in v)):
            yield ".".join(path + (k,))


@pytest.mark.parametrize("toml", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_numeric_key_has_a_range(toml):
    import tomllib

    keys = set(_numeric_leaves(loader.DEFAULTS)) | set(_numeric_leaves(tomllib.loads(toml.read_text())))
    keys = {k for k in keys if not k.startswith(loader.ATTACK_SECTION + ".")}  # core.attacks.param_spec ranges
    assert keys - set(loader.RANGES) == set()
    loader.load(toml)  # every shipped value is inside its range


def test_detector_max_k_is_the_config_cap():
    from core import detector

    assert detector.MAX_K == schema.MAX_K


# ------------------------------------------------------------------ 12: Detector k
def test_detector_k_is_type_and_range_checked(tiny_run):
    from core.detector import Detector

    det = Detector.load(tiny_run, verify="none")
    img = RunDir(tiny_run).load_npz("evalsets/authentic.npz")["images"][:2]
    assert det.score(img).settings["k"] == det.defaults["k"]
    assert det.score(img, k=np.int64(5)).settings["k"] == 5
    assert det.score(img, k=det.k_max).settings["k"] == det.k_max
    for bad in (True, 2.7, 5.0, "7"):
        with pytest.raises(TypeError, match="k must be an int"):
            det.score(img, k=bad)
        with pytest.raises(TypeError, match="k must be an int"):
            det.inspect(img[0], k=bad)
    for bad in (0, -1, det.k_max + 1):
        with pytest.raises(ValueError, match=rf"k must be in \[1, {det.k_max}\], got {bad}"):
            det.score(img, k=bad)
        with pytest.raises(ValueError, match="k must be in"):
            det.inspect(img[0], k=bad)
