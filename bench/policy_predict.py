"""Tiny-model ``predict_action`` on CPU: latency at B=1 and throughput at B=8, for the test and demo presets.

Baseline (same run): 8 single-sample calls in a row, i.e. what a server without batching achieves. The ratio
``batched / sequential`` is the gain from batching. Also reports forward+backward time of a training batch of 32
(the demo preset is sized for CPU training).

    python bench/policy_predict.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy.prompt import build_training_example, collate_training_batch
from policy.tiny import build_tiny_model

INSTRUCTIONS = ["pick up the red block", "put the green block on the plate", "lift the cup", "open the top drawer",
                "place the yellow cube in the box", "push the block to the right", "close the drawer",
                "stack the red block on the blue block"]


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, oneDNN kernels for these shapes)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_preset(preset: str, repeats: int) -> None:
    model = build_tiny_model(preset, seed=0)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]

    latency_s = _median_s(lambda: model.predict_action(images[:1], INSTRUCTIONS[:1]), repeats)
    batched_s = _median_s(lambda: model.predict_action(images, INSTRUCTIONS), repeats)
    pairs = list(zip(images, INSTRUCTIONS, strict=True))
    sequential_s = _median_s(lambda: [model.predict_action([i], [t]) for i, t in pairs], max(1, repeats // 2))
    print(f"[{preset}] {model.num_parameters():,} parameters, {model.vision_backbone.num_patches} patches")
    print(f"  B=1 latency                 {latency_s * 1e3:8.1f} ms")
    print(f"  B=8 batched                 {batched_s * 1e3:8.1f} ms  -> {8 / batched_s:7.1f} samples/s")
    print(f"  baseline: 8 x B=1 in a row  {sequential_s * 1e3:8.1f} ms  -> {8 / sequential_s:7.1f} samples/s")
    print(f"  ratio batched / sequential throughput: {sequential_s / batched_s:.2f}x")

    model.train()
    targets = rng.uniform(-1, 1, size=(32, 7))
    examples = [build_training_example(model.tokenizer, INSTRUCTIONS[i % 8], model.action_tokenizer.encode(t))
                for i, t in enumerate(targets)]
    batch = collate_training_batch(examples, model.pad_token_id)
    pixel_values = model.preprocess([images[i % 8] for i in range(32)])

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(**batch, pixel_values=pixel_values).loss.backward()

    train_s = _median_s(step, max(1, repeats // 2))
    print(f"  training fwd+bwd, batch 32  {train_s * 1e3:8.1f} ms  -> {32 / train_s:7.1f} samples/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in ("test", "demo"):
        bench_preset(preset, args.repeats)


if __name__ == "__main__":
    main()
