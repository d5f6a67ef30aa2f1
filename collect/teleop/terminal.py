"""The terminal keyboard: raw keys read from a TTY, for SSH sessions, Wayland and machines without X.

The terminal is switched to cbreak mode (no line buffering, no echo; Ctrl-C still interrupts) and a
thread reads key bytes, decoding the arrow keys' escape sequences (``ESC [ A`` ...) and telling a
lone Esc from the start of a sequence by a short time-out. A terminal reports key presses, not
releases: each press (and each auto-repeat while a key is held) moves one step at the next tick, so a
tap nudges the arm by one step and a held key moves it steadily after the terminal's repeat delay.
The terminal's settings are restored on stop, also after errors.
"""

from __future__ import annotations

import logging
import os
import select
import termios
import threading
import tty

from collect.teleop.base import InputSource, InputState, TeleopUnavailableError
from collect.teleop.keymap import action_for, apply_key_press
from robot.runtime import Event

log = logging.getLogger(__name__)

ESC = 0x1B
# A lone Esc is told from an escape sequence by the time to the next byte (sequences arrive at once).
ESC_TIMEOUT_S = 0.05
_POLL_S = 0.05
_SEQUENCES = {b"A": "up", b"B": "down", b"C": "right", b"D": "left"}


def parse_keys(data: bytes, flush: bool) -> tuple[list[str], bytes]:
    """Key names in ``data`` and the bytes of an incomplete escape sequence left over.

    ``flush``: no more bytes are coming soon, so a trailing lone Esc is the Esc key.
    """
    keys: list[str] = []
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == ESC:
            if i + 1 >= len(data):
                if flush:
                    keys.append("esc")
                    i += 1
                break  # maybe the start of a sequence: wait for more
            if data[i + 1] not in b"[O":
                keys.append("esc")  # Esc followed by an ordinary key
                i += 1
                continue
            end = i + 2
            while end < len(data) and not 0x40 <= data[end] <= 0x7E:  # parameters until the final byte
                end += 1
            if end >= len(data):
                if flush:  # a broken sequence: drop it
                    i = len(data)
                break
            name = _SEQUENCES.get(bytes([data[end]]))  # modifiers (ESC [ 1 ; 2 C) keep the arrow
            if name is not None:
                keys.append(name)
            i = end + 1
            continue
        if byte in (0x0D, 0x0A):
            keys.append("enter")
        elif 0x20 <= byte < 0x7F:
            keys.append(chr(byte))
        i += 1
    return keys, data[i:]


class TerminalKeyboard(InputSource):
    """Reads keys from a TTY file descriptor (stdin by default, else /dev/tty)."""

    name = "terminal keyboard"

    def __init__(self, fd: int | None = None, *, events_only: bool = False) -> None:
        """``events_only``: ignore the motion keys (another device moves the arm; keys save/discard/quit)."""
        self._fd_arg = fd
        self.events_only = events_only
        self._fd: int | None = None
        self._owned_fd = False
        self._saved: list | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.keys_seen = 0

    def start(self, state: InputState) -> None:
        self._fd, self._owned_fd = self._open_tty()
        try:
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd, termios.TCSANOW)
        except termios.error as error:
            self._close_fd()
            raise TeleopUnavailableError(f"cannot switch the terminal to raw keys: {error}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_loop, args=(state,), name="fanvla-terminal-keys",
                                        daemon=True)
        self._thread.start()

    def _open_tty(self) -> tuple[int, bool]:
        if self._fd_arg is not None:
            if not os.isatty(self._fd_arg):
                raise TeleopUnavailableError(f"file descriptor {self._fd_arg} is not a terminal")
            return self._fd_arg, False
        try:
            stdin = 0
            if os.isatty(stdin):
                return stdin, False
        except OSError:
            pass
        try:
            return os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY), True
        except OSError:
            raise TeleopUnavailableError(
                "the terminal keyboard needs a terminal: standard input is not a TTY and /dev/tty cannot be opened "
                "(run the command in a terminal or over `ssh -t`, not with redirected input or in CI)") from None

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        if self._fd is not None and self._saved is not None:
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error as error:
                log.error("could not restore the terminal settings: %s (run `reset` or `stty sane`)", error)
            self._saved = None
        self._close_fd()

    def _close_fd(self) -> None:
        if self._owned_fd and self._fd is not None:
            os.close(self._fd)
        self._fd, self._owned_fd = None, False

    def _read_loop(self, state: InputState) -> None:
        pending = b""
        while not self._stop.is_set():
            timeout = ESC_TIMEOUT_S if pending else _POLL_S
            try:
                ready, _, _ = select.select([self._fd], [], [], timeout)
                data = os.read(self._fd, 256) if ready else b""
            except OSError as error:  # the terminal went away (SSH dropped): stop the session safely
                log.error("terminal keyboard: %s; quitting", error)
                data, ready = b"", [self._fd]
            if ready and not data:  # end of input: nobody is at the keys any more
                state.raise_event(Event.QUIT)
                return
            keys, pending = parse_keys(pending + data, flush=not data)
            for key in keys:
                self.keys_seen += 1
                if self.events_only and action_for(key).kind == "motion":
                    continue
                apply_key_press(state, key, as_pulse=True)
