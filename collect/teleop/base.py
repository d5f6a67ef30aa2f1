"""The teleoperation base: input devices feed an ``InputState``; ``Teleop`` turns it into arm commands.

``Teleop`` implements the runtime's ``Agent`` protocol (robot/runtime.py). Every tick it sends a TCP
target = measured TCP + the operator's motion scaled by hardware.yaml ``teleop`` (translation in mm and
rotation in degrees per command, base frame), plus the gripper opening (a toggle), and the episode
events (save, discard, quit). With no input the target is the measured pose: a fresh command that keeps
the watchdog fed and that the no-op rule marks. Devices run in their own threads (``InputSource``);
``Teleop`` is a context manager that starts and stops them.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robot.frames import apply_pose_delta
from robot.runtime import AgentOutput, Event, Observation
from robot.safety import Command
from robot.units import deg_to_rad

log = logging.getLogger(__name__)

AXES = ("x", "y", "z", "roll", "pitch", "yaw")  # motion axes, base frame; rotations about base x, y, z
NUM_AXES = len(AXES)
SPEED_STEPS = (0.25, 0.5, 1.0, 1.5, 2.0)  # speed factors the operator steps through with +/-


class TeleopUnavailableError(RuntimeError):
    """A teleop device cannot be used: its library is missing or no device is connected."""


def missing_library(device: str, module: str, error: BaseException | None = None) -> TeleopUnavailableError:
    detail = f" ({type(error).__name__}: {error})" if error is not None and not isinstance(error, ModuleNotFoundError) \
        else ""
    return TeleopUnavailableError(
        f"{device} teleop needs the Python package '{module}', which is not installed{detail}. Install the teleop "
        f"extra: pip install 'fanvla[teleop]' (or: pip install {module}); or choose another --teleop device")


@dataclass(frozen=True)
class MotionScale:
    """Full-scale motion per command: translation (mm) and rotation (deg) at input 1.0."""

    step_mm: float
    step_deg: float

    def delta(self, motion: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """[dx, dy, dz mm, rotation vector rad] for a normalised motion vector (-1..1 per axis)."""
        motion = np.clip(np.asarray(motion, dtype=np.float64), -1.0, 1.0)
        return np.concatenate([motion[:3] * self.step_mm * speed, motion[3:] * deg_to_rad(self.step_deg) * speed])


class InputState:
    """What the devices report, shared between their threads and the control loop (thread-safe).

    - ``held``: continuous motion per source (a held key, a stick, the SpaceMouse cap), -1..1 per axis;
    - ``pulse``: motion requested once since the last tick (a key press in a terminal, whose repeats
      keep it going while the key is held);
    - gripper toggles, episode events and the start key since the last tick.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, np.ndarray] = {}
        self._pulse = np.zeros(NUM_AXES)
        self._toggles = 0
        self._events: set[Event] = set()
        self._start = threading.Condition(self._lock)
        self._started = False
        self._quit = False
        self._speed_index = SPEED_STEPS.index(1.0)

    def set_held(self, source: str, motion: Sequence[float]) -> None:
        with self._lock:
            self._held[source] = np.clip(np.asarray(motion, dtype=np.float64), -1.0, 1.0)

    def pulse(self, axis: int, direction: float) -> None:
        with self._lock:
            self._pulse[axis] = float(np.clip(direction, -1.0, 1.0))

    def toggle_gripper(self) -> None:
        with self._lock:
            self._toggles += 1

    def raise_event(self, event: Event) -> None:
        with self._lock:
            self._events.add(event)
            if event is Event.QUIT:
                self._quit = True
                self._start.notify_all()

    def press_start(self) -> None:
        with self._lock:
            self._started = True
            self._start.notify_all()

    def change_speed(self, steps: int) -> float:
        with self._lock:
            self._speed_index = int(np.clip(self._speed_index + steps, 0, len(SPEED_STEPS) - 1))
            return SPEED_STEPS[self._speed_index]

    @property
    def speed(self) -> float:
        return SPEED_STEPS[self._speed_index]

    def take(self) -> tuple[np.ndarray, int, frozenset[Event]]:
        """(motion -1..1 per axis, gripper toggles, events) since the last call; pulses and events are consumed."""
        with self._lock:
            motion = self._pulse.copy()
            for held in self._held.values():
                motion += held
            self._pulse[:] = 0.0
            toggles, self._toggles = self._toggles, 0
            events, self._events = frozenset(self._events), set()
        return np.clip(motion, -1.0, 1.0), toggles, events

    def clear(self) -> None:
        """Forget everything pending (at the start of an episode); the held motion stays what the device says."""
        with self._lock:
            self._pulse[:] = 0.0
            self._toggles, self._events, self._started, self._quit = 0, set(), False, False

    def wait_for_start(self, timeout_s: float | None = None) -> bool | None:
        """True when the start key came, False when quit came, None on time-out."""
        with self._lock:
            self._start.wait_for(lambda: self._started or self._quit, timeout_s)
            if self._quit:
                return False
            if self._started:
                self._started = False
                self._events.clear()
                return True
            return None


class InputSource(ABC):
    """One device thread feeding an ``InputState``."""

    name: str = "device"

    @abstractmethod
    def start(self, state: InputState) -> None:
        """Open the device and start reporting into ``state``; raise TeleopUnavailableError when it cannot."""

    @abstractmethod
    def stop(self) -> None:
        """Stop reporting and release the device (safe to call twice)."""

    def describe(self) -> str:
        return self.name


class Teleop:
    """Teleoperation agent: measured TCP + scaled operator motion, a gripper toggle and episode events."""

    def __init__(self, name: str, scale: MotionScale, sources: Sequence[InputSource], help_text: str = "") -> None:
        if not sources:
            raise ValueError("a Teleop needs at least one input source")
        self.name = name
        self.scale = scale
        self.sources = list(sources)
        self.help_text = help_text
        self.state = InputState()
        self.gripper = 1.0
        self._started: list[InputSource] = []

    # -- lifetime ------------------------------------------------------------------------------------
    def __enter__(self) -> Teleop:
        try:
            for source in self.sources:
                source.start(self.state)
                self._started.append(source)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        while self._started:
            source = self._started.pop()
            try:
                source.stop()
            except Exception as error:  # keep releasing the others; the terminal must be restored
                log.error("could not stop %s: %s", source.describe(), error)

    def describe(self) -> str:
        return f"{self.name} ({' + '.join(source.describe() for source in self.sources)})"

    # -- the Agent protocol ------------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        self.instruction = instruction
        self.gripper = 1.0
        self.state.clear()

    def act(self, observation: Observation) -> AgentOutput:
        motion, toggles, events = self.state.take()
        if toggles % 2:
            self.gripper = 0.0 if self.gripper >= 0.5 else 1.0
        delta = self.scale.delta(motion, self.state.speed)
        target = apply_pose_delta(observation.arm.tcp_pose, delta)
        return AgentOutput(Command.to_pose(target, self.gripper), events,
                           {"teleop_motion": [round(float(v), 3) for v in motion], "teleop_speed": self.state.speed})

    def wait_for_start(self, timeout_s: float | None = None) -> bool | None:
        """Block until the operator presses the start key (True) or quits (False); None on time-out."""
        return self.state.wait_for_start(timeout_s)
