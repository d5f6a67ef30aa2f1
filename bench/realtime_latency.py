"""Task-1 success with a slow policy: the real-time twin with injected latency, per execution mode, next to the
lock-step rate of the same trial situations (docs/evaluation.md, "Latency").

    python bench/realtime_latency.py --policy scripted-expert --policy runs/demo/sft/final \\
        --latencies 0,100,200,300 --modes sync,async,chunk --trials 30 --out runs/latency

Every cell is one ``fanvla eval run`` (the same code: ``eval_protocols.launch.run_evaluation``) with
``--set sim.realtime=true --execution MODE --policy-latency-ms N`` into its own RUN_DIR under ``--out``, so an
interrupted measurement resumes where it stopped (re-run the same command). The reference column is the same
trials (same seed) in the lock-step twin, sync, nothing injected. ``--policy`` is ``scripted-expert``, a checkpoint
folder (run in this process, ``--threads`` torch threads) or the URL of a ``fanvla serve``. Chunk execution needs
a policy that predicts chunks: the scripted expert plans them (``--chunk-steps``); a checkpoint of single actions
gets "n/a".

Prints, per policy, the success table (successes / trials) and a diagnostics table (per trial on average: seconds
to success, held ticks, stale answers, answer latency p50, late loop ticks, and the real-time twin's late physics
cycles: the twin itself falling behind, i.e. CPU contention; plus the load average while the cell ran). Writes
``table.md`` and ``table.json`` into ``--out``. Real-time numbers depend on the machine: measure on a quiet one.

``--clock lockstep`` runs the same cells in the lock-step twin, where the injected latency is simulated time
(robot/answers.py): no compute time counts, nothing depends on the machine's load, and a cell repeats exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from eval_protocols.launch import RunOptions, run_evaluation
from eval_protocols.policies import BASELINES, DEFAULT_EXPERT_CHUNK_STEPS, PolicyError, open_policy
from eval_protocols.results import RunStore
from eval_protocols.task_spec import resolve_tasks
from fanvla.config import load_hardware_config
from robot.execution import ExecutionConfig, ExecutionMode
from robot.injected_latency import LatencySpec

LOCK_STEP = "lock-step"


def policy_label(spec: str) -> str:
    if spec in BASELINES or spec.startswith(("http://", "https://")):
        return spec.replace("://", "_").replace("/", "_").replace(":", "_")
    path = Path(spec).resolve()
    return path.parent.name if path.name == "final" else path.name  # train-sft/final -> train-sft


def predicts_chunks(spec: str, args: argparse.Namespace) -> bool:
    """Whether ``spec`` can run in chunk execution (the scripted expert plans; a checkpoint must predict chunks)."""
    if spec == "scripted-expert":
        return True
    if spec in BASELINES:
        return False
    policy = open_policy(spec, "sim", device=args.device, threads=args.threads)
    try:
        return (policy.policy.describe().chunk_size or 1) > 1
    finally:
        policy.close()


def run_cell(config, args, spec: str, run_dir: Path, execution: ExecutionConfig | None, realtime: bool,
             previous: dict) -> dict:
    """One ``fanvla eval run`` into ``run_dir`` (resumed if it exists); its summary."""
    tasks = resolve_tasks(args.task, config.scene, None)
    options = RunOptions("sim", spec, tasks, args.trials, args.seed, run_dir, token_file=args.token_file,
                         device=args.device, threads=args.threads, overrides={"sim.realtime": realtime},
                         execution=execution, chunk_steps=args.chunk_steps)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    ran = []

    def on_trial(report) -> None:
        record = report.record
        ran.append(record["trial"])
        print(f"  [{report.done}/{report.total}] trial {record['trial']:02d}: "
              f"{'SUCCESS' if record['success'] else 'failure'} ({record['episode']['status']}, "
              f"{record['episode']['steps']} steps, {record['summary'].get('held_steps')} held, "
              f"{record['episode']['late_ticks']} late)", flush=True)

    run_evaluation(config, options, on_trial)
    if not ran:  # scored before: keep the load and time of the run that measured it
        return {**summarize(run_dir, args.task, None, None), **previous_timing(previous, run_dir)}
    return summarize(run_dir, args.task, (load_before + os.getloadavg()[0]) / 2, time.monotonic() - started)


def previous_timing(previous: dict, run_dir: Path) -> dict:
    """The load and time recorded when ``run_dir`` was measured (an earlier invocation's table.json)."""
    for cells in previous.values():
        for cell in cells.values():
            if cell.get("run_dir") == str(run_dir) and cell.get("load_average") is not None:
                return {"load_average": cell["load_average"], "wall_s": cell["wall_s"]}
    return {}


def summarize(run_dir: Path, task: str, load: float | None, wall_s: float | None) -> dict:
    records = RunStore.read(run_dir).records(task)

    def mean(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    cycles = sum(r.get("twin_timing", {}).get("physics_cycles", 0) for r in records)
    late_cycles = sum(r.get("twin_timing", {}).get("physics_late_cycles", 0) for r in records)
    return {"successes": sum(bool(r["success"]) for r in records), "trials": len(records),
            "held_ticks": mean(r["summary"].get("held_steps") for r in records),
            "stale_answers": mean(r["summary"].get("stale_actions") for r in records),
            "answer_latency_p50_ms": mean(1000 * r["summary"]["answer_latency_p50_s"] for r in records
                                          if r["summary"].get("answer_latency_p50_s") is not None),
            "late_ticks": mean(r["episode"]["late_ticks"] for r in records),
            "success_duration_s": mean(r["episode"]["duration_s"] for r in records if r["success"]),
            "physics_late_percent": 100.0 * late_cycles / cycles if cycles else None,
            "load_average": None if load is None else round(load, 2),
            "wall_s": None if wall_s is None else round(wall_s, 1), "run_dir": str(run_dir)}


def fmt(value, pattern: str = "{:.1f}") -> str:
    return "-" if value is None else pattern.format(value)


def tables(label: str, cells: dict, modes: list[str], latencies: list[float], twin: str) -> list[str]:
    reference = cells[LOCK_STEP]
    columns = [f"{latency:g} ms" for latency in latencies]
    lines = [f"### {label}", "", f"Task-1 successes; lock-step reference (sync, nothing injected): "
             f"**{reference['successes']}/{reference['trials']}**.", "",
             f"| {twin} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for mode in modes:
        row = [cells.get(f"{mode}/{latency:g}") for latency in latencies]
        lines.append(f"| {mode} | " + " | ".join("n/a" if c is None else f"{c['successes']}/{c['trials']}"
                                                 for c in row) + " |")
    lines += ["", "Per trial on average: seconds to success / held ticks / stale answers / answer latency p50 (ms) / "
              "late loop ticks / late physics cycles (%) / load average.", "",
              f"| {twin} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for mode in modes:
        row = [cells.get(f"{mode}/{latency:g}") for latency in latencies]
        lines.append(f"| {mode} | " + " | ".join(
            "n/a" if c is None else f"{fmt(c['success_duration_s'])} / {fmt(c['held_ticks'])} / "
            f"{fmt(c['stale_answers'])} / "
            f"{fmt(c['answer_latency_p50_ms'], '{:.0f}')} / {fmt(c['late_ticks'])} / "
            f"{fmt(c['physics_late_percent'])} / {fmt(c['load_average'])}" for c in row) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", action="append", required=True,
                        help="scripted-expert, a checkpoint folder or a fanvla serve URL (repeatable)")
    parser.add_argument("--latencies", default="0,100,200,300", help="injected latencies in ms (default 0,100,200,300)")
    parser.add_argument("--modes", default="sync,async,chunk", help="execution modes (default sync,async,chunk)")
    parser.add_argument("--trials", type=int, default=30, help="trials per cell (default 30)")
    parser.add_argument("--task", default="task1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder of the runs (one RUN_DIR per cell) and the tables")
    parser.add_argument("--config", default=None, help="hardware.yaml (default: the repository's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for a checkpoint folder (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--token-file", default=None)
    parser.add_argument("--max-action-age-ms", type=float, default=None,
                        help="drop answers older than this (default: safety.watchdog_hold_s)")
    parser.add_argument("--chunk-steps", type=int, default=DEFAULT_EXPERT_CHUNK_STEPS)
    parser.add_argument("--clock", choices=("realtime", "lockstep"), default="realtime",
                        help="the twin of the latency cells: real time (default) or lock-step with simulated latency")
    args = parser.parse_args()
    realtime = args.clock == "realtime"
    twin = "real-time twin" if realtime else "lock-step twin, simulated latency"

    config = load_hardware_config(args.config)
    latencies = [float(text) for text in args.latencies.split(",")]
    modes = [ExecutionMode(text.strip()).value for text in args.modes.split(",")]
    max_age_s = args.max_action_age_ms / 1000.0 if args.max_action_age_ms else None
    out = Path(args.out)
    previous = json.loads((out / "table.json").read_text()) if (out / "table.json").is_file() else {}
    results: dict[str, dict] = {}
    markdown = [f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs; seed {args.seed}, "
                f"{args.trials} trials per cell.", ""]
    for spec in args.policy:
        label = policy_label(spec)
        chunks = predicts_chunks(spec, args)
        cells: dict[str, dict] = {}
        print(f"== {label}: lock-step reference", flush=True)
        cells[LOCK_STEP] = run_cell(config, args, spec, out / label / LOCK_STEP, None, False, previous)
        for mode in modes:
            if mode == ExecutionMode.CHUNK and not chunks:
                print(f"== {label}: chunk execution n/a (the policy predicts single actions)", flush=True)
                continue
            for latency in latencies:
                print(f"== {label}: {twin}, {mode}, +{latency:g} ms", flush=True)
                execution = ExecutionConfig(ExecutionMode(mode), LatencySpec(latency), max_age_s)
                cell_dir = out / label / f"{mode}-{latency:g}ms{'' if realtime else '-lockstep'}"
                cells[f"{mode}/{latency:g}"] = run_cell(config, args, spec, cell_dir, execution, realtime, previous)
        results[label] = cells
        markdown += tables(label, cells, modes, latencies, twin)
        text = "\n".join(markdown)
        (out / "table.md").write_text(text + "\n", encoding="utf-8")
        (out / "table.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print()
    print("\n".join(markdown))


if __name__ == "__main__":
    try:
        main()
    except PolicyError as error:
        sys.exit(f"realtime_latency: {error}")
