"""The trial runner: every selected trial of every selected task, resumable, each scored once.

``Evaluation.run()`` walks the tasks in order and their trials 0..N-1, skipping every trial already scored in
RUN_DIR (see ``eval_protocols.results``). A trial:

1. wipes what an interrupted attempt of the same trial left (its step log and video; never a score),
2. lets the judge set up the scene (the twin places it, or the operator does at the marker),
3. runs one closed-loop episode with a step log (``trials/<task>/<NNN>/steps.zarr``) and a video
   (``video.mp4``),
4. lets the judge score it, and appends the score to results.jsonl (fsync) — the only moment a trial counts.

The robot bundle, the renderer and the policy stay open across trials; only the step-log store is per trial.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from collect.layout import utc_now_iso
from collect.schema import ImageCodecSpec
from collect.store import EpisodeStore
from eval_protocols.judges import Judge
from eval_protocols.policies import PolicyUnderTest
from eval_protocols.results import RunDirError, RunStore, trial_dir
from eval_protocols.task_spec import TaskSpec, Trial
from eval_protocols.video import TrialVideo
from policy.step_log import step_log_schema
from robot.scene import SceneSampler

log = logging.getLogger(__name__)

STEP_LOG, VIDEO = "steps.zarr", "video.mp4"


def sim_eval_overrides(config) -> dict[str, Any]:
    """The twin's evaluation camera: colour only (nothing in an evaluation looks at depth), rendered at the control
    rate instead of 30 frames/s (the newest frame at a tick is then ~30 ms older on average, and rendering is the
    twin's main cost)."""
    return {"camera.depth.enabled": False, "camera.color.fps": math.ceil(config.recording.rate_hz)}

# Trial step logs are for review, not training: JPEG frames cost a tenth of PNG's encoding time.
STEP_LOG_CODEC = "jpeg"


@dataclass(frozen=True)
class TrialReport:
    """What ``Evaluation.run`` tells its progress callback after each scored trial."""

    record: dict[str, Any]
    done: int
    total: int


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars/arrays as plain numbers/lists and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


class Evaluation:
    def __init__(self, robot, policy: PolicyUnderTest, judge: Judge, store: RunStore, tasks: list[TaskSpec],
                 trials: int, seed: int, on_trial: Callable[[TrialReport], None] | None = None) -> None:
        self.robot, self.policy, self.judge, self.store = robot, policy, judge, store
        self.tasks, self.trials, self.seed = tasks, trials, seed
        self.sampler = SceneSampler(robot.config)
        schema = step_log_schema(robot.config, robot.camera.intrinsics)
        self.schema = replace(schema, image_codec=ImageCodecSpec(STEP_LOG_CODEC, robot.config.recording.jpeg_quality))
        self.on_trial = on_trial

    def pending(self) -> list[tuple[TaskSpec, int]]:
        return [(task, i) for task in self.tasks for i in range(self.trials) if not self.store.is_scored(task.name, i)]

    def progress(self) -> dict[str, dict[str, int]]:
        out = {}
        for task in self.tasks:
            records = [r for r in self.store.records(task.name) if int(r["trial"]) < self.trials]
            out[task.name] = {"trials": self.trials, "scored": len(records),
                              "successes": sum(bool(r["success"]) for r in records)}
        return out

    def run(self) -> dict[str, dict[str, int]]:
        pending = self.pending()
        total = len(self.tasks) * self.trials
        if len(pending) < total:
            log.info("resuming: %d of %d trials already scored", total - len(pending), total)
        for task, index in pending:
            record = self.run_trial(task, task.trial(self.sampler, self.seed, index))
            if self.on_trial is not None:
                self.on_trial(TrialReport(record, total - len(self.pending()), total))
        return self.progress()

    def run_trial(self, task: TaskSpec, trial: Trial, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run and score one trial; ``extra`` keys go into its record (an A/B run's pair and slot)."""
        if self.store.is_scored(task.name, trial.index):
            raise RunDirError(f"{task.name} trial {trial.index} is already scored")
        directory = trial_dir(self.store.run_dir, task.name, trial.index)
        if directory.exists():  # left by an attempt that died before its score was written
            log.info("%s trial %d: replacing the step log/video of an unscored attempt", task.name, trial.index)
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        wall_start, started_at = time.perf_counter(), utc_now_iso()
        self.judge.prepare(task, trial, self.progress())
        video = TrialVideo(directory / VIDEO, self.robot.config.recording.rate_hz, f"{task.name} #{trial.index:02d}")
        meta = {"task": task.name, "trial": trial.index, "seed": trial.seed, "object": trial.object_name,
                "scene": trial.scene.to_dict(), "policy": self.policy.identity.get("id")}
        physics_before = self._physics_timing()
        with EpisodeStore.create(directory / STEP_LOG, self.schema) as step_log:
            runner = self.policy.runner(self.robot, step_log, [video, *self.judge.subscribers()], trial.seed)
            try:
                result = runner.run_episode(trial.instruction, task.max_duration_s, self.judge.is_success(), meta)
            finally:
                video.abandon()  # no-op after a normal end (the video is in place); removes a partial one
        twin_timing = self._twin_timing(physics_before)
        self._check_same_policy(result.checkpoint_id)
        verdict = self.judge.score(trial, result.episode)
        episode = result.episode
        record = json_safe({
            "task": task.name, "trial": trial.index, "success": verdict.success, "scored_by": verdict.scored_by,
            "note": verdict.note, "seed": trial.seed, "object": trial.object_name, "instruction": trial.instruction,
            "episode": {"status": episode.status.value, "reason": episode.reason, "steps": episode.steps,
                        "duration_s": round(episode.duration_s, 3), "late_ticks": episode.late_ticks},
            "policy_id": result.checkpoint_id, "summary": result.summary, "scene": trial.scene.to_dict(),
            **({"twin_timing": twin_timing} if twin_timing else {}),
            "details": verdict.details,
            "video": str((directory / VIDEO).relative_to(self.store.run_dir)) if (directory / VIDEO).exists() else None,
            "step_log": str((directory / STEP_LOG).relative_to(self.store.run_dir)), "log_index": result.log_index,
            "started_at": started_at, "scored_at": utc_now_iso(), "wall_s": round(time.perf_counter() - wall_start, 2),
            **(extra or {}),
        })
        self.store.append(record)
        log.info("%s trial %d: %s (%s; %s after %d steps)", task.name, trial.index,
                 "SUCCESS" if verdict.success else "failure", verdict.note or verdict.scored_by, episode.status.value,
                 episode.steps)
        return record

    def _physics_timing(self):
        twin = getattr(self.robot, "twin", None)
        return twin.physics_timing() if twin is not None else None

    def _twin_timing(self, before) -> dict[str, Any] | None:
        """The real-time twin's physics thread during the trial: cycles run and cycles that started late (the
        twin, not the policy, falling behind: CPU contention)."""
        after = self._physics_timing()
        if before is None or after is None:
            return None
        return {"physics_cycles": after.ticks - before.ticks,
                "physics_late_cycles": after.late_ticks - before.late_ticks}

    def _check_same_policy(self, checkpoint_id: str) -> None:
        expected = self.policy.identity.get("id")
        if checkpoint_id and expected and checkpoint_id != expected:
            raise RunDirError(f"the policy answered as {checkpoint_id}, but this run evaluates {expected}; the server "
                              f"was restarted with another checkpoint. The trial was not scored.")
