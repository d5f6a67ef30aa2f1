"""SimClock: simulated time advanced in servo cycles, periodic tasks on the caller's thread."""

from __future__ import annotations

import threading

import pytest

from robot.sim.clock import SimClock, SimClockError

CYCLE_S = 0.008


class Recorder:
    def __init__(self) -> None:
        self.cycles = 0
        self.events: list[tuple[str, int]] = []

    def advance(self) -> None:
        self.cycles += 1


@pytest.fixture
def plant():
    return Recorder()


@pytest.fixture
def clock(plant):
    return SimClock(plant.advance, CYCLE_S)


def test_sleep_advances_whole_cycles(clock, plant):
    assert clock.is_simulated and clock.now_s() == 0.0
    clock.sleep_until(0.1)  # 12.5 cycles: rounds up to 13
    assert plant.cycles == 13 and clock.now_s() == pytest.approx(13 * CYCLE_S)
    clock.sleep(0.0)
    assert plant.cycles == 13
    clock.sleep_until(0.05)  # in the past: nothing happens
    assert plant.cycles == 13


def test_tasks_run_before_each_due_cycle(clock, plant):
    log: list[tuple[str, int]] = []
    clock.every(CYCLE_S, lambda: log.append(("servo", plant.cycles)), "servo")
    clock.every(0.1, lambda: log.append(("camera", plant.cycles)), "camera")
    clock.sleep_until(0.2)
    servo = [c for name, c in log if name == "servo"]
    camera = [c for name, c in log if name == "camera"]
    assert servo == list(range(25))  # once before every cycle, starting before the first
    assert camera == [0, 13]  # due at 0 and 0.1 s: the first cycle starting at or after each


def test_stopped_task_no_longer_runs(clock, plant):
    calls = []
    task = clock.every(CYCLE_S, lambda: calls.append(plant.cycles), "t")
    clock.advance_cycles(3)
    task.stop()
    clock.advance_cycles(3)
    assert calls == [0, 1, 2] and not task.running


def test_task_error_stops_it_and_is_raised_by_stop(clock, plant):
    def failing() -> None:
        if plant.cycles == 2:
            raise RuntimeError("servo failed")

    task = clock.every(CYCLE_S, failing, "servo")
    clock.advance_cycles(5)  # the clock keeps running; the task is dead
    assert plant.cycles == 5 and not task.running and isinstance(task.error, RuntimeError)
    assert task.stats.ticks == 3
    with pytest.raises(RuntimeError, match="servo failed"):
        task.stop()


def test_a_task_may_not_advance_time(clock):
    task = clock.every(CYCLE_S, lambda: clock.sleep(0.1), "greedy")
    clock.advance_cycles(1)
    assert isinstance(task.error, SimClockError)
    assert "periodic task must return without sleeping" in str(task.error)


def test_the_plant_may_not_advance_time():
    holder: dict[str, SimClock] = {}

    def advance() -> None:
        holder["clock"].sleep(CYCLE_S)

    holder["clock"] = SimClock(advance, CYCLE_S)
    with pytest.raises(SimClockError):
        holder["clock"].advance_cycles(1)
    holder["clock"]._advance_cycle = lambda: None  # the guard was released: the clock still works
    holder["clock"].advance_cycles(1)


def test_only_one_thread_advances(plant):
    started, release = threading.Event(), threading.Event()

    def slow_cycle() -> None:
        started.set()
        release.wait(2.0)

    clock = SimClock(slow_cycle, CYCLE_S)
    worker = threading.Thread(target=clock.advance_cycles, args=(1,))
    worker.start()
    started.wait(2.0)
    try:
        with pytest.raises(SimClockError, match="another thread"):
            clock.advance_cycles(1)
    finally:
        release.set()
        worker.join()


def _run_cycles(clock: SimClock, cycles: int) -> list[int]:
    """Cycles (relative to now) at which the clock's tasks ran over the next ``cycles`` cycles."""
    start, runs = clock.cycles, []
    clock._tasks[0]._fn = lambda: runs.append(clock.cycles - start)
    clock.advance_cycles(cycles)
    return runs


@pytest.mark.parametrize("elapsed_cycles", [0, 1, 7, 12, 13, 100, 251])
def test_align_restores_the_schedule_a_trial_started_with(clock, elapsed_cycles):
    """A camera at 10 frames/s on 8 ms cycles renders every 12.5 cycles (12 and 13 in turn): after align() the
    frames fall on the same cycles as they did at the start, whatever ran before."""
    clock.every(0.1, lambda: None, "camera")
    fresh = SimClock(lambda: None, CYCLE_S)
    fresh.every(0.1, lambda: None, "camera")
    expected = _run_cycles(fresh, 200)
    assert expected[:4] == [0, 13, 25, 38]  # 12.5 cycles a frame: the uneven pattern align must restore
    clock.advance_cycles(elapsed_cycles)
    waited_s = clock.align()
    assert 0 <= waited_s < 0.2 + 1e-9  # at most one pattern (2 frames = 25 cycles)
    assert _run_cycles(clock, 200) == expected


def test_align_refuses_a_period_that_is_no_simple_fraction_of_the_cycle(clock):
    clock.every(0.1 * 3 ** 0.5, lambda: None, "odd")
    with pytest.raises(SimClockError, match="not a simple fraction"):
        clock.align()
