"""The RL step's costs on the demo-preset tiny model: one PPO vs one FAN-PPO update of the same minibatch, against
the SFT training step of ``fanvla finetune`` on the same batch size; and the rollout's acting cost per tick.

Project goal: FAN-PPO update / PPO update <= 1.05 (the FAN-KL with a fixed sigma is one softmax over 256 bins per
dimension). The updates are ``finetune.rl.ppo.ppo_update`` (the code ``fanvla rl`` runs: image preprocessing,
teacher-forced forward, losses, backward, AdamW) on a one-tick rollout of ``--batch-size`` scenes; the SFT step is
the trainer's ``LossStep``. Timed round-robin (rotating the order) so load from other processes hits them alike;
medians. Acting: ``ActorCritic.act`` (7 tokens sampled with the KV cache, the value head) for 8 scenes per tick,
against the greedy decode of the same code (temperature 0).

Run: ``python bench/rl_step_bench.py [--batch-size 32] [--repeats 9] [--threads 1]``.
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

from bench.finetune_step_bench import make_batch, one_step
from finetune.rl.actor_critic import ActorCritic
from finetune.rl.config import RLConfig
from finetune.rl.ppo import make_optimizer, ppo_update
from finetune.rl.rollout import Rollout
from finetune.steps import LossStep
from policy.action_space import action_space
from policy.normalization import compute_stats
from policy.tiny import build_tiny_model

INSTRUCTIONS = ("put the red cube into the box", "put the green cylinder into the box")
RENDER = (112, 198)  # the demo model's input size on the demo camera's aspect (robot.sim.vector_env.input_render_size)


def rollout(actor: ActorCritic, scenes: int) -> Rollout:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(1, scenes, *RENDER, 3), dtype=np.uint8)
    instructions = [[INSTRUCTIONS[i % 2] for i in range(scenes)]]
    sample = actor.act(actor.pixel_values(images[0]), actor.prompt_ids(instructions[0]), 1.0,
                       torch.Generator().manual_seed(0))
    rewards = torch.as_tensor(rng.integers(0, 2, size=(1, scenes)), dtype=torch.float32)
    width = np.zeros(7)
    return Rollout(images, instructions, sample.bins[None], sample.log_probs[None], sample.values[None], rewards,
                   torch.zeros((1, scenes), dtype=torch.bool), torch.zeros(scenes), [], width, width, width)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_tiny_model("demo", seed=0, instructions=INSTRUCTIONS)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    actor = ActorCritic(model, model).eval()
    bin_values = model.action_tokenizer.bin_values
    data = rollout(actor, args.batch_size)
    configs = {method: RLConfig(init="-", out="-", method=method, full=True, minibatch=args.batch_size, lr=1e-7,
                                value_lr=1e-7) for method in ("ppo", "fan-ppo")}
    optimizer = make_optimizer(actor, configs["ppo"])  # tiny lr: the weights barely move between the methods
    generator = torch.Generator().manual_seed(0)

    spec = action_space("ee_delta")
    stats = compute_stats(np.random.default_rng(1).uniform(-1, 1, (100, 7)), mask=spec.normalize_mask)
    sft = LossStep(model, "sft", 0.05, 0.05, stats, spec, torch.device("cpu"), bf16=False)
    batch = make_batch(model, args.batch_size)
    sft_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)

    def timed_update(method: str) -> float:
        return ppo_update(actor, optimizer, data, configs[method], bin_values, generator)["train_s"]

    runs = {"ppo": lambda: timed_update("ppo"), "fan-ppo": lambda: timed_update("fan-ppo"),
            "sft": lambda: one_step(sft, model.train(), sft_optimizer, batch)}
    names = list(runs)
    for name in names:  # warm-up
        runs[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % 3:] + names[:repeat % 3]:
            times[name].append(runs[name]())
    model.eval()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"preset demo ({model.num_parameters():,} parameters, full finetuning), batch {args.batch_size}, "
          f"{args.threads} thread(s), {args.repeats} repeats; images {RENDER[1]}x{RENDER[0]}")
    for name, label in (("sft", "SFT training step (fanvla finetune)"), ("ppo", "PPO update (ppo_update)"),
                        ("fan-ppo", "FAN-PPO update (ppo_update)")):
        print(f"  {label:38s} median {1000 * medians[name]:8.1f} ms  (min {1000 * min(times[name]):.1f})")
    print(f"ratio FAN-PPO / PPO update = {medians['fan-ppo'] / medians['ppo']:.3f}  (goal <= 1.05)")
    print(f"ratio PPO update / SFT step = {medians['ppo'] / medians['sft']:.2f}  (the update preprocesses raw images "
          f"and runs the value head)")

    scenes = 8
    rng = np.random.default_rng(2)
    pixels = actor.pixel_values(rng.integers(0, 256, size=(scenes, *RENDER, 3), dtype=np.uint8))
    prompts = actor.prompt_ids([INSTRUCTIONS[i % 2] for i in range(scenes)])
    acting = {"sample": [], "greedy": []}
    for repeat in range(args.repeats + 1):
        for name, temperature in (("sample", 1.0), ("greedy", 0.0)):
            started = time.perf_counter()
            actor.act(pixels, prompts, temperature, generator)
            if repeat:  # the first round is the warm-up
                acting[name].append(time.perf_counter() - started)
    sample_s, greedy_s = (statistics.median(acting[name]) for name in ("sample", "greedy"))
    print(f"acting, {scenes} scenes per tick: sampled {1000 * sample_s:.1f} ms, greedy {1000 * greedy_s:.1f} ms "
          f"(ratio {sample_s / greedy_s:.2f}); {scenes / sample_s:.0f} scene-ticks/s for the policy alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
