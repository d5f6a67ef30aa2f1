"""Latency measured and stored: `fanvla robot latency` on the twin, the file next to hardware.yaml, each store's
metadata (recording session and policy step log) and the per-step delays the step log carries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from collect.session import RecordingSession, SessionOptions
from collect.store import EpisodeStore
from fanvla.cli import main
from fanvla.config import load_hardware_config
from policy.runner import EpisodeRunner
from policy.step_log import step_log_schema
from robot import latency
from robot.execution import ExecutionConfig, ExecutionMode
from robot.factory import open_robot
from robot.injected_latency import LatencySpec
from robot.interfaces import CameraFrame
from robot.runtime import AgentOutput, Observation
from robot.safety import Command
from robot.sim.fake_jkrc import TRACKING_LAG_CYCLES
from tests.collect.record_testing import small_config, write_config
from tests.robot.execution_testing import StepAgent

CYCLE_S = 0.008


@pytest.fixture(scope="module")
def measured_config(tmp_path_factory):
    """A hardware.yaml in a temporary folder, with `fanvla robot latency --backend sim` run next to it."""
    folder = tmp_path_factory.mktemp("lab")
    path = write_config(folder / "hardware.yaml", small_config())
    assert main(["robot", "latency", "--backend", "sim", "--config", str(path), "--trials", "4", "--frames", "12",
                 "--json"]) == 0
    return load_hardware_config(path)


def test_latency_command_measures_the_twin_and_saves_next_to_hardware_yaml(measured_config):
    path = latency.latency_path(measured_config)
    assert path == Path(measured_config.source_path).with_name("robot_latency.json") and path.is_file()
    result = json.loads(path.read_text())["backends"]["sim"]
    arm, camera = result["arm"], result["camera"]
    # servo pickup at the next 8 ms cycle + the drives' tracking lag: what the fake models, measured through the driver
    assert arm["command_to_motion_s"]["samples"] == 4 and arm["measured_state"] == "actual"
    assert arm["command_to_motion_s"]["median"] == pytest.approx((TRACKING_LAG_CYCLES + 1) * CYCLE_S, abs=1e-9)
    assert camera["timestamp_domains"] == ["global_time"] and camera["capture_to_host_s"]["samples"] == 12
    assert camera["capture_to_host_s"]["max"] == 0.0  # lock-step: received at the simulated instant of capture
    assert result["sdk"]["version"].startswith("2.2") and result["sdk"]["step_num"] == 1


def test_an_sdk_reporting_the_command_gives_a_flagged_lower_bound(hardware_config):
    from robot.jaka import JakaArm
    from robot.sim.fake_jkrc import make_jkrc
    from robot.sim.twin import Twin

    with Twin(hardware_config, realtime=False) as twin, \
            JakaArm(hardware_config, sdk=make_jkrc(twin, "2.1"), clock=twin.clock) as arm:
        result = latency.measure_arm(arm, twin.clock, trials=2)
    assert result["measured_state"] == "possibly the command" and "lower bound" in result["warning"]
    assert result["command_to_motion_s"]["median"] == pytest.approx(CYCLE_S, abs=1e-9)  # the echo, not the arm


def test_other_backends_are_kept_and_a_bad_file_is_ignored_with_a_warning(tmp_path, caplog):
    config = load_hardware_config(write_config(tmp_path / "hardware.yaml", small_config()))
    path = latency.latency_path(config)
    latency.save(path, {"backend": "real", "arm": {"command_to_motion_s": {"median": 0.05}}})
    latency.save(path, {"backend": "sim", "arm": {"command_to_motion_s": {"median": 0.02}}})
    assert latency.load(config, "real")["arm"]["command_to_motion_s"]["median"] == 0.05
    assert latency.load(config, "sim")["arm"]["command_to_motion_s"]["median"] == 0.02
    path.write_text("{not json")
    assert latency.load(config, "real") is None and "not a readable latency file" in caplog.text


def test_step_timing_combines_the_step_with_the_calibration():
    frame = CameraFrame(np.zeros((2, 2, 3), np.uint8), timestamp_s=9.95, frame_number=1, received_s=10.0,
                        metadata={"capture_to_host_s": 0.03})
    calibration = {"arm": {"command_to_motion_s": {"median": 0.024}}, "camera": {"capture_to_host_s": {"median": 0.05}}}
    timing = latency.step_timing(frame, observed_s=10.01, sent_s=10.04, latency=calibration)
    assert timing == pytest.approx({"capture_to_observation_s": 0.04, "observation_to_command_s": 0.03,
                                    "command_to_motion_s": 0.024})
    no_stamp = CameraFrame(frame.color, 0.0, 1, received_s=10.0)  # a hardware_clock frame: the calibration is used
    held = latency.step_timing(no_stamp, observed_s=10.01, sent_s=math.nan, latency=calibration)
    assert held["capture_to_observation_s"] == pytest.approx(0.06)
    assert math.isnan(held["observation_to_command_s"]) and math.isnan(held["command_to_motion_s"])
    assert all(math.isnan(v) for k, v in latency.step_timing(no_stamp, 10.0, 10.0, None).items()
               if k != "observation_to_command_s")


def test_recordings_store_the_sdk_the_calls_and_the_latency(measured_config, tmp_path):
    options = SessionOptions(backend="sim", teleop="scripted", episodes=1, store=tmp_path / "demos.zarr", seed=2)
    RecordingSession(measured_config, options).run()
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        info = store.episode_meta(0)["hardware_info"]
    assert info["arm"]["version"].startswith("2.2") and info["arm"]["measured_state"] == "actual"
    assert info["arm"]["joints_call"] == "get_actual_joint_position" and info["arm"]["servo_call"] == "servo_j"
    assert info["camera"]["timestamp_domain"] == "global_time"
    assert info["latency"]["arm"]["command_to_motion_s"]["median"] == pytest.approx(0.024)


class Nudge:
    """Moves the TCP down a little for four ticks, then says nothing (the loop holds)."""

    def reset(self, instruction: str) -> None:
        pass

    def act(self, observation: Observation) -> AgentOutput:
        if observation.step >= 4:
            return AgentOutput(None)
        target = observation.arm.tcp_pose.copy()
        target[2] -= 3.0
        return AgentOutput(Command.to_pose(target, gripper=1.0))


def test_the_policy_step_log_carries_the_per_step_delays(measured_config, tmp_path):
    with open_robot(measured_config, "sim", seed=3) as robot:
        robot.twin.reset_scene()
        schema = step_log_schema(measured_config, robot.camera.intrinsics)
        with EpisodeStore.create(tmp_path / "trials.zarr", schema) as store:
            runner = EpisodeRunner(robot, Nudge(), "nudge", step_log=store)
            runner.run_episode("nudge", max_duration_s=0.6)
    with EpisodeStore.open(tmp_path / "trials.zarr") as store:
        rows = store.read_episode(0)
        meta = store.episode_meta(0)
    sent = rows["command_sent"]
    assert sent[:4].all() and not sent[4:].any()
    np.testing.assert_allclose(rows["command_to_motion_s"][:4], 0.024)
    assert np.isnan(rows["command_to_motion_s"][4:]).all() and np.isnan(rows["observation_to_command_s"][4:]).all()
    np.testing.assert_array_equal(rows["observation_to_command_s"][:4], 0.0)  # lock-step: the agent takes no time
    age = rows["capture_to_observation_s"]
    assert np.all((age >= 0) & (age <= 1 / measured_config.camera.color.fps + CYCLE_S + 1e-9))
    assert meta["hardware_info"]["latency"]["arm"]["command_to_motion_s"]["median"] == pytest.approx(0.024)


def test_the_step_log_carries_the_delays_and_the_execution_together(measured_config, tmp_path):
    """Async execution with injected latency (robot/injected_latency.py) on a measured set-up: each row has the
    step's measured delays and the execution's keys, and they agree on which ticks sent a command."""
    injected_s = 0.24  # 30 controller cycles: simulated time advances in whole cycles
    execution = ExecutionConfig(ExecutionMode.ASYNC, LatencySpec(injected_s * 1000))
    with open_robot(measured_config, "sim", seed=3) as robot:
        robot.twin.reset_scene()
        schema = step_log_schema(measured_config, robot.camera.intrinsics)
        with EpisodeStore.create(tmp_path / "trials.zarr", schema) as store:
            EpisodeRunner(robot, StepAgent(), "steps", step_log=store, execution=execution).run_episode(
                "move along x", max_duration_s=1.5)
    with EpisodeStore.open(tmp_path / "trials.zarr") as store:
        rows = store.read_episode(0)
        meta = store.episode_meta(0)
    sent, between = rows["command_sent"], rows["exec_in_motion"]
    assert sent.sum() >= 4 and between.any() and (~sent & ~between).any()  # commands, ticks between them, holds
    # A command goes out the tick its answer arrives (lock-step: the agent ran while the arm moved, so no time
    # passes between this tick's observation and the command), planned from an observation injected_s old.
    np.testing.assert_array_equal(rows["observation_to_command_s"][sent], 0.0)
    np.testing.assert_allclose(rows["command_to_motion_s"][sent], 0.024)
    np.testing.assert_allclose(rows["exec_action_age_s"][sent], injected_s, atol=1e-9)
    assert (rows["exec_source_step"][sent] < np.flatnonzero(sent)).all()
    # No command at a tick (between commands or held): no command delays, whatever the execution did.
    for key in ("observation_to_command_s", "command_to_motion_s"):
        assert np.isnan(rows[key][~sent]).all(), key
    assert np.isfinite(rows["capture_to_observation_s"]).all()
    injected = rows["exec_injected_latency_s"]
    np.testing.assert_allclose(injected[np.isfinite(injected)], injected_s)
    assert meta["execution"]["mode"] == "async" and meta["execution"]["policy_latency_ms"] == "240"
    assert meta["hardware_info"]["latency"]["arm"]["command_to_motion_s"]["median"] == pytest.approx(0.024)
