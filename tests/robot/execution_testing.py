"""Agents and checks for the execution-mode tests: agents whose every command moves the TCP by a known step, so
that a log shows exactly which answer (and chunk step) moved the arm, from where, and when."""

from __future__ import annotations

import numpy as np

from robot.runtime import AgentOutput, Observation
from robot.safety import Command

STEP_MM = 3.0  # x step of every command: 30 mm/s at 10 Hz, far inside the safety limits


def moved(pose, steps: int = 1) -> np.ndarray:
    target = np.asarray(pose, dtype=np.float64).copy()
    target[0] += STEP_MM * steps
    return target


class StepAgent:
    """Answers every observation with "+STEP_MM in x from the measured TCP" (and, with ``chunk`` > 1, a plan of
    ``chunk - 1`` more such steps). Remembers what it was asked; ``dead_after`` answers, it fails like a server
    that went away."""

    def __init__(self, chunk: int = 1, dead_after: int | None = None) -> None:
        self.chunk, self.dead_after = chunk, dead_after
        self.asked: list[Observation] = []

    def reset(self, instruction: str) -> None:
        self.asked = []

    def act(self, observation: Observation) -> AgentOutput:
        if self.dead_after is not None and len(self.asked) >= self.dead_after:
            raise ConnectionRefusedError("the policy server went away")
        self.asked.append(observation)
        pose = observation.arm.tcp_pose
        commands = [Command.to_pose(moved(pose, k + 1), 1.0) for k in range(self.chunk)]
        return AgentOutput(commands[0], info={"asked_step": observation.step}, plan=tuple(commands[1:]))


def sent_steps(keeper) -> list:
    return [step for step in keeper.steps if step.sent is not None]


def assert_never_replayed(keeper, period_s: float, max_age_s: float, tolerance_s: float) -> None:
    """Every command comes from a distinct (answer, chunk step), in order, in time, at most one a period."""
    sent = sent_steps(keeper)
    used = [(s.agent_info["exec_source_step"], s.agent_info["exec_chunk_index"]) for s in sent]
    assert len(set(used)) == len(used), f"an answer moved the arm twice: {used}"
    assert used == sorted(used), f"an older answer moved the arm after a newer one: {used}"
    for step in sent:
        info = step.agent_info
        assert info["exec_action_age_s"] - info["exec_chunk_index"] * period_s <= max_age_s + 1e-9, info
        assert info["exec_source_step"] <= step.observation.step
    times = np.array([s.observation.time_s for s in sent])
    assert (np.diff(times) >= period_s - tolerance_s - 1e-9).all(), np.diff(times)


def assert_each_command_steps_from_the_measured_tcp(keeper) -> None:
    """Relative execution: whatever the answer's age, a command moves the TCP by one step from where it is."""
    for step in sent_steps(keeper):
        if not step.sent.clamped:
            np.testing.assert_allclose(step.sent.tcp_pose[:3] - step.observation.arm.tcp_pose[:3], [STEP_MM, 0, 0],
                                       atol=1e-3)  # the sent pose is FK(IK(target)): 1 um


class Keeper:
    """A subscriber keeping every step."""

    def __init__(self) -> None:
        self.steps: list = []

    def on_episode_start(self, instruction: str) -> None:
        self.steps = []

    def on_step(self, step) -> None:
        self.steps.append(step)

    def on_episode_end(self, result) -> None:
        self.result = result
