"""OpenVLA-OFT against autoregressive OpenVLA of the same size: actions per second at batch 1, evaluation time per
trial, and the FAN-SFT / SFT training step time of OFT.

1. Decoding: ``predict_action`` at batch 1 on one image, the tiny preset (default ``demo``) as OpenVLA (7 tokens
   decoded one by one with a KV cache) and as OpenVLA-OFT (``<preset>-oft``: K = 8 actions in one forward pass,
   with the proprio token), timed round-robin; actions/s = K / time per call for OFT, 1 / time for OpenVLA.
   Goal: OFT >= 6x the actions per second (issue 24).
2. Evaluation: the same lock-step trials (task1 as shipped, the same seeds) with the two random-weight models
   loaded in process, OpenVLA in sync mode (a prediction every tick) and OFT in chunk mode open loop for K ticks
   (a prediction per chunk, the evaluation's default for a chunk checkpoint); random weights never succeed, so
   every trial runs to the time limit and both run the same number of ticks. Wall seconds per trial and the ratio.
3. Training: one whole step (forward, loss, metrics, backward, AdamW) of the OFT model with FAN-SFT and with SFT
   on the same batch of K x 7 action tokens, round-robin, medians (as bench/finetune_step_bench.py does for
   OpenVLA). Goal: FAN-SFT / SFT <= 1.05.

Run: ``python bench/oft_bench.py [--preset demo] [--repeats 30] [--trials 2] [--batch-size 16] [--train-repeats 40]
[--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from finetune_step_bench import one_step  # bench/: the same timed training step

from finetune.model_kind import ChunkLossStep
from policy.action_space import action_space
from policy.normalization import compute_stats
from policy.prompt import build_training_example, collate_training_batch
from policy.tiny import build_tiny, build_tiny_model

STATE = np.array([0.0, -0.26, -1.22, 0.0, -1.66, 0.0, 264.0, -6.0, 129.0, 3.14, 0.0, 0.0, 1.0])
# The twin's robot state lies well inside these: joints (rad), TCP (mm, rad), gripper opening.
PROPRIO_LOW = [-3.2] * 6 + [0.0, -400.0, -50.0, -3.2, -3.2, -3.2] + [0.0]
PROPRIO_HIGH = [3.2] * 6 + [500.0, 400.0, 500.0, 3.2, 3.2, 3.2] + [1.0]
# Small translations and no rotation (mm, rad): a random model's near-constant action then drifts the TCP by at most
# 38 mm per axis in a 25 s trial from the start pose, where the arm can still point down (at ~0.5 mm a step it
# reached poses without an IK solution, J5 at its limit, and the safety layer ended the trial early).
ACTION_LOW = [-0.15, -0.15, -0.15, 0.0, 0.0, 0.0, 0.0]
ACTION_HIGH = [0.15, 0.15, 0.15, 0.0, 0.0, 0.0, 1.0]


def statistics_block(proprio: bool) -> dict:
    action = {"q01": ACTION_LOW, "q99": ACTION_HIGH, "mask": [True] * 6 + [False], "mean": [0.0] * 7,
              "std": [1.0] * 7, "min": ACTION_LOW, "max": ACTION_HIGH}
    block = {"action": action}
    if proprio:
        block["proprio"] = {"q01": PROPRIO_LOW, "q99": PROPRIO_HIGH, "mean": [0.0] * 13, "std": [1.0] * 13,
                            "min": PROPRIO_LOW, "max": PROPRIO_HIGH}
    return {"jaka_sim": block}


def decoding(preset: str, repeats: int) -> float:
    models = {"OpenVLA (autoregressive)": build_tiny_model(preset, seed=0, norm_stats=statistics_block(False)).eval(),
              "OpenVLA-OFT (parallel)": build_tiny_model(f"{preset}-oft", seed=0,
                                                         norm_stats=statistics_block(True)).eval()}
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    instruction = "put the red cube into the box"

    def call(model) -> float:
        inputs = {"states": [STATE]} if getattr(model, "oft", None) is not None else {}
        started = time.perf_counter()
        with torch.inference_mode():
            model.predict_action([image], [instruction], **inputs)
        return time.perf_counter() - started

    for model in models.values():
        call(model)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for repeat in range(repeats):
        for name in names[repeat % 2:] + names[:repeat % 2]:
            times[name].append(call(models[name]))
    print(f"1. decoding at batch 1, preset {preset}, {repeats} calls each (medians)")
    rates = {}
    for name, model in models.items():
        chunk = model.oft.chunk_size if getattr(model, "oft", None) is not None else 1
        median = statistics.median(times[name])
        rates[name] = chunk / median
        print(f"  {name:26s} {1000 * median:7.1f} ms per call, {chunk} action(s) per call: "
              f"{rates[name]:7.1f} actions/s")
    ratio = rates["OpenVLA-OFT (parallel)"] / rates["OpenVLA (autoregressive)"]
    print(f"  OFT / OpenVLA actions per second (baseline: OpenVLA, same run): {ratio:.2f}x  (goal >= 6x)")
    return ratio


def evaluation(preset: str, trials: int, threads: int) -> float:
    from eval_protocols.launch import RunOptions, run_evaluation
    from eval_protocols.results import RunStore
    from eval_protocols.task_spec import resolve_tasks
    from fanvla.config import load_hardware_config
    from robot.execution import ExecutionConfig, ExecutionMode

    config = load_hardware_config()
    (task,) = resolve_tasks("task1", config.scene)
    seconds: dict[str, list[float]] = {"OpenVLA, sync": [], "OpenVLA-OFT, chunk open loop": []}
    ticks: dict[str, list[int]] = {name: [] for name in seconds}
    answers: dict[str, list[int]] = {name: [] for name in seconds}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        plain = build_tiny(root / "plain", preset=preset, seed=0, norm_stats=statistics_block(False))
        oft = build_tiny(root / "oft", preset=f"{preset}-oft", seed=0, norm_stats=statistics_block(True))
        runs = {"OpenVLA, sync": (plain, ExecutionConfig(ExecutionMode.SYNC)),
                "OpenVLA-OFT, chunk open loop": (oft, ExecutionConfig(ExecutionMode.CHUNK, open_loop_steps=8))}
        for trial in range(trials):  # alternating, so that load from other processes hits both alike
            for name, (model_dir, execution) in runs.items():
                run_dir = root / f"{name.split(',')[0]}-{trial}"
                started = time.perf_counter()
                run_evaluation(config, RunOptions("sim", str(model_dir), [task], 1, trial, run_dir, threads=threads,
                                                  execution=execution))
                seconds[name].append(time.perf_counter() - started)
                (record,) = RunStore.read(run_dir).records()
                ticks[name].append(record["episode"]["steps"])
                answers[name].append(record["summary"]["answers_received"])
    print(f"2. evaluation, task1 in the lock-step twin, {trials} trial(s) each to the {task.max_duration_s:g} s "
          f"time limit (random weights), models loaded in process")
    for name, values in seconds.items():
        print(f"  {name:30s} {np.mean(values):6.1f} s per trial ({np.mean(ticks[name]):.0f} ticks, "
              f"{np.mean(answers[name]):.0f} predictions)")
    ratio = np.mean(seconds["OpenVLA-OFT, chunk open loop"]) / np.mean(seconds["OpenVLA, sync"])
    print(f"  OFT / OpenVLA time per trial (baseline: OpenVLA, same run): {ratio:.2f}")
    return float(ratio)


def training(preset: str, batch_size: int, repeats: int) -> float:
    model = build_tiny_model(f"{preset}-oft", seed=0).train()
    chunk = model.oft.chunk_size
    rng = np.random.default_rng(0)
    spec = action_space("ee_delta")
    stats = compute_stats(rng.uniform(-1, 1, (100, 7)), mask=spec.normalize_mask)
    normalized = rng.uniform(-1, 1, (batch_size, chunk, 7))
    instructions = ("put the red cube into the box", "put the green cylinder into the box")
    examples = [build_training_example(model.tokenizer, instructions[i % 2],
                                       model.action_tokenizer.encode(row).reshape(-1))
                for i, row in enumerate(normalized)]
    batch = collate_training_batch(examples, model.pad_token_id)
    size = model.image_settings.image_size
    batch["pixel_values"] = torch.randn(batch_size, 6, size, size, generator=torch.Generator().manual_seed(0))
    batch["proprio"] = torch.from_numpy(rng.uniform(-1, 1, (batch_size, 13)).astype(np.float32))
    batch["actions"] = torch.from_numpy(normalized)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # tiny lr: the weights barely move between methods
    steps = {method: ChunkLossStep(model, method, 0.05, 0.05, stats, spec, torch.device("cpu"), bf16=False)
             for method in ("sft", "fan-sft")}

    for step in steps.values():
        one_step(step, model, optimizer, batch)  # warm-up
    times: dict[str, list[float]] = {method: [] for method in steps}
    methods = list(steps)
    for repeat in range(repeats):
        for method in methods[repeat % 2:] + methods[:repeat % 2]:
            times[method].append(one_step(steps[method], model, optimizer, batch))
    medians = {method: statistics.median(values) for method, values in times.items()}
    print(f"3. OFT training step, preset {preset}-oft (K = {chunk}, {chunk * 7} action tokens), batch {batch_size}, "
          f"{repeats} steps each (medians)")
    for method, median in medians.items():
        print(f"  {method:8s} {1000 * median:8.1f} ms  (min {1000 * min(times[method]):.1f})")
    ratio = medians["fan-sft"] / medians["sft"]
    print(f"  FAN-SFT / SFT step time (baseline: SFT, same batch, same run): {ratio:.3f}  (goal <= 1.05); "
          f"fastest steps: {min(times['fan-sft']) / min(times['sft']):.3f}")
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", choices=("test", "demo"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--trials", type=int, default=2, help="evaluation trials per model (0: skip)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-repeats", type=int, default=40, help="training steps per method (0: skip)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoding(args.preset, args.repeats)
    if args.trials > 0:
        evaluation(args.preset, args.trials, args.threads)
    if args.train_repeats > 0:
        training(args.preset, args.batch_size, args.train_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
