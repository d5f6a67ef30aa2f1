"""Kill ``fanvla eval run`` (SIGKILL) in the middle of a trial, run the same command again: it resumes at the
first unscored trial, keeps every scored line byte for byte, and scores each trial exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from collect.store import EpisodeStore
from eval_protocols.results import RESULTS_FILE, trial_dir

TIMEOUT_S = 240


def _command(task_path: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "fanvla", "eval", "run", "--backend", "sim", "--policy", "random", "--tasks",
            str(task_path), "--trials", "3", "--seed", "3", "--out", str(run_dir)]


def _scored_lines(run_dir: Path) -> list[bytes]:
    path = run_dir / RESULTS_FILE
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def _wait_until_trial_1_is_running(process: subprocess.Popen, run_dir: Path) -> None:
    partial = trial_dir(run_dir, "killme", 1) / ".video.partial.mp4"
    deadline = time.monotonic() + TIMEOUT_S
    while not (len(_scored_lines(run_dir)) == 1 and partial.exists()):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.02)


def test_killed_mid_trial_resumes_without_losing_or_duplicating_scores(tmp_path, task_file):
    task_path = task_file(name="killme", max_duration_s=4)
    run_dir = tmp_path / "run"
    process = subprocess.Popen(_command(task_path, run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ})
    try:
        _wait_until_trial_1_is_running(process, run_dir)
        time.sleep(0.2)  # well inside the 4 s (40-step) episode
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    before = _scored_lines(run_dir)
    assert len(before) == 1 and json.loads(before[0])["trial"] == 0
    assert trial_dir(run_dir, "killme", 1).exists() and not (trial_dir(run_dir, "killme", 1) / "video.mp4").exists()

    finished = subprocess.run(_command(task_path, run_dir), capture_output=True, text=True, timeout=TIMEOUT_S,
                              env={**os.environ})
    assert finished.returncode == 0, finished.stderr[-3000:]
    after = _scored_lines(run_dir)
    assert after[0] == before[0], "a scored line changed"
    records = [json.loads(line) for line in after]
    assert [r["trial"] for r in records] == [0, 1, 2]
    assert "[2/3] killme trial 01" in finished.stdout and "trial 00" not in finished.stdout
    for record in records:
        directory = run_dir / Path(record["step_log"]).parent
        with EpisodeStore.open(run_dir / record["step_log"]) as store:
            assert store.num_episodes == 1 and store.num_frames == record["episode"]["steps"] <= 40
        assert (run_dir / record["video"]).stat().st_size > 0
        assert sorted(p.name for p in directory.iterdir()) == ["steps.zarr", "video.mp4"]
