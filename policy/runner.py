"""The closed-loop runner at the robot: observe -> policy -> safety layer -> arm, at a fixed rate, logged.

``ClosedLoopRunner`` is the shared ``robot.runtime.ControlLoop`` (watchdog included: a late or failed action
holds the arm, ``watchdog_stop_s`` without one stops it and ends the episode as aborted) driven by a
``PolicyAgent``, with an ``EpisodeSummary`` and, optionally, a ``StepLog`` into a crash-safe episode store and
an MP4 per episode. The evaluation runner and the demo call ``run_episode`` once per trial::

    with EpisodeStore.open_or_create("trials.zarr", step_log_schema(config, robot.camera.intrinsics)) as store:
        runner = ClosedLoopRunner(robot, RemotePolicy.connect(url, token_file=...), step_log=store)
        result = runner.run_episode(instruction, max_duration_s=30, is_success=robot.twin.task_success,
                                    meta={"trial": 3, "seed": 7})
        result.status, result.log_index, result.summary["latency_p99_s"]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from collect.store import EpisodeStore
from policy.agent import Policy, PolicyAgent
from policy.step_log import EpisodeSummary, StepLog
from robot.execution import ExecutionConfig, ExecutionMode
from robot.runtime import Agent, ControlLoop, EpisodeResult, EpisodeStatus, RobotLike, Subscriber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClosedLoopResult:
    episode: EpisodeResult
    summary: dict[str, Any]  # EpisodeSummary.summary(): held steps, policy errors, latency quantiles
    log_index: int | None = None  # episode index in the step-log store (None: no log, or nothing to save)
    video_path: Path | None = None
    checkpoint_id: str = ""

    @property
    def status(self) -> EpisodeStatus:
        return self.episode.status

    @property
    def reason(self) -> str:
        return self.episode.reason

    @property
    def steps(self) -> int:
        return self.episode.steps


class EpisodeRunner:
    """The shared control loop for any ``robot.runtime.Agent``, with an ``EpisodeSummary`` and, optionally, a
    ``StepLog`` into a crash-safe episode store. Used as is for baseline agents (scripted expert, random) and
    specialised by ``ClosedLoopRunner`` for policies. ``execution``: how slow answers reach the arm (mode, injected
    latency, the age beyond which an answer is dropped: robot/execution.py); default sync, no injected latency."""

    def __init__(self, robot: RobotLike, agent: Agent, name: str, *, step_log: EpisodeStore | None = None,
                 rate_hz: float | None = None, hold_after_s: float | None = None, stop_after_s: float | None = None,
                 session_meta: Mapping[str, Any] | None = None, subscribers: Sequence[Subscriber] = (),
                 execution: ExecutionConfig | None = None) -> None:
        config = robot.config
        self.robot, self.agent, self.name = robot, agent, name
        self.execution = execution or ExecutionConfig()
        hold_after_s = hold_after_s if hold_after_s is not None else config.safety.watchdog_hold_s
        stop_after_s = stop_after_s if stop_after_s is not None else config.safety.watchdog_stop_s
        self.summary = EpisodeSummary()
        self.step_log = None
        if step_log is not None:
            session = {"backend": getattr(robot, "backend", None), **_hardware_info(robot), **dict(session_meta or {})}
            self.step_log = StepLog(step_log, session, self.summary, context=self._log_context)
        chain: list[Subscriber] = [self.summary, *([self.step_log] if self.step_log else []), *subscribers]
        self.loop = ControlLoop(robot, rate_hz or config.recording.rate_hz, hold_after_s, stop_after_s, chain,
                                execution=self.execution)

    def _log_context(self) -> dict[str, Any]:
        """Per-episode metadata for the step log."""
        return {"agent": self.name, "execution": self.execution.describe(self.loop.hold_after_s)}

    def _run(self, instruction: str, max_duration_s: float, is_success: Callable[[], bool] | None,
             meta: Mapping[str, Any] | None) -> tuple[EpisodeResult, int | None]:
        """One episode from wherever the arm is; always leaves the arm holding and out of servo mode.

        An exception (a configuration error such as a refused token, Ctrl-C) still saves the steps recorded so
        far as an aborted episode, then propagates."""
        if self.step_log is not None:
            self.step_log.begin(meta)
        try:
            episode = self.loop.run_episode(self.agent, instruction, max_duration_s, is_success)
        except BaseException as error:
            if self.step_log is not None:
                self.step_log.abort(f"{type(error).__name__}: {error}")
            raise
        return episode, None if self.step_log is None else self.step_log.last_index

    def run_episode(self, instruction: str, max_duration_s: float, is_success: Callable[[], bool] | None = None,
                    meta: Mapping[str, Any] | None = None) -> ClosedLoopResult:
        episode, log_index = self._run(instruction, max_duration_s, is_success, meta)
        return ClosedLoopResult(episode, self.summary.summary(), log_index, None, self.name)


class ClosedLoopRunner(EpisodeRunner):
    """Runs policy episodes on ``robot`` (a ``robot.factory.Robot``: real or twin). Rates and watchdog times
    default to hardware.yaml (``recording.rate_hz``: the rate the policy was trained at; ``safety.watchdog_*``);
    an action is dropped when older than ``max_action_age_s`` (default: ``execution.max_action_age_s``, else the
    watchdog hold time)."""

    def __init__(self, robot: RobotLike, policy: Policy, *, step_log: EpisodeStore | None = None,
                 video_dir: str | Path | None = None, rate_hz: float | None = None,
                 hold_after_s: float | None = None, stop_after_s: float | None = None,
                 max_action_age_s: float | None = None, send_state: bool = False,
                 session_meta: Mapping[str, Any] | None = None, subscribers: Sequence[Subscriber] = (),
                 execution: ExecutionConfig | None = None) -> None:
        hold = hold_after_s if hold_after_s is not None else robot.config.safety.watchdog_hold_s
        execution = execution or ExecutionConfig()
        max_age = max_action_age_s or execution.max_action_age_s or hold
        execution = replace(execution, max_action_age_s=max_age)
        agent = PolicyAgent(policy, robot.clock, max_age, send_state=send_state,
                            expect_chunks=execution.mode is ExecutionMode.CHUNK)
        super().__init__(robot, agent, "policy", step_log=step_log, rate_hz=rate_hz, hold_after_s=hold,
                         stop_after_s=stop_after_s, session_meta=session_meta, subscribers=subscribers,
                         execution=execution)
        self.policy = policy
        self.video_dir = None if video_dir is None else Path(video_dir)
        if self.video_dir is not None and self.step_log is None:
            raise ValueError("video_dir needs a step_log store: the videos are rendered from the logged episodes")

    def run_episode(self, instruction: str, max_duration_s: float, is_success: Callable[[], bool] | None = None,
                    meta: Mapping[str, Any] | None = None) -> ClosedLoopResult:
        episode, log_index = self._run(instruction, max_duration_s, is_success, meta)
        spec = self.agent.spec
        video = self._write_video(log_index)
        log.info("episode %s after %d steps (%s); %s", episode.status.value, episode.steps, episode.reason,
                 self.summary.summary())
        return ClosedLoopResult(episode, self.summary.summary(), log_index, video,
                                spec.checkpoint_id if spec is not None else "")

    def _log_context(self) -> dict[str, Any]:
        spec, loop = self.agent.spec, self.loop
        return {**super()._log_context(), "checkpoint_id": spec.checkpoint_id if spec else None,
                "action_space": spec.action_space if spec else None, "unnorm_key": spec.unnorm_key if spec else None,
                "rate_hz": loop.rate_hz, "watchdog_hold_s": loop.hold_after_s, "watchdog_stop_s": loop.stop_after_s,
                "max_action_age_s": self.agent.max_action_age_s}

    def _write_video(self, log_index: int | None) -> Path | None:
        if self.video_dir is None or log_index is None:
            return None
        from collect.video import write_episode_video

        path = self.video_dir / f"episode_{log_index:04d}.mp4"
        write_episode_video(self.step_log.store, log_index, path)
        return path


def _hardware_info(robot) -> dict[str, Any]:
    """The SDK, camera and latency figures behind the run, for the step log's metadata (robot.factory.Robot)."""
    info = getattr(robot, "hardware_info", None)
    return {"hardware_info": info()} if callable(info) else {}
