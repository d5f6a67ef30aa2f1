"""A gamepad (Xbox-style layout) through pygame's joystick API.

Left stick: x (push forward = away from the base) and y (push left = left); right stick: z (push up =
up) and yaw; full deflection moves hardware.yaml ``teleop.gamepad.scale_mm`` / ``scale_deg`` per
command, after its ``deadzone``. Buttons: A open/close the gripper, Y save, B discard & re-record,
Back quit, Start start the episode.
"""

from __future__ import annotations

import logging
import os
import threading

import numpy as np

from collect.teleop.base import InputSource, InputState, TeleopUnavailableError, missing_library
from collect.teleop.spacemouse import apply_deadzone
from robot.runtime import Event

log = logging.getLogger(__name__)
_POLL_S = 0.01
# SDL's joystick numbering of an Xbox-style pad on Linux.
LEFT_X, LEFT_Y, RIGHT_X, RIGHT_Y = 0, 1, 3, 4
BUTTON_A, BUTTON_B, BUTTON_Y, BUTTON_BACK, BUTTON_START = 0, 1, 3, 6, 7


def gamepad_motion(axes, deadzone: float) -> np.ndarray:
    """Base-frame motion (-1..1 per axis) from the pad's axes (SDL: stick down / right are positive)."""
    values = np.zeros(max(len(axes), RIGHT_Y + 1))
    values[: len(axes)] = axes
    values = apply_deadzone(values, deadzone)
    return np.array([-values[LEFT_Y], -values[LEFT_X], -values[RIGHT_Y], 0.0, 0.0, -values[RIGHT_X]])


def import_pygame():
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # joystick events without a window
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
    except ImportError as error:
        raise missing_library("gamepad", "pygame", error) from None
    return pygame


class Gamepad(InputSource):
    name = "gamepad"

    def __init__(self, config, index: int = 0) -> None:
        """``config``: hardware.yaml ``teleop.gamepad``; ``index``: which joystick, when several are connected."""
        self.config = config
        self.index = index
        self._pygame = None
        self._joystick = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, state: InputState) -> None:
        pygame = import_pygame()
        pygame.display.init()
        pygame.joystick.init()
        count = pygame.joystick.get_count()
        if count <= self.index:
            pygame.quit()
            raise TeleopUnavailableError(f"no gamepad found ({count} joysticks connected): plug one in and check "
                                         f"that /dev/input/js* or /dev/input/event* is readable by you")
        self._pygame = pygame
        self._joystick = pygame.joystick.Joystick(self.index)
        self._joystick.init()
        self.name = f"gamepad ({self._joystick.get_name()})"
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(state,), name="fanvla-gamepad", daemon=True)
        self._thread.start()

    def _poll(self, state: InputState) -> None:
        pygame, pad = self._pygame, self._joystick
        before: dict[int, bool] = {}
        presses = {BUTTON_A: state.toggle_gripper, BUTTON_Y: lambda: state.raise_event(Event.SAVE),
                   BUTTON_B: lambda: state.raise_event(Event.DISCARD),
                   BUTTON_BACK: lambda: state.raise_event(Event.QUIT), BUTTON_START: state.press_start}
        while not self._stop.wait(_POLL_S):
            pygame.event.pump()
            axes = [pad.get_axis(i) for i in range(pad.get_numaxes())]
            state.set_held("gamepad", gamepad_motion(axes, self.config.deadzone))
            for button, action in presses.items():
                pressed = button < pad.get_numbuttons() and bool(pad.get_button(button))
                if pressed and not before.get(button, False):
                    action()
                before[button] = pressed

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=2.0)
        if self._pygame is not None:
            self._pygame.quit()
            self._pygame = None
