"""A whole training step (forward, loss, metrics, backward, AdamW) with FAN-SFT vs SFT on the SAME batch.

Project goal: FAN-SFT step time / SFT step time <= 1.05. Both use the trainer's own ``LossStep`` (the same code
``fanvla finetune`` runs, FAN diagnostics included for both), on a tiny preset model built in memory. The
methods are timed round-robin (rotating the order) so load from other processes hits them alike; medians.

Run: ``python bench/finetune_step_bench.py [--preset demo] [--batch-size 16] [--repeats 15] [--threads 1]``.
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

from finetune.steps import LossStep
from policy.action_space import action_space
from policy.normalization import compute_stats
from policy.prompt import build_training_example, collate_training_batch
from policy.tiny import build_tiny_model

METHODS = ("sft", "fan-sft", "label-smoothing")


def make_batch(model, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    size = model.image_settings.image_size
    instructions = ("put the red cube into the box", "put the green cylinder into the box")
    normalized = rng.uniform(-1, 1, (batch_size, 7))
    examples = [build_training_example(model.tokenizer, instructions[i % 2], model.action_tokenizer.encode(row))
                for i, row in enumerate(normalized)]
    batch = collate_training_batch(examples, model.pad_token_id)
    batch["pixel_values"] = torch.randn(batch_size, 6, size, size, generator=torch.Generator().manual_seed(seed))
    batch["actions"] = torch.from_numpy(normalized)
    return batch


def one_step(step: LossStep, model, optimizer, batch) -> float:
    started = time.perf_counter()
    result = step(model, batch)
    result.loss.total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=("test", "demo"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_tiny_model(args.preset, seed=0).train()
    spec = action_space("ee_delta")
    stats = compute_stats(np.random.default_rng(1).uniform(-1, 1, (100, 7)), mask=spec.normalize_mask)
    batch = make_batch(model, args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # tiny lr: the weights barely move between methods
    steps = {method: LossStep(model, method, 0.05, 0.05, stats, spec, torch.device("cpu"), bf16=False)
             for method in METHODS}
    for method in METHODS:  # warm-up
        one_step(steps[method], model, optimizer, batch)
    times: dict[str, list[float]] = {method: [] for method in METHODS}
    for repeat in range(args.repeats):
        order = METHODS[repeat % 3:] + METHODS[:repeat % 3]
        for method in order:
            times[method].append(one_step(steps[method], model, optimizer, batch))
    medians = {method: statistics.median(values) for method, values in times.items()}
    print(f"preset {args.preset}, batch {args.batch_size}, {args.threads} thread(s), {args.repeats} repeats, "
          f"{model.num_parameters():,} parameters")
    for method in METHODS:
        print(f"  {method:16s} step median {1000 * medians[method]:8.1f} ms  (min {1000 * min(times[method]):.1f})")
    ratio = medians["fan-sft"] / medians["sft"]
    print(f"FAN-SFT / SFT step time (baseline: SFT, same batch, same run): {ratio:.3f}  (goal <= 1.05)")
    print(f"label-smoothing / SFT: {medians['label-smoothing'] / medians['sft']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
