"""Recording speed: sustained 30 Hz recording on the realtime twin, and lock-step recording throughput.

1. Realtime (RealClock): the scripted expert records at 30 Hz with 640x480 colour + depth (both
   stored) for ``--seconds``. Printed: late ticks (must be 0), per-tick work time p50/p99 (tick start
   to the end of the subscribers) against the 33.3 ms budget (the ratio), time spent in the
   recorder's ``add_step``, and the store's write rate (frames written / (recording + commit time)).
   Then the CPU this recording needs, independent of other load on the machine: the same recording in
   the lock-step twin does one tick's work per tick, so its process CPU time per recorded second is
   the number of cores the real-time recording keeps busy (the machine has ``os.cpu_count()``).
2. Lock-step: steps/s of a scripted episode recorded at 10 Hz at the default profile (hardware.yaml),
   against the same episode run without the recorder (the baseline), with where the time goes
   (renders per step and their cost, PNG encode per frame). Then the same for camera variants, to
   size the main demo (150 episodes): colour fps = recording rate (one render per tick), no depth
   stream, 320x240.

Run: ``python bench/record_bench.py [--seconds 10] [--skip-variants]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from collect.expert import ScriptedExpert
from collect.image_codec import encode_frame
from collect.recorder import EpisodeRecorder, Verdict
from collect.schema import recording_schema
from collect.store import EpisodeStore
from fanvla.config import load_hardware_config
from robot.factory import open_robot
from robot.runtime import ControlLoop
from robot.scene import SceneSampler
from robot.sim.twin import Twin

BUDGET_FRACTION_OK = 1.0


class TickTimer:
    """Subscriber placed after the recorder: work time of each tick = clock now - scheduled tick time."""

    def __init__(self, clock) -> None:
        self.clock, self.work_s, self.late = clock, [], 0

    def on_episode_start(self, instruction: str) -> None:
        self.work_s, self.late = [], 0

    def on_step(self, step) -> None:
        self.work_s.append(self.clock.now_s() - step.observation.time_s)
        self.late += step.late

    def on_episode_end(self, result) -> None:
        pass


class TimedRecorder(EpisodeRecorder):
    """The real recorder, timing its own add_step (blocks only when the image queue is full) and commit."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_step_s: list[float] = []
        self.commit_s = 0.0

    def on_step(self, step) -> None:
        start = time.perf_counter()
        super().on_step(step)
        self.add_step_s.append(time.perf_counter() - start)

    def on_episode_end(self, result) -> None:
        start = time.perf_counter()
        super().on_episode_end(result)
        self.commit_s = time.perf_counter() - start


def save_everything(result) -> Verdict:
    return Verdict(True, {"bench": True}, result.reason)


def loop_for(robot, subscribers) -> ControlLoop:
    config = robot.config
    return ControlLoop(robot, config.recording.rate_hz, config.safety.watchdog_hold_s, config.safety.watchdog_stop_s,
                       subscribers)


def realtime_30hz(base, seconds: float, directory: Path) -> None:
    config = base.with_overrides({"recording.rate_hz": 30.0, "recording.record_depth": True,
                                  "camera.depth.enabled": True})
    color, depth = config.camera.color, config.camera.depth
    print(f"1. realtime twin, recording at {config.recording.rate_hz:g} Hz: colour {color.width}x{color.height}@"
          f"{color.fps} + depth {depth.width}x{depth.height}@{depth.fps}, both stored ({config.recording.image_codec})")
    with open_robot(config, "sim", seed=1, realtime=True) as robot:
        spec = robot.twin.reset_scene(SceneSampler(config).sample(1, "red_cube"))
        store = EpisodeStore.create(directory / "realtime.zarr", recording_schema(config, robot.camera.intrinsics))
        # the session's real-time setting: up to 2 s of frames may wait for the encoder threads
        recorder = TimedRecorder(store, judge=save_everything, image_queue=int(2 * config.recording.rate_hz))
        timer = TickTimer(robot.clock)
        recorder.prepare({"object": spec.object_name, "bench": "realtime"})
        expert = ScriptedExpert(robot.twin, config.recording.period_s, np.random.default_rng(1))
        started = time.perf_counter()
        result = loop_for(robot, [recorder, timer]).run_episode(expert, spec.instruction(config), seconds)
        recording_s = time.perf_counter() - started - recorder.commit_s
        frames = store.num_frames
        store.close()
    work_ms = np.array(timer.work_s) * 1000.0
    add_ms = np.array(recorder.add_step_s) * 1000.0
    budget_ms = 1000.0 / config.recording.rate_hz
    p50, p99 = np.percentile(work_ms, 50), np.percentile(work_ms, 99)
    print(f"   {result.steps} ticks in {recording_s:.1f} s ({result.status.value}); late ticks: {result.late_ticks}"
          f"{'  <-- NOT ZERO' if result.late_ticks else ''}")
    print(f"   per-tick work p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {work_ms.max():.1f} ms vs budget "
          f"{budget_ms:.1f} ms -> p99 / budget = {p99 / budget_ms:.2f}")
    print(f"   recorder add_step p50 {np.percentile(add_ms, 50):.2f} ms, p99 {np.percentile(add_ms, 99):.2f} ms; "
          f"commit {recorder.commit_s:.2f} s")
    print(f"   store wrote {frames} frame sets (colour + depth PNG) at {frames / (recording_s + recorder.commit_s):.1f}"
          f" frame sets/s including the commit (needed: {config.recording.rate_hz:g})")
    cpu_demand(config, seconds, directory)


def cpu_demand(config, seconds: float, directory: Path) -> None:
    """CPU the real-time recording needs, measured without real-time scheduling: the same recording in the
    lock-step twin does exactly one tick's work per tick (render, camera pipeline, physics, control, encode)."""
    with open_robot(config, "sim", seed=1, realtime=False) as robot:
        spec = robot.twin.reset_scene(SceneSampler(config).sample(1, "red_cube"))
        path = Path(tempfile.mkdtemp(dir=directory)) / "cpu.zarr"
        store = EpisodeStore.create(path, recording_schema(config, robot.camera.intrinsics))
        recorder = EpisodeRecorder(store, judge=save_everything)
        recorder.prepare({"bench": "cpu"})
        expert = ScriptedExpert(robot.twin, config.recording.period_s, np.random.default_rng(1))
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        result = loop_for(robot, [recorder]).run_episode(expert, spec.instruction(config), seconds)
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
        store.close()
    recorded_s = result.steps / config.recording.rate_hz
    print(f"   CPU demand (same recording in lock-step, all threads): {cpu_s / recorded_s:.2f} core-seconds per "
          f"second of recording, on {os.cpu_count()} cores (lock-step ran {recorded_s / wall_s:.2f}x real time)")


def lockstep_episode(config, directory: Path | None, label: str, seed: int = 3) -> tuple[float, int, dict]:
    """(steps/s, steps, timings) of one scripted episode in the lock-step twin, recorded when ``directory``."""
    renders = {"count": 0, "s": 0.0}
    original = Twin.render

    def timed_render(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            renders["count"] += 1
            renders["s"] += time.perf_counter() - start

    Twin.render = timed_render
    try:
        with open_robot(config, "sim", seed=1, realtime=False) as robot:
            spec = robot.twin.reset_scene(SceneSampler(config).sample(seed, "green_cylinder"))
            subscribers, store = [], None
            if directory is not None:
                store = EpisodeStore.create(directory / f"{label}.zarr",
                                            recording_schema(config, robot.camera.intrinsics))
                recorder = EpisodeRecorder(store, judge=save_everything)
                recorder.prepare({"bench": label})
                subscribers.append(recorder)
            expert = ScriptedExpert(robot.twin, config.recording.period_s, np.random.default_rng(seed))
            renders.update(count=0, s=0.0)
            started, cpu_started = time.perf_counter(), time.process_time()
            result = loop_for(robot, subscribers).run_episode(expert, spec.instruction(config), 60.0)
            elapsed, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            if store is not None:
                store.close()
    finally:
        Twin.render = original
    timings = {"renders_per_step": renders["count"] / result.steps, "step_ms": 1000.0 * elapsed / result.steps,
               "cpu_ms": 1000.0 * cpu_s / result.steps,
               "render_ms": 1000.0 * renders["s"] / max(renders["count"], 1)}
    return result.steps / elapsed, result.steps, timings


def png_encode_ms(config) -> float:
    with Twin(config) as twin:
        color = twin.render_color()
    encode_frame(color, "png", 1)
    start = time.perf_counter()
    for _ in range(10):
        encode_frame(color, "png", 1)
    return (time.perf_counter() - start) * 100.0


def lockstep(base, directory: Path, variants: bool) -> None:
    color = base.camera.color
    print(f"2. lock-step twin, scripted expert at {base.recording.rate_hz:g} Hz, default profile colour "
          f"{color.width}x{color.height}@{color.fps}, depth stream {'on' if base.camera.depth.enabled else 'off'} "
          f"(recorded: {'yes' if base.recording.record_depth else 'no'})")
    bare_rate, steps, bare = lockstep_episode(base, None, "bare")
    rate, _, recorded = lockstep_episode(base, directory, "default")
    encode = png_encode_ms(base)
    print(f"   without recorder: {bare_rate:.1f} steps/s ({bare['step_ms']:.0f} ms/step: "
          f"{bare['renders_per_step']:.1f} renders/step x {bare['render_ms']:.1f} ms)")
    print(f"   recording:        {rate:.1f} steps/s ({recorded['step_ms']:.0f} ms/step) -> ratio recording / "
          f"bare = {rate / bare_rate:.2f}; PNG encode {encode:.1f} ms/frame on the image threads")
    print(f"   CPU per step (all threads): {bare['cpu_ms']:.0f} ms bare, {recorded['cpu_ms']:.0f} ms recording "
          f"(independent of other load; {os.cpu_count()} cores)")
    print(f"   150 episodes of ~{steps} steps at this rate: {150 * steps / rate / 60:.0f} min")
    if not variants:
        return
    fps = int(base.recording.rate_hz)
    for label, overrides in (
            (f"colour fps = recording rate ({fps})", {"camera.color.fps": fps, "camera.depth.fps": fps}),
            ("no depth stream", {"camera.depth.enabled": False}),
            (f"no depth stream, fps {fps}", {"camera.depth.enabled": False, "camera.color.fps": fps}),
            (f"320x240, no depth stream, fps {fps}", {"camera.depth.enabled": False, "camera.color.fps": fps,
                                                     "camera.color.width": 320, "camera.color.height": 240})):
        variant_rate, variant_steps, t = lockstep_episode(base.with_overrides(overrides), directory,
                                                          label.replace(" ", "_").replace("=", ""))
        print(f"   variant {label:38s}: {variant_rate:5.1f} steps/s ({t['renders_per_step']:.1f} renders/step x "
              f"{t['render_ms']:.1f} ms, CPU {t['cpu_ms']:.0f} ms/step) -> x{variant_rate / rate:.1f} vs default; "
              f"150 episodes: {150 * variant_steps / variant_rate / 60:.0f} min")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the realtime recording")
    parser.add_argument("--skip-variants", action="store_true", help="only the default profile in lock-step")
    args = parser.parse_args()
    base = load_hardware_config(Path(__file__).resolve().parents[1] / "hardware.yaml")
    with tempfile.TemporaryDirectory(prefix="record_bench_") as directory:
        realtime_30hz(base, args.seconds, Path(directory))
        lockstep(base, Path(directory), not args.skip_variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
