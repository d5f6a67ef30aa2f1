"""Child processes for the orchestration commands (demo, sweep): each stage runs the real CLI.

Output of every child is streamed to the console with a short prefix and kept in a log file, so a
long run shows its progress and leaves a record. A failing child stops the run with its log's tail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from fanvla.cli import UserError

# Progress bars redraw with carriage returns; the console shows one line per update at most this often.
_PROGRESS_INTERVAL_S = 5.0


class StageFailed(UserError):
    """A child process of an orchestration exited with an error."""


def fanvla_argv(*args: str) -> list[str]:
    """argv that runs this very installation's CLI (no reliance on PATH)."""
    return [sys.executable, "-m", "fanvla", *args]


class Child:
    """One running ``fanvla ...`` child with its output streamed to the console and to ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._tail: deque[str] = deque(maxlen=30)
        self._ready = threading.Event()
        self._ready_match: re.Match | None = None
        self._ready_pattern: re.Pattern | None = None
        child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = log_path.open("a", encoding="utf-8")
        self._log.write(f"$ {' '.join(self.argv)}\n")
        self._log.flush()
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=child_env, bufsize=1, errors="replace")
        self._reader = threading.Thread(target=self._pump, name=f"fanvla-{name}-output", daemon=True)
        self._reader.start()

    def expect(self, pattern: str) -> None:
        """Watch the output for ``pattern`` (see :meth:`wait_for`); call right after starting."""
        self._ready_pattern = re.compile(pattern)

    def _pump(self) -> None:
        last_shown = 0.0
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if not line.strip():
                    continue
                self._log.write(line + "\n")
                self._tail.append(line)
                if self._ready_pattern is not None and not self._ready.is_set():
                    match = self._ready_pattern.search(line)
                    if match:
                        self._ready_match = match
                        self._ready.set()
                # tqdm-style bars update constantly: show them every few seconds, everything else at once
                is_progress = "%|" in line or "it/s" in line or "s/it" in line
                now = time.monotonic()
                if not is_progress or now - last_shown >= _PROGRESS_INTERVAL_S:
                    print(f"[{self.name}] {line}", flush=True)
                    last_shown = now if is_progress else last_shown
            self._log.flush()
        self._ready.set()

    def wait_for(self, timeout_s: float) -> re.Match:
        """Block until the expected pattern appears; raise if the child dies or time runs out."""
        if not self._ready.wait(timeout_s) or self._ready_match is None:
            self.stop()
            raise StageFailed(f"{self.name}: did not become ready within {timeout_s:.0f} s\n{self.tail()}")
        return self._ready_match

    def wait(self) -> None:
        """Wait for the child to exit; raise StageFailed with the log's tail when it failed."""
        code = self.process.wait()
        self._reader.join(timeout=10)
        self._log.close()
        if code != 0:
            raise StageFailed(f"{self.name} failed (exit code {code}); log: {self.log_path}\n{self.tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        if not self._log.closed:
            self._log.close()

    def tail(self) -> str:
        return "\n".join(f"  | {line}" for line in self._tail)


def run_all(children: Sequence[Child]) -> None:
    """Wait for every child; on the first failure stop the others and raise it."""
    try:
        for child in children:
            child.wait()
    except BaseException:
        for child in children:
            child.stop()
        raise
