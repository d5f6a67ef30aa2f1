"""The twin's speed: render rates, physics step rate, and the jitter of JakaArm's 125 Hz servo loop.

Each figure comes with a baseline measured in the same run:
- renders: frames/s at 224x224 and 640x480, colour and colour+depth (one pass), and the ratio of
  colour+depth to colour alone;
- physics: bare ``mj_step`` on the twin's model vs stepping through ``Twin.step_cycle`` (the
  controller hook, target interpolation, gripper ramp and collision check), per physics step;
- servo loop: period p50/p99/max of the ``servo_j`` calls the fake controller receives from
  ``JakaArm`` streaming against the realtime twin on ``RealClock`` (with a renderer running at the
  camera rate, like a recording session), vs a bare ``time.sleep`` loop and a bare ``RealClock.every``
  loop at the same 8 ms period.

Run: ``python bench/sim_bench.py [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mujoco
import numpy as np

from fanvla.config import load_hardware_config
from robot.clock import RealClock
from robot.jaka import JakaArm
from robot.sim.fake_jkrc import make_jkrc
from robot.sim.twin import Twin


def render_rate(twin: Twin, width: int, height: int, depth: bool, seconds: float) -> float:
    twin.render(width, height, depth)  # warm-up (renderer creation, first upload)
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        twin.render(width, height, depth)
        frames += 1
    return frames / (time.perf_counter() - start)


def physics_rates(twin: Twin, seconds: float) -> tuple[float, float]:
    """(bare mj_step steps/s, steps/s through Twin.step_cycle)."""
    model, data = twin.model, twin.data
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        mujoco.mj_step(model, data)
        steps += 1
    bare = steps / (time.perf_counter() - start)
    cycles, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        twin.step_cycle()
        cycles += 1
    return bare, cycles * twin.substeps / (time.perf_counter() - start)


def percentiles_ms(times_s: list[float]) -> tuple[float, float, float]:
    periods = np.diff(np.asarray(times_s)) * 1000.0
    return float(np.percentile(periods, 50)), float(np.percentile(periods, 99)), float(periods.max())


def sleep_loop_times(period_s: float, seconds: float) -> list[float]:
    times, next_tick = [], time.monotonic()
    end = next_tick + seconds
    while next_tick < end:
        times.append(time.monotonic())
        next_tick += period_s
        time.sleep(max(0.0, next_tick - time.monotonic()))
    return times


def clock_loop_times(period_s: float, seconds: float) -> list[float]:
    times: list[float] = []
    task = RealClock().every(period_s, lambda: times.append(time.monotonic()), "bench-noop")
    time.sleep(seconds)
    task.stop()
    return times


def servo_loop_times(config, seconds: float, render_hz: float) -> tuple[list[float], int]:
    """servo_j arrival times at the controller while JakaArm streams a slow sine, plus renders made."""
    with Twin(config, realtime=True) as twin:
        sdk = make_jkrc(twin)
        renders = 0
        stop = threading.Event()

        def camera() -> None:
            nonlocal renders
            while not stop.is_set():
                twin.render(depth=config.camera.depth.enabled)
                renders += 1
                stop.wait(1.0 / render_hz)

        if render_hz > 0:
            twin.render(depth=config.camera.depth.enabled)  # the camera connects before the episode starts
        with JakaArm(config, sdk=sdk, clock=twin.clock) as arm:
            arm.start_servo()
            home = arm.state().joints_rad
            camera_thread = threading.Thread(target=camera, daemon=True)
            if render_hz > 0:
                camera_thread.start()
            sdk.controller.servo_log.clear()
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                phase = 2 * np.pi * 0.25 * (time.monotonic() - start)
                arm.servo_joints(home + np.radians([10, 5, -5, 0, 5, 20]) * np.sin(phase), reach_in_s=0.1)
                time.sleep(0.1)  # a 10 Hz policy
            stop.set()
            if render_hz > 0:
                camera_thread.join()
            times = [entry.wall_s for entry in sdk.controller.servo_log]
            arm.stop_servo()
    return times, renders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each timing loop")
    args = parser.parse_args()
    config = load_hardware_config()
    period = config.robot.servo_period_s

    with Twin(config, realtime=False) as twin:
        print("render rate (frames/s, colour+depth in one pass)")
        for width, height in ((224, 224), (640, 480)):
            color = render_rate(twin, width, height, False, args.seconds / 2)
            both = render_rate(twin, width, height, True, args.seconds / 2)
            print(f"  {width}x{height}: colour {color:7.1f}  colour+depth {both:7.1f}  "
                  f"(colour+depth / colour = {both / color:.2f})")
        bare, through_twin = physics_rates(twin, args.seconds / 2)
        print(f"physics: bare mj_step {bare:8.0f} steps/s; through Twin.step_cycle {through_twin:8.0f} steps/s "
              f"(ratio {through_twin / bare:.2f}); real time needs {1 / twin.model.opt.timestep:.0f} steps/s "
              f"-> lock-step runs {through_twin * twin.model.opt.timestep:.1f}x real time")

    sleep_p = percentiles_ms(sleep_loop_times(period, args.seconds))
    clock_p = percentiles_ms(clock_loop_times(period, args.seconds))
    quiet_times, _ = servo_loop_times(config, args.seconds, 0.0)
    servo_times, renders = servo_loop_times(config, args.seconds, config.camera.color.fps)
    quiet_p, servo_p = percentiles_ms(quiet_times), percentiles_ms(servo_times)
    print(f"servo period at {1 / period:.0f} Hz (target {period * 1000:.1f} ms): p50 / p99 / max ms")
    print(f"  baseline time.sleep loop           {sleep_p[0]:6.2f} / {sleep_p[1]:6.2f} / {sleep_p[2]:7.2f}")
    print(f"  baseline RealClock.every           {clock_p[0]:6.2f} / {clock_p[1]:6.2f} / {clock_p[2]:7.2f}")
    print(f"  JakaArm -> fake jkrc -> twin       {quiet_p[0]:6.2f} / {quiet_p[1]:6.2f} / {quiet_p[2]:7.2f}   "
          f"({len(quiet_times)} servo_j calls)")
    print(f"  ... with the camera rendering      {servo_p[0]:6.2f} / {servo_p[1]:6.2f} / {servo_p[2]:7.2f}   "
          f"({len(servo_times)} servo_j calls, {renders} colour+depth renders alongside)")
    print(f"  p99 ratio JakaArm / time.sleep loop = {quiet_p[1] / sleep_p[1]:.2f} (camera off), "
          f"{servo_p[1] / sleep_p[1]:.2f} (camera on); / RealClock.every = {quiet_p[1] / clock_p[1]:.2f}, "
          f"{servo_p[1] / clock_p[1]:.2f}")


if __name__ == "__main__":
    main()
