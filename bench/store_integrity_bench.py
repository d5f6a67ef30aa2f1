"""What chunk checksums cost (recording and reading) and what they catch (fault injection), in one run.

    python bench/store_integrity_bench.py [--frames 180] [--episode-steps 60] [--repeats 5] [--flips 200]

1. Overhead. The same 640x480 colour + 16-bit depth frames (PNG, the recorder's keys) are recorded into a store
   of layout 1 (no checksums: the baseline) and of layout 2 (a CRC32C in every chunk, every read checked),
   alternating, ``--repeats`` times; the best time of each is compared (the quietest moment of a shared machine).
   The CRC32C of every byte written is also timed on its own, which does not depend on the machine's noise.
   Reads: random single frames and the whole low-dim columns, both layouts. Goal: checksums cost at most 3 % of
   recording time.
2. Fault injection on a layout-2 store, for each kind of array (image frame, low-dim chunk, no-op mask, episode
   index, episode metadata): the chunk file deleted, truncated to several lengths, and ``--flips`` random single
   bit flips; each damaged store is read the way the loader reads it. Printed: detected / injected, and how many
   were silent (read without an error). Goal: 0 silent.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import google_crc32c
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store_bench import low_dim_step, scene_frame

from collect.errors import CorruptStoreError
from collect.schema import recording_schema
from collect.store import EpisodeStore
from fanvla.config import load_hardware_config


def record(path: Path, schema, frames, depths, episode_steps: int, layout: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process, all its threads) to record every frame."""
    shutil.rmtree(path, ignore_errors=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    with EpisodeStore.create(path, schema, layout=layout) as store:
        for first in range(0, len(frames), episode_steps):
            with store.begin_episode({"instruction": "bench"}) as writer:
                for t in range(first, min(first + episode_steps, len(frames))):
                    writer.add_step({**low_dim_step(t), "color": frames[t], "depth_mm": depths[t]})
                writer.commit({"duration_s": 1.0})
    return time.perf_counter() - start, time.process_time() - cpu_start


def checksum_seconds(path: Path) -> tuple[float, int]:
    """Time to CRC32C every chunk file of the store once (what writing the checksums costs), and the bytes."""
    data = [p.read_bytes() for p in path.rglob("c.*") if p.is_file()]
    start = time.perf_counter()
    for chunk in data:
        google_crc32c.value(chunk)
    return time.perf_counter() - start, sum(len(chunk) for chunk in data)


def read_seconds(path: Path, samples: int) -> tuple[float, float]:
    """CPU seconds of one random colour frame (mean) and of every low-dim column + mask + metadata."""
    with EpisodeStore.open(path) as store:
        order = np.random.default_rng(0).permutation(store.num_frames)[:samples]
        colour = store.array("color")
        start = time.process_time()
        for index in order:
            colour[int(index)]
        frames_s = time.process_time() - start
        start = time.process_time()
        for key in store.schema.low_dim_keys:
            store.array(key)[:]
        store.noop_mask()
        store.episodes_meta()
        return frames_s / len(order), time.process_time() - start


def overhead(args: argparse.Namespace, workdir: Path) -> None:
    rng = np.random.default_rng(0)
    scenes = [scene_frame(i, rng) for i in range(args.frames)]
    frames, depths = [c for c, _ in scenes], [d for _, d in scenes]
    schema = recording_schema(load_hardware_config(), record_depth=True)
    wall, cpu = {1: np.inf, 2: np.inf}, {1: np.inf, 2: np.inf}
    for repeat in range(args.repeats):
        for layout in ((1, 2) if repeat % 2 == 0 else (2, 1)):  # alternate the order too
            wall_s, cpu_s = record(workdir / f"layout{layout}.zarr", schema, frames, depths, args.episode_steps, layout)
            wall[layout], cpu[layout] = min(wall[layout], wall_s), min(cpu[layout], cpu_s)
    crc_s, crc_bytes = checksum_seconds(workdir / "layout2.zarr")
    reads = {1: (np.inf, np.inf), 2: (np.inf, np.inf)}
    for _ in range(args.repeats):
        for layout in (1, 2):
            frame_s, low_dim_s = read_seconds(workdir / f"layout{layout}.zarr", min(60, args.frames))
            reads[layout] = (min(reads[layout][0], frame_s), min(reads[layout][1], low_dim_s))
    print(f"1. overhead: {args.frames} frames 640x480 colour + depth (png), episodes of {args.episode_steps} steps, "
          f"best of {args.repeats} (layouts alternating)")
    for layout, name in ((1, "layout 1 (no checksums, baseline)"), (2, "layout 2 (CRC32C per chunk)      ")):
        print(f"   recording, {name}: {wall[layout]:6.2f} s wall ({args.frames / wall[layout]:5.1f} frames/s), "
              f"{cpu[layout]:6.2f} s CPU")
    print(f"   -> layout 2 / layout 1: wall {wall[2] / wall[1]:.3f} ({100 * (wall[2] / wall[1] - 1):+.1f} %), CPU "
          f"{cpu[2] / cpu[1]:.3f} ({100 * (cpu[2] / cpu[1] - 1):+.1f} %); both include the shared machine's noise")
    print(f"   CRC32C of all {crc_bytes / 1e6:.1f} MB written, timed alone: {1e3 * crc_s:.1f} ms = "
          f"{100 * crc_s / wall[1]:.2f} % of the baseline's recording time (goal <= 3 %)")
    for what, index in (("one random frame (colour)", 0), ("all low-dim columns + mask + metadata", 1)):
        print(f"   read {what} (CPU, best of {args.repeats}): layout 1 {1e3 * reads[1][index]:.3f} ms, layout 2 "
              f"{1e3 * reads[2][index]:.3f} ms -> ratio {reads[2][index] / reads[1][index]:.2f}")


def flip(path: Path, original: bytes, bit: int) -> None:
    data = bytearray(original)
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def read_like_training(path: Path) -> None:
    with EpisodeStore.open(path) as store:
        for key in store.schema.low_dim_keys:
            store.array(key)[:]
        store.valid_indices()
        store.episodes_meta()
        for key in store.schema.image_keys:
            for index in range(store.num_frames):
                store.array(key)[index]


def attempt(path: Path, count: list[int]) -> None:
    """One damaged store read like the loader: count[0] += detected, count[1] += injected."""
    count[1] += 1
    try:
        read_like_training(path)
    except CorruptStoreError:
        count[0] += 1


def fault_injection(args: argparse.Namespace, workdir: Path) -> None:
    path = workdir / "faults.zarr"
    config = load_hardware_config().with_overrides({"camera.color.width": 64, "camera.color.height": 48})
    schema = recording_schema(config, record_depth=False)
    rng = np.random.default_rng(27)
    with EpisodeStore.create(path, schema) as store:
        for steps in (90, 130, 80):
            joints = np.zeros(6)
            with store.begin_episode({"instruction": "bench"}) as writer:
                for t in range(steps):
                    joints = joints + (0.01 if rng.random() < 0.6 else 0.0)  # random holds: a varied no-op mask
                    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                    writer.add_step({**low_dim_step(t), "joints_rad": joints, "command_joints_rad": joints + 0.001,
                                     "color": image})
                writer.commit({"duration_s": steps / 10})
    kinds = {"image frame": "data/color/c.140.0.0.0", "low-dim chunk": "data/joints_rad/c.0.0",
             "no-op mask": "data/noop/g0/c.0", "episode index": "meta/episode_ends/c.0",
             "episode metadata": "meta/episode_info/c.0"}
    print("2. fault injection: a layout-2 store of 3 episodes (300 frames 64x48); each damage read like the loader")
    print(f"   {'array kind':18s} {'file B':>7s} {'deleted':>9s} {'truncated':>10s} {'bit flips':>10s} {'silent':>7s}")
    for kind, relative in kinds.items():
        file = path / relative
        original = file.read_bytes()
        counts = {"deleted": [0, 0], "truncated": [0, 0], "bit flips": [0, 0]}
        file.unlink()
        attempt(path, counts["deleted"])
        for size in sorted({0, 1, 3, len(original) // 2, len(original) - 4, len(original) - 1}):
            file.write_bytes(original[:size])
            attempt(path, counts["truncated"])
        for bit in rng.choice(8 * len(original), size=min(args.flips, 8 * len(original)), replace=False):
            flip(file, original, int(bit))
            attempt(path, counts["bit flips"])
        file.write_bytes(original)
        silent = sum(total - found for found, total in counts.values())
        cells = " ".join(f"{found:>{w}d}/{total:<3d}" for (found, total), w in zip(counts.values(), (5, 6, 6),
                                                                                  strict=True))
        print(f"   {kind:18s} {len(original):7d} {cells} {silent:7d}")
    read_like_training(path)  # restored: reads again
    print("   detected/injected per damage; silent = read back without an error (goal: 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--episode-steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flips", type=int, default=200)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="store_integrity_bench_"))
    try:
        overhead(args, workdir)
        fault_injection(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
