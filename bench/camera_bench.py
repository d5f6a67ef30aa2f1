"""Frames per second through software device -> pipeline -> align -> latest(), against bare injection.

Uses the camera section of hardware.yaml (640x480 colour + depth, depth aligned to colour). Measured
in the same run:

- bare injection: ``SoftwareRealSense.inject()`` calls per second into the running pipeline, not
  waiting for delivery (what the SDK accepts; the baseline);
- lock-step delivery: inject frame N, then ``camera.wait_for_frame_number(N)``: every frame crosses
  the whole path (syncer, reader thread, ``rs.align``, copies), as in a lock-step simulation;
- the same without alignment, to show what ``rs.align`` costs.

Run: ``python bench/camera_bench.py [--frames N] [--config hardware.yaml]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fanvla.config import CameraConfig, load_hardware_config
from robot.interfaces import Intrinsics
from robot.sim.software_realsense import SoftwareRealSense

N_PATTERNS = 8  # pre-rendered frames, so that drawing them is not part of what is timed


def patterns(config: CameraConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """Colour gradients with a moving square, and a depth ramp with a nearer moving square."""
    h, w = config.color.height, config.color.width
    dh, dw = config.depth.height, config.depth.width
    ys, xs = np.mgrid[0:h, 0:w]
    dys, dxs = np.mgrid[0:dh, 0:dw]
    frames = []
    for k in range(N_PATTERNS):
        color = np.stack([xs * 255 // w, ys * 255 // h, np.full_like(xs, 40 * k)], axis=-1).astype(np.uint8)
        color[40 + 10 * k:120 + 10 * k, 60 + 20 * k:140 + 20 * k] = (255, 255, 0)
        depth = (600 + dxs + dys).astype(np.uint16)
        depth[30 + 8 * k:90 + 8 * k, 40 + 16 * k:100 + 16 * k] = 450
        frames.append((color, depth))
    return frames


def intrinsics_for(width: int, height: int) -> Intrinsics:
    return Intrinsics(width, height, fx=385.0 * width / 640, fy=385.0 * width / 640, ppx=width / 2, ppy=height / 2)


def measure(config: CameraConfig, frames: list, n: int) -> tuple[float, float]:
    """(bare injections per second, lock-step deliveries per second) on one software device."""
    color_intr = intrinsics_for(config.color.width, config.color.height)
    depth_intr = intrinsics_for(config.depth.width, config.depth.height)
    device = SoftwareRealSense(config, color_intr, lambda: frames[0], depth_intrinsics=depth_intr)
    with device.camera() as camera:
        for k in range(10):  # warm the pipeline and the reader up
            camera.wait_for_frame_number(device.inject(*frames[k % N_PATTERNS]), timeout_s=5.0)

        start = time.perf_counter()
        for k in range(n):
            device.inject(*frames[k % N_PATTERNS])
        bare_fps = n / (time.perf_counter() - start)
        time.sleep(0.5)  # let the reader drain what the burst queued

        start = time.perf_counter()
        for k in range(n):
            number = device.inject(*frames[k % N_PATTERNS])
            frame = camera.wait_for_frame_number(number, timeout_s=5.0)
            if frame.frame_number != number:
                raise RuntimeError(f"lock-step broke: waited for frame {number}, got {frame.frame_number}")
        delivered_fps = n / (time.perf_counter() - start)
    return bare_fps, delivered_fps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per measurement (default 300)")
    parser.add_argument("--config", default=None, help="hardware.yaml (default: the repository's)")
    args = parser.parse_args()
    camera = load_hardware_config(args.config).camera
    if not camera.depth.enabled:
        camera = load_hardware_config(args.config).with_overrides({"camera.depth.enabled": True}).camera
    unaligned = camera.model_copy(update={"align_depth_to_color": False})
    print(f"colour {camera.color.width}x{camera.color.height} rgb8 + depth {camera.depth.width}x"
          f"{camera.depth.height} z16, {args.frames} frames per measurement")
    frames = patterns(camera)
    bare, aligned = measure(camera, frames, args.frames)
    bare_unaligned, unaligned_fps = measure(unaligned, frames, args.frames)
    print(f"bare injection (baseline)          {bare:8.1f} frames/s")
    print(f"lock-step delivery, depth aligned  {aligned:8.1f} frames/s   ratio to baseline {aligned / bare:.3f}")
    print(f"bare injection (second device)     {bare_unaligned:8.1f} frames/s")
    print(f"lock-step delivery, no alignment   {unaligned_fps:8.1f} frames/s   ratio to baseline "
          f"{unaligned_fps / bare_unaligned:.3f}")
    print(f"camera rate {camera.color.fps} frames/s: the aligned path runs {aligned / camera.color.fps:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
