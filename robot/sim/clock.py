"""Simulated time for the lock-step twin.

``SimClock.sleep_until(t)`` advances the twin one servo cycle (8 ms) at a time; before each cycle it
runs, on the caller's thread, the periodic tasks that have fallen due (the arm's servo streamer, the
camera's frame injection). Time is an integer count of cycles, so it never drifts, and a run is
deterministic. Only one thread may advance the clock, and a periodic task may not advance it
(that would nest cycles inside a cycle): both raise ``SimClockError``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from fractions import Fraction

from robot.clock import Clock, PeriodicTask, TickStats

_EPS_S = 1e-9


class SimClockError(RuntimeError):
    """Simulated time was advanced from the wrong place (a periodic task, another thread)."""


class _SimTask(PeriodicTask):
    LATE_FRACTION = 0.2

    def __init__(self, clock: SimClock, period_s: float, fn: Callable[[], None], name: str, first_due_s: float) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.name, self.period_s, self.stats = name, period_s, TickStats()
        self.error: BaseException | None = None
        self.next_due_s = self.first_due_s = first_due_s
        self._fn = fn
        self._clock = clock
        self._running = True

    def run_if_due(self, now_s: float) -> None:
        if not self._running or now_s + _EPS_S < self.next_due_s:
            return
        self.stats.record(now_s - self.next_due_s, self.period_s * self.LATE_FRACTION)
        try:
            self._fn()
        except BaseException as error:  # surfaced by stop(), like RealClock's thread tasks
            self.error = error
            self._running = False
            return
        self.next_due_s += self.period_s
        if self.next_due_s < now_s - self.period_s:  # fell behind by more than a period: skip, do not burst
            self.next_due_s = now_s + self.period_s

    @property
    def running(self) -> bool:
        return self._running

    def stop(self) -> None:
        self._running = False
        self._clock._forget(self)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class SimClock(Clock):
    """Time advanced by stepping the twin: ``advance_cycle()`` simulates ``cycle_s`` seconds."""

    def __init__(self, advance_cycle: Callable[[], None], cycle_s: float) -> None:
        if cycle_s <= 0:
            raise ValueError(f"cycle_s must be positive, got {cycle_s}")
        self.cycle_s = cycle_s
        self._advance_cycle = advance_cycle
        self._cycles = 0
        self._tasks: list[_SimTask] = []
        self._owner: int | None = None  # thread advancing the clock right now
        self._guard = threading.Lock()

    @property
    def is_simulated(self) -> bool:
        return True

    @property
    def cycles(self) -> int:
        return self._cycles

    def now_s(self) -> float:
        return self._cycles * self.cycle_s

    def every(self, period_s: float, fn: Callable[[], None], name: str) -> PeriodicTask:
        """Run ``fn`` every ``period_s`` of simulated time, first before the next cycle."""
        task = _SimTask(self, period_s, fn, name, self.now_s())
        self._tasks.append(task)
        return task

    def sleep_until(self, t_s: float) -> None:
        with self._advancing():
            while self.now_s() < t_s - _EPS_S:
                self._cycle()

    def advance_cycles(self, n: int = 1) -> None:
        """Simulate exactly ``n`` servo cycles (running due tasks before each)."""
        with self._advancing():
            for _ in range(n):
                self._cycle()

    def align(self, max_wait_s: float = 10.0) -> float:
        """Advance to the next instant at which every periodic task stands where it stood when it started: its
        next runs fall on the same cycles relative to now. Something started there (an evaluation trial) does not
        depend on what ran before: a camera at 10 frames/s renders every 12.5 cycles, i.e. 12 and 13 cycles in
        turn, and which of the two comes first would otherwise depend on the time the previous trial ended.
        Returns the simulated seconds waited."""
        patterns = [(task.first_due_s, self._pattern_s(task)) for task in self._tasks if task.running]
        start = self._cycles
        for cycle in range(start, start + int(max_wait_s / self.cycle_s) + 1):
            t_s = cycle * self.cycle_s
            if all(_on_grid(t_s - first_s, pattern_s) for first_s, pattern_s in patterns):
                self.sleep_until(t_s)
                return t_s - start * self.cycle_s
        raise SimClockError(f"SimClock: the periodic tasks' schedules do not line up within {max_wait_s:g} s "
                            f"({[task.name for task in self._tasks]})")

    def _pattern_s(self, task: _SimTask) -> float:
        """The task's schedule repeats on the cycle grid every this many seconds (q periods, q * period / cycle an
        integer)."""
        ratio = Fraction(task.period_s / self.cycle_s).limit_denominator(1000)
        if abs(float(ratio) * self.cycle_s - task.period_s) > 1e-9:
            raise SimClockError(f"SimClock: task {task.name}'s period {task.period_s} s is not a simple fraction of "
                                f"the {self.cycle_s} s cycle; its schedule cannot be aligned")
        return ratio.denominator * task.period_s

    def _cycle(self) -> None:
        now = self.now_s()
        for task in list(self._tasks):
            task.run_if_due(now)
        self._advance_cycle()
        self._cycles += 1

    def _forget(self, task: _SimTask) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _advancing(self) -> _Advancing:
        return _Advancing(self)


def _on_grid(offset_s: float, pattern_s: float) -> bool:
    periods = offset_s / pattern_s
    return periods > -1e-9 and abs(periods - round(periods)) < 1e-6


class _Advancing:
    """Context guard: one thread advances, and never from inside a cycle."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock

    def __enter__(self) -> None:
        clock, me = self._clock, threading.get_ident()
        if clock._owner == me:
            raise SimClockError("SimClock: simulated time was advanced from inside a periodic task or a physics "
                                "cycle; a periodic task must return without sleeping (use clock.every for waits)")
        if not clock._guard.acquire(blocking=False):
            raise SimClockError("SimClock: another thread is advancing simulated time; the lock-step twin is "
                                "driven from one thread (use realtime mode for threaded callers)")
        clock._owner = me

    def __exit__(self, *exc: object) -> None:
        self._clock._owner = None
        self._clock._guard.release()
