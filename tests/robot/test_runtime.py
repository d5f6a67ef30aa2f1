"""The shared control loop, driven in the lock-step twin through the real drivers."""

from __future__ import annotations

import numpy as np
import pytest

from robot.factory import open_robot
from robot.runtime import AgentOutput, ControlLoop, EpisodeStatus, Event, Observation, Step
from robot.safety import Command


class Collector:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.steps: list[Step] = []
        self.results = []

    def on_episode_start(self, instruction: str) -> None:
        self.started.append(instruction)

    def on_step(self, step: Step) -> None:
        self.steps.append(step)

    def on_episode_end(self, result) -> None:
        self.results.append(result)


class DescendAgent:
    """Moves the TCP 4 mm down per tick, then raises DONE; optionally goes silent or fails."""

    def __init__(self, ticks: int, silent_after: int | None = None, fail_after: int | None = None,
                 nan_at: int | None = None) -> None:
        self.ticks, self.silent_after, self.fail_after, self.nan_at = ticks, silent_after, fail_after, nan_at

    def reset(self, instruction: str) -> None:
        self.instruction = instruction

    def act(self, observation: Observation) -> AgentOutput:
        step = observation.step
        if self.fail_after is not None and step >= self.fail_after:
            raise ConnectionError("policy server unreachable")
        if self.silent_after is not None and step >= self.silent_after:
            return AgentOutput(None)
        target = observation.arm.tcp_pose.copy()
        target[2] -= 4.0
        if step == self.nan_at:
            target[0] = np.nan
        events = frozenset({Event.DONE}) if step + 1 >= self.ticks else frozenset()
        return AgentOutput(Command.to_pose(target, gripper=1.0), events, {"step": step})


@pytest.fixture()
def robot(hardware_config):
    with open_robot(hardware_config, "sim", seed=3) as robot:
        robot.twin.reset_scene()
        yield robot


def _loop(robot, collector: Collector) -> ControlLoop:
    safety = robot.config.safety
    return ControlLoop(robot, robot.config.recording.rate_hz, safety.watchdog_hold_s, safety.watchdog_stop_s,
                       [collector])


def test_episode_runs_in_simulated_time_and_reports_every_step(robot):
    collector = Collector()
    z_before = robot.arm.state().tcp_pose[2]
    t0 = robot.clock.now_s()
    result = _loop(robot, collector).run_episode(DescendAgent(ticks=10), "go down", max_duration_s=5.0)
    assert result.status == EpisodeStatus.COMPLETED and result.steps == 10
    assert collector.started == ["go down"] and collector.results == [result]
    assert [s.observation.step for s in collector.steps] == list(range(10))
    # ticks are exactly one period apart in the twin's clock, and frames are fresh at each tick
    times = np.array([s.observation.time_s for s in collector.steps])
    assert np.allclose(np.diff(times), 0.1, atol=1e-9) and times[0] >= t0
    assert all(s.observation.frame.color.shape == (480, 640, 3) for s in collector.steps)
    assert len({s.observation.frame.frame_number for s in collector.steps}) == 10
    assert all(s.sent is not None and s.watchdog == "ok" for s in collector.steps)
    assert robot.arm.state().tcp_pose[2] < z_before - 25.0  # ~36 mm commanded in total
    assert not robot.arm.is_servoing  # the loop always leaves servo mode


def test_silent_agent_makes_the_arm_hold_then_stops_the_episode(robot):
    collector = Collector()
    safety = robot.config.safety
    result = _loop(robot, collector).run_episode(DescendAgent(ticks=1000, silent_after=5), "x", max_duration_s=20.0)
    assert result.status == EpisodeStatus.ABORTED and "watchdog" in result.reason
    statuses = [s.watchdog for s in collector.steps]
    assert statuses[:5] == ["ok"] * 5 and "hold" in statuses and statuses[-1] == "stop"
    silent_s = collector.steps[-1].observation.time_s - collector.steps[4].observation.time_s
    assert safety.watchdog_stop_s <= silent_s <= safety.watchdog_stop_s + 0.11
    # nothing was sent while silent: the arm held, no stale command was replayed
    assert all(s.sent is None for s in collector.steps[5:])
    held = [s.observation.arm.joints_rad for s in collector.steps[7:]]
    assert np.max(np.abs(np.diff(held, axis=0))) < 1e-3


def test_failing_remote_agent_is_a_missing_command(robot):
    collector = Collector()
    result = _loop(robot, collector).run_episode(DescendAgent(ticks=1000, fail_after=3), "x", max_duration_s=20.0)
    assert result.status == EpisodeStatus.ABORTED
    assert "ConnectionError" in collector.steps[3].agent_info["agent_error"]


def test_nan_command_is_rejected_and_the_arm_holds(robot):
    collector = Collector()
    result = _loop(robot, collector).run_episode(DescendAgent(ticks=6, nan_at=2), "x", max_duration_s=5.0)
    assert result.status == EpisodeStatus.COMPLETED
    assert collector.steps[2].sent is None and collector.steps[3].sent is not None


class NaNAgent:
    """Answers every tick, always with a NaN target: the safety layer refuses each one."""

    def reset(self, instruction: str) -> None:
        pass

    def act(self, observation: Observation) -> AgentOutput:
        target = observation.arm.tcp_pose.copy()
        target[2] = np.nan
        return AgentOutput(Command.to_pose(target, gripper=1.0))


def test_an_agent_refused_by_the_safety_layer_is_stopped_and_the_reason_names_the_refusal(robot, caplog):
    collector = Collector()
    with caplog.at_level("WARNING", logger="robot.runtime"):
        result = _loop(robot, collector).run_episode(NaNAgent(), "x", max_duration_s=20.0)
    assert result.status == EpisodeStatus.ABORTED
    assert result.reason.startswith("watchdog: no fresh command; arm stopped (the agent answered; the safety layer")
    assert result.reason.endswith("rejected it: command contains NaN or inf)")
    assert all(s.sent is None and s.rejected_reasons for s in collector.steps)
    refusals = [r for r in caplog.records if "safety layer rejected" in r.getMessage()]
    assert len(refusals) == 1  # once per run of refusals, not once per tick


def test_a_silent_agent_is_not_reported_as_refused(robot):
    result = _loop(robot, Collector()).run_episode(DescendAgent(ticks=1000, silent_after=5), "x", max_duration_s=20.0)
    assert result.reason == "watchdog: no fresh command; arm stopped"


def test_timeout_when_the_agent_never_finishes(robot):
    collector = Collector()
    result = _loop(robot, collector).run_episode(DescendAgent(ticks=10_000), "x", max_duration_s=1.0)
    assert result.status == EpisodeStatus.TIMEOUT and result.steps == 10


def test_first_observation_is_a_frame_received_after_the_scene_reset(robot):
    """A teleported object must not reach the agent as the previous scene's last picture."""
    robot.camera.latest()  # a frame of the old scene is waiting
    robot.twin.reset_scene()
    reset_s = robot.clock.now_s()
    collector = Collector()
    _loop(robot, collector).run_episode(DescendAgent(ticks=2), "go down", max_duration_s=5.0)
    first = collector.steps[0].observation
    assert first.frame.received_s > reset_s
    assert first.time_s - reset_s < 0.2  # waited about one frame period, not more
