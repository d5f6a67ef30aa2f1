"""The keyboard map, shared by the desktop (pynput) and the terminal keyboards.

Keys are named as strings: a printable character (``"w"``, ``" "``) or one of the special names
``up down left right esc enter``. Motion is in the robot's base frame (x forward, away from the
base; y to the left; z up; robot/frames.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from collect.teleop.base import InputState
from robot.runtime import Event

# key -> (axis index into base.AXES, direction)
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0),  # x: forward / back
    "a": (1, 1.0), "d": (1, -1.0),  # y: left / right
    "up": (2, 1.0), "down": (2, -1.0), "t": (2, 1.0), "g": (2, -1.0),  # z: up / down
    "i": (3, 1.0), "k": (3, -1.0),  # roll (about base x)
    "j": (4, 1.0), "l": (4, -1.0),  # pitch (about base y)
    "z": (5, 1.0), "x": (5, -1.0),  # yaw (about base z)
}
EVENT_KEYS: dict[str, Event] = {
    "right": Event.SAVE, "n": Event.SAVE,
    "left": Event.DISCARD, "r": Event.DISCARD,
    "esc": Event.QUIT, "q": Event.QUIT,
}
GRIPPER_KEYS = frozenset({" "})
START_KEYS = frozenset({"enter"})
FASTER_KEYS, SLOWER_KEYS = frozenset({"+", "="}), frozenset({"-", "_"})

HELP = """keys: w/s forward/back  a/d left/right  up/down (or t/g) up/down  z/x yaw  i/k roll  j/l pitch
      space open/close gripper  +/- speed
      Enter start episode  right arrow or n save  left arrow or r discard & re-record  Esc or q quit"""


@dataclass(frozen=True)
class KeyAction:
    kind: str  # "motion" | "event" | "gripper" | "start" | "speed" | "none"
    axis: int = -1
    direction: float = 0.0
    event: Event | None = None


def action_for(key: str) -> KeyAction:
    key = key.lower() if len(key) == 1 else key
    if key in MOTION_KEYS:
        axis, direction = MOTION_KEYS[key]
        return KeyAction("motion", axis, direction)
    if key in EVENT_KEYS:
        return KeyAction("event", event=EVENT_KEYS[key])
    if key in GRIPPER_KEYS:
        return KeyAction("gripper")
    if key in START_KEYS:
        return KeyAction("start")
    if key in FASTER_KEYS:
        return KeyAction("speed", direction=1.0)
    if key in SLOWER_KEYS:
        return KeyAction("speed", direction=-1.0)
    return KeyAction("none")


def apply_key_press(state: InputState, key: str, *, as_pulse: bool) -> KeyAction:
    """Report one key press to ``state``; motion keys pulse (terminal) or are left to the held set (pynput)."""
    action = action_for(key)
    if action.kind == "motion" and as_pulse:
        state.pulse(action.axis, action.direction)
    elif action.kind == "event":
        state.raise_event(action.event)
    elif action.kind == "gripper":
        state.toggle_gripper()
    elif action.kind == "start":
        state.press_start()
    elif action.kind == "speed":
        state.change_speed(int(action.direction))
    return action


def held_motion(keys: set[str]) -> list[float]:
    """Motion vector of the motion keys held down (opposite keys cancel)."""
    motion = [0.0] * 6
    for key in keys:
        action = action_for(key)
        if action.kind == "motion":
            motion[action.axis] += action.direction
    return [max(-1.0, min(1.0, value)) for value in motion]
