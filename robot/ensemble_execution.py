"""Temporal ensembling of action chunks (ACT's, an option of OpenVLA-OFT): chunk execution with
``ExecutionConfig.ensemble_decay`` set.

The agent is asked as often as it is free (every tick when it answers in time, as in ``chunk`` mode without
``open_loop_steps``), and every chunk it answered is kept while it still plans a step for the coming ticks. The
command of a tick is the weighted mean of the steps all those chunks planned *for this tick*: the chunk asked at
tick s plans its step i for the i-th command tick after s. The weights are ACT's, ``exp(-decay * j)`` with j = 0
for the oldest chunk, so ``decay`` 0 averages them alike and a larger one trusts the older plans more (ACT uses
0.01 per step).

Steps are averaged as relative steps (``RelativeStep``: the motion each chunk planned from its step before, applied
from the measured state), so chunks asked from different states agree on what a step is. The gripper command is the
weighted mean of the planned openings (a two-state gripper opens at >= 0.5: a weighted vote). A chunk's step that
is overdue by more than ``max_action_age_s`` (as in ``chunk`` mode: step i is due at its observation's time + i
periods) drops that chunk; with none left the arm holds, and the watchdog takes over. As in ``chunk`` mode, a chunk's
steps advance one per command sent (a chunk starts at the step the arm has reached along it), never for time the
arm spent holding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot.execution import _EPS_S, RelativeStep, _Overlapped
from robot.runtime import AgentOutput, Observation


@dataclass
class _Plan:
    answer: Any  # robot.answers.Answer
    steps: list[RelativeStep]
    next_index: int = 0  # the step that runs at the next command tick
    used: bool = False

    @property
    def source_step(self) -> int:
        return self.answer.observation.step


class EnsembleExecution(_Overlapped):
    def __init__(self, *args: Any, decay: float) -> None:
        super().__init__(*args)
        if not (math.isfinite(decay) and decay >= 0):
            raise ValueError(f"ensemble_decay must be >= 0, got {decay}")
        self.decay = decay
        self._plans: list[_Plan] = []  # oldest first
        self._command_ticks: list[float] = []  # times of the command ticks of the last few seconds

    def act(self, observation: Observation, deadline_s: float) -> AgentOutput:
        info = self._take()
        if self._ask_if_free(observation):
            info.update(self._take())  # answered at once (lock-step without injected latency)
        self._plans = [plan for plan in self._plans
                       if plan.next_index < len(plan.steps) and not self._overdue(plan, observation)]
        if not self._may_command(observation):
            return AgentOutput(None, info=info)
        live = self._plans
        if not live:
            return AgentOutput(None, info={**info, "exec_ensemble_size": 0})
        weights = np.exp(-self.decay * np.arange(len(live)))
        weights /= weights.sum()
        step = self._mean_step([plan.steps[plan.next_index] for plan in live], weights)
        info.update({key: value for plan in live if not plan.used for key, value in plan.answer.output.info.items()})
        newest = live[-1]
        info.update({"exec_source_step": newest.source_step, "exec_chunk_index": newest.next_index,
                     "exec_action_age_s": self._age_s(newest.answer), "exec_ensemble_size": len(live)})
        action = self._mean_action(live, weights)
        if action is not None:
            info["action"] = action
        for plan in live:  # every plan moves on to its step for the next command tick
            plan.used, plan.next_index = True, plan.next_index + 1
        self._commanded_s = observation.time_s
        self.next_grid_s = observation.time_s + self.period_s  # the plans' steps are a period apart
        self._command_ticks = [t for t in self._command_ticks if t > observation.time_s - 10.0]
        self._command_ticks.append(observation.time_s)
        return AgentOutput(step.command_from(observation.arm), info=info)

    @staticmethod
    def _mean_action(live: list[_Plan], weights: np.ndarray) -> np.ndarray | None:
        """The weighted mean of the policy's actions for this tick (what the step log records), if all are known."""
        chunks = [plan.answer.output.info.get("action_chunk") for plan in live]
        if any(chunk is None for chunk in chunks):
            return None
        rows = [np.asarray(chunk[plan.next_index], dtype=np.float64) for chunk, plan in zip(chunks, live, strict=True)]
        return np.einsum("j,jd->d", weights, np.stack(rows))

    def _has_waiting_command(self) -> bool:
        return bool(self._plans)

    def _take(self) -> dict[str, Any]:
        arrived = self.answers.take()
        if arrived is None:
            return {}
        steps = RelativeStep.chain(arrived.output, arrived.observation.arm)
        if steps:  # a failed request (no command) adds no plan
            # It starts at the step the arm has reached along it: one step per command sent since its observation.
            sent = sum(t >= arrived.observation.time_s - _EPS_S for t in self._command_ticks)
            self._plans.append(_Plan(arrived, steps, next_index=sent))
        return self._arrival_info(arrived)

    def _overdue(self, plan: _Plan, observation: Observation) -> bool:
        """Its step for this tick (due at its observation's time + next_index periods) is past the age bound."""
        return self._age_s(plan.answer) - plan.next_index * self.period_s > self.max_action_age_s + _EPS_S

    @staticmethod
    def _mean_step(steps: list[RelativeStep], weights: np.ndarray) -> RelativeStep:
        if len({step.in_joints for step in steps}) > 1:
            raise ValueError("the chunks being ensembled mix TCP and joint commands; a policy must use one kind")
        motion = np.einsum("j,jd->d", weights, np.stack([step.motion for step in steps]))
        gripper = float(np.dot(weights, [step.gripper for step in steps]))
        return RelativeStep(motion, steps[0].in_joints, gripper)
