"""The desktop keyboard through pynput: real key-down/key-up events from the X display.

Held motion keys move the arm for as long as they are held (pynput sees releases, a terminal does
not). pynput listens to the whole desktop, so keys typed into other windows count too. Under Wayland
it sees only X applications' keys: use the terminal keyboard there (``--keyboard terminal``).
"""

from __future__ import annotations

import importlib.util
import os
import threading

from collect.teleop.base import InputSource, InputState, TeleopUnavailableError, missing_library
from collect.teleop.keymap import apply_key_press, held_motion

_SPECIAL = {"up": "up", "down": "down", "left": "left", "right": "right", "esc": "esc", "enter": "enter",
            "space": " "}


def display_available() -> bool:
    """An X display pynput can listen on (Wayland-only sessions hide other applications' keys)."""
    return bool(os.environ.get("DISPLAY"))


def import_pynput():
    if importlib.util.find_spec("pynput") is None:
        raise missing_library("keyboard (desktop)", "pynput")
    try:
        from pynput import keyboard
    except Exception as error:  # installed, but it found no usable backend (no X server reachable)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TeleopUnavailableError(f"pynput is installed but cannot listen to the keyboard here ({first_line}); "
                                     f"use the terminal keyboard (--keyboard terminal)") from None
    return keyboard


class DesktopKeyboard(InputSource):
    name = "desktop keyboard (pynput)"

    def __init__(self) -> None:
        self._listener = None
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def start(self, state: InputState) -> None:
        if not display_available():
            raise TeleopUnavailableError("the desktop keyboard needs an X display (DISPLAY is not set); over SSH or "
                                         "under Wayland use the terminal keyboard (--keyboard terminal)")
        keyboard = import_pynput()

        def name_of(key) -> str | None:
            char = getattr(key, "char", None)
            if char:
                return char.lower()
            return _SPECIAL.get(getattr(key, "name", ""))

        def on_press(key) -> None:
            name = name_of(key)
            if name is None:
                return
            with self._lock:
                if name in self._held:
                    return  # auto-repeat of a held key
                self._held.add(name)
                state.set_held(self.name, held_motion(self._held))
            apply_key_press(state, name, as_pulse=False)

        def on_release(key) -> None:
            name = name_of(key)
            with self._lock:
                self._held.discard(name)
                state.set_held(self.name, held_motion(self._held))

        self._listener = keyboard.Listener(on_press=on_press, on_release=on_release)
        self._listener.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
