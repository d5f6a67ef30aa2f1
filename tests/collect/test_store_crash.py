"""SIGKILL a real recording process at chosen moments (mid-episode, during the commit, during recovery,
during ``filter``, during creation): the store opens, saved episodes are intact, and resume works."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from collect.atomic_store import iter_temp_files, set_fault_hook
from collect.errors import StoreNotFoundError
from collect.noop import NoopThresholds, store_noop_mask
from collect.store import EpisodeStore
from tests.collect.store_testing import REPO_ROOT, assert_episode_intact, record_episode, small_schema

STEPS = 12  # per episode, as in the child
BEFORE = 2  # episodes the child saves before the kill moment


def run_until_halt(store: Path, action: str, point: str, detail: str = "", occurrence: int = 1,
                   before: int = BEFORE) -> str:
    """Start the child, wait for it to reach the point, SIGKILL it; returns the HALT line."""
    command = [sys.executable, "-m", "tests.collect.store_crash_child", str(store), action, "--point", point,
               "--detail", detail, "--occurrence", str(occurrence), "--before", str(before), "--steps", str(STEPS),
               "--schema", json.dumps(small_schema().to_attrs())]
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line.strip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        while True:
            line = lines.get(timeout=60)
            if line is None or line == "DONE":
                child.wait(timeout=30)
                pytest.fail(f"the child never reached {point} {detail!r} #{occurrence} ({line}):\n"
                            f"{child.stderr.read()}")
            if line.startswith("HALT"):
                break
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return line


def check_after_crash(path: Path, saved: int, tail: int | None, caplog: pytest.LogCaptureFixture) -> None:
    """The store opens, the ``saved`` episodes are intact, the partial tail is reported, and resume works."""
    with EpisodeStore.open(path, mode="r") as store:
        assert store.num_episodes == saved
        assert store.num_frames == saved * STEPS
        for index in range(saved):
            assert_episode_intact(store, index, seed=index, steps=STEPS)
    caplog.clear()
    with (caplog.at_level(logging.WARNING, logger="collect.store"),
          EpisodeStore.open_or_create(path, small_schema()) as store):
        discarded = [r.getMessage() for r in caplog.records if "discarded a partial episode" in r.getMessage()]
        if tail:
            assert discarded and f"discarded a partial episode of {tail} frames (not committed)" in discarded[0]
        elif tail == 0:
            assert not discarded
        # On disk, not just in the view: the tail is gone.
        assert not list(iter_temp_files(path))
        assert zarr.open_array(path / "data" / "color", mode="r").shape[0] == saved * STEPS
        assert zarr.open_array(path / "data" / "joints_rad", mode="r").shape[0] == saved * STEPS
        assert len(list((path / "data" / "color").glob("c.*"))) == saved * STEPS
        assert record_episode(store, seed=saved, steps=STEPS) == saved
    with EpisodeStore.open(path, mode="r") as store:
        assert store.num_episodes == saved + 1
        for index in range(saved + 1):
            assert_episode_intact(store, index, seed=index, steps=STEPS)


# (moment, point, detail, occurrence, episode saved?, frames in the partial tail)
RECORD_KILLS = [
    ("mid-episode after 5 frames", "step_written", "color", 5, False, 5),
    ("while growing an image array", "replace", "data/color/zarr.json", 1, False, 0),
    ("commit: start", "commit:start", "", 1, False, STEPS),
    ("commit: writing low-dim chunks", "write", "data/joints_rad/c.", 1, False, STEPS),
    ("commit: before fsync", "commit:before_sync", "", 1, False, STEPS),
    ("commit: before the commit record", "commit:before_record", "", 1, False, STEPS),
    ("commit: record written, not renamed", "replace", "meta/zarr.json", 1, False, STEPS),
    ("commit: after the commit record", "commit:after_record", "", 1, True, 0),
]


@pytest.mark.parametrize(("moment", "point", "detail", "occurrence", "episode_saved", "tail"), RECORD_KILLS,
                         ids=[kill[0] for kill in RECORD_KILLS])
def test_kill_while_recording(tmp_path, caplog, moment, point, detail, occurrence, episode_saved, tail):
    path = tmp_path / "demos.zarr"
    run_until_halt(path, "record", point, detail, occurrence)
    check_after_crash(path, BEFORE + episode_saved, tail, caplog)


def test_kill_during_recovery_of_a_partial_episode(tmp_path, caplog):
    path = tmp_path / "demos.zarr"
    run_until_halt(path, "record", "step_written", "color", 7)
    # The second process dies while cutting the partial tail off (chunks deleted, metadata not yet rewritten).
    run_until_halt(path, "recover", "write", "data/color/zarr.json")
    check_after_crash(path, BEFORE, tail=None, caplog=caplog)


def test_kill_before_the_first_episode_commits(tmp_path, caplog):
    path = tmp_path / "demos.zarr"
    run_until_halt(path, "record", "commit:before_record", before=0)
    check_after_crash(path, 0, STEPS, caplog)


def test_kill_during_creation_leaves_no_store(tmp_path):
    path = tmp_path / "demos.zarr"
    run_until_halt(path, "create", "write", "meta/zarr.json")
    with pytest.raises(StoreNotFoundError):
        EpisodeStore.open(path)
    EpisodeStore.create(path, small_schema()).close()
    assert EpisodeStore.open(path).num_episodes == 0


@pytest.mark.parametrize(("point", "new_mask_expected"), [("noop:before_switch", False), ("noop:after_switch", True)])
def test_kill_during_filter_leaves_old_or_new_mask(tmp_path, point, new_mask_expected):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        for seed in range(BEFORE):
            record_episode(store, seed, STEPS)
        old_mask = store.noop_mask()
        columns = {key: store.array(key)[:] for key in ("joints_rad", "command_joints_rad", "command_gripper",
                                                         "gripper_state")}
        new_mask = store_noop_mask(columns, store.episode_ends, NoopThresholds(0.5, 0.5))
    assert not np.array_equal(old_mask, new_mask)  # the child's thresholds change the mask
    run_until_halt(path, "filter", point)
    with EpisodeStore.open(path, mode="r") as store:
        np.testing.assert_array_equal(store.noop_mask(), new_mask if new_mask_expected else old_mask)
        assert store.noop_record["source"] == ("filter" if new_mask_expected else "record")
    with EpisodeStore.open(path, mode="a") as store:  # the unused mask generation is removed
        assert [p.name for p in (path / "data" / "noop").iterdir() if p.is_dir()] == [store.noop_record["array"]]
        for index in range(BEFORE):
            assert_episode_intact(store, index, seed=index, steps=STEPS)


def count_file_writes_of_the_third_episode(path: Path) -> int:
    """Record the child's episodes in-process and count the file writes of the last one (commit included)."""
    writes = []
    with EpisodeStore.create(path, small_schema()) as store:
        for seed in range(BEFORE):
            record_episode(store, seed, STEPS)
        set_fault_hook(lambda point, detail: writes.append(detail) if point == "write" else None)
        try:
            record_episode(store, BEFORE, STEPS, image_threads=1)
        finally:
            set_fault_hook(None)
    return len(writes)


@pytest.mark.slow
def test_kill_before_every_file_write_of_an_episode(tmp_path, caplog):
    """Exhaustive: a kill before the n-th file write of the third episode, for every n."""
    writes = count_file_writes_of_the_third_episode(tmp_path / "count.zarr")
    assert writes > STEPS + 10
    for occurrence in range(1, writes + 1):
        path = tmp_path / f"demos{occurrence}.zarr"
        halt = run_until_halt(path, "record", "write", "", occurrence)
        with EpisodeStore.open(path) as store:
            saved = store.num_episodes
        # Only the last write is the commit record: before it the episode is not saved.
        assert saved == BEFORE, (occurrence, writes, halt)
        check_after_crash(path, saved, tail=None, caplog=caplog)
