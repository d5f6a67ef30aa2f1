"""SIGKILL a real ``fanvla collect record`` process at chosen moments: the store opens, the saved
episodes are intact, and re-running the same command resumes and appends what is missing.

The child is the real command line (``fanvla.cli.main``) with a fault hook installed
(collect/atomic_store.py): it prints ``HALT`` at the named moment and waits there to be killed.

    python -m tests.collect.test_record_crash STORE CONFIG POINT OCCURRENCE_AFTER_COMMITS COMMITS
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from collect.store import EpisodeStore
from tests.collect.record_testing import REPO_ROOT, small_config, write_config

EPISODES = 2


def record_command(store: Path, config: Path, episodes: int = EPISODES) -> list[str]:
    return ["collect", "record", "--backend", "sim", "--teleop", "scripted", "--episodes", str(episodes),
            "--out", str(store), "--seed", "3", "--config", str(config)]


def child_main(argv: list[str]) -> int:
    """Run the real command, halting at ``point`` #``occurrence`` counted after ``commits`` saved episodes."""
    from collect.atomic_store import set_fault_hook
    from fanvla.cli import main

    store, config, point, occurrence, commits = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    seen = {"commits": 0, "hits": 0}

    def hook(name: str, detail: str) -> None:
        if name == "commit:after_record":
            seen["commits"] += 1
        if name == point and seen["commits"] >= commits:
            seen["hits"] += 1
            if seen["hits"] == occurrence:
                print(f"HALT {name} {detail} after {seen['commits']} commits", flush=True)
                time.sleep(600)  # the test kills us here

    set_fault_hook(hook)
    return main(record_command(Path(store), Path(config), EPISODES + 1))


def run_and_kill(args: list[str], until) -> str:
    """Start a child, SIGKILL it once ``until(line)`` holds for a line of its output; returns that line."""
    child = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=120)
            if line is None:
                child.wait(timeout=30)
                pytest.fail("the child ended before the kill moment:\n" + "\n".join(seen[-30:]))
            seen.append(line)
            if until(line):
                break
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return line


def saved_episodes(path: Path) -> list[dict[str, np.ndarray]]:
    with EpisodeStore.open(path) as store:
        episodes = [store.read_episode(i) for i in range(store.num_episodes)]
        for index, meta in enumerate(store.episodes_meta()):
            assert meta["success"] is True and meta["frames"] == len(episodes[index]["joints_rad"])
            assert meta["object"] == sorted(small_config().scene.objects)[index % 3]
    return episodes


def resume_and_check(path: Path, config: Path, before: list[dict[str, np.ndarray]]) -> None:
    result = subprocess.run([sys.executable, "-m", "fanvla", *record_command(path, config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"saved {EPISODES - len(before)} episodes" in result.stdout
    assert f"the store now holds {EPISODES} episodes" in result.stdout
    if any("partial episode" in line for line in result.stderr.splitlines()):
        assert "discarded a partial episode" in result.stderr
    after = saved_episodes(path)
    assert len(after) == EPISODES
    for old, new in zip(before, after, strict=False):  # the saved episodes are untouched
        for key, value in old.items():
            np.testing.assert_array_equal(new[key], value, err_msg=key)


@pytest.fixture
def config_file(tmp_path) -> Path:
    return write_config(tmp_path / "hardware.yaml", small_config())


def child(store: Path, config: Path, point: str, occurrence: int, commits: int) -> list[str]:
    return [sys.executable, "-m", "tests.collect.test_record_crash", str(store), str(config), point, str(occurrence),
            str(commits)]


@pytest.mark.parametrize("moment, point, occurrence, commits, saved", [
    ("mid-episode: 1 saved, 6 frames of the next written", "step_written", 6, 1, 1),
    pytest.param("in the commit of episode 2, before its commit record", "commit:before_record", 1, 1, 1,
                 marks=pytest.mark.slow),
    pytest.param("right after the commit record of episode 2", "commit:after_record", 2, 1, 2,
                 marks=pytest.mark.slow),
])
def test_kill_while_recording_then_resume(tmp_path, config_file, moment, point, occurrence, commits, saved):
    path = tmp_path / "demos.zarr"
    line = run_and_kill(child(path, config_file, point, occurrence, commits), lambda text: text.startswith("HALT"))
    assert point in line
    before = saved_episodes(path)
    assert len(before) == saved, moment
    resume_and_check(path, config_file, before)


@pytest.mark.slow
def test_kill_the_plain_command_at_a_random_moment(tmp_path, config_file):
    path = tmp_path / "demos.zarr"
    args = [sys.executable, "-m", "fanvla", *record_command(path, config_file, EPISODES + 1)]
    run_and_kill(args, lambda text: "saved as episode 0" in text and time.sleep(0.4) is None)
    before = saved_episodes(path)
    assert 1 <= len(before) <= 2
    resume_and_check(path, config_file, before[:EPISODES])


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
