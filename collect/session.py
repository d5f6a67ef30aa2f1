"""A recording session: N episodes into one store, with the scripted expert (twin) or a teleop device.

``RecordingSession(config, options).run()``:

- opens (or creates) the store first, so an incompatible or unwritable store is refused before any
  hardware moves; a store that exists is resumed: ``options.episodes`` is the number of episodes the
  store should hold at the end, so re-running the same command after a crash records what is missing;
- opens the robot (``sim``: lock-step twin for the scripted expert, realtime twin for a human;
  ``real``: the arm and the D455);
- per episode: the object (cycled over ``scene.objects``, so N = 3k gives k per object, or the one
  asked for) and its instruction; sim: a seeded scene placed in the twin (out of servo mode); real:
  the arm moves home and the operator is told what to set up; a teleop operator starts the episode
  with the start key; then the shared control loop (robot/runtime.py) runs with the
  :class:`~collect.recorder.EpisodeRecorder` and a live status line as subscribers;
- saves completed episodes (scripted: only successful ones), re-records discarded ones, stops on quit,
  and stops with :class:`RecordingAborted` when an episode is aborted (watchdog, camera, arm error):
  the saved episodes are intact and re-running the command resumes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from collect.errors import StoreNotFoundError, StoreNotWritableError
from collect.recorder import EpisodeOutcome, EpisodeRecorder, Verdict, discard_reason
from collect.schema import recording_schema
from collect.store import EpisodeStore
from robot.errors import RobotError
from robot.runtime import ControlLoop, EpisodeResult, EpisodeStatus, Step
from robot.scene import PerturbationRanges, SceneSampler, SceneSpec

log = logging.getLogger(__name__)

SCRIPTED = "scripted"
TELEOPS = ("keyboard", "spacemouse", "gamepad", SCRIPTED)
SCRIPTED_MAX_EPISODE_S = 60.0
TELEOP_MAX_EPISODE_S = 600.0
_STATUS_INTERVAL_S = 0.25
REALTIME_IMAGE_BACKLOG_S = 2.0


class RecordingAborted(RobotError):
    """An episode was aborted (or the scripted expert kept failing); the saved episodes are intact."""


@dataclass(frozen=True)
class SessionOptions:
    backend: str  # "sim" | "real"
    teleop: str  # keyboard | spacemouse | gamepad | scripted
    episodes: int  # episodes the store holds at the end
    store: Path
    instruction: str | None = None  # default: scene.instruction_template for the object
    object_name: str | None = None  # default: cycle over scene.objects
    seed: int = 0
    keyboard: str = "auto"  # auto | pynput | terminal
    require_existing: bool = False  # --resume: the store must exist
    max_episode_s: float | None = None
    scene_ranges: PerturbationRanges | None = None  # default: the nominal jitters of hardware.yaml
    max_consecutive_failures: int = 5  # scripted: unsaved episodes in a row before giving up

    def check(self, config) -> None:
        """Refuse contradictory options before anything is opened (ValueError with what to change)."""
        if self.backend not in ("sim", "real"):
            raise ValueError(f"unknown backend {self.backend!r}; choose sim or real")
        if self.teleop not in TELEOPS:
            raise ValueError(f"unknown teleop {self.teleop!r}; choose one of {', '.join(TELEOPS)}")
        if self.teleop == SCRIPTED and self.backend != "sim":
            raise ValueError("--teleop scripted needs --backend sim: the scripted expert reads the twin's privileged "
                             "scene (object and box poses), which the real robot does not have; record real "
                             "demonstrations with keyboard, spacemouse or gamepad")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if self.object_name is not None and self.object_name not in config.scene.objects:
            raise ValueError(f"unknown object {self.object_name!r}; hardware.yaml scene.objects has "
                             f"{sorted(config.scene.objects)}")

    @property
    def episode_limit_s(self) -> float:
        if self.max_episode_s is not None:
            return self.max_episode_s
        return SCRIPTED_MAX_EPISODE_S if self.teleop == SCRIPTED else TELEOP_MAX_EPISODE_S


@dataclass
class SessionSummary:
    store: Path
    episodes_before: int
    frames_before: int
    episodes_after: int = 0
    frames_after: int = 0
    noop_frames: int = 0  # among the frames recorded in this session
    quit: bool = False
    wall_s: float = 0.0
    outcomes: list[EpisodeOutcome] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return self.episodes_after - self.episodes_before

    @property
    def frames(self) -> int:
        return self.frames_after - self.frames_before

    @property
    def discarded(self) -> int:
        return sum(1 for outcome in self.outcomes if not outcome.saved)

    @property
    def noop_percent(self) -> float:
        return 100.0 * self.noop_frames / self.frames if self.frames else 0.0

    def text(self) -> str:
        rate = f", {self.frames / self.wall_s:.1f} steps/s" if self.wall_s > 0 and self.frames else ""
        return (f"{self.store}: saved {self.saved} episodes ({self.frames} frames, {self.noop_percent:.1f} % no-op "
                f"steps) in {self.wall_s:.1f} s{rate}; discarded {self.discarded}; the store now holds "
                f"{self.episodes_after} episodes, {self.frames_after} frames" + (" (quit)" if self.quit else ""))


def scene_seed(session_seed: int, episode_index: int, attempt: int) -> int:
    """The scene seed of an episode slot and attempt: deterministic, so a resumed session continues the sequence."""
    return int(np.random.SeedSequence([session_seed, episode_index, attempt]).generate_state(1)[0])


class StatusLine:
    """A live one-line status (episode n/N, elapsed, rate, late ticks) on a terminal; a subscriber."""

    def __init__(self, out: TextIO, total: int, clock) -> None:
        self.out, self.total, self.clock = out, total, clock
        self.live = bool(getattr(out, "isatty", lambda: False)())
        self.episode = 0
        self.saved = 0
        self._last_print = 0.0

    def on_episode_start(self, instruction: str) -> None:
        self._steps = self._late = 0
        self._start_wall, self._start_clock = time.monotonic(), self.clock.now_s()

    def on_step(self, step: Step) -> None:
        self._steps += 1
        self._late += step.late
        now = time.monotonic()
        if self.live and now - self._last_print >= _STATUS_INTERVAL_S:
            self._last_print = now
            wall = max(now - self._start_wall, 1e-9)
            tcp = step.observation.arm.tcp_pose
            self.out.write(f"\r episode {self.episode}/{self.total} | {self.clock.now_s() - self._start_clock:6.1f} s"
                           f" | {self._steps / wall:5.1f} steps/s | late {self._late} | saved {self.saved} | TCP "
                           f"{tcp[0]:.0f} {tcp[1]:.0f} {tcp[2]:.0f} mm | gripper "
                           f"{'open' if step.observation.gripper.command >= 0.5 else 'closed'}\x1b[K")
            self.out.flush()

    def on_episode_end(self, result: EpisodeResult) -> None:
        if self.live:
            self.out.write("\r\x1b[K")
            self.out.flush()


class RecordingSession:
    def __init__(self, config, options: SessionOptions, out: TextIO | None = None) -> None:
        options.check(config)
        self.config = config
        self.options = options
        self.out = out or sys.stderr
        self.objects = sorted(config.scene.objects)
        self._agent = None
        self._robot = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the store -----------------------------------------------------------------------------------
    def _open_existing_store(self) -> EpisodeStore | None:
        """The store to resume, checked against this configuration before the robot is touched (None: create)."""
        path = self.options.store
        if path.exists():
            return EpisodeStore.open(path, mode="a", expect=recording_schema(self.config))
        if self.options.require_existing:
            raise StoreNotFoundError(f"no episode store at {path} to resume (--resume): check the path, or leave "
                                     f"out --resume to create a new store there")
        parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK):
            raise StoreNotWritableError(f"cannot create the episode store {path}: {parent} is not writable "
                                        f"(permissions or a read-only file system); choose another --out")
        return None

    def _final_store(self, existing: EpisodeStore | None, intrinsics) -> EpisodeStore:
        schema = recording_schema(self.config, intrinsics)
        if existing is None:
            return EpisodeStore.create(self.options.store, schema)
        existing.check_compatible(schema)  # now with the camera's intrinsics
        return existing

    # -- the session ---------------------------------------------------------------------------------
    def run(self) -> SessionSummary:
        from robot.factory import open_robot

        options = self.options
        started = time.monotonic()
        with ExitStack() as stack:
            existing = self._open_existing_store()
            if existing is not None:
                stack.callback(existing.close)
            if existing is not None and existing.num_episodes >= options.episodes:
                self.say(f"{options.store} already holds {existing.num_episodes} episodes (asked for "
                         f"{options.episodes}): nothing to record")
                summary = SessionSummary(options.store, existing.num_episodes, existing.num_frames,
                                         existing.num_episodes, existing.num_frames)
                summary.wall_s = time.monotonic() - started
                return summary
            self._agent = self._open_agent(stack)  # a missing device is reported before the robot moves
            realtime = options.teleop != SCRIPTED if options.backend == "sim" else None
            robot = stack.enter_context(open_robot(self.config, options.backend, seed=options.seed, realtime=realtime))
            self._robot = robot
            store = self._final_store(existing, robot.camera.intrinsics)
            if existing is None:
                stack.callback(store.close)
            summary = SessionSummary(options.store, store.num_episodes, store.num_frames)
            self.say(f"{'resuming' if summary.episodes_before else 'recording into'} {options.store}: "
                     f"{store.num_episodes} of {options.episodes} episodes saved")
            self._record(robot, store, summary)
            summary.episodes_after, summary.frames_after = store.num_episodes, store.num_frames
            summary.noop_frames = int(np.count_nonzero(store.noop_mask()[summary.frames_before:]))
        summary.wall_s = time.monotonic() - started
        return summary

    def _open_agent(self, stack: ExitStack):
        if self.options.teleop == SCRIPTED:
            return None  # one expert per episode (its own seeded generator)
        from collect.teleop import make_teleop

        teleop = stack.enter_context(make_teleop(self.options.teleop, self.config, keyboard=self.options.keyboard))
        self.say(f"teleop: {teleop.describe()}\n{teleop.help_text}")
        return teleop

    def _record(self, robot, store: EpisodeStore, summary: SessionSummary) -> None:
        options, config = self.options, self.config
        # In real time a full image queue would hold up the control loop (late ticks): let up to 2 s of
        # frames wait for the encoder threads. In lock-step, waiting only slows the simulation down.
        realtime = not robot.clock.is_simulated
        queue = max(8, math.ceil(REALTIME_IMAGE_BACKLOG_S * config.recording.rate_hz)) if realtime else 8
        recorder = EpisodeRecorder(store, judge=self._judge, image_queue=queue)
        status = StatusLine(self.out, options.episodes, robot.clock)
        loop = ControlLoop(robot, config.recording.rate_hz, config.safety.watchdog_hold_s,
                           config.safety.watchdog_stop_s, [recorder, status])
        sampler = SceneSampler(config) if options.backend == "sim" else None
        if options.backend == "real":
            robot.go_home()  # every episode starts from home
        attempt = failures = 0
        while store.num_episodes < options.episodes:
            index = store.num_episodes
            status.episode, status.saved = index + 1, store.num_episodes - summary.episodes_before
            object_name = options.object_name or self.objects[index % len(self.objects)]
            spec = self._place_scene(sampler, index, attempt, object_name)
            instruction = options.instruction or config.scene.instruction_for(object_name)
            agent = self._agent_for(index, attempt)
            if self._agent is not None and not self._operator_starts(index, instruction):
                summary.quit = True
                break
            recorder.prepare(self._episode_meta(index, attempt, object_name, spec))
            try:
                result = loop.run_episode(agent, instruction, options.episode_limit_s)
            except BaseException:
                recorder.abandon("the recording stopped with an error")
                raise
            outcome = recorder.last_outcome
            summary.outcomes.append(outcome)
            self._report(index, outcome)
            if options.backend == "real":
                robot.go_home()  # between episodes the arm waits at home
            if outcome.saved:
                attempt = failures = 0
                continue
            if result.status == EpisodeStatus.QUIT:
                summary.quit = True
                break
            if result.status == EpisodeStatus.ABORTED:
                raise RecordingAborted(f"episode {index + 1} was aborted ({result.reason}); it was not saved. The "
                                       f"{store.num_episodes} saved episodes ({store.num_frames} frames) in "
                                       f"{options.store} are intact: fix the cause, then re-run the same command "
                                       f"to resume")
            attempt += 1
            failures += options.teleop == SCRIPTED
            if failures >= options.max_consecutive_failures:
                raise RecordingAborted(f"the scripted expert failed {failures} episodes in a row (last: "
                                       f"{outcome.reason}); the {store.num_episodes} saved episodes are intact")

    def _place_scene(self, sampler: SceneSampler | None, index: int, attempt: int,
                     object_name: str) -> SceneSpec | None:
        if sampler is None:
            return None
        spec = sampler.sample(scene_seed(self.options.seed, index, attempt), object_name, self.options.scene_ranges)
        self._robot.twin.reset_scene(spec)  # the loop has left servo mode: the controller may be reset
        return spec

    def _agent_for(self, index: int, attempt: int):
        if self._agent is not None:
            return self._agent
        from collect.expert import ScriptedExpert

        rng = np.random.default_rng([self.options.seed, index, attempt, 1])
        self._expert = ScriptedExpert(self._robot.twin, self.config.recording.period_s, rng,
                                      gripper_settle_s=self.config.gripper.settle_s)
        return self._expert

    def _operator_starts(self, index: int, instruction: str) -> bool:
        """Tell the operator what to do; True once they press start, False when they quit."""
        if self.options.backend == "real":
            object_name = self.options.object_name or self.objects[index % len(self.objects)]
            self.say(f"\nepisode {index + 1}/{self.options.episodes}: place {object_name} and the box, then "
                     f"demonstrate: \"{instruction}\"")
        else:
            self.say(f"\nepisode {index + 1}/{self.options.episodes}: \"{instruction}\" (scene placed in the twin)")
        self.say("press the start key (Enter) to begin, Esc/q to quit")
        while True:
            started = self._agent.wait_for_start(timeout_s=0.5)
            if started is not None:
                return started

    def _episode_meta(self, index: int, attempt: int, object_name: str, spec: SceneSpec | None) -> dict[str, Any]:
        options = self.options
        teleop = options.teleop if self._agent is None else self._agent.describe()
        return {"object": object_name, "backend": options.backend, "teleop": teleop,
                "seed": scene_seed(options.seed, index, attempt) if spec is not None else None,
                "session_seed": options.seed, "attempt": attempt, "scene": spec.to_dict() if spec else None,
                "rate_hz": self.config.recording.rate_hz, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                # SDK version and calls (measured or possibly commanded joints), camera, latency: robot/factory.py
                "hardware_info": self._robot.hardware_info()}

    def _judge(self, result: EpisodeResult) -> Verdict:
        """Sim: score the episode (saved with it); scripted: keep only successes. Real: the operator decides."""
        meta: dict[str, Any] = {}
        twin = self._robot.twin if self._robot is not None else None
        if twin is not None:
            report = twin.task_success()
            meta = {"success": bool(report), "success_detail": report.reason}
        if self.options.teleop == SCRIPTED:
            meta["expert"] = {**self._expert.style.to_dict(), "grasp_attempts": self._expert.attempts}
        if result.status != EpisodeStatus.COMPLETED:
            return Verdict(False, meta, discard_reason(result))
        if self.options.teleop == SCRIPTED and not meta["success"]:
            return Verdict(False, meta, f"the scripted expert did not succeed ({meta['success_detail']})")
        return Verdict(True, meta, result.reason)

    def _report(self, index: int, outcome: EpisodeOutcome) -> None:
        what = f"saved as episode {outcome.index}" if outcome.saved else f"not saved: {outcome.reason}"
        success = outcome.meta.get("success")
        scored = "" if success is None else f", {'success' if success else 'failure'}"
        self.say(f"episode {index + 1}/{self.options.episodes} {what} ({outcome.steps} steps, "
                 f"{outcome.duration_s:.1f} s, {outcome.late_ticks} late ticks{scored})")
