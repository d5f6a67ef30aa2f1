"""``fanvla collect record`` as a real process: bad input gets one clear line and exit code 2, and the
terminal keyboard records an episode when driven through a pty."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collect.schema import recording_schema
from collect.store import EpisodeStore
from tests.collect.record_testing import REPO_ROOT, small_config, write_config


def fanvla(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fanvla", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def record_args(store: Path, config: Path, *extra: str, teleop: str = "scripted", backend: str = "sim") -> list[str]:
    return ["collect", "record", "--backend", backend, "--teleop", teleop, "--episodes", "1", "--out", str(store),
            "--config", str(config), *extra]


@pytest.fixture
def config_file(tmp_path) -> Path:
    return write_config(tmp_path / "hardware.yaml", small_config())


def test_scripted_on_the_real_robot_is_refused(tmp_path, config_file):
    result = fanvla(*record_args(tmp_path / "demos.zarr", config_file, backend="real"))
    assert result.returncode == 2
    assert "--teleop scripted needs --backend sim" in result.stderr and "privileged scene" in result.stderr
    assert not (tmp_path / "demos.zarr").exists()


def test_store_from_another_camera_resolution_is_refused(tmp_path, config_file):
    path = tmp_path / "demos.zarr"
    EpisodeStore.create(path, recording_schema(small_config(**{"camera.color.width": 80,
                                                                "camera.color.height": 60}))).close()
    result = fanvla(*record_args(path, config_file))
    assert result.returncode == 2
    assert "recorded with another configuration" in result.stderr
    assert "camera.color.width: 80 in the store, 64 now" in result.stderr
    assert EpisodeStore.open(path).num_episodes == 0


def test_resume_of_a_missing_store_and_a_path_that_is_not_a_store(tmp_path, config_file):
    result = fanvla(*record_args(tmp_path / "missing.zarr", config_file, "--resume"))
    assert result.returncode == 2 and "no episode store at" in result.stderr and "--resume" in result.stderr
    (tmp_path / "notes").mkdir()
    result = fanvla(*record_args(tmp_path / "notes", config_file))
    assert result.returncode == 2 and "is not an episode store" in result.stderr


def test_read_only_directory(tmp_path, config_file):
    directory = tmp_path / "ro"
    directory.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(directory)], capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("running as root without mount rights: permissions cannot make a directory read-only")
        directory.chmod(0o555)
    try:
        result = fanvla(*record_args(directory / "demos.zarr", config_file))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)
        else:
            directory.chmod(0o755)
    assert result.returncode == 2
    assert "is not writable" in result.stderr and "choose another --out" in result.stderr


def test_keyboard_without_a_terminal_says_so(tmp_path, config_file):
    result = fanvla(*record_args(tmp_path / "demos.zarr", config_file, "--keyboard", "terminal", teleop="keyboard"),
                    stdin=subprocess.DEVNULL, start_new_session=True)  # no controlling terminal, as in CI
    assert result.returncode == 2
    assert "the terminal keyboard needs a terminal" in result.stderr


def _read_until(fd: int, text: str, timeout_s: float = 60.0) -> str:
    seen, deadline = "", time.monotonic() + timeout_s
    while text not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {text!r}; output so far:\n{seen[-2000:]}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"the process closed its output before {text!r}:\n{seen[-2000:]}"
            seen += chunk.decode(errors="replace")
    return seen


def test_terminal_keyboard_records_an_episode_through_a_pty(tmp_path, config_file):
    """An operator at a terminal: Enter starts, keys move the arm in the (realtime) twin, n saves."""
    path = tmp_path / "demos.zarr"
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "fanvla", *record_args(path, config_file, "--keyboard",
                                                                             "terminal", teleop="keyboard")],
                               cwd=REPO_ROOT, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(slave)
    try:
        _read_until(process.stdout.fileno(), "press the start key")
        os.write(master, b"\r")
        time.sleep(0.5)
        for key in b"wwwwwwtttt":  # 6 steps forward, 4 up (8 mm each), a tick apart
            os.write(master, bytes([key]))
            time.sleep(0.15)
        os.write(master, b" ")  # close the gripper
        time.sleep(0.8)
        os.write(master, b"n")  # save
        output = _read_until(process.stdout.fileno(), "the store now holds 1 episodes")
        assert process.wait(timeout=30) == 0, output
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    with EpisodeStore.open(path) as store:
        episode, meta = store.read_episode(0), store.episode_meta(0)
    assert meta["teleop"].startswith("keyboard") and meta["backend"] == "sim" and meta["outcome"] == "completed"
    # A terminal reports presses, not releases: presses that reach the loop within one tick count as one step
    # (so auto-repeat never queues motion after a key is let go). How many of the 10 presses got a tick of their
    # own depends on the machine's load, so the test counts the steps the recording shows: at each tick the command
    # is the measured pose plus nothing or one 8 mm step, and the arm ends where those steps lead.
    offsets_mm = episode["command_tcp_pose"][:, :3] - episode["tcp_pose"][:, :3]
    steps = np.round(offsets_mm / 8.0)
    np.testing.assert_allclose(offsets_mm, 8.0 * steps, atol=0.5)
    assert set(steps.ravel().tolist()) <= {0.0, 1.0} and not steps[:, 1].any(), steps
    forward, up = int(steps[:, 0].sum()), int(steps[:, 2].sum())
    assert 1 <= forward <= 6 and 1 <= up <= 4, (forward, up)
    # Between presses the command is the measured pose, so a step the arm has not finished by the next tick ends
    # there: in the real-time twin on a loaded machine (physics behind the wall clock) a tap moves it less than
    # 8 mm. It always moves the pressed way, at least half a step per press, never past the steps.
    moved = episode["tcp_pose"][-1, :3] - episode["tcp_pose"][0, :3]
    for axis, count in ((0, forward), (2, up)):
        assert 4.0 * count <= moved[axis] <= 8.0 * count + 2.0, (moved, forward, up)
    assert abs(moved[1]) < 2.0, moved
    assert episode["command_gripper"][0] == 1.0 and episode["command_gripper"][-1] == 0.0
    assert episode["noop"].sum() > 0 and not episode["noop"].all()  # idle ticks are no-ops, key presses are not
    assert np.all(np.diff(episode["timestamp_s"]) > 0)
