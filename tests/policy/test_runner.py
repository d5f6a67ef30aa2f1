"""The closed-loop runner in the twin: policy (remote or in-process) -> safety -> arm, every step logged."""

from __future__ import annotations

import numpy as np
import pytest

from collect.store import EpisodeStore
from policy.action_space import command_from_action
from policy.agent import LocalPolicy, PolicyAgent, PolicyChangedError, PolicySpec, RemotePolicy
from policy.client import PolicyClient
from policy.inference import InferenceEngine
from policy.runner import ClosedLoopRunner
from policy.step_log import POLICY_STEP_KEYS, step_log_schema
from robot.clock import RealClock
from robot.factory import open_robot
from robot.frames import apply_pose_delta
from robot.interfaces import ArmState, CameraFrame, GripperState
from robot.runtime import EpisodeStatus, Observation
from tests.policy.server_testing import INSTRUCTION, build_gentle_model, rgb, running_server, tcp_listener


@pytest.fixture(scope="module")
def gentle_model_dir(tmp_path_factory):
    return build_gentle_model(tmp_path_factory.mktemp("gentle") / "gentle")


@pytest.fixture(scope="module")
def engine(gentle_model_dir):
    return InferenceEngine.load(gentle_model_dir, threads=1)


@pytest.fixture()
def robot(hardware_config):
    with open_robot(hardware_config, "sim", seed=5) as robot:
        robot.twin.reset_scene()
        yield robot


def test_remote_episode_is_driven_by_the_served_policy_and_fully_logged(engine, robot, tmp_path):
    store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config, robot.camera.intrinsics))
    tcp_start = robot.arm.state().tcp_pose.copy()
    with running_server(engine) as server, PolicyClient(server.url, timeout_s=30) as client:
        runner = ClosedLoopRunner(robot, RemotePolicy(client), step_log=store, session_meta={"evaluation": "t"})
        result = runner.run_episode(INSTRUCTION, max_duration_s=1.2, is_success=robot.twin.task_success,
                                    meta={"trial": 4})
    assert result.status == EpisodeStatus.TIMEOUT and result.steps == 12 and result.log_index == 0
    assert result.checkpoint_id == engine.checkpoint_id
    assert result.summary["held_steps"] == 0 and result.summary["policy_errors"] == 0
    assert result.summary["latency_p50_s"] > 0
    store.close()

    log = EpisodeStore.open(tmp_path / "log.zarr")
    meta = log.episode_meta(0)
    assert meta["frames"] == 12 and meta["status"] == "timeout" and meta["success"] is False
    assert meta["trial"] == 4 and meta["evaluation"] == "t" and meta["backend"] == "sim"
    assert meta["checkpoint_id"] == engine.checkpoint_id and meta["action_space"] == "ee_delta"
    assert meta["unnorm_key"] == "jaka_sim" and meta["rate_hz"] == 10.0 and meta["instruction"] == INSTRUCTION
    episode = log.read_episode(0)
    assert set(POLICY_STEP_KEYS) <= set(episode)
    assert episode["command_sent"].all() and episode["action_received"].all() and (episode["watchdog"] == 0).all()
    assert np.isfinite(episode["policy_latency_s"]).all() and np.isfinite(episode["server_total_s"]).all()
    assert (episode["server_inference_s"] <= episode["server_total_s"]).all()
    assert np.allclose(np.diff(episode["timestamp_s"]), 0.1)
    for step in range(12):
        # the logged (lossless) frame gives the logged action: the log replays exactly
        expected = engine.predict([episode["color"][step]], [INSTRUCTION]).actions[0]
        np.testing.assert_array_equal(episode["action"][step], expected)
        state = ArmState(episode["joints_rad"][step], episode["tcp_pose"][step], 0.0)
        command = command_from_action(episode["action"][step], state, "ee_delta")
        assert episode["command_gripper"][step] == pytest.approx(command.gripper)
        if not episode["command_clamped"][step]:  # what the arm was sent is the policy's target
            np.testing.assert_allclose(episode["command_tcp_pose"][step],
                                       apply_pose_delta(episode["tcp_pose"][step], episode["action"][step][:6]),
                                       atol=0.01)
    assert (~episode["command_clamped"]).sum() >= 6
    assert np.linalg.norm(robot.arm.state().tcp_pose[:3] - tcp_start[:3]) > 1.0  # the policy moved the arm
    assert not robot.arm.is_servoing


def test_in_process_policy_with_video(engine, robot, tmp_path):
    store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config, robot.camera.intrinsics))
    runner = ClosedLoopRunner(robot, LocalPolicy(engine), step_log=store, video_dir=tmp_path / "videos")
    first = runner.run_episode(INSTRUCTION, max_duration_s=0.5)
    second = runner.run_episode("open the gripper", max_duration_s=0.3)
    assert (first.log_index, second.log_index) == (0, 1) and store.num_frames == 5 + 3
    assert first.video_path.is_file() and first.video_path.stat().st_size > 1000
    episode = store.read_episode(1)
    assert np.isnan(episode["server_total_s"]).all() and np.isfinite(episode["server_inference_s"]).all()
    assert store.episode_meta(1)["instruction"] == "open the gripper"
    store.close()


def test_a_policy_swapped_mid_episode_aborts_it_and_the_log_is_kept(engine, robot, tmp_path, gentle_model_dir):
    other = InferenceEngine.load(build_gentle_model(tmp_path / "other", seed=11), threads=1)
    store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config, robot.camera.intrinsics))
    with running_server(engine) as first:
        port = first.port

        class SwapAtStep3:
            """Restarts the server on the same port with another checkpoint (an operator mistake)."""

            def on_episode_start(self, instruction: str) -> None:
                self.swapped = None

            def on_step(self, step) -> None:
                if step.observation.step == 2:
                    first.stop()
                    from policy.server import PolicyServer, create_app

                    self.swapped = PolicyServer(create_app(other), port=port).start()

            def on_episode_end(self, result) -> None:
                pass

        swap = SwapAtStep3()
        with PolicyClient(first.url, timeout_s=30) as client:
            runner = ClosedLoopRunner(robot, RemotePolicy(client), step_log=store, subscribers=[swap])
            try:
                with pytest.raises(PolicyChangedError, match="episode started with"):
                    runner.run_episode(INSTRUCTION, max_duration_s=2.0)
            finally:
                if swap.swapped is not None:
                    swap.swapped.stop()
    meta = store.episode_meta(0)
    assert meta["status"] == "aborted" and "PolicyChangedError" in meta["reason"] and meta["frames"] == 3
    assert not robot.arm.is_servoing
    store.close()


def observation_at(time_s: float) -> Observation:
    frame = CameraFrame(rgb(48, 64), time_s, 1, time_s)
    arm = ArmState(np.zeros(6), np.array([300.0, 0, 200, np.pi, 0, 0]), time_s)
    return Observation(frame, arm, GripperState(1.0, None, time_s), INSTRUCTION, 0, time_s)


def test_late_answers_become_missing_commands_on_a_real_clock(engine):
    clock = RealClock()
    with running_server(engine) as server, PolicyClient(server.url) as client:
        agent = PolicyAgent(RemotePolicy(client), clock, max_action_age_s=10.0)  # generous: a loaded CI machine
        agent.reset(INSTRUCTION)
        fresh = agent.act(observation_at(clock.now_s()))
        assert fresh.command is not None and 0 < fresh.info["action_age_s"] < 10.0
        old = agent.act(observation_at(clock.now_s() - 11.0))  # its time is up before asking
        assert old.command is None and old.info["stale"] is True and "action" not in old.info
        agent.max_action_age_s = 1e-4  # any answer now arrives too late: computed, logged, never sent
        late = agent.act(observation_at(clock.now_s()))
        assert late.command is None and ("agent_error" in late.info or late.info.get("stale") is True)
    with tcp_listener("silent") as (url, _):
        agent = PolicyAgent(RemotePolicy(PolicyClient(url)), clock, max_action_age_s=0.25)
        agent.spec = PolicySpec("ee_delta", "x", "jaka_sim")  # reset() would ask the silent server for it
        started = clock.now_s()
        silent = agent.act(observation_at(started))
        assert silent.command is None and "PolicyTimeoutError" in silent.info["agent_error"]
        assert clock.now_s() - started < 0.25 + 0.5  # the request never outlives the action's allowed age
