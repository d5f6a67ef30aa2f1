"""Episode store write/read throughput against the bare image codec, and bytes per frame, per codec.

    python bench/store_bench.py [--frames 120] [--episode-steps 40] [--depth] [--codecs png jpeg]

Frames are 640x480 colour (and optionally 16-bit depth) of a rendered-looking scene: a shaded wall and
table with a few flat-shaded objects that move from frame to frame, plus sensor noise. For each codec it
prints: the bare codec's encode rate (frames/s, imagecodecs in this process, one thread), the store's
recording rate (EpisodeStore add_step + commit, every key of the
recorder, fsync included), their ratio, bytes per frame, and the store's per-frame read rate against
the bare decode rate.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collect.image_codec import decode_frame, encode_frame
from collect.schema import recording_schema
from collect.store import EpisodeStore
from fanvla.config import load_hardware_config

HEIGHT_PX, WIDTH_PX = 480, 640


def scene_frame(index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A colour frame and its depth (mm): wall, table, four objects drifting with ``index``, noise."""
    import cv2

    rows = np.linspace(0.0, 1.0, HEIGHT_PX, dtype=np.float32)[:, None, None]
    colour = np.broadcast_to((0.55 + 0.25 * rows) * np.array([200, 205, 212], np.float32),
                             (HEIGHT_PX, WIDTH_PX, 3)).copy()
    depth = np.full((HEIGHT_PX, WIDTH_PX), 2400.0, np.float32)
    table = np.array([[40, 190], [600, 190], [640, 480], [0, 480]], np.int32)
    cv2.fillConvexPoly(colour, table, (150.0, 118.0, 88.0))
    cv2.fillConvexPoly(depth, table, 900.0)
    depth[190:] = np.linspace(1300, 700, HEIGHT_PX - 190, dtype=np.float32)[:, None]
    objects = [((0.9, 0.15, 0.12), 160, 300, 46), ((0.15, 0.7, 0.25), 330, 360, 38),
               ((0.2, 0.3, 0.85), 470, 280, 52), ((0.85, 0.8, 0.3), 250, 250, 30)]
    for k, (tint, x, y, size) in enumerate(objects):
        x, y = int(x + 40 * np.sin(0.05 * index + k)), int(y + 15 * np.cos(0.04 * index + 2 * k))
        lit, shade = [255.0 * c for c in tint], [150.0 * c for c in tint]
        if k % 2:
            cv2.circle(colour, (x, y), size // 2, lit, -1)
            cv2.ellipse(colour, (x, y), (size // 2, size // 2), 0, 20, 160, shade, -1)
            cv2.circle(depth, (x, y), size // 2, 850.0, -1)
        else:
            cv2.rectangle(colour, (x, y), (x + size, y + size), shade, -1)
            cv2.rectangle(colour, (x, y - size // 3), (x + size, y), lit, -1)
            cv2.rectangle(depth, (x, y - size // 3), (x + size, y + size), 820.0, -1)
    colour += rng.normal(0.0, 2.0, colour.shape).astype(np.float32)
    depth += rng.normal(0.0, 3.0, depth.shape).astype(np.float32)
    depth[rng.random(depth.shape) < 0.02] = 0  # holes: no reading
    return np.clip(colour, 0, 255).astype(np.uint8), np.clip(depth, 0, 65535).astype(np.uint16)


def low_dim_step(t: int) -> dict[str, object]:
    joints = 0.01 * t * np.arange(1, 7)
    return {"timestamp_s": 0.1 * t, "color_timestamp_s": 0.1 * t - 0.02, "color_frame_number": 3 * t,
            "joints_rad": joints, "tcp_pose": np.array([300.0, 0.0, 200.0, np.pi, 0.0, 0.0]),
            "gripper_state": np.float32(1.0), "command_joints_rad": joints + 0.01,
            "command_tcp_pose": np.array([301.0, 0.0, 199.0, np.pi, 0.0, 0.0]),
            "command_gripper": np.float32(1.0), "command_clamped": False, "command_held": False,
            "capture_to_observation_s": 0.03, "observation_to_command_s": 0.004, "command_to_motion_s": 0.016}


def bare_encode(frames: list[np.ndarray], depths: list[np.ndarray] | None, image_format: str, level: int,
                png_level: int) -> tuple[float, float, float]:
    """Seconds to encode every frame with the codec alone; mean bytes per colour and per depth frame."""
    start = time.perf_counter()
    colour_bytes = [len(encode_frame(frame, image_format, level)) for frame in frames]
    depth_bytes = [len(encode_frame(depth, "png", png_level)) for depth in depths] if depths else [0]
    return time.perf_counter() - start, float(np.mean(colour_bytes)), float(np.mean(depth_bytes))


def store_write(path: Path, schema, frames: list[np.ndarray], depths: list[np.ndarray] | None,
                episode_steps: int) -> tuple[float, float]:
    """Seconds to record all frames as episodes of ``episode_steps`` (commit and fsync included), and the
    mean time of one ``commit`` (what the operator waits for between episodes)."""
    commits_s = []
    start = time.perf_counter()
    with EpisodeStore.create(path, schema) as store:
        for first in range(0, len(frames), episode_steps):
            with store.begin_episode({"instruction": "bench"}) as writer:
                for t in range(first, min(first + episode_steps, len(frames))):
                    step = {**low_dim_step(t), "color": frames[t]}
                    if depths:
                        step["depth_mm"] = depths[t]
                    writer.add_step(step)
                commit_start = time.perf_counter()
                writer.commit({"duration_s": 1.0})
                commits_s.append(time.perf_counter() - commit_start)
    return time.perf_counter() - start, float(np.mean(commits_s))


def read_rates(path: Path, image_format: str, samples: int) -> tuple[float, float]:
    """Frames/s of store.array('color')[i] at random i, and of the bare decode of the same chunks."""
    with EpisodeStore.open(path) as store:
        order = np.random.default_rng(0).permutation(store.num_frames)[:samples]
        colour = store.array("color")
        start = time.perf_counter()
        for index in order:
            colour[int(index)]
        store_s = time.perf_counter() - start
        chunks = [store.raw_image_chunk("color", int(index)) for index in order]
    start = time.perf_counter()
    for chunk in chunks:
        decode_frame(chunk, image_format)
    return len(order) / store_s, len(order) / (time.perf_counter() - start)


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_codec(codec: str, frames: list[np.ndarray], depths: list[np.ndarray] | None, path: Path,
                  args: argparse.Namespace) -> str:
    """One table row: best of ``args.repeats`` runs (the figures of a quiet moment on a shared machine)."""
    config = load_hardware_config().with_overrides({"recording.image_codec": codec})
    schema = recording_schema(config, record_depth=args.depth)
    level = schema.image_codec.jpeg_quality if codec == "jpeg" else schema.image_codec.png_level
    best = {"bare": np.inf, "store": np.inf, "commit": np.inf, "read": 0.0, "decode": 0.0}
    for _ in range(args.repeats):
        bare_s, colour_bytes, depth_bytes = bare_encode(frames, depths, codec, level, schema.image_codec.png_level)
        shutil.rmtree(path, ignore_errors=True)
        store_s, commit_s = store_write(path, schema, frames, depths, args.episode_steps)
        read_fps, decode_fps = read_rates(path, codec, samples=min(60, args.frames))
        best = {"bare": min(best["bare"], bare_s), "store": min(best["store"], store_s),
                "commit": min(best["commit"], commit_s), "read": max(best["read"], read_fps),
                "decode": max(best["decode"], decode_fps)}
    bare_fps, store_fps = args.frames / best["bare"], args.frames / best["store"]
    return (f"{schema.image_codec.describe():18s} {bare_fps:12.1f} {store_fps:10.1f} {store_fps / bare_fps:10.2f} "
            f"{colour_bytes:12.0f} {depth_bytes:12.0f} {directory_bytes(path) / args.frames:12.0f} "
            f"{1e3 * best['commit']:9.0f} {best['read']:9.1f} {best['decode']:12.1f} "
            f"{best['read'] / best['decode']:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=180)
    parser.add_argument("--episode-steps", type=int, default=60)
    parser.add_argument("--depth", action="store_true", help="also record 16-bit depth (always PNG)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--codecs", nargs="+", default=["png", "jpeg"], choices=["png", "jpeg"])
    parser.add_argument("--dir", default=None, help="where to write the stores (default: a temporary directory)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    scenes = [scene_frame(i, rng) for i in range(args.frames)]
    frames = [colour for colour, _ in scenes]
    depths = [depth for _, depth in scenes] if args.depth else None
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store_bench_"))
    print(f"{args.frames} frames {WIDTH_PX}x{HEIGHT_PX} colour{' + depth' if args.depth else ''}, episodes of "
          f"{args.episode_steps} steps, best of {args.repeats}, stores under {workdir}")
    print(f"{'codec':18s} {'bare enc f/s':>12s} {'store f/s':>10s} {'store/bare':>10s} {'B/frame col':>12s} "
          f"{'B/frame dep':>12s} {'disk B/frame':>12s} {'commit ms':>9s} {'read f/s':>9s} {'bare dec f/s':>12s} "
          f"{'read/bare':>9s}")
    try:
        for codec in args.codecs:
            print(measure_codec(codec, frames, depths, workdir / f"{codec}.zarr", args))
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("store/bare: recording rate (add_step + commit, fsync included) relative to encoding alone on one thread; "
          "the store encodes on two background threads, so it can exceed 1.0 where a core is free.")
    print("commit ms: mean time of one commit (what the operator waits for between episodes).")
    print("read: store.array('color')[i] at random i (what a training loader does) against decoding the same bytes.")


if __name__ == "__main__":
    main()
