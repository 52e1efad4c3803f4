"""A precompute SIGKILLed at random moments and restarted ends with the same run as an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from core.runs.folder import RunDir
from tests.conftest import ROOT, TINY, need_fmnist

N_KILLS = int(os.environ.get("KNNGUARD_KILLS", "8"))


def _strip_timings(obj):
    """The report without wall-clock fields (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in ("stage_seconds", "seconds", "timing", "fit_s", "score_ms")}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


def _cmd(runs_dir):
    return [sys.executable, "-m", "precompute", "--config", str(ROOT / "precompute/configs/fmnist.toml"),
            "--no-progress", f"--set=runs_dir='{runs_dir}'", f"--set=data_root='{runs_dir}'", *[f"--set={s}" for s in TINY]]


def test_sigkill_at_random_moments_then_resume(tiny_run, tmp_path):
    need_fmnist()
    rng = np.random.default_rng(0)
    runs = tmp_path / "runs"
    from precompute.stages import STAGE_NAMES
    kills, stages_hit, tmp_seen = 0, set(), 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    manifest = runs / "tiny" / "manifest.json"

    def n_done() -> int:
        try:
            return len(json.loads(manifest.read_text()).get("stages", {}))
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    for i in range(N_KILLS):
        # spread the kills over the stages: wait until stage `aim` is running, then a random moment into it
        aim = min(i * len(STAGE_NAMES) // N_KILLS, len(STAGE_NAMES) - 1)
        proc = subprocess.Popen(_cmd(runs), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and n_done() < aim:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            stages_hit.add(STAGE_NAMES[min(n_done(), len(STAGE_NAMES) - 1)])
            tmp_seen += len(RunDir(runs / "tiny").leftovers())
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(_cmd(runs), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed, ref = RunDir(runs / "tiny"), RunDir(tiny_run)
    resumed.verify()                       # every file matches its manifest hash
    assert resumed.leftovers() == []      # no .tmp left behind (and none was ever read: names differ)
    assert kills >= N_KILLS // 2, f"only {kills} kills landed before the run finished"
    assert len(stages_hit) >= 4, f"kills landed in too few stages: {stages_hit}"
    # identical results: every artefact except the report (which carries timings) has the same bytes
    timed = {k for k in ref.manifest["files"] if k.endswith("/detector.json") or k == "adaptive/summary.json"}
    skip = {"report.json", "report.md"} | timed
    ref_files = {k: v["sha256"] for k, v in ref.manifest["files"].items() if k not in skip}
    res_files = {k: v["sha256"] for k, v in resumed.manifest["files"].items() if k not in skip}
    assert res_files == ref_files
    assert timed <= set(resumed.manifest["files"])
    for k in timed:  # the detectors' fit and score times, the adaptive stage's timing: the rest is identical
        assert _strip_timings(resumed.load_json(k)) == _strip_timings(ref.load_json(k)), k
    assert _strip_timings(resumed.load_json("report.json")) == _strip_timings(ref.load_json("report.json"))
    print(f"kills={kills} stages_hit={sorted(stages_hit)} tmp_files_seen_at_kill={tmp_seen}")


def test_chunk_progress_resumes_only_from_matching_records(tmp_path):
    """Progress under another key or row count, or unreadable, is ignored; chunks and rows split as documented."""
    from precompute.distributed import ChunkProgress

    prog = ChunkProgress(tmp_path, key="k1", n=10, chunk=4)
    assert prog.n_chunks == 3 and prog.rows(2) == (8, 10) and prog.mine(1, 2) == [1]
    prog.save(0, [2, 0])
    assert json.loads((tmp_path / "progress-0.json").read_text())["done"] == [0, 2]
    ChunkProgress(tmp_path, key="k0", n=10, chunk=4).save(1, [1])    # a run with other inputs
    ChunkProgress(tmp_path, key="k1", n=12, chunk=4).save(2, [1])    # other rows
    (tmp_path / "progress-3.json").write_text("{not json")            # cut short by a kill
    assert prog.finished() == {0, 2}
    prog.clear()
    assert prog.finished() == set() and not list(tmp_path.iterdir())
