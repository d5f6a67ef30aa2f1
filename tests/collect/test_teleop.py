"""Teleop: the terminal keyboard driven through a real pty, the key map, the device mappings, and the
messages when a device library is missing."""

from __future__ import annotations

import math
import os
import sys
import termios
import time

import numpy as np
import pytest

from collect.teleop import TeleopUnavailableError, keyboard_source, make_teleop
from collect.teleop.base import InputState, MotionScale, Teleop
from collect.teleop.gamepad import gamepad_motion
from collect.teleop.spacemouse import apply_deadzone, spacemouse_motion
from collect.teleop.terminal import TerminalKeyboard, parse_keys
from robot.frames import pose_delta
from robot.interfaces import ArmState, CameraFrame, GripperState
from robot.runtime import Event, Observation
from tests.collect.record_testing import small_config

HOME_TCP = np.array([264.0, -6.0, 129.0, math.pi, 0.0, 0.0])


def observation(tcp=HOME_TCP, step: int = 0) -> Observation:
    frame = CameraFrame(np.zeros((4, 4, 3), np.uint8), 0.0, step, 0.0)
    return Observation(frame, ArmState(np.zeros(6), np.asarray(tcp, float), 0.0), GripperState(1.0, None, 0.0),
                       "x", step, 0.1 * step)


class PtyKeyboard:
    """A Teleop with the terminal keyboard reading the slave side of a real pty; the test types into the master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        config = small_config()
        self.teleop = Teleop("keyboard", MotionScale(config.teleop.keyboard.step_mm, config.teleop.keyboard.step_deg),
                             [TerminalKeyboard(self.slave)])

    def write(self, data: bytes, settle_s: float = 0.15) -> None:
        os.write(self.master, data)
        time.sleep(settle_s)  # the reader thread polls every 50 ms; a lone Esc waits 50 ms more

    def close_master(self) -> None:
        if self.master is not None:
            os.close(self.master)
            self.master = None


@pytest.fixture
def pty_keyboard():
    keyboard = PtyKeyboard()
    with keyboard.teleop:
        yield keyboard
    keyboard.close_master()
    os.close(keyboard.slave)


def test_terminal_is_switched_to_raw_keys_and_restored(pty_keyboard):
    teleop, slave = pty_keyboard.teleop, pty_keyboard.slave
    attributes = termios.tcgetattr(slave)
    assert not attributes[3] & termios.ICANON and not attributes[3] & termios.ECHO
    assert attributes[3] & termios.ISIG  # Ctrl-C still interrupts
    teleop.close()
    restored = termios.tcgetattr(slave)
    assert restored[3] & termios.ICANON and restored[3] & termios.ECHO


def test_keys_through_a_pty_become_commands_and_events(pty_keyboard):
    teleop, write = pty_keyboard.teleop, pty_keyboard.write
    teleop.reset("put the red cube into the box")
    step_mm, step_rad = 8.0, math.radians(4.0)

    write(b"w")  # forward
    delta = pose_delta(HOME_TCP, teleop.act(observation()).command.tcp_pose)
    np.testing.assert_allclose(delta, [step_mm, 0, 0, 0, 0, 0], atol=1e-9)
    # nothing pressed: the target is the measured pose (a fresh command; the no-op rule marks it)
    np.testing.assert_allclose(teleop.act(observation()).command.tcp_pose, HOME_TCP, atol=1e-9)

    write(b"\x1b[A" + b"d")  # up arrow and right, in the same tick
    delta = pose_delta(HOME_TCP, teleop.act(observation()).command.tcp_pose)
    np.testing.assert_allclose(delta, [0, -step_mm, step_mm, 0, 0, 0], atol=1e-9)
    write(b"x")  # yaw
    delta = pose_delta(HOME_TCP, teleop.act(observation()).command.tcp_pose)
    np.testing.assert_allclose(delta, [0, 0, 0, 0, 0, -step_rad], atol=1e-9)

    write(b" ")  # gripper toggle: closes, and stays closed
    assert teleop.act(observation()).command.gripper == 0.0
    assert teleop.act(observation()).command.gripper == 0.0
    write(b"+")  # faster
    delta = pose_delta(HOME_TCP, teleop.act(observation()).command.tcp_pose)  # speed changes, no motion yet
    np.testing.assert_allclose(delta, 0, atol=1e-9)
    write(b"s")
    delta = pose_delta(HOME_TCP, teleop.act(observation()).command.tcp_pose)
    assert delta[0] == pytest.approx(-1.5 * step_mm)

    for keys, event in ((b"n", Event.SAVE), (b"\x1b[C", Event.SAVE), (b"r", Event.DISCARD), (b"\x1b[D", Event.DISCARD),
                        (b"q", Event.QUIT), (b"\x1b", Event.QUIT)):
        write(keys)
        assert teleop.act(observation()).events == frozenset({event}), keys
    assert teleop.act(observation()).events == frozenset()  # events are delivered once


def test_start_key_and_quit_while_waiting(pty_keyboard):
    teleop, write = pty_keyboard.teleop, pty_keyboard.write
    teleop.reset("x")
    assert teleop.wait_for_start(timeout_s=0.2) is None
    write(b"\r")
    assert teleop.wait_for_start(timeout_s=1.0) is True
    write(b"q")
    assert teleop.wait_for_start(timeout_s=1.0) is False


def test_closed_terminal_quits(pty_keyboard):
    """The operator's terminal goes away (SSH dropped): the session must not go on without anyone at the keys."""
    teleop = pty_keyboard.teleop
    teleop.reset("x")
    pty_keyboard.close_master()
    assert teleop.wait_for_start(timeout_s=2.0) is False
    assert teleop.act(observation()).events == frozenset({Event.QUIT})


def test_parse_keys_escape_sequences():
    assert parse_keys(b"wa\x1b[B\x1bOD\r", flush=True) == (["w", "a", "down", "left", "enter"], b"")
    assert parse_keys(b"w\x1b", flush=False) == (["w"], b"\x1b")  # maybe the start of a sequence
    assert parse_keys(b"\x1b", flush=True) == (["esc"], b"")
    assert parse_keys(b"\x1b[1;2C\x1bq", flush=True) == (["right", "esc", "q"], b"")
    assert parse_keys(b"\x1b[3~W", flush=True) == (["W"], b"")  # Delete is ignored; letters keep their case


def test_terminal_keyboard_needs_a_terminal(tmp_path):
    with open(tmp_path / "f", "w") as handle, pytest.raises(TeleopUnavailableError, match="not a terminal"):
        TerminalKeyboard(handle.fileno()).start(InputState())


def test_keyboard_auto_falls_back_to_the_terminal_without_a_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    assert isinstance(keyboard_source("auto"), TerminalKeyboard)


@pytest.mark.parametrize("kind, module, args", [
    ("spacemouse", "pyspacemouse", {}),
    ("gamepad", "pygame", {}),
    ("keyboard", "pynput", {"keyboard": "pynput"}),
])
def test_missing_library_says_what_to_install(monkeypatch, kind, module, args):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(TeleopUnavailableError) as raised:
        make_teleop(kind, small_config(), **args)
    message = str(raised.value)
    assert f"'{module}', which is not installed" in message and "pip install 'fanvla[teleop]'" in message


def test_desktop_keyboard_needs_a_display(monkeypatch):
    from collect.teleop.desktop import DesktopKeyboard

    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(TeleopUnavailableError, match=r"needs an X display.*--keyboard terminal"):
        DesktopKeyboard().start(InputState())


def test_spacemouse_axis_map_signs_and_deadzone():
    np.testing.assert_allclose(apply_deadzone([0.05, -0.5, 1.0, -1.0], 0.1), [0.0, -4 / 9, 1.0, -1.0])
    raw = [0.5, 0.0, 0.0, 0.0, 0.0, -1.0]
    motion = spacemouse_motion(raw, axis_map=[1, 0, 2, 3, 4, 5], axis_sign=[1, -1, 1, 1, 1, -1], deadzone=0.0)
    np.testing.assert_allclose(motion, [0.0, -0.5, 0.0, 0.0, 0.0, 1.0])


def test_gamepad_sticks():
    # left stick pushed forward (SDL: negative y) and to the right; right stick pushed up
    motion = gamepad_motion([0.6, -1.0, 0.0, 0.0, -0.5, 0.0], deadzone=0.1)
    assert motion[0] == pytest.approx(1.0) and motion[1] == pytest.approx(-5 / 9) and motion[2] == pytest.approx(4 / 9)
    np.testing.assert_allclose(gamepad_motion([0.05, -0.05, 0, 0.05, 0.05], deadzone=0.1), 0.0)
