"""The closed-loop step log: every tick of a policy episode as one episode of a crash-safe episode store.

The store has the recorder's keys (``collect.schema.RECORDING_KEYS`` plus the colour image, so ``fanvla collect
view`` and every store tool read it) and the policy's own keys (``POLICY_STEP_KEYS``): the action predicted,
whether a command reached the arm, the watchdog status and the latencies; the step's delays along the
sensing-acting chain (capture -> observation -> command -> motion, robot/latency.py); and the execution's keys
(``exec_*``, robot/execution.py): which observation (and chunk step) the command came from, its age, the answer
latency with the injected part, and the loop's wait. Episodes that end badly are saved too, with ``status`` in
their metadata (``aborted``, ``timeout``, ...): an evaluation needs every trial's log.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from collect.layout import utc_now_iso
from collect.recorder import seconds_or_nan
from collect.recorder import step_record as recording_row
from collect.schema import WRIST_COLOR_KEY, KeySpec, StoreSchema, recording_schema
from collect.store import EpisodeStore
from policy.action_space import ACTION_DIM
from robot.runtime import EpisodeResult, EpisodeStatus, Step

log = logging.getLogger(__name__)

WATCHDOG_CODES = {"ok": 0, "hold": 1, "stop": 2}
POLICY_STEP_KEYS: dict[str, KeySpec] = {
    "action": KeySpec("float64", (ACTION_DIM,), "action space of the checkpoint (episode metadata 'action_space')",
                      "action predicted for this step; NaN when none arrived"),
    "action_received": KeySpec("bool", (), "flag", "an action arrived (it may still have been dropped as stale or "
                                                   "rejected by the safety layer)"),
    "command_sent": KeySpec("bool", (), "flag", "a fresh command reached the arm; false = the arm held"),
    "watchdog": KeySpec("uint8", (), "0 ok, 1 hold, 2 stop", "watchdog status at this tick"),
    "late": KeySpec("bool", (), "flag", "the tick started late"),
    "policy_latency_s": KeySpec("float64", (), "s", "round trip of the policy call (NaN: not called)"),
    "server_inference_s": KeySpec("float64", (), "s", "model time reported by the policy (NaN: none)"),
    "server_total_s": KeySpec("float64", (), "s", "request time reported by the server (NaN: none / in-process)"),
    "exec_in_motion": KeySpec("bool", (), "flag", "no fresh command, but the last one still under way (a tick "
                                                  "between commands): the arm was not stopped"),
    "exec_source_step": KeySpec("int32", (), "step", "step of the observation the applied (or dropped) answer was "
                                                     "computed from; -1: none this tick"),
    "exec_chunk_index": KeySpec("int32", (), "index", "index of the command within its answer's chunk (0: single "
                                                      "action); -1: none this tick"),
    "exec_action_age_s": KeySpec("float64", (), "s", "age of that answer's observation when applied (NaN: none)"),
    "exec_answer_latency_s": KeySpec("float64", (), "s", "an answer arrived this tick: time from asking to its "
                                                         "arrival, injected latency included (NaN: none arrived)"),
    "exec_injected_latency_s": KeySpec("float64", (), "s", "the injected part of exec_answer_latency_s (NaN: none "
                                                           "arrived)"),
    "exec_wait_s": KeySpec("float64", (), "s", "sync execution: how long the loop waited for the answer (NaN: "
                                               "other modes)"),
}


def step_log_schema(config, intrinsics=None) -> StoreSchema:
    """The recorder's schema (colour, no depth) plus ``POLICY_STEP_KEYS``."""
    base = recording_schema(config, intrinsics, record_depth=False)
    return StoreSchema(keys={**base.keys, **POLICY_STEP_KEYS}, rate_hz=base.rate_hz, image_codec=base.image_codec,
                       noop=base.noop, camera_intrinsics=base.camera_intrinsics, hardware=base.hardware)


def step_record(step: Step, record_wrist: bool = False) -> dict[str, Any]:
    """One store row for a control-loop step: the recorder's row (``collect.recorder.step_record``: while the arm
    holds, the command keys hold the hold target) plus ``POLICY_STEP_KEYS``."""
    info = step.agent_info
    action = info.get("action")
    timing = info.get("server_timing") or {}
    return {
        **recording_row(step, record_depth=False, record_wrist=record_wrist),
        "action": np.asarray(action, dtype=np.float64) if action is not None else np.full(ACTION_DIM, np.nan),
        "action_received": action is not None,
        "command_sent": step.sent is not None,
        "watchdog": np.uint8(WATCHDOG_CODES[str(step.watchdog)]),
        "late": bool(step.late),
        "policy_latency_s": seconds_or_nan(info.get("latency_s")),
        "server_inference_s": seconds_or_nan(timing.get("inference_s")),
        "server_total_s": seconds_or_nan(timing.get("total_s")),
        "exec_in_motion": bool(step.in_motion),
        "exec_source_step": np.int32(info.get("exec_source_step", -1)),
        "exec_chunk_index": np.int32(info.get("exec_chunk_index", -1)),
        "exec_action_age_s": seconds_or_nan(info.get("exec_action_age_s")),
        "exec_answer_latency_s": seconds_or_nan(info.get("exec_answer_latency_s")),
        "exec_injected_latency_s": seconds_or_nan(info.get("exec_injected_latency_s")),
        "exec_wait_s": seconds_or_nan(info.get("exec_wait_s")),
    }


def _quantiles(values: list[float], prefix: str) -> dict[str, float | None]:
    array = np.asarray(values, dtype=np.float64)
    if not array.size:
        return {f"{prefix}_p50_s": None, f"{prefix}_p90_s": None, f"{prefix}_max_s": None}
    return {f"{prefix}_p50_s": float(np.quantile(array, 0.5)), f"{prefix}_p90_s": float(np.quantile(array, 0.9)),
            f"{prefix}_max_s": float(array.max())}


class EpisodeSummary:
    """A control-loop subscriber counting what the policy did in an episode (held ticks, errors, latencies, watchdog
    events)."""

    def __init__(self) -> None:
        self.on_episode_start("")

    def on_episode_start(self, instruction: str) -> None:
        self.steps = self.sent = self.in_motion = self.received = self.stale = self.errors = self.superseded = 0
        self.watchdog_holds = self.watchdog_stops = 0
        self.latencies_s: list[float] = []
        self.answer_latencies_s: list[float] = []
        self.action_ages_s: list[float] = []

    def on_step(self, step: Step) -> None:
        info = step.agent_info
        self.steps += 1
        self.sent += step.sent is not None
        self.in_motion += bool(step.in_motion)
        self.received += info.get("action") is not None
        self.stale += bool(info.get("stale"))
        self.errors += "agent_error" in info
        self.superseded += int(info.get("exec_superseded", 0))
        self.watchdog_holds += str(step.watchdog) == "hold"
        self.watchdog_stops += str(step.watchdog) == "stop"
        for key, values in (("latency_s", self.latencies_s), ("exec_answer_latency_s", self.answer_latencies_s)):
            if math.isfinite(seconds_or_nan(info.get(key))):
                values.append(float(info[key]))
        if step.sent is not None and math.isfinite(seconds_or_nan(info.get("exec_action_age_s"))):
            self.action_ages_s.append(float(info["exec_action_age_s"]))

    def on_episode_end(self, result: EpisodeResult) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_s)
        quantile = (lambda q: float(np.quantile(latencies, q))) if latencies.size else (lambda q: None)
        return {"commands_sent": self.sent, "held_steps": self.steps - self.sent - self.in_motion,
                "ticks_between_commands": self.in_motion, "actions_received": self.received,
                # answers (predictions) received: one per tick in sync mode, one per chunk in chunk mode
                "answers_received": len(self.answer_latencies_s),
                "stale_actions": self.stale, "superseded_answers": self.superseded, "policy_errors": self.errors,
                "watchdog_hold_ticks": self.watchdog_holds, "watchdog_stops": self.watchdog_stops,
                "latency_p50_s": quantile(0.5), "latency_p99_s": quantile(0.99),
                "latency_max_s": float(latencies.max()) if latencies.size else None,
                **_quantiles(self.answer_latencies_s, "answer_latency"),
                **_quantiles(self.action_ages_s, "action_age")}


class StepLog:
    """A control-loop subscriber writing each episode into ``store`` (opened for appending).

    ``begin(meta)`` before an episode adds per-trial metadata (task, seed, scene, ...); ``context()`` is asked at
    each episode start (the policy's checkpoint id and action space, known once the agent is reset);
    ``abort(reason)`` saves what was recorded when the episode ended by an exception rather than through the
    loop. The commit metadata adds ``status`` (= ``outcome``), ``reason``, ``success`` (status completed: a
    policy raises no events, so only the success check completes an episode), timing, and ``summary``'s
    counts when given."""

    def __init__(self, store: EpisodeStore, meta: Mapping[str, Any] | None = None,
                 summary: EpisodeSummary | None = None,
                 context: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.store, self.summary, self.context = store, summary, context
        self._record_wrist = WRIST_COLOR_KEY in store.schema.keys
        self._session_meta = dict(meta or {})
        self._episode_meta: dict[str, Any] = {}
        self._writer = None
        self.last_index: int | None = None

    def begin(self, meta: Mapping[str, Any] | None = None) -> None:
        self._episode_meta = dict(meta or {})

    def on_episode_start(self, instruction: str) -> None:
        self.last_index = None
        context = dict(self.context()) if self.context is not None else {}
        self._writer = self.store.begin_episode({**self._session_meta, **context, **self._episode_meta,
                                                 "instruction": instruction, "started_at": utc_now_iso()})

    def on_step(self, step: Step) -> None:
        self._writer.add_step(step_record(step, self._record_wrist))

    def on_episode_end(self, result: EpisodeResult) -> None:
        self._finish(result.status, result.reason, {"duration_s": result.duration_s, "late_ticks": result.late_ticks})

    def abort(self, reason: str) -> None:
        if self._writer is not None and self._writer.is_open:
            self._finish(EpisodeStatus.ABORTED, reason, {})

    def _finish(self, status: EpisodeStatus, reason: str, timing: dict[str, Any]) -> None:
        writer, self._writer = self._writer, None
        if writer is None or not writer.is_open:
            return
        if writer.num_steps == 0:  # nothing happened that could be replayed; the store refuses empty episodes
            writer.discard()
            log.warning("nothing to save: the episode ended before a step was logged (%s)", reason)
            return
        outcome = {"status": status.value, "outcome": status.value, "reason": reason,
                   "success": status == EpisodeStatus.COMPLETED, "steps": writer.num_steps, **timing}
        if self.summary is not None:
            outcome.update(self.summary.summary())
        self.last_index = writer.commit(outcome)
