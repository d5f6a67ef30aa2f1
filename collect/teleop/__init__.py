"""Teleoperation devices for recording demonstrations: keyboard (desktop or terminal), SpaceMouse, gamepad.

``make_teleop(kind, config)`` builds a :class:`Teleop` (a runtime ``Agent`` and a context manager) for
a device; its libraries are optional (the ``teleop`` extra) and a missing one, or a missing device,
raises :class:`TeleopUnavailableError` saying what to install or check. The keyboard picks pynput when
an X display is available and it is installed, else the terminal (raw keys from the TTY).
"""

from __future__ import annotations

from typing import Literal

from collect.teleop.base import InputSource, MotionScale, Teleop, TeleopUnavailableError
from collect.teleop.keymap import HELP as KEYBOARD_HELP

DEVICES = ("keyboard", "spacemouse", "gamepad")
KeyboardBackend = Literal["auto", "pynput", "terminal"]

__all__ = ["DEVICES", "KEYBOARD_HELP", "MotionScale", "Teleop", "TeleopUnavailableError", "keyboard_source",
           "make_teleop"]


def keyboard_source(backend: KeyboardBackend = "auto", fd: int | None = None) -> InputSource:
    """The desktop keyboard (pynput) or the terminal keyboard; ``auto``: pynput when it can work here."""
    from collect.teleop.desktop import DesktopKeyboard, display_available, import_pynput
    from collect.teleop.terminal import TerminalKeyboard

    if backend == "terminal":
        return TerminalKeyboard(fd)
    if backend == "pynput":
        import_pynput()
        return DesktopKeyboard()
    if backend != "auto":
        raise ValueError(f"unknown keyboard backend {backend!r}; choose auto, pynput or terminal")
    if display_available() and fd is None:
        try:
            import_pynput()
            return DesktopKeyboard()
        except TeleopUnavailableError:
            pass  # fall back to the terminal, which works everywhere there is one
    return TerminalKeyboard(fd)


def make_teleop(kind: str, config, *, keyboard: KeyboardBackend = "auto", fd: int | None = None) -> Teleop:
    """A Teleop for ``kind`` (keyboard | spacemouse | gamepad) with hardware.yaml ``teleop`` scaling.

    The device is opened when the Teleop is entered (``with make_teleop(...) as teleop``).
    """
    teleop = config.teleop
    if kind == "keyboard":
        source = keyboard_source(keyboard, fd)
        return Teleop("keyboard", MotionScale(teleop.keyboard.step_mm, teleop.keyboard.step_deg), [source],
                      KEYBOARD_HELP)
    if kind == "spacemouse":
        from collect.teleop.spacemouse import SpaceMouse, import_pyspacemouse
        from collect.teleop.terminal import TerminalKeyboard

        import_pyspacemouse()  # fail now, with the install hint, rather than when the session starts
        sources: list[InputSource] = [SpaceMouse(teleop.spacemouse)]
        if _has_terminal(fd):
            sources.append(TerminalKeyboard(fd, events_only=True))
        help_text = "SpaceMouse: left button gripper, right button save; keys: Enter start, r discard, q quit"
        return Teleop("spacemouse", MotionScale(teleop.spacemouse.scale_mm, teleop.spacemouse.scale_deg), sources,
                      help_text)
    if kind == "gamepad":
        from collect.teleop.gamepad import Gamepad, import_pygame

        import_pygame()
        help_text = "gamepad: sticks move, A gripper, Y save, B discard, Back quit, Start start"
        return Teleop("gamepad", MotionScale(teleop.gamepad.scale_mm, teleop.gamepad.scale_deg),
                      [Gamepad(teleop.gamepad)], help_text)
    raise ValueError(f"unknown teleop device {kind!r}; choose one of {', '.join(DEVICES)}")


def _has_terminal(fd: int | None) -> bool:
    import os

    try:
        return os.isatty(fd if fd is not None else 0)
    except OSError:
        return False
