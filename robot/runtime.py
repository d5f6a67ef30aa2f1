"""The control loop shared by the recorder and the closed-loop policy runner.

One tick reads like the data flow::

    observation = robot.observe()               camera frame(s) + arm state + gripper state
    output      = agent.act(observation)        teleop device, scripted expert or policy
    sent        = robot.safety.filter(command)  workspace, limits, per-step limits, NaN
    arm.servo_joints(sent) / gripper.command     the arm's 125 Hz loop interpolates to it
    subscriber.on_step(step)                    recorder, step log, video writer (+ the step's delays)
    execution.wait_for_tick()                   sleep until the next tick; late ticks are counted

How the agent's answers reach the arm when the agent is slow (``sync``, ``async``, ``chunk``, with injected
latency for rehearsals) is the loop's ``ExecutionConfig`` (robot/execution.py); the default, ``sync`` without
injected latency, asks the agent about each tick's observation and sends its command at once.

The first observation of an episode is a frame received after the episode began: a scene reset just
before (a person placing the object, the twin teleporting it) must not reach the agent or the recording
as the previous episode's last picture.

A watchdog holds the arm when the agent delivers no fresh command for ``watchdog_hold_s`` and
ends the episode as aborted after ``watchdog_stop_s``. A missing command is never replaced by the
previous one: the arm holds where it is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from robot.errors import CameraTimeoutError, RobotError
from robot.execution import ExecutionConfig, start_execution
from robot.interfaces import ArmState, CameraFrame, GripperState
from robot.latency import step_timing
from robot.safety import Command, SafeCommand, Watchdog

log = logging.getLogger(__name__)


class Event(StrEnum):
    """Episode controls an agent can raise (keys of a teleop device, or a scripted expert)."""

    SAVE = "save"  # stop and save the episode
    DISCARD = "discard"  # stop and throw the episode away (re-record)
    QUIT = "quit"  # stop this episode, discard it, and end the session
    DONE = "done"  # the agent considers the task finished (scripted expert, policy end token)


class EpisodeStatus(StrEnum):
    COMPLETED = "completed"  # ended by SAVE/DONE or by the success check
    TIMEOUT = "timeout"  # reached max_duration_s
    ABORTED = "aborted"  # watchdog stop, safety e-stop or a hardware error
    DISCARDED = "discarded"
    QUIT = "quit"


@dataclass(frozen=True)
class PlanProgress:
    """Chunk execution: which chunk runs when an observation is taken, and which of its steps runs at that tick
    (an agent that plans on from its previous chunk, like real-time chunking, needs to know)."""

    source_step: int  # step of the observation the running chunk was planned from
    next_index: int  # index of the chunk's command that runs at this tick (its length: the chunk is used up)


@dataclass(frozen=True)
class Observation:
    frame: CameraFrame
    arm: ArmState
    gripper: GripperState
    instruction: str
    step: int
    time_s: float  # clock time of this tick
    plan_progress: PlanProgress | None = None  # set by chunk execution when it asks for the next chunk
    wrist: CameraFrame | None = None  # the wrist camera's newest frame (hardware.yaml cameras.wrist), if any


@dataclass(frozen=True)
class AgentOutput:
    command: Command | None  # None: nothing fresh this tick (late policy, idle teleop)
    events: frozenset[Event] = frozenset()
    info: dict = field(default_factory=dict)  # logged with the step (latencies, probabilities, ...)
    # An action chunk: the commands after ``command``, each planned as if the one before had been reached.
    # Run open loop by chunk execution; the other execution modes use ``command`` only.
    plan: tuple[Command, ...] = ()


class Agent(Protocol):
    def reset(self, instruction: str) -> None: ...

    def act(self, observation: Observation) -> AgentOutput: ...


@dataclass(frozen=True)
class Step:
    observation: Observation
    sent: SafeCommand | None  # what reached the arm; None while holding
    watchdog: str  # "ok" | "hold" | "stop"
    agent_info: dict
    late: bool
    # capture -> observation -> command -> motion delays in s (robot/latency.py step_timing; NaN where unknown).
    # The command is the one sent at this tick, whichever observation its answer came from (exec_action_age_s).
    timing: Mapping[str, float] = field(default_factory=dict)
    # No fresh command at this tick, but the last one is still under way (a tick between commands in async or
    # chunk execution): the arm was not stopped.
    in_motion: bool = False
    # The agent's command was rejected by the safety layer (the arm held): its reasons; empty otherwise.
    rejected_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class EpisodeResult:
    status: EpisodeStatus
    steps: int
    duration_s: float
    late_ticks: int
    reason: str = ""


class Subscriber(Protocol):
    def on_episode_start(self, instruction: str) -> None: ...

    def on_step(self, step: Step) -> None: ...

    def on_episode_end(self, result: EpisodeResult) -> None: ...


class RobotLike(Protocol):
    """What the loop needs from robot.factory.Robot (kept structural to ease testing with the twin)."""

    arm: object
    gripper: object
    camera: object
    clock: object
    safety: object

    def observe_parts(self) -> tuple[CameraFrame, ArmState, GripperState]: ...


@dataclass
class ControlLoop:
    robot: RobotLike
    rate_hz: float
    hold_after_s: float
    stop_after_s: float
    subscribers: Sequence[Subscriber] = ()
    # A tick that starts later than this fraction of the period counts as late.
    late_fraction: float = 0.2
    # How long the first tick may wait for a frame received after the episode began.
    fresh_frame_timeout_s: float = 1.0
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    def run_episode(self, agent: Agent, instruction: str, max_duration_s: float,
                    is_success: Callable[[], bool] | None = None) -> EpisodeResult:
        """Run one episode in servo mode from wherever the arm is; always leaves servo mode."""
        clock, arm = self.robot.clock, self.robot.arm
        watchdog = Watchdog(self.hold_after_s, self.stop_after_s, clock)
        agent.reset(instruction)
        for subscriber in self.subscribers:
            subscriber.on_episode_start(instruction)
        arm.start_servo()
        start_s = clock.now_s()
        result: EpisodeResult | None = None
        steps = late_ticks = 0
        self._moving_until_s = -math.inf  # the last command sent is executed until then (one period)
        self._rejected: tuple[str, ...] = ()  # why the safety layer refused the commands since the last one sent
        execution = start_execution(self.execution, agent, clock, self.period_s, self.hold_after_s,
                                    self.late_fraction * self.period_s)
        try:
            self._await_frame_received_after(start_s)
            start_s = tick_s = clock.now_s()
            execution.begin(start_s)
            late = False
            while result is None:
                steps += 1
                late_ticks += late
                frame, arm_state, gripper_state = self.robot.observe_parts()
                wrist = self._wrist_frame()
                observed_s = clock.now_s()
                observation = Observation(frame, arm_state, gripper_state, instruction, steps - 1, tick_s,
                                          wrist=wrist)
                output = execution.act(observation, watchdog.stop_due_s())
                status, sent = self._apply(output, observation, watchdog)
                timing = step_timing(frame, observed_s, clock.now_s() if sent is not None else math.nan,
                                     getattr(self.robot, "latency", None))
                in_motion = sent is None and status == "ok" and tick_s < self._moving_until_s - 1e-9
                step = Step(observation, sent, status, output.info, late, timing=timing, in_motion=in_motion,
                            rejected_reasons=self._rejected if sent is None and output.command is not None else ())
                for subscriber in self.subscribers:
                    subscriber.on_step(step)
                result = self._episode_end(output, status, steps, clock.now_s() - start_s, late_ticks, is_success,
                                           self._rejected)
                if result is None:
                    tick_s, late = execution.wait_for_tick()
                    if tick_s - start_s >= max_duration_s - 1e-9:
                        result = EpisodeResult(EpisodeStatus.TIMEOUT, steps, clock.now_s() - start_s, late_ticks,
                                               f"no success within {max_duration_s:g} s")
        except RobotError as error:
            log.error("episode aborted by a hardware error: %s", error)
            result = EpisodeResult(EpisodeStatus.ABORTED, steps, clock.now_s() - start_s, late_ticks,
                                   f"{type(error).__name__}: {error}")
        finally:
            execution.close()
            _leave_servo(arm)
        for subscriber in self.subscribers:
            subscriber.on_episode_end(result)
        return result

    def _wrist_frame(self) -> CameraFrame | None:
        camera = getattr(self.robot, "wrist_camera", None)  # robot.factory.Robot with cameras.wrist
        return None if camera is None else camera.latest()

    def _await_frame_received_after(self, time_s: float) -> None:
        """Wait (at most one frame period in practice) until the camera's newest frame postdates ``time_s``."""
        clock, camera = self.robot.clock, self.robot.camera
        poll_s = min(0.005, self.period_s / 4)
        while camera.latest().received_s <= time_s:
            if clock.now_s() - time_s > self.fresh_frame_timeout_s:
                raise CameraTimeoutError(f"no camera frame received within {self.fresh_frame_timeout_s:g} s of the "
                                         "episode start")
            clock.sleep_until(clock.now_s() + poll_s)

    def _apply(self, output: AgentOutput, observation: Observation,
               watchdog: Watchdog) -> tuple[str, SafeCommand | None]:
        arm, safety = self.robot.arm, self.robot.safety
        sent = None
        if output.command is not None:
            sent = safety.filter(output.command, observation.arm, self.period_s)
            if sent.rejected:
                if not self._rejected:  # the first of a run of refusals; the end reason repeats the last one
                    log.warning("safety layer rejected the command at step %d: %s", observation.step,
                                "; ".join(sent.reasons))
                self._rejected, sent = sent.reasons, None
            else:
                self._rejected = ()
                watchdog.feed()
        status = watchdog.status()
        if status == "ok" and sent is not None:
            arm.servo_joints(sent.joints_rad, reach_in_s=self.period_s)
            self.robot.gripper.command(sent.gripper)
            self._moving_until_s = observation.time_s + self.period_s
            return status, sent
        if status == "ok" and observation.time_s < self._moving_until_s - 1e-9:
            return status, None  # a tick between commands (async, chunk): the last one is still under way
        arm.hold()  # nothing fresh and safe: stay where we are, never replay an old command
        return status, None

    @staticmethod
    def _episode_end(output: AgentOutput, status: str, steps: int, elapsed_s: float, late_ticks: int,
                     is_success: Callable[[], bool] | None, rejected: tuple[str, ...]) -> EpisodeResult | None:
        def end(kind: EpisodeStatus, reason: str) -> EpisodeResult:
            return EpisodeResult(kind, steps, elapsed_s, late_ticks, reason)

        if status == "stop":
            # An agent that answers but is refused is a different failure from a silent one: say which.
            why = f" (the agent answered; the safety layer rejected it: {'; '.join(rejected)})" if rejected else ""
            return end(EpisodeStatus.ABORTED, f"watchdog: no fresh command; arm stopped{why}")
        for event, kind in ((Event.QUIT, EpisodeStatus.QUIT), (Event.DISCARD, EpisodeStatus.DISCARDED),
                            (Event.SAVE, EpisodeStatus.COMPLETED), (Event.DONE, EpisodeStatus.COMPLETED)):
            if event in output.events:
                return end(kind, f"agent raised {event.value}")
        if is_success is not None and is_success():
            return end(EpisodeStatus.COMPLETED, "success detected")
        return None


def _leave_servo(arm) -> None:
    try:
        arm.hold()
        arm.stop_servo()
    except RobotError as error:  # already failing: report, do not mask the original outcome
        log.error("could not leave servo mode cleanly: %s", error)
