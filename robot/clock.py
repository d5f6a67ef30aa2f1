"""Time, and periodic tasks, for real hardware and for the twin.

Control code never calls ``time.sleep`` or ``time.monotonic`` directly: it asks a ``Clock``.
``RealClock`` is wall time with periodic tasks on threads. The twin's ``SimClock``
(robot/sim/clock.py) is simulated time: sleeping advances the physics, so a lock-step episode
runs as fast as the CPU allows and is deterministic, with the very same driver code.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TickStats:
    """Timing of a periodic task: how many ticks ran and how many started late."""

    ticks: int = 0
    late_ticks: int = 0
    max_lateness_s: float = 0.0

    def record(self, lateness_s: float, tolerance_s: float) -> None:
        self.ticks += 1
        if lateness_s > tolerance_s:
            self.late_ticks += 1
        self.max_lateness_s = max(self.max_lateness_s, lateness_s)


class PeriodicTask(ABC):
    name: str
    period_s: float
    stats: TickStats

    @abstractmethod
    def stop(self) -> None: ...

    @property
    @abstractmethod
    def running(self) -> bool: ...


class Clock(ABC):
    @abstractmethod
    def now_s(self) -> float: ...

    @abstractmethod
    def sleep_until(self, t_s: float) -> None: ...

    def sleep(self, duration_s: float) -> None:
        self.sleep_until(self.now_s() + max(0.0, duration_s))

    @abstractmethod
    def every(self, period_s: float, fn: Callable[[], None], name: str) -> PeriodicTask:
        """Run ``fn`` every ``period_s`` until the returned task is stopped.

        An exception raised by ``fn`` stops the task; it is re-raised by ``task.stop()`` and
        reported through ``task.error``.
        """

    @property
    def is_simulated(self) -> bool:
        return False


class _ThreadTask(PeriodicTask):
    # Late by more than a fifth of the period counts as a late tick.
    LATE_FRACTION = 0.2

    def __init__(self, period_s: float, fn: Callable[[], None], name: str) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.name, self.period_s, self.stats = name, period_s, TickStats()
        self.error: BaseException | None = None
        self._fn = fn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fanvla-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            lateness = time.monotonic() - next_tick
            self.stats.record(lateness, self.period_s * self.LATE_FRACTION)
            try:
                self._fn()
            except BaseException as error:  # surfaced by stop(); a dead servo loop must not be silent
                self.error = error
                return
            next_tick += self.period_s
            now = time.monotonic()
            if next_tick < now - self.period_s:  # fell behind by more than a period: skip, do not burst
                next_tick = now
            _sleep_precisely(next_tick, self._stop)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _sleep_precisely(deadline: float, stop: threading.Event) -> None:
    """Sleep until ``deadline`` (monotonic); the last millisecond is spun for low jitter."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stop.is_set():
            return
        if remaining > 0.0015:
            stop.wait(remaining - 0.001)
        # else: spin


class RealClock(Clock):
    def now_s(self) -> float:
        return time.monotonic()

    def sleep_until(self, t_s: float) -> None:
        _sleep_precisely(t_s, threading.Event())

    def every(self, period_s: float, fn: Callable[[], None], name: str) -> PeriodicTask:
        return _ThreadTask(period_s, fn, name)
