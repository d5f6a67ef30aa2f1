"""The scripted expert as an action-chunk producer: each answer plans K steps ahead.

``PlanningExpert`` wraps a ``ScriptedExpert``: it acts on the real observation, then lets a copy of the expert
act on the observations it would see if every command were reached (the TCP at the previous command, one
period later each), and answers with the first command and the rest as ``AgentOutput.plan``: an action chunk,
what an OpenVLA-OFT policy predicts, for the loop's chunk execution (robot/execution.py).

Two rules keep the plan honest:

- it imagines only what it can know: the object and the box stay where they are, and whether the fingers will
  hold the object is not known before they close, so a plan ends just before that decision (the loop holds,
  explicitly and bounded, until an answer made after the fingers closed takes it on the real state);
- the next answer continues from where the executed plan left the expert (its phase, the time in it, the speed
  it had reached): the chunk execution says which step of which chunk runs as the observation is taken
  (``Observation.plan_progress``), and the expert resumes in the state it planned for that step, then acts on
  the real observation.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from collect.expert import ScriptedExpert
from robot.runtime import AgentOutput, Event, Observation, PlanProgress

KEPT_PLAN_STEPS = 50  # plans of observations at most this many steps back are remembered (a chunk runs fewer)


class _Unknowable(Exception):
    """A decision of the expert that depends on how the scene will react (not known at planning time)."""


class _ImaginedScene:
    """The scene as a plan sees it: object and box where they are now; a grasp's outcome unknown."""

    def __init__(self, scene) -> None:
        self._scene = scene

    @property
    def spec(self):
        return self._scene.spec

    def object_pose(self) -> np.ndarray:
        return self._scene.object_pose()

    def box_pose(self) -> np.ndarray:
        return self._scene.box_pose()

    def object_in_gripper(self) -> bool:
        raise _Unknowable


class PlanningExpert:
    """A runtime ``Agent`` answering with ``horizon_steps`` commands (the first one, then ``plan``)."""

    def __init__(self, expert: ScriptedExpert, horizon_steps: int) -> None:
        if horizon_steps < 1:
            raise ValueError(f"horizon_steps must be >= 1, got {horizon_steps}")
        self.expert, self.horizon_steps = expert, horizon_steps
        # per answer (by the step of its observation): the expert before each planned act, and after the last
        self._plans: dict[int, list[ScriptedExpert]] = {}

    @property
    def period_s(self) -> float:
        return self.expert.period_s

    def reset(self, instruction: str) -> None:
        self.expert.reset(instruction)
        self._plans = {}

    def act(self, observation: Observation) -> AgentOutput:
        self._resume(observation.plan_progress)
        states = [copy.copy(self.expert)]
        first = self.expert.act(observation)
        states.append(copy.copy(self.expert))
        commands = [first.command]
        if Event.DONE not in first.events and first.command is not None and first.command.is_pose:
            commands += self._imagine(observation, commands[0], states)
        self._plans = {step: plan for step, plan in self._plans.items() if step > observation.step - KEPT_PLAN_STEPS}
        self._plans[observation.step] = states
        info = {**first.info, "plan_steps": len(commands)}
        return AgentOutput(commands[0], first.events, info, plan=tuple(commands[1:]))

    def _imagine(self, observation: Observation, command, states: list[ScriptedExpert]) -> list:
        scene = self.expert.scene
        imagined = copy.copy(self.expert)
        imagined.scene = _ImaginedScene(scene)
        commands = []
        for i in range(1, self.horizon_steps):
            arm = replace(observation.arm, tcp_pose=command.tcp_pose)  # where the previous command leaves the TCP
            time_s = observation.time_s + i * self.period_s
            try:
                output = imagined.act(replace(observation, arm=arm, step=observation.step + i, time_s=time_s))
            except _Unknowable:
                break
            if Event.DONE in output.events:
                break
            command = output.command
            commands.append(command)
            planned = copy.copy(imagined)
            planned.scene = scene
            states.append(planned)
        return commands

    def _resume(self, progress: PlanProgress | None) -> None:
        """Continue from the expert as planned for the step of the running chunk that runs now (the state after
        the steps that ran): as if it had acted at every tick of its plan. A plan's first act was on the real
        scene, and its decision (a grasp judged missed, say) is being carried out: it is never taken again."""
        states = self._plans.get(progress.source_step) if progress is not None else None
        if states:
            self.expert = copy.copy(states[min(max(progress.next_index, 1), len(states) - 1)])
