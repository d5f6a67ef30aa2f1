"""A slow policy at the robot: the real-time twin (wall-clock physics, camera and control loop) with injected
latency, in each execution mode. The checks are the properties that must hold however loaded the machine is:
the arm is never held until the watchdog gives up on a policy that answers, no answer moves the arm twice or
after a newer one, nothing older than the bound moves it, and the watchdog still stops a dead server."""

from __future__ import annotations

import threading

import pytest

from eval_protocols.evaluation import sim_eval_overrides
from policy.agent import PolicyAgent, RemotePolicy
from policy.client import PolicyClient
from policy.inference import InferenceEngine
from policy.runner import ClosedLoopRunner
from robot.execution import ExecutionConfig, ExecutionMode
from robot.factory import open_robot
from robot.injected_latency import LatencySpec
from robot.runtime import EpisodeStatus
from tests.policy.latency_testing import STEP_MM, ConstantPolicy, TiledChunks
from tests.policy.server_testing import INSTRUCTION, build_gentle_model, running_server
from tests.robot.execution_testing import Keeper, assert_never_replayed, sent_steps

MODES = [ExecutionMode.SYNC, ExecutionMode.ASYNC, ExecutionMode.CHUNK]
LATENCY_MS = 150.0  # OpenVLA-7B on a workstation GPU answers at 4-6 Hz
CHUNK = 5


@pytest.fixture(scope="module")
def robot(hardware_config):
    config = hardware_config.with_overrides(sim_eval_overrides(hardware_config))
    with open_robot(config, "sim", seed=3, realtime=True) as robot:
        robot.scene = robot.twin.sample_scene()
        yield robot


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return InferenceEngine.load(build_gentle_model(tmp_path_factory.mktemp("gentle") / "gentle"), threads=1)


def runner_for(robot, policy, mode, keeper, latency_ms: float = LATENCY_MS, max_age_s: float | None = None):
    robot.twin.reset_scene(robot.scene)
    config = ExecutionConfig(mode, LatencySpec(latency_ms), max_age_s)
    return ClosedLoopRunner(robot, policy, subscribers=[keeper], execution=config)


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_policy_keeps_the_arm_moving_in_the_realtime_twin(robot, mode):
    keeper = Keeper()
    policy = ConstantPolicy(chunk=CHUNK if mode is ExecutionMode.CHUNK else 1)
    runner = runner_for(robot, policy, mode, keeper)
    x_start = robot.arm.state().tcp_pose[0]
    result = runner.run_episode(INSTRUCTION, max_duration_s=3.0)
    # The loop ran its whole time: the watchdog never had to stop a policy that was answering.
    assert result.status == EpisodeStatus.TIMEOUT, result.reason
    safety, period_s = robot.config.safety, 1.0 / robot.config.recording.rate_hz
    assert_never_replayed(keeper, period_s, safety.watchdog_hold_s, 0.2 * period_s)
    sent = sent_steps(keeper)
    # Ideal counts in 3 s: sync ~13 (150 ms + a period per answer), async ~20, chunk ~28; a loaded machine gets fewer.
    assert len(sent) >= 6, result.summary
    assert result.summary["answer_latency_p50_s"] >= LATENCY_MS / 1000
    assert robot.arm.state().tcp_pose[0] - x_start > 0.5 * STEP_MM * len(sent)  # every command moved the arm on


def test_chunk_execution_refuses_a_policy_of_single_actions(robot):
    runner = runner_for(robot, ConstantPolicy(chunk=1), ExecutionMode.CHUNK, Keeper())
    with pytest.raises(ValueError, match="predicts single actions"):
        runner.run_episode(INSTRUCTION, max_duration_s=1.0)
    assert not robot.arm.is_servoing


class StopServerAfter:
    """Stops the policy server (from another thread, as a crash would) once ``commands`` commands were sent."""

    def __init__(self, server, commands: int) -> None:
        self.server, self.commands, self.sent = server, commands, 0
        self.stopper: threading.Thread | None = None

    def on_episode_start(self, instruction: str) -> None:
        pass

    def on_step(self, step) -> None:
        self.sent += step.sent is not None
        if self.sent >= self.commands and self.stopper is None:
            self.stopper = threading.Thread(target=self.server.stop)
            self.stopper.start()

    def on_episode_end(self, result) -> None:
        pass


@pytest.mark.parametrize("mode", MODES)
def test_the_watchdog_stops_the_arm_when_a_slow_server_dies(robot, engine, mode):
    safety = robot.config.safety
    with running_server(engine, injected_latency=LatencySpec(LATENCY_MS)) as server:
        client = PolicyClient(server.url, timeout_s=5, retries=0)
        remote = RemotePolicy(client)
        policy = TiledChunks(remote, CHUNK) if mode is ExecutionMode.CHUNK else remote
        keeper, stopper = Keeper(), StopServerAfter(server, 3)
        # The server adds the latency; a generous age bound keeps a loaded machine's slow answers in play until the
        # server dies (what is tested here is the watchdog).
        runner = runner_for(robot, policy, mode, keeper, latency_ms=0.0, max_age_s=1.0)
        runner.loop.subscribers = [*runner.loop.subscribers, stopper]
        result = runner.run_episode(INSTRUCTION, max_duration_s=20.0)
        assert stopper.stopper is not None, f"fewer than 3 commands before the episode ended: {result.summary}"
        stopper.stopper.join(10)
        client.close()
    assert result.status == EpisodeStatus.ABORTED and "watchdog" in result.reason
    assert not robot.arm.is_servoing
    sent = sent_steps(keeper)
    assert len(sent) >= 3 and result.summary["policy_errors"] >= 1

    def applied_s(step) -> float:  # sync applies a tick's answer after waiting for it
        return step.observation.time_s + step.agent_info.get("exec_wait_s", 0.0)

    silent_s = applied_s(keeper.steps[-1]) - applied_s(sent[-1])
    assert safety.watchdog_stop_s - 1e-6 <= silent_s < safety.watchdog_stop_s + 2.0
    assert keeper.steps[-1].watchdog == "stop"
    assert all(s.sent is None for s in keeper.steps if s.observation.time_s > sent[-1].observation.time_s)


def test_a_policy_agent_turns_a_predicted_chunk_into_a_plan(robot):
    agent = PolicyAgent(ConstantPolicy(chunk=4), robot.clock, 0.35, expect_chunks=True)
    agent.reset(INSTRUCTION)
    frame, arm, gripper = robot.observe_parts()
    from robot.runtime import Observation

    output = agent.act(Observation(frame, arm, gripper, INSTRUCTION, 0, robot.clock.now_s()))
    poses = [output.command.tcp_pose, *(c.tcp_pose for c in output.plan)]
    assert len(poses) == 4 and output.info["action_chunk"].shape == (4, 7)
    for k, pose in enumerate(poses):
        assert pose[0] - arm.tcp_pose[0] == pytest.approx(STEP_MM * (k + 1), abs=1e-9)
    single = PolicyAgent(ConstantPolicy(chunk=1), robot.clock, 0.35, expect_chunks=True)
    with pytest.raises(ValueError, match="chunk execution needs a policy that predicts action chunks"):
        single.reset(INSTRUCTION)
