"""Data loading for finetuning: decoding into the frame cache, then batches/s against the training loop's needs.

Writes a store of camera-sized frames (640 x 480 PNG, as the recorder stores them), then measures:
1. cache building (PNG decode + bicubic resize, once per run): frames/s with 1 thread (baseline) and N threads;
2. batch building from the cache (crop + colour jitter + tokens, ``fanvla finetune``'s own code): samples/s in
   the training process and through DataLoader worker processes;
3. the training loop: samples/s of full training steps of the tiny model fed by each way of building batches,
   against the same steps on one reused batch (the baseline: what the loop would do with a free loader).
The ratios say how far the loader is from being the bottleneck (loader / consumption: goal well above 1; fed /
baseline: goal about 1.0). On a loaded 2-core machine the figures are noisy; rounds are interleaved.

Run: ``python bench/finetune_loader_bench.py [--frames 400] [--preset demo] [--batch-size 16]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.batches import (
    BatchBuilder,
    BatchLayout,
    SampleStream,
    SplitArrays,
    TrainingMicroBatches,
    tokenize_actions,
    training_batches,
)
from finetune.data import load_training_data
from finetune.frames import build_frame_file, crop_source_size, open_frame_file

STEPS_PER_EPISODE = 100
INSTRUCTION = "put the red cube into the box"


def scene_frame(t: int, height: int, width: int) -> np.ndarray:
    """A smooth table-and-objects picture (compresses like a render, unlike noise)."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = 90 + (rows * 60 // height)
    image[..., 1] = 100 + (cols * 40 // width)
    image[..., 2] = 110
    x, y = 100 + 3 * t % (width - 160), 200 + (t % 50)
    image[y:y + 60, x:x + 60] = (200, 40, 40)
    image[300:420, 380:560] = (150, 120, 80)
    return image


def write_store(path: Path, frames: int) -> None:
    from collect.schema import recording_schema
    from collect.store import EpisodeStore
    from fanvla.config import load_hardware_config

    config = load_hardware_config(Path(__file__).resolve().parents[1] / "hardware.yaml")
    schema = recording_schema(config, record_depth=False)
    height, width, _ = schema.keys["color"].shape
    store = EpisodeStore.create(path, schema)
    for _ in range(max(1, frames // STEPS_PER_EPISODE)):
        with store.begin_episode({"instruction": INSTRUCTION, "object": "red_cube"}) as writer:
            for t in range(STEPS_PER_EPISODE):
                joints = 0.01 * (t + 1) * np.arange(1, 7)
                pose = np.array([300.0 + t, 0.0, 200.0, np.pi, 0.0, 0.0])
                step = {"color": scene_frame(t, height, width), "joints_rad": joints,
                        "command_joints_rad": joints + 0.01, "tcp_pose": pose, "command_tcp_pose": pose + 1.0,
                        "gripper_state": np.float32(1.0), "command_gripper": np.float32(t > 50), "timestamp_s": 0.1 * t,
                        "color_timestamp_s": 0.1 * t, "color_frame_number": t}
                writer.add_step({key: step.get(key, np.zeros(spec.shape, spec.dtype))
                                 for key, spec in schema.keys.items()})
            writer.commit({})
    store.close()


def one_step(step, model, optimizer, batch) -> float:
    started = time.perf_counter()
    step(model, batch).loss.total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def loader_rate(dataset, workers: int, count: int, batch_size: int) -> float:
    batches = training_batches(dataset, 0, count + 2, workers)
    next(batches), next(batches)  # start-up (thread start, worker fork) is not throughput
    started = time.perf_counter()
    for _ in range(count):
        next(batches)
    elapsed = time.perf_counter() - started
    batches.close()
    return rate(count * batch_size, elapsed)


def fed_rate(dataset, feed: int | str, steps: int, batch_size: int, step, model, optimizer) -> float:
    """samples/s of training steps whose batches come from ``feed``: a worker count, "demand" or "reused"."""
    if feed == "reused":
        batch = dataset[0]
        batches = iter([batch] * (steps + 1))
    elif feed == "demand":
        batches = (dataset[k] for k in range(100, 101 + steps))
    else:
        batches = training_batches(dataset, 100, steps + 1, feed)
    one_step(step, model, optimizer, next(batches))
    started = time.perf_counter()
    for _ in range(steps):
        one_step(step, model, optimizer, next(batches))
    elapsed = time.perf_counter() - started
    if hasattr(batches, "close"):
        batches.close()
    return rate(steps * batch_size, elapsed)


def rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--preset", default="demo", choices=("test", "demo"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="training steps timed per feed and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from policy.tiny import build_tiny_model

    model = build_tiny_model(args.preset, instructions=[INSTRUCTION]).train()
    size = model.image_settings.image_size
    root = Path(tempfile.mkdtemp(prefix="finetune_loader_bench_"))
    try:
        started = time.perf_counter()
        write_store(root / "demos.zarr", args.frames)
        print(f"wrote {args.frames} frames of 640x480 PNG in {time.perf_counter() - started:.1f} s")
        data = load_training_data([root / "demos.zarr"], "ee_delta", val_fraction=0.0, skip_noops=False)
        cpus = os.cpu_count() or 1
        decode = {}
        for threads in sorted({1, cpus}):
            target = root / f"cache{threads}.npy"
            started = time.perf_counter()
            build_frame_file(target, data.store_paths, data.train, crop_source_size(size), False, threads, exact=False)
            decode[threads] = rate(len(data.train), time.perf_counter() - started)
        print(f"1. frame cache (decode + resize to {crop_source_size(size)} px): 1 thread {decode[1]:.0f} frames/s "
              f"(baseline), {cpus} threads {decode[cpus]:.0f} frames/s = {decode[cpus] / decode[1]:.2f}x; "
              f"12k frames take {12000 / decode[cpus]:.0f} s once per run")

        frames = open_frame_file(root / f"cache{cpus}.npy", len(data.train), crop_source_size(size))
        tokens = tokenize_actions(data.train.actions, data.stats, model.action_tokenizer)
        builder = BatchBuilder(SplitArrays(frames, tokens, data.train.actions, data.train.instruction),
                               data.instructions, model.tokenizer, model.pad_token_id, model.image_settings, size)
        dataset = TrainingMicroBatches(builder, SampleStream(len(data.train), 0), BatchLayout(args.batch_size), 0, True)
        modes = {"prefetch thread (--workers 0)": 0, f"{args.workers} worker processes": args.workers}
        loader = {name: loader_rate(dataset, workers, args.batches, args.batch_size)
                  for name, workers in modes.items()}
        started = time.perf_counter()
        for k in range(args.batches):
            dataset[k]
        direct = rate(args.batches * args.batch_size, time.perf_counter() - started)
        print(f"2. batches from the cache (crop + colour jitter + tokens), batch {args.batch_size}, no training: "
              f"built on demand {direct:.0f} samples/s; " + ", ".join(f"{n} {v:.0f}" for n, v in loader.items()))

        from finetune.steps import LossStep

        step = LossStep(model, "fan-sft", 0.05, 0.05, data.stats, data.spec, torch.device("cpu"), bf16=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        feeds = {"the same batch reused (baseline)": "reused", "built on demand in the loop": "demand",
                 **{name: workers for name, workers in modes.items()}}
        fed: dict[str, list[float]] = {name: [] for name in feeds}
        for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every feed alike
            for name, feed in feeds.items():
                fed[name].append(fed_rate(dataset, feed, args.steps, args.batch_size, step, model, optimizer))
        alone = float(np.median(fed["the same batch reused (baseline)"]))
        print(f"3. training step ({args.preset} preset, {args.threads} thread(s)), medians of {args.rounds} rounds "
              f"of {args.steps} steps:")
        for name, values in fed.items():
            print(f"   fed by {name}: {np.median(values):.1f} samples/s = {np.median(values) / alone:.3f} x baseline")
        print(f"loader / training consumption (baseline: the step on a reused batch): on demand {direct / alone:.1f}x, "
              + ", ".join(f"{n} {v / alone:.1f}x" for n, v in loader.items()))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
