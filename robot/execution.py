"""Execution modes: how the control loop interleaves observing, asking the agent and moving the arm.

In lock-step no robot time passes while the policy thinks. At the robot it does: a 7B policy answers in
100-300 ms, one to three control periods. A mode decides which answer moves the arm when, and when the next
tick starts (``ControlLoop`` runs the ticks; robot/answers.py runs the agent, with any injected latency):

- ``sync``: ask about this tick's observation and wait for the answer; the arm holds meanwhile, and the tick
  stretches by the wait, so that each command still gets a full period before the next observation (upstream
  OpenVLA's deployment loop, ~5 Hz). The wait is bounded by the watchdog's stop time.
- ``async``: the policy is asked about the newest observation as soon as it is free (at most once a period)
  while the arm executes the previous answer; the freshest answer moves the arm as soon as it arrives, at
  most one command a period. An answer superseded by a fresher one before it could be applied is dropped.
- ``chunk``: the agent answers with a chunk (``AgentOutput.plan``: K commands); the chunk runs open loop,
  one step a period, while the next one is requested (the request says which step of the running chunk runs
  now: ``Observation.plan_progress``); a new chunk replaces the old one at the step the arm has reached along
  it, optionally cross-faded over a few steps; or, open loop (``open_loop_steps``, OpenVLA-OFT's setting with K),
  the next chunk is asked for only once that many steps of the running one were sent; or, with temporal
  ensembling (``ensemble_decay``, robot/ensemble_execution.py), each tick runs the weighted mean of the steps
  every live chunk planned for it.

In every mode an answer's commands become *relative steps* (``RelativeStep``): the motion from the state the
agent saw to the command (the ``ee_delta``/``joint_delta`` action), applied from the arm's measured state at
the tick that executes it. A late answer therefore never pulls the arm back to where it was when the question
was asked: switching between answers or chunks causes no jump. An answer older than ``max_action_age_s`` when
it would be applied is dropped, never replayed; with nothing fresh the arm holds, and the watchdog keeps its
meaning (hold after ``watchdog_hold_s``, stop after ``watchdog_stop_s`` without a fresh command).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from robot.answers import Answer, InlineAnswers, ThreadedAnswers
from robot.clock import Clock
from robot.frames import apply_pose_delta, pose_delta
from robot.injected_latency import LatencySpec
from robot.interfaces import ArmState
from robot.safety import Command

if TYPE_CHECKING:
    from robot.runtime import Agent, AgentOutput, Observation

_EPS_S = 1e-9


class ExecutionMode(StrEnum):
    SYNC = "sync"
    ASYNC = "async"
    CHUNK = "chunk"


@dataclass(frozen=True)
class ExecutionConfig:
    """How a run executes its agent's answers (recorded with every run and episode)."""

    mode: ExecutionMode = ExecutionMode.SYNC
    latency: LatencySpec = field(default_factory=LatencySpec)  # injected before every answer
    max_action_age_s: float | None = None  # None: the watchdog's hold time
    latency_seed: int = 0  # seeds the injected delays (per episode: the same delays for the same seed)
    chunk_blend_steps: int = 0  # chunk mode: cross-fade a new chunk into the old one over this many steps
    # Chunk mode: steps of a chunk sent before the next chunk is asked for (OpenVLA-OFT's open-loop execution: K, one
    # request per K ticks); None: ask as soon as the agent is free (re-planning every period when it answers in time).
    open_loop_steps: int | None = None
    # Chunk mode: temporal ensembling (robot/ensemble_execution.py): each tick's command is the weighted mean of the
    # steps every live chunk planned for it, weights exp(-decay * j) from the oldest (ACT's); None: off.
    ensemble_decay: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", ExecutionMode(self.mode))
        if self.max_action_age_s is not None and not self.max_action_age_s > 0:
            raise ValueError(f"max_action_age_s must be > 0, got {self.max_action_age_s}")
        if self.chunk_blend_steps < 0:
            raise ValueError(f"chunk_blend_steps must be >= 0, got {self.chunk_blend_steps}")
        if self.open_loop_steps is not None and self.open_loop_steps < 1:
            raise ValueError(f"open_loop_steps must be >= 1, got {self.open_loop_steps}")
        chunk_settings = self.ensemble_decay is not None or self.open_loop_steps is not None
        if chunk_settings and self.mode is not ExecutionMode.CHUNK:
            raise ValueError("open_loop_steps and ensemble_decay are settings of chunk execution (mode 'chunk')")
        if self.ensemble_decay is not None:
            if not (math.isfinite(self.ensemble_decay) and self.ensemble_decay >= 0):
                raise ValueError(f"ensemble_decay must be >= 0, got {self.ensemble_decay}")
            if self.open_loop_steps is not None or self.chunk_blend_steps:
                raise ValueError("ensemble_decay averages every live chunk at each tick: it excludes open_loop_steps "
                                 "and chunk_blend_steps")

    def describe(self, hold_after_s: float | None = None) -> dict[str, Any]:
        max_age = self.max_action_age_s if self.max_action_age_s is not None else hold_after_s
        chunk = {"chunk_blend_steps": self.chunk_blend_steps,
                 **({"open_loop_steps": self.open_loop_steps} if self.open_loop_steps is not None else {}),
                 **({"ensemble_decay": self.ensemble_decay} if self.ensemble_decay is not None else {})}
        return {"mode": self.mode.value, "policy_latency_ms": str(self.latency), "max_action_age_s": max_age,
                **(chunk if self.mode is ExecutionMode.CHUNK else {})}


@dataclass(frozen=True)
class RelativeStep:
    """One command as the motion it makes from the state it was planned from (pose delta or joint delta)."""

    motion: np.ndarray  # (6,): robot.frames.pose_delta for TCP commands, joint delta (rad) for joint commands
    in_joints: bool
    gripper: float

    @classmethod
    def chain(cls, output: AgentOutput, arm: ArmState) -> list[RelativeStep]:
        """``output.command`` relative to ``arm``, then each command of ``output.plan`` relative to the one before."""
        steps, pose, joints = [], np.asarray(arm.tcp_pose, float), np.asarray(arm.joints_rad, float)
        commands = [output.command, *output.plan] if output.command is not None else []
        for command in commands:
            if command.is_pose:
                steps.append(cls(pose_delta(pose, command.tcp_pose), False, command.gripper))
                pose = command.tcp_pose
            else:
                steps.append(cls(np.asarray(command.joints_rad) - joints, True, command.gripper))
                joints = command.joints_rad
        if len({step.in_joints for step in steps}) > 1:
            raise ValueError("an agent's plan mixes TCP and joint commands; a chunk must use one kind")
        return steps

    def command_from(self, arm: ArmState) -> Command:
        if self.in_joints:
            return Command.to_joints(np.asarray(arm.joints_rad, float) + self.motion, self.gripper)
        return Command.to_pose(apply_pose_delta(arm.tcp_pose, self.motion), self.gripper)

    def blended(self, older: RelativeStep, weight: float) -> RelativeStep:
        """``weight`` of this step's motion and ``1 - weight`` of ``older``'s; the gripper is this step's."""
        if older.in_joints != self.in_joints:
            return self
        return RelativeStep(weight * self.motion + (1.0 - weight) * older.motion, self.in_joints, self.gripper)


class Execution(ABC):
    """One episode's execution of an agent: ``act`` at each tick, ``wait_for_tick`` between ticks."""

    def __init__(self, answers, clock: Clock, period_s: float, max_action_age_s: float, tolerance_s: float) -> None:
        self.answers, self.clock, self.period_s = answers, clock, period_s
        self.max_action_age_s, self.tolerance_s = max_action_age_s, tolerance_s
        self.tick_s = self.next_grid_s = math.nan

    def begin(self, start_s: float) -> None:
        self.tick_s, self.next_grid_s = start_s, start_s + self.period_s

    @abstractmethod
    def act(self, observation: Observation, deadline_s: float) -> AgentOutput:
        """What moves the arm at this tick (``command`` None: hold). ``deadline_s``: the watchdog's stop time."""

    def _wake_s(self) -> float:
        """When the next tick is due (modes may also wake earlier for an answer)."""
        return self.next_grid_s

    def _sleep(self, wake_s: float) -> float:
        """Sleep until ``wake_s``; returns the time the tick is due (earlier when an answer woke it)."""
        self.clock.sleep_until(wake_s)
        return wake_s

    def wait_for_tick(self) -> tuple[float, bool]:
        """Sleep until the next tick; returns (its time, late). A late tick re-anchors the schedule on itself."""
        due_s = self._sleep(self._wake_s())
        now = self.clock.now_s()
        late = now - due_s > self.tolerance_s
        self.tick_s = now if late else due_s
        if late or self.tick_s >= self.next_grid_s - _EPS_S:
            self.next_grid_s = self.tick_s + self.period_s
        return self.tick_s, late

    def close(self) -> None:
        self.answers.close()

    # -- shared by the modes ---------------------------------------------------------------------------
    def _age_s(self, answer: Answer) -> float:
        return self.clock.now_s() - answer.observation.time_s

    @staticmethod
    def _arrival_info(answer: Answer) -> dict[str, Any]:
        return {"exec_answer_latency_s": answer.latency_s, "exec_injected_latency_s": answer.injected_s}

    def _applied(self, answer: Answer, observation: Observation, step: RelativeStep | None, index: int,
                 info: dict[str, Any], first_use: bool = True, blended: bool = False) -> AgentOutput:
        """The output for this tick: ``step`` (number ``index`` of ``answer``'s commands) from the measured state,
        unless it is overdue: step i was planned for the answer's observation time + i periods. The answer's own
        info (latencies, ...) and events go with its first use only."""
        from robot.runtime import AgentOutput

        age = self._age_s(answer)
        info = {**(answer.output.info if first_use else {}), **info, "exec_source_step": answer.observation.step,
                "exec_chunk_index": index, "exec_action_age_s": age}
        chunk_actions = answer.output.info.get("action_chunk")
        if chunk_actions is not None and index < len(chunk_actions):
            info["action"] = np.asarray(chunk_actions[index])
        events = answer.output.events if first_use else frozenset()
        if step is None:
            return AgentOutput(None, events, info)
        if age - index * self.period_s > self.max_action_age_s + _EPS_S:
            return AgentOutput(None, events, {**info, "stale": True})  # dropped, and never used later
        if answer.observation.step == observation.step and index == 0 and not blended:
            return AgentOutput(answer.output.command, events, info)  # planned from this very state
        return AgentOutput(step.command_from(observation.arm), events, info)


class SyncExecution(Execution):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._answered_s = -math.inf

    def act(self, observation: Observation, deadline_s: float) -> AgentOutput:
        from robot.runtime import AgentOutput

        asked = self.clock.now_s()
        self.answers.ask(observation)
        self.answers.wait(deadline_s)
        answer = self.answers.take()
        self._answered_s = self.clock.now_s()
        info = {"exec_wait_s": self._answered_s - asked}
        if answer is None:  # not by the watchdog's stop time: the arm held all along, the watchdog ends it
            return AgentOutput(None, info={**info, "agent_error": "no answer before the watchdog's stop time"})
        steps = RelativeStep.chain(answer.output, answer.observation.arm)
        info.update(self._arrival_info(answer))
        return self._applied(answer, observation, steps[0] if steps else None, 0, info)

    def _wake_s(self) -> float:
        # The command just sent gets its period before the next observation; a wait within the lateness
        # tolerance keeps the fixed rate.
        return max(self.next_grid_s, self._answered_s + self.period_s - self.tolerance_s)


class _Overlapped(Execution):
    """Async and chunk: the agent is asked while the arm moves (at most once a period), commands go out at most once
    a period, and an answer arriving between ticks starts a tick as soon as it may be used."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._asked_s = self._commanded_s = -math.inf

    def _ask_if_free(self, observation: Observation) -> bool:
        # Times are the tick's (observation.time_s): rates are kept on the schedule, not on when a sleep ended.
        if self.answers.busy or observation.time_s < self._asked_s + self.period_s - _EPS_S:
            return False
        self.answers.ask(observation)
        self._asked_s = observation.time_s
        return True

    def _may_command(self, observation: Observation) -> bool:
        return observation.time_s >= self._commanded_s + self.period_s - _EPS_S

    @abstractmethod
    def _has_waiting_command(self) -> bool:
        """A command is ready to go out as soon as the one-a-period rule allows."""

    def _wake_s(self) -> float:
        return self._earliest(self.clock.now_s(), self._has_waiting_command(), not self.answers.busy)

    def _earliest(self, now: float, command_waiting: bool, idle: bool) -> float:
        """The next grid tick, or earlier: when a waiting command may go out, when the idle agent may be asked."""
        wake = self.next_grid_s
        if command_waiting:
            wake = min(wake, max(now, self._commanded_s + self.period_s))
        if idle:
            wake = min(wake, max(now, self._asked_s + self.period_s))
        return wake

    def _sleep(self, wake_s: float) -> float:
        if not self.answers.busy:
            return super()._sleep(wake_s)
        self.answers.wait(wake_s)  # returns early when the answer in flight arrives
        if self.answers.busy or self.clock.now_s() >= wake_s - _EPS_S:
            return wake_s
        return super()._sleep(self._earliest(self.clock.now_s(), True, True))


class AsyncExecution(_Overlapped):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._kept: Answer | None = None  # the freshest answer, waiting for its turn (one command a period)
        self._kept_info: dict[str, Any] = {}

    def act(self, observation: Observation, deadline_s: float) -> AgentOutput:
        from robot.runtime import AgentOutput

        self._ask_if_free(observation)  # the next question goes out while the arm executes the last answer
        arrived = self.answers.take()
        info: dict[str, Any] = {}
        if arrived is not None:
            info = self._arrival_info(arrived)
            if self._kept is not None:
                info["exec_superseded"] = 1  # never applied: a fresher answer came first
            self._kept, self._kept_info = arrived, info
        if self._kept is None or not self._may_command(observation):
            return AgentOutput(None, info=info)
        answer, info, self._kept = self._kept, self._kept_info, None
        steps = RelativeStep.chain(answer.output, answer.observation.arm)
        output = self._applied(answer, observation, steps[0] if steps else None, 0, info)
        if output.command is not None:
            self._commanded_s = observation.time_s
        return output

    def _has_waiting_command(self) -> bool:
        return self._kept is not None


@dataclass
class _Chunk:
    answer: Answer
    steps: list[RelativeStep]
    next_index: int = 0  # the step that runs at the next command tick
    used: bool = False  # a step of it moved the arm (its answer's info and events were passed on)

    @property
    def exhausted(self) -> bool:
        return self.next_index >= len(self.steps)


class ChunkExecution(_Overlapped):
    """Chunk steps run one a command tick. A new chunk starts at the step the arm has reached along it: steps are
    skipped only for the commands already sent since its observation (from the chunk before, which planned the
    same motion), never for time the arm spent holding; a step overdue by more than ``max_action_age_s`` (step i
    is due at the observation's time + i periods) drops the chunk."""

    def __init__(self, *args: Any, blend_steps: int = 0, open_loop_steps: int | None = None) -> None:
        super().__init__(*args)
        self.blend_steps, self.open_loop_steps = blend_steps, open_loop_steps
        self._chunk: _Chunk | None = None
        self._previous: _Chunk | None = None  # cross-faded out over the first blend_steps steps of a new chunk
        self._since_switch = 0
        self._command_ticks: list[float] = []  # times of the command ticks of the last few seconds

    def act(self, observation: Observation, deadline_s: float) -> AgentOutput:
        from robot.runtime import AgentOutput, PlanProgress

        info = self._take(observation)
        chunk = self._chunk
        progress = PlanProgress(chunk.answer.observation.step, chunk.next_index) if chunk is not None else None
        if self._due(chunk) and self._ask_if_free(replace(observation, plan_progress=progress)):  # the next chunk
            info.update(self._take(observation))  # answered at once (lock-step without injected latency)
        chunk = self._chunk
        if chunk is None or chunk.exhausted or not self._may_command(observation):
            return AgentOutput(None, info={**info, "exec_chunk_exhausted": chunk is not None and chunk.exhausted})
        index = chunk.next_index
        chunk.next_index += 1
        first_use, chunk.used = not chunk.used, True
        step = self._blend(chunk.steps[index])
        output = self._applied(chunk.answer, observation, step, index, info, first_use, step is not chunk.steps[index])
        if output.command is None:  # overdue: the rest of the chunk is at least as late
            self._chunk = None
        else:
            self._commanded_s = observation.time_s
            self.next_grid_s = observation.time_s + self.period_s  # the chunk's steps are a period apart
            self._command_ticks = [t for t in self._command_ticks if t > observation.time_s - 10.0]
            self._command_ticks.append(observation.time_s)
        return output

    def _has_waiting_command(self) -> bool:
        return self._chunk is not None and not self._chunk.exhausted

    def _due(self, chunk: _Chunk | None) -> bool:
        """The next chunk may be asked for: always, or (open loop) once ``open_loop_steps`` of this one were sent."""
        return self.open_loop_steps is None or chunk is None or chunk.exhausted or \
            chunk.next_index >= self.open_loop_steps

    def _wake_s(self) -> float:
        if self.open_loop_steps is None:
            return super()._wake_s()
        # Open loop: the next chunk is asked for at a tick of the schedule (the one after the last step sent), never
        # at an extra tick of its own, so an idle agent does not wake the loop; a waiting command still may.
        return self._earliest(self.clock.now_s(), self._has_waiting_command(), False)

    def _take(self, observation: Observation) -> dict[str, Any]:
        arrived = self.answers.take()
        return {} if arrived is None else {**self._arrival_info(arrived), **self._switch(arrived, observation)}

    def _switch(self, answer: Answer, observation: Observation) -> dict[str, Any]:
        """Make ``answer`` the running chunk, starting where the arm is along it; the info for this tick."""
        chunk = _Chunk(answer, RelativeStep.chain(answer.output, answer.observation.arm))
        if not chunk.steps:  # no command (a failed request): the running chunk goes on
            return dict(answer.output.info)
        chunk.next_index = sum(t >= answer.observation.time_s - _EPS_S for t in self._command_ticks)
        overdue_s = observation.time_s - answer.observation.time_s - chunk.next_index * self.period_s
        if chunk.exhausted or overdue_s > self.max_action_age_s + _EPS_S:
            return {**answer.output.info, "stale": True}  # dropped, never used
        self._previous, self._chunk, self._since_switch = self._chunk, chunk, 0
        return {"exec_chunk_length": len(chunk.steps)}

    def _blend(self, step: RelativeStep) -> RelativeStep:
        previous, self._since_switch = self._previous, self._since_switch + 1
        if previous is None or previous.exhausted or self._since_switch > self.blend_steps:
            return step
        older = previous.steps[previous.next_index]
        previous.next_index += 1
        return step.blended(older, self._since_switch / (self.blend_steps + 1))


def start_execution(config: ExecutionConfig, agent: Agent, clock: Clock, period_s: float, hold_after_s: float,
                    tolerance_s: float) -> Execution:
    """The execution of one episode. The agent runs inline in sync mode and on simulated clocks, else on a
    worker thread."""
    rng = np.random.default_rng(config.latency_seed)
    inline = config.mode is ExecutionMode.SYNC or clock.is_simulated
    answers = (InlineAnswers if inline else ThreadedAnswers)(agent, clock, config.latency, rng)
    max_age = config.max_action_age_s if config.max_action_age_s is not None else hold_after_s
    args = (answers, clock, period_s, max_age, tolerance_s)
    if config.mode is ExecutionMode.SYNC:
        return SyncExecution(*args)
    if config.mode is ExecutionMode.ASYNC:
        return AsyncExecution(*args)
    if config.ensemble_decay is not None:
        from robot.ensemble_execution import EnsembleExecution

        return EnsembleExecution(*args, decay=config.ensemble_decay)
    return ChunkExecution(*args, blend_steps=config.chunk_blend_steps, open_loop_steps=config.open_loop_steps)
