"""Batched twin evaluation vs the sequential trial runner: wall time and trial outcomes, in one run.

Both evaluate the same checkpoint in this process (``fanvla eval run`` with and without ``--batch K``) on the same
tasks, trials and run seed, task by task in turn (sequential task 1, batched task 1, sequential task 2, ...), so
that both see the same load. Prints per task and in total: trials, steps, wall seconds, the sequential / batched
time ratio (goal >= 2.5x), and every trial whose outcome differs between the two (a batch's rounding or the twin's
float state can move a borderline trial: counted, never hidden).

Run: ``python bench/eval_batched.py --policy runs/demo/train-sft/final [--trials 30] [--batch 8] [--threads 1]
[--serve]`` (the issue's bench: the demo's SFT checkpoint, 4 x 30). ``--serve`` puts the checkpoint behind a
``fanvla serve --threads 1 --http-threads 1`` child process, as ``fanvla demo`` evaluates, and both runners ask it
(the sequential one request per tick and trial, the batched one request per tick for all lanes). Without
``--policy`` a random demo-preset model is made (its trials end early: a check of the machinery, not a
measurement). Run folders go to ``--out`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval_protocols.launch import RunOptions, run_evaluation
from eval_protocols.task_spec import resolve_tasks
from fanvla.config import load_hardware_config
from fanvla.demo import DEMO_CAMERA
from policy.serve_cli import start_serve_child


def records(run_dir: Path) -> dict[tuple[str, int], dict]:
    path = run_dir / "results.jsonl"
    return {(r["task"], int(r["trial"])): r for r in map(json.loads, path.read_text().splitlines())}


def evaluate(config, policy: str, task, trials: int, seed: int, out: Path, batch: int, threads: int) -> float:
    options = RunOptions("sim", policy, [task], trials, seed, out, threads=threads, batch=batch)
    start = time.perf_counter()
    run_evaluation(config, options)
    return time.perf_counter() - start


def random_demo_model(directory: Path) -> str:
    from policy.tiny import build_tiny

    path = directory / "demo-random"
    build_tiny(path, "demo", seed=0)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=None, help="checkpoint folder (default: a random demo-preset model)")
    parser.add_argument("--tasks", default="all")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both runners (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the two runs' folders here")
    parser.add_argument("--serve", action="store_true", help="evaluate through a 'fanvla serve' child process (as the "
                                                              "demo does) instead of in this process")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # The demo's camera: the evaluation the demo runs (colour 424x240 at the control rate).
    config = load_hardware_config().with_overrides(DEMO_CAMERA)
    tasks = resolve_tasks(args.tasks, config.scene)
    scratch = Path(tempfile.mkdtemp(prefix="eval-batched-"))
    out = Path(args.out) if args.out else scratch
    policy = args.policy or random_demo_model(scratch)
    server = None
    if args.serve:
        server, policy = start_serve_child(policy, "--threads", "1", "--http-threads", "1")
    print(f"policy {policy}; {len(tasks)} task(s) x {args.trials} trials; batch {args.batch}; torch threads "
          f"{args.threads}; load average {os.getloadavg()[0]:.1f}")
    totals = {"sequential": 0.0, "batched": 0.0}
    differing, steps = [], 0
    try:
        for task in tasks:
            times = {}
            for name, batch in (("sequential", 1), ("batched", args.batch)):
                times[name] = evaluate(config, policy, task, args.trials, args.seed, out / name, batch, args.threads)
                totals[name] += times[name]
            seq, bat = records(out / "sequential"), records(out / "batched")
            task_steps = sum(r["episode"]["steps"] for k, r in seq.items() if k[0] == task.name)
            steps += task_steps
            for key in sorted(k for k in seq if k[0] == task.name):
                if seq[key]["success"] != bat[key]["success"] or seq[key]["episode"] != bat[key]["episode"]:
                    differing.append((key, seq[key], bat[key]))
            successes = [sum(r["success"] for k, r in run.items() if k[0] == task.name) for run in (seq, bat)]
            print(f"{task.name}: {args.trials} trials, {task_steps} steps; successes sequential {successes[0]}, "
                  f"batched {successes[1]}; sequential {times['sequential']:.1f} s, batched {times['batched']:.1f} s, "
                  f"ratio {times['sequential'] / times['batched']:.2f}x", flush=True)
        print(f"total: {len(tasks) * args.trials} trials, {steps} steps; sequential {totals['sequential']:.1f} s "
              f"({1000 * totals['sequential'] / max(steps, 1):.1f} ms/step), batched {totals['batched']:.1f} s "
              f"({1000 * totals['batched'] / max(steps, 1):.1f} ms/step)")
        print(f"ratio sequential / batched: {totals['sequential'] / totals['batched']:.2f}x")
        changed = [d for d in differing if d[1]["success"] != d[2]["success"]]
        print(f"trials whose outcome differs: {len(changed)} of {len(tasks) * args.trials}; trials whose episode "
              f"differs (status or steps): {len(differing)}")
        for (task, trial), seq_record, bat_record in differing:
            seq_episode, bat_episode = seq_record["episode"], bat_record["episode"]
            print(f"  {task} trial {trial:02d}: sequential {seq_record['success']} ({seq_episode['status']}, "
                  f"{seq_episode['steps']} steps), batched {bat_record['success']} ({bat_episode['status']}, "
                  f"{bat_episode['steps']} steps)")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
