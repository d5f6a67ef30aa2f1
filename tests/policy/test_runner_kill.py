"""The policy server process is killed mid-episode: the arm holds at once and stops within the watchdog period,
the episode ends as aborted, and every step recorded up to the end is in the step log."""

from __future__ import annotations

import signal

import numpy as np

from collect.store import EpisodeStore
from policy.agent import RemotePolicy
from policy.client import PolicyClient
from policy.runner import ClosedLoopRunner
from policy.step_log import WATCHDOG_CODES, step_log_schema
from robot.factory import open_robot
from robot.runtime import EpisodeStatus
from tests.policy.server_testing import INSTRUCTION, build_gentle_model, serve_subprocess

KILL_AT_STEP = 4


class KillServerAt:
    """Sends SIGKILL to the server process right after step ``step`` was applied (no goodbye, no FIN from the app)."""

    def __init__(self, process, step: int) -> None:
        self.process, self.step = process, step
        self.killed_at_s: float | None = None

    def on_episode_start(self, instruction: str) -> None:
        pass

    def on_step(self, step) -> None:
        if step.observation.step == self.step:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
            self.killed_at_s = step.observation.time_s

    def on_episode_end(self, result) -> None:
        pass


def test_server_killed_mid_episode_stops_the_arm_and_keeps_the_log(hardware_config, tmp_path):
    safety = hardware_config.safety
    period_s = 1.0 / hardware_config.recording.rate_hz
    model_dir = build_gentle_model(tmp_path / "model")
    with serve_subprocess(model_dir) as (process, url), open_robot(hardware_config, "sim", seed=2) as robot, \
            PolicyClient(url, timeout_s=30, retries=1, backoff_s=0.01) as client:
        robot.twin.reset_scene()
        store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config,
                                                                                  robot.camera.intrinsics))
        killer = KillServerAt(process, KILL_AT_STEP)
        runner = ClosedLoopRunner(robot, RemotePolicy(client), step_log=store, subscribers=[killer])
        result = runner.run_episode(INSTRUCTION, max_duration_s=10.0, meta={"trial": 0})
        assert process.returncode == -signal.SIGKILL
        assert not robot.arm.is_servoing
        joint_speed = np.abs(robot.twin.joint_velocities())
        store.close()

    assert result.status == EpisodeStatus.ABORTED and "watchdog" in result.reason
    assert result.summary["policy_errors"] == result.steps - KILL_AT_STEP - 1  # every call after the kill failed
    assert float(joint_speed.max()) < 1e-3  # the arm stands still

    log = EpisodeStore.open(tmp_path / "log.zarr")
    meta = log.episode_meta(0)
    assert meta["status"] == "aborted" and meta["success"] is False and "watchdog" in meta["reason"]
    assert meta["frames"] == result.steps and meta["trial"] == 0  # every step up to the stop is saved
    episode = log.read_episode(0)
    alive, dead = slice(0, KILL_AT_STEP + 1), slice(KILL_AT_STEP + 1, None)
    assert episode["command_sent"][alive].all() and episode["action_received"][alive].all()
    assert not episode["command_sent"][dead].any() and not episode["action_received"][dead].any()
    assert np.isnan(episode["action"][dead]).all()  # nothing was sent after the kill: no stale action repeated
    assert episode["command_held"][dead].all()
    np.testing.assert_array_equal(episode["command_joints_rad"][dead], episode["joints_rad"][dead])
    assert np.isfinite(episode["policy_latency_s"]).all()  # the failed calls were timed too

    # watchdog: ok until watchdog_hold_s without a command, hold until watchdog_stop_s, then stop (the last step)
    silent_s = episode["timestamp_s"] - episode["timestamp_s"][KILL_AT_STEP]
    codes = episode["watchdog"]
    expected = np.where(silent_s >= safety.watchdog_hold_s - 1e-6, WATCHDOG_CODES["hold"], WATCHDOG_CODES["ok"])
    np.testing.assert_array_equal(codes[:-1], expected[:-1])
    assert codes[-1] == WATCHDOG_CODES["stop"]
    assert safety.watchdog_stop_s - 1e-6 <= silent_s[-1] <= safety.watchdog_stop_s + period_s + 0.01
    # from one tick after the last command on, the measured joints no longer move: the arm holds, then stops
    held = episode["joints_rad"][KILL_AT_STEP + 2:]
    assert np.abs(np.diff(held, axis=0)).max() < 1e-3
