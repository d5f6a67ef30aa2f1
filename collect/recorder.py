"""The episode recorder: a control-loop subscriber that streams every step into the episode store.

``EpisodeRecorder`` is a ``robot.runtime.Subscriber``. At ``on_episode_start`` it opens an episode in
the store (collect/store.py), at every ``on_step`` it writes the observation (colour, optional depth,
timestamps, frame number, measured joints/TCP/gripper) and the command the arm actually received after
the safety layer (``Step.sent``), and at ``on_episode_end`` it commits or discards:

- only a ``COMPLETED`` episode that the session's ``judge`` accepts is committed; the store computes
  the no-op mask (collect/noop.py) in the same commit;
- ``DISCARDED`` (re-record), ``QUIT``, ``TIMEOUT`` and ``ABORTED`` episodes are discarded, and the
  outcome says why (an abort carries the loop's reason: watchdog, camera, arm error).

While the loop holds the arm (``Step.sent is None``: no fresh or no safe command) the recorded command
is the hold target, i.e. the measured joints/TCP and the gripper's applied command, flagged with
``command_held``; such steps are no-ops by the rule and training views skip them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from collect.schema import WRIST_COLOR_KEY
from collect.store import EpisodeStore
from robot.latency import TIMING_KEYS
from robot.runtime import EpisodeResult, EpisodeStatus, Step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """Whether a finished episode is saved, the metadata added at commit, and why it is (not) saved."""

    save: bool
    meta: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


Judge = Callable[[EpisodeResult], Verdict]


def save_completed(result: EpisodeResult) -> Verdict:
    """The default judge: save what the operator (or the agent) completed, nothing else."""
    if result.status == EpisodeStatus.COMPLETED:
        return Verdict(True, reason=result.reason)
    return Verdict(False, reason=discard_reason(result))


def discard_reason(result: EpisodeResult) -> str:
    what = {EpisodeStatus.DISCARDED: "discarded by the operator (re-record)",
            EpisodeStatus.QUIT: "the session was quit during the episode",
            EpisodeStatus.TIMEOUT: "the episode ran out of time",
            EpisodeStatus.ABORTED: "the episode was aborted"}.get(result.status, str(result.status))
    return f"{what}: {result.reason}" if result.reason else what


@dataclass(frozen=True)
class EpisodeOutcome:
    """What became of one episode: saved (with its store index) or discarded (with the reason)."""

    status: EpisodeStatus
    saved: bool
    steps: int
    duration_s: float
    late_ticks: int
    reason: str
    index: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


def seconds_or_nan(value: Any) -> float:
    """A duration as a float, NaN where it is missing or not finite (the store's "unknown")."""
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def step_record(step: Step, record_depth: bool, record_wrist: bool = False) -> dict[str, Any]:
    """The store's per-step values (docs/episode_store.md) for one control-loop step; ``record_wrist``: the wrist
    camera's frame too (stores made with cameras.wrist)."""
    observation = step.observation
    frame, arm, gripper = observation.frame, observation.arm, observation.gripper
    measured_gripper = gripper.width if gripper.width is not None else gripper.command
    sent = step.sent
    if sent is not None:
        command_joints, command_tcp, command_gripper = sent.joints_rad, sent.tcp_pose, sent.gripper
    else:  # the arm held: what it was told is to stay where it is, with the gripper as applied
        command_joints, command_tcp, command_gripper = arm.joints_rad, arm.tcp_pose, gripper.command
    record: dict[str, Any] = {
        "color": frame.color,
        "timestamp_s": observation.time_s,
        "color_timestamp_s": frame.timestamp_s,
        "color_frame_number": frame.frame_number,
        "joints_rad": arm.joints_rad,
        "tcp_pose": arm.tcp_pose,
        "gripper_state": np.float32(measured_gripper),
        "command_joints_rad": command_joints,
        "command_tcp_pose": command_tcp,
        "command_gripper": np.float32(gripper.command if command_gripper is None else command_gripper),
        "command_clamped": bool(sent is not None and sent.clamped),
        "command_held": sent is None,
        **{key: seconds_or_nan(step.timing.get(key)) for key in TIMING_KEYS},
    }
    if record_depth:
        if frame.depth_mm is None:
            raise ValueError("recording.record_depth is on but the camera delivered no depth frame: enable "
                             "camera.depth in hardware.yaml (or turn recording.record_depth off)")
        record["depth_mm"] = frame.depth_mm
    if record_wrist:
        wrist = observation.wrist
        if wrist is None:
            raise ValueError("this store records the wrist camera (wrist_color) but the robot delivered no wrist "
                             "frame: set cameras.wrist in hardware.yaml as when the store was made")
        record.update({WRIST_COLOR_KEY: wrist.color, "wrist_color_timestamp_s": wrist.timestamp_s,
                       "wrist_color_frame_number": wrist.frame_number})
    return record


class EpisodeRecorder:
    """Streams the control loop's steps into ``store``; commits what ``judge`` accepts, discards the rest.

    Call :meth:`prepare` before each episode with its metadata (instruction, object, scene, ...).
    """

    def __init__(self, store: EpisodeStore, *, judge: Judge = save_completed, image_queue: int = 8,
                 image_threads: int = 2) -> None:
        self.store = store
        self.judge = judge
        self.record_depth = "depth_mm" in store.schema.keys
        self.record_wrist = WRIST_COLOR_KEY in store.schema.keys
        self._image_queue, self._image_threads = image_queue, image_threads
        self._meta: dict[str, Any] = {}
        self._writer = None
        self.outcomes: list[EpisodeOutcome] = []

    def prepare(self, meta: Mapping[str, Any]) -> None:
        """Metadata of the next episode (JSON-serialisable); the instruction is added at its start."""
        self._meta = dict(meta)

    @property
    def last_outcome(self) -> EpisodeOutcome | None:
        return self.outcomes[-1] if self.outcomes else None

    # -- Subscriber ----------------------------------------------------------------------------------
    def on_episode_start(self, instruction: str) -> None:
        self.abandon("a new episode started before the previous one ended")
        self._writer = self.store.begin_episode({**self._meta, "instruction": instruction},
                                                image_queue=self._image_queue, image_threads=self._image_threads)

    def on_step(self, step: Step) -> None:
        self._writer.add_step(step_record(step, self.record_depth, self.record_wrist))

    def on_episode_end(self, result: EpisodeResult) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        verdict = self.judge(result)
        end_meta = {"outcome": result.status.value, "steps": result.steps, "duration_s": round(result.duration_s, 3),
                    "late_ticks": result.late_ticks, "end_reason": result.reason, **verdict.meta}
        if verdict.save:
            index = writer.commit(end_meta)
            outcome = EpisodeOutcome(result.status, True, result.steps, result.duration_s, result.late_ticks,
                                     verdict.reason, index, {**self._meta, **end_meta})
        else:
            writer.discard()
            log.info("episode not saved: %s", verdict.reason)
            outcome = EpisodeOutcome(result.status, False, result.steps, result.duration_s, result.late_ticks,
                                     verdict.reason, None, {**self._meta, **end_meta})
        self.outcomes.append(outcome)

    def abandon(self, why: str) -> None:
        """Discard an episode left open (the loop raised before ``on_episode_end``); nothing saved is touched."""
        writer, self._writer = self._writer, None
        if writer is not None and writer.is_open:
            log.warning("discarding the unfinished episode (%d steps): %s", writer.num_steps, why)
            writer.discard()
