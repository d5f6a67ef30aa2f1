"""The operator's side of a trial, shared by the trial runner (one thread) and the web console (request threads).

Phases of a trial, in order::

    moving    the arm goes to the trial's start pose              (nothing to press)
    setup     the operator places object and box at the marker     [start]
    running   the policy acts                                      [stop]
    scoring   the operator judges the outcome                      [success] [failure] (+ note)
    (next trial ...)  finished: every selected trial is scored

The runner calls ``show_setup`` / ``wait_for_start`` / ``running`` / ``wait_for_score``; the console reads
``snapshot()`` and posts ``press_start`` / ``press_stop`` / ``press_score``. A button pressed in the wrong phase is
refused with a message saying why (the page shows it), never queued for later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from robot.errors import RobotError
from robot.runtime import EpisodeResult, Step

PHASES = ("idle", "moving", "setup", "running", "scoring", "finished")
MAX_NOTE_CHARS = 500


class OperatorStopped(RobotError):
    """The operator pressed stop: the control loop ends the episode (arm held) as it does on a hardware stop."""


class SessionClosed(RuntimeError):
    """The session was closed (Ctrl-C, the run ended) while the runner waited for the operator."""


@dataclass
class ConsoleState:
    phase: str = "idle"
    task: str = ""
    task_title: str = ""
    trial: int = -1
    trials: int = 0
    instruction: str = ""
    operator_text: str = ""
    scene: dict[str, Any] = field(default_factory=dict)
    episode: dict[str, Any] = field(default_factory=dict)  # status, reason, steps, duration_s of the last episode
    progress: dict[str, Any] = field(default_factory=dict)  # task -> {"scored": n, "successes": k, "trials": N}
    message: str = ""
    policy_label: str = ""  # A/B runs: "policy 1" / "policy 2", never which policy (eval_protocols/ab.py)
    sequence: int = 0  # increases at every change: the page re-renders when it moves


class ConsoleSession:
    def __init__(self) -> None:
        self._state = ConsoleState()
        self._changed = threading.Condition()
        self._stop_requested = False
        self._start_pressed = False
        self._score: tuple[bool, str] | None = None
        self._closed = False

    # -- read by the web page -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._changed:
            state = self._state
            return {"phase": state.phase, "task": state.task, "task_title": state.task_title, "trial": state.trial,
                    "trials": state.trials, "instruction": state.instruction, "operator_text": state.operator_text,
                    "scene": dict(state.scene), "episode": dict(state.episode), "progress": dict(state.progress),
                    "message": state.message, "policy_label": state.policy_label,
                    "sequence": state.sequence}

    @property
    def scene(self) -> dict[str, Any]:
        with self._changed:
            return dict(self._state.scene)

    # -- buttons ------------------------------------------------------------------------------------------
    def press_start(self) -> str:
        return self._press("setup", "start", lambda: setattr(self, "_start_pressed", True))

    def press_stop(self) -> str:
        return self._press("running", "stop", lambda: setattr(self, "_stop_requested", True))

    def press_score(self, success: bool, note: str = "") -> str:
        note = str(note or "").strip()
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"the note has {len(note)} characters; at most {MAX_NOTE_CHARS} are kept")
        return self._press("scoring", "success" if success else "failure",
                           lambda: setattr(self, "_score", (bool(success), note)))

    def _press(self, phase: str, button: str, action: Callable[[], None]) -> str:
        with self._changed:
            if self._state.phase != phase:
                raise PhaseError(f"'{button}' can be pressed only while {phase}; the trial is {self._state.phase}")
            action()
            self._changed.notify_all()
            return f"{button} pressed"

    # -- driven by the trial runner -----------------------------------------------------------------------
    def _update(self, **changes: Any) -> None:
        with self._changed:
            for key, value in changes.items():
                setattr(self._state, key, value)
            self._state.sequence += 1
            self._changed.notify_all()

    def show_trial(self, task: str, task_title: str, trial: int, trials: int, instruction: str, operator_text: str,
                   scene: dict[str, Any], progress: dict[str, Any], policy_label: str = "") -> None:
        with self._changed:
            self._start_pressed = self._stop_requested = False
            self._score = None
        self._update(phase="moving", task=task, task_title=task_title, trial=trial, trials=trials,
                     instruction=instruction, operator_text=operator_text, scene=scene, episode={},
                     progress=progress, policy_label=policy_label, message="the arm moves to the start pose")

    def wait_for_start(self) -> None:
        self._update(phase="setup", message="place the object and the box at the markers, then press start")
        self._wait(lambda: self._start_pressed)

    def running(self) -> None:
        self._update(phase="running", message="running; press stop to end the trial early")

    def stop_requested(self) -> bool:
        with self._changed:
            return self._stop_requested

    def wait_for_score(self, result: EpisodeResult) -> tuple[bool, str]:
        self._update(phase="scoring", episode={"status": result.status.value, "reason": result.reason,
                                               "steps": result.steps, "duration_s": round(result.duration_s, 2)},
                     message="judge the trial: success or failure (a note is optional)")
        self._wait(lambda: self._score is not None)
        with self._changed:
            return self._score

    def finish(self, progress: dict[str, Any]) -> None:
        self._update(phase="finished", progress=progress, message="every selected trial is scored")

    def set_progress(self, progress: dict[str, Any]) -> None:
        self._update(progress=progress)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _wait(self, condition: Callable[[], bool]) -> None:
        with self._changed:
            while not condition():
                if self._closed:
                    raise SessionClosed("the operator console was closed while waiting for the operator")
                self._changed.wait(timeout=0.5)


class PhaseError(RuntimeError):
    """A button pressed in a phase where it means nothing."""


class StopButtonWatch:
    """A control-loop subscriber that ends the episode when the operator pressed stop."""

    def __init__(self, session: ConsoleSession) -> None:
        self.session = session

    def on_episode_start(self, instruction: str) -> None:
        pass

    def on_step(self, step: Step) -> None:
        if self.session.stop_requested():
            raise OperatorStopped("stopped by the operator")

    def on_episode_end(self, result: EpisodeResult) -> None:
        pass
