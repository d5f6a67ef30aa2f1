"""Execution modes in the lock-step twin with injected latency: simulated time passes while the policy "thinks", so
every check here is exact and independent of the machine's speed (the real-time twin: tests/policy/
test_runner_realtime.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fanvla.config import CONTROLLER_CYCLE_S
from robot.execution import ExecutionConfig, ExecutionMode, RelativeStep
from robot.factory import open_robot
from robot.injected_latency import LatencySpec
from robot.interfaces import ArmState
from robot.runtime import AgentOutput, ControlLoop, EpisodeStatus
from robot.safety import Command
from robot.sim.fake_jkrc import TRACKING_LAG_CYCLES
from tests.robot.execution_testing import (
    STEP_MM,
    Keeper,
    StepAgent,
    assert_each_command_steps_from_the_measured_tcp,
    assert_never_replayed,
    sent_steps,
)

PERIOD_S, TOLERANCE_S = 0.1, 0.02  # recording.rate_hz = 10 and the loop's lateness tolerance (20 %)
LATENCY_S = 0.24  # 30 servo cycles of 8 ms: simulated time advances in whole cycles
MODES = [ExecutionMode.SYNC, ExecutionMode.ASYNC, ExecutionMode.CHUNK]


@pytest.fixture(scope="module")
def robot(hardware_config):
    config = hardware_config.with_overrides({"camera.depth.enabled": False, "camera.color.fps": 10})
    with open_robot(config, "sim", seed=4) as robot:
        robot.scene = robot.twin.sample_scene()  # every episode starts from the same scene
        yield robot


def run(robot, agent, mode, latency_ms: float = 0.0, duration_s: float = 3.0, max_age_s: float | None = None,
        blend_steps: int = 0, open_loop_steps: int | None = None, ensemble_decay: float | None = None):
    robot.twin.reset_scene(robot.scene)
    keeper = Keeper()
    safety = robot.config.safety
    execution = ExecutionConfig(mode, LatencySpec(latency_ms), max_age_s, chunk_blend_steps=blend_steps,
                                open_loop_steps=open_loop_steps, ensemble_decay=ensemble_decay)
    loop = ControlLoop(robot, 1.0 / PERIOD_S, safety.watchdog_hold_s, safety.watchdog_stop_s, [keeper],
                       execution=execution)
    result = loop.run_episode(agent, "move along x", max_duration_s=duration_s)
    return result, keeper


def test_sync_waits_for_each_answer_and_stretches_the_tick_while_the_arm_holds(robot):
    result, keeper = run(robot, StepAgent(), ExecutionMode.SYNC, latency_ms=LATENCY_S * 1000)
    assert result.status == EpisodeStatus.TIMEOUT and result.late_ticks == 0
    steps = keeper.steps
    assert all(step.sent is not None for step in steps)  # every tick gets the answer about its own observation
    assert [s.agent_info["exec_source_step"] for s in steps] == [s.observation.step for s in steps]
    waits = np.array([s.agent_info["exec_wait_s"] for s in steps])
    assert np.allclose(waits, LATENCY_S)  # the injected latency
    # The tick stretches by the wait (less the lateness tolerance), so each command gets a full period ...
    spacing = np.diff([s.observation.time_s for s in steps])
    assert (spacing >= LATENCY_S + PERIOD_S - TOLERANCE_S - 1e-9).all() and (spacing <= LATENCY_S + PERIOD_S).all()
    assert len(steps) == pytest.approx(3.0 / spacing.mean(), abs=1)
    # ... and the arm holds while the policy thinks: the next observation finds it at the target it was sent, short
    # of it only by what the stretched tick leaves of the period (the lateness tolerance) and by the drives' tracking
    # lag (the measured joints follow the command TRACKING_LAG_CYCLES controller cycles late: robot/sim/fake_jkrc.py).
    shortfall_mm = STEP_MM * (TOLERANCE_S + TRACKING_LAG_CYCLES * CONTROLLER_CYCLE_S) / PERIOD_S
    for sent, following in itertools.pairwise(steps):
        np.testing.assert_allclose(following.observation.arm.tcp_pose[:3], sent.sent.tcp_pose[:3], atol=shortfall_mm)
    assert_each_command_steps_from_the_measured_tcp(keeper)


def test_async_asks_while_the_arm_moves_and_applies_each_answer_once_from_where_the_arm_is(robot):
    agent = StepAgent()
    result, keeper = run(robot, agent, ExecutionMode.ASYNC, latency_ms=LATENCY_S * 1000)
    assert result.status == EpisodeStatus.TIMEOUT
    sent = sent_steps(keeper)
    assert_never_replayed(keeper, PERIOD_S, robot.config.safety.watchdog_hold_s, TOLERANCE_S)
    assert_each_command_steps_from_the_measured_tcp(keeper)
    # One command per answer, each as soon as it arrives (the first after the first answer).
    times = np.array([s.observation.time_s for s in sent])
    assert times[0] == pytest.approx(keeper.steps[0].observation.time_s + LATENCY_S)
    assert np.allclose(np.diff(times), LATENCY_S)
    ages = np.array([s.agent_info["exec_action_age_s"] for s in sent])
    assert np.allclose(ages, LATENCY_S)
    # The next question goes out at the tick its predecessor's answer moves the arm.
    assert [s.agent_info["exec_source_step"] for s in sent[1:]] == [s.observation.step for s in sent[:-1]]
    # Ticks between commands neither stop the arm's motion nor count as holds.
    between = [s for s in keeper.steps if s.in_motion]
    assert between and all(s.sent is None and s.observation.time_s < t + PERIOD_S for s, t in
                           zip(between, [max(t for t in times if t <= s.observation.time_s) for s in between],
                               strict=True))
    x = np.array([s.observation.arm.tcp_pose[0] for s in sent])
    assert (np.diff(x) > STEP_MM * 0.9).all()  # never pulled back to where an old answer was asked


def test_chunk_runs_steps_open_loop_and_switches_chunks_where_the_arm_is(robot):
    agent = StepAgent(chunk=6)
    result, keeper = run(robot, agent, ExecutionMode.CHUNK, latency_ms=LATENCY_S * 1000)
    assert result.status == EpisodeStatus.TIMEOUT
    assert_never_replayed(keeper, PERIOD_S, robot.config.safety.watchdog_hold_s, TOLERANCE_S)
    assert_each_command_steps_from_the_measured_tcp(keeper)
    sent = sent_steps(keeper)
    first = next(i for i, s in enumerate(keeper.steps) if s.sent is not None)
    # After the first chunk, a command every period: the next chunk always arrives before this one runs out.
    after = keeper.steps[first:]
    assert all(s.sent is not None for s in after if not s.in_motion)
    times = np.array([s.observation.time_s for s in sent])
    assert np.allclose(np.diff(times), PERIOD_S, atol=1e-6)
    # A new chunk starts at the step the arm has reached along it: one step per command sent since its observation.
    for step in sent:
        source, index = step.agent_info["exec_source_step"], step.agent_info["exec_chunk_index"]
        source_time = next(s.observation.time_s for s in keeper.steps if s.observation.step == source)
        assert index == sum(1 for s in sent if source_time - 1e-9 <= s.observation.time_s < step.observation.time_s)
    # Each request says which step of which chunk runs as its observation is taken.
    progress = [o.plan_progress for o in agent.asked]
    assert progress[0] is None and all(p is not None for p in progress[1:])


@pytest.mark.parametrize("latency_ms", [0.0, LATENCY_S * 1000])
def test_open_loop_chunks_ask_once_per_chunk_after_its_steps_were_sent(robot, latency_ms):
    """OpenVLA-OFT's setting: the K steps of a chunk run open loop, the next chunk is asked for after them."""
    agent = StepAgent(chunk=6)
    result, keeper = run(robot, agent, ExecutionMode.CHUNK, latency_ms=latency_ms, duration_s=3.0,
                         open_loop_steps=6)
    assert result.status == EpisodeStatus.TIMEOUT
    assert_never_replayed(keeper, PERIOD_S, robot.config.safety.watchdog_hold_s, TOLERANCE_S)
    assert_each_command_steps_from_the_measured_tcp(keeper)
    sent = sent_steps(keeper)
    indices = [s.agent_info["exec_chunk_index"] for s in sent]
    assert indices == [i % 6 for i in range(len(indices))]  # every chunk runs whole, from its first step
    # Each request is the tick after the chunk before it has sent its last step (the first: the episode's start).
    asked = [o.step for o in agent.asked]
    last_steps = [s.observation.step for s in sent if s.agent_info["exec_chunk_index"] == 5]
    assert asked[0] == 0 and asked[1:] == [step + 1 for step in last_steps][:len(asked) - 1]
    if latency_ms == 0:  # lock-step: the answer comes at once, a command every tick, 30 ticks, 5 requests
        assert len(keeper.steps) == 30 and all(s.sent is not None for s in keeper.steps) and len(asked) == 5
    else:  # the arm holds while the next chunk is computed and runs it as it arrives: K periods + the latency each
        times = [s.observation.time_s for s in sent if s.agent_info["exec_chunk_index"] == 0]
        assert len(times) >= 3 and np.allclose(np.diff(times), 6 * PERIOD_S + LATENCY_S)


class GrowingSteps:
    """Chunks of 6 equal x steps; the n-th answer's steps are n + 1 mm long."""

    def reset(self, instruction: str) -> None:
        self.answers = 0

    def act(self, observation) -> AgentOutput:
        self.answers += 1
        pose, step_mm = observation.arm.tcp_pose, float(self.answers)
        commands = [Command.to_pose(pose + np.array([step_mm * (k + 1), 0, 0, 0, 0, 0]), 1.0) for k in range(6)]
        return AgentOutput(commands[0], info={"step_mm": step_mm}, plan=tuple(commands[1:]))


def test_a_new_chunk_can_be_cross_faded_into_the_old_one(robot):
    _, keeper = run(robot, GrowingSteps(), ExecutionMode.CHUNK, latency_ms=LATENCY_S * 1000, blend_steps=2)
    sent = sent_steps(keeper)
    moves = [float(s.sent.tcp_pose[0] - s.observation.arm.tcp_pose[0]) for s in sent]
    sources = [s.agent_info["exec_source_step"] for s in sent]
    size = {s.agent_info["exec_source_step"]: s.agent_info["step_mm"] for s in sent if "step_mm" in s.agent_info}
    clamped = [s.sent.clamped for s in sent]  # a clamped command's move is the safety layer's, not the blend's
    switches = [i for i in range(1, len(sent) - 1) if sources[i] != sources[i - 1] and sources[i + 1] == sources[i]
                and not (clamped[i] or clamped[i + 1])]
    assert len(switches) >= 3
    for i in switches:  # 1/3 and 2/3 of the new chunk's step over the first two steps after a switch ...
        old, new = size[sources[i - 1]], size[sources[i]]
        assert moves[i] == pytest.approx(old + (new - old) / 3, abs=1e-3)
        assert moves[i + 1] == pytest.approx(old + 2 * (new - old) / 3, abs=1e-3) or \
            moves[i + 1] == pytest.approx(new, abs=1e-3)  # ... while the old chunk has steps left
    assert any(moves[i + 1] == pytest.approx(size[sources[i - 1]] + 2 * (size[sources[i]] - size[sources[i - 1]]) / 3,
                                             abs=1e-3) for i in switches)
    unblended = [i for i in range(2, len(sent)) if sources[i] == sources[i - 1] == sources[i - 2] and not clamped[i]]
    assert unblended and all(moves[i] == pytest.approx(size[sources[i]], abs=1e-3) for i in unblended)


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_temporal_ensembling_runs_the_weighted_mean_of_every_plan_for_the_tick(robot, decay):
    """Asked every tick, the n-th answer planning 6 steps of n mm: tick t runs the mean of the steps the chunks of
    ticks t-5 .. t planned for it, weighted exp(-decay * j) from the oldest (ACT's temporal ensembling)."""
    _, keeper = run(robot, GrowingSteps(), ExecutionMode.CHUNK, duration_s=1.5, ensemble_decay=decay)
    sent = sent_steps(keeper)
    assert len(sent) == len(keeper.steps) == 15
    for step in sent:
        tick = step.observation.step
        sizes = np.arange(max(0, tick - 5), tick + 1) + 1.0  # the answer asked at tick s has steps of s + 1 mm
        weights = np.exp(-decay * np.arange(len(sizes)))
        expected = float(np.dot(weights, sizes) / weights.sum())
        assert step.agent_info["exec_ensemble_size"] == len(sizes)
        assert step.agent_info["exec_source_step"] == tick and step.agent_info["exec_chunk_index"] == 0
        if not step.sent.clamped:
            assert float(step.sent.tcp_pose[0] - step.observation.arm.tcp_pose[0]) == pytest.approx(expected, abs=1e-3)
    assert sum(not s.sent.clamped for s in sent) >= 12


def test_temporal_ensembling_with_latency_steps_from_the_measured_state(robot):
    agent = StepAgent(chunk=6)
    result, keeper = run(robot, agent, ExecutionMode.CHUNK, latency_ms=LATENCY_S * 1000, ensemble_decay=0.1)
    assert result.status == EpisodeStatus.TIMEOUT
    assert_each_command_steps_from_the_measured_tcp(keeper)  # every plan's step is one STEP_MM: so is their mean
    sent = sent_steps(keeper)
    first = next(i for i, s in enumerate(keeper.steps) if s.sent is not None)
    assert all(s.sent is not None for s in keeper.steps[first:] if not s.in_motion)  # a command every period
    assert max(s.agent_info["exec_ensemble_size"] for s in sent) >= 2  # overlapping chunks were averaged
    for step in sent:  # no plan's step is used past the age bound
        assert step.agent_info["exec_action_age_s"] - step.agent_info["exec_chunk_index"] * PERIOD_S <= \
            robot.config.safety.watchdog_hold_s + 1e-9


@pytest.mark.parametrize("mode", MODES)
def test_without_latency_every_mode_is_the_lock_step_loop(robot, mode):
    _, sync = run(robot, StepAgent(), ExecutionMode.SYNC, duration_s=1.5)
    _, other = run(robot, StepAgent(chunk=4 if mode is ExecutionMode.CHUNK else 1), mode, duration_s=1.5)
    times = [s.observation.time_s - sync.steps[0].observation.time_s for s in sync.steps]
    assert [s.observation.time_s - other.steps[0].observation.time_s for s in other.steps] == pytest.approx(times)
    for a, b in zip(sync.steps, other.steps, strict=True):
        np.testing.assert_allclose(b.sent.joints_rad, a.sent.joints_rad, atol=1e-9)
        assert b.agent_info["exec_source_step"] == b.observation.step and b.agent_info["exec_chunk_index"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_answers_older_than_the_bound_never_move_the_arm_and_the_watchdog_stops_it(robot, mode):
    safety = robot.config.safety
    result, keeper = run(robot, StepAgent(chunk=3 if mode is ExecutionMode.CHUNK else 1), mode, latency_ms=300,
                         max_age_s=0.2, duration_s=10.0)
    assert not sent_steps(keeper)
    assert result.status == EpisodeStatus.ABORTED and "watchdog" in result.reason
    assert result.duration_s == pytest.approx(safety.watchdog_stop_s, abs=PERIOD_S + 0.3)
    assert any(s.agent_info.get("stale") for s in keeper.steps)  # they arrived, and were dropped


@pytest.mark.parametrize("mode", MODES)
def test_the_watchdog_still_stops_an_agent_that_died(robot, mode):
    safety = robot.config.safety
    agent = StepAgent(chunk=3 if mode is ExecutionMode.CHUNK else 1, dead_after=5)
    result, keeper = run(robot, agent, mode, latency_ms=150, duration_s=20.0)
    assert result.status == EpisodeStatus.ABORTED and "watchdog" in result.reason

    def applied_s(step) -> float:  # sync applies a tick's answer after waiting for it
        return step.observation.time_s + step.agent_info.get("exec_wait_s", 0.0)

    last_command_s = applied_s(sent_steps(keeper)[-1])
    end_s = applied_s(keeper.steps[-1])
    assert safety.watchdog_stop_s - 1e-6 <= end_s - last_command_s <= safety.watchdog_stop_s + PERIOD_S + 1e-6
    held = [s for s in keeper.steps if s.observation.time_s > last_command_s and not s.in_motion]
    assert held and all(s.sent is None for s in held)
    assert [s.watchdog for s in held][-1] == "stop"
    assert any("ConnectionRefusedError" in str(s.agent_info.get("agent_error")) for s in keeper.steps)


def test_a_sync_wait_never_outlasts_the_watchdog(robot):
    safety = robot.config.safety
    result, keeper = run(robot, StepAgent(), ExecutionMode.SYNC, latency_ms=5000, duration_s=20.0)
    assert result.status == EpisodeStatus.ABORTED and not sent_steps(keeper)
    # One tick: it waited until the watchdog's stop time (the watchdog runs from the episode start), not 5 s.
    assert len(keeper.steps) == 1 and keeper.steps[0].watchdog == "stop"
    assert 1.0 < keeper.steps[0].agent_info["exec_wait_s"] <= safety.watchdog_stop_s


def test_relative_steps_replay_a_plan_from_another_state():
    start = ArmState(np.zeros(6), np.array([300.0, 0.0, 200.0, np.pi, 0.0, 0.3]), 0.0)
    plan = [Command.to_pose([300.0 + 5 * k, 2.0 * k, 200.0 - k, np.pi, 0.0, 0.3 + 0.01 * k], 0.0) for k in (1, 2, 3)]
    steps = RelativeStep.chain(AgentOutput(plan[0], plan=tuple(plan[1:])), start)
    assert [s.gripper for s in steps] == [0.0] * 3
    np.testing.assert_allclose(steps[1].motion[:3], [5.0, 2.0, -1.0])
    elsewhere = ArmState(np.zeros(6), np.array([250.0, 10.0, 150.0, np.pi, 0.0, 0.3]), 0.0)
    np.testing.assert_allclose(steps[0].command_from(elsewhere).tcp_pose,
                               [255.0, 12.0, 149.0, np.pi, 0.0, 0.31], atol=1e-9)
    joints = ArmState(np.full(6, 0.1), start.tcp_pose, 0.0)
    joint_steps = RelativeStep.chain(AgentOutput(Command.to_joints(np.full(6, 0.2), 1.0)), joints)
    np.testing.assert_allclose(joint_steps[0].command_from(ArmState(np.zeros(6), start.tcp_pose, 0.0)).joints_rad,
                               np.full(6, 0.1))
    with pytest.raises(ValueError, match="mixes"):
        RelativeStep.chain(AgentOutput(plan[0], plan=(Command.to_joints(np.zeros(6), 1.0),)), start)
    half = steps[1].blended(steps[0], 0.5)
    np.testing.assert_allclose(half.motion, (steps[0].motion + steps[1].motion) / 2)


def test_execution_config_refuses_bad_values():
    with pytest.raises(ValueError):
        ExecutionConfig("sideways")
    with pytest.raises(ValueError, match="max_action_age_s"):
        ExecutionConfig(ExecutionMode.ASYNC, max_action_age_s=0.0)
    assert ExecutionConfig("chunk", LatencySpec(150, 30)).describe(0.35) == {
        "mode": "chunk", "policy_latency_ms": "150+-30", "max_action_age_s": 0.35, "chunk_blend_steps": 0}
    assert ExecutionConfig("chunk", open_loop_steps=8).describe(0.35)["open_loop_steps"] == 8
    with pytest.raises(ValueError, match="open_loop_steps"):
        ExecutionConfig("chunk", open_loop_steps=0)
    with pytest.raises(ValueError, match="settings of chunk execution"):
        ExecutionConfig("sync", ensemble_decay=0.1)
    with pytest.raises(ValueError, match="excludes open_loop_steps"):
        ExecutionConfig("chunk", ensemble_decay=0.1, open_loop_steps=8)
    with pytest.raises(ValueError, match="ensemble_decay must be >= 0"):
        ExecutionConfig("chunk", ensemble_decay=-1.0)
    assert ExecutionConfig("chunk", ensemble_decay=0.01).describe(0.35)["ensemble_decay"] == 0.01
