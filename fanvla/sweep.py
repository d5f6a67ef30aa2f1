"""``fanvla sweep``: the paper's sensitivity analysis in the twin — FAN weight alpha x demonstration count.

For every (demonstrations, alpha) cell: finetune the same tiny initialisation on the first N demonstrations
(alpha = 0 is plain SFT; with the demo's vision pretraining, the towers are pretrained on those N demonstrations),
evaluate it on the chosen tasks, and finally plot success rate against alpha (one line per demonstration count,
Wilson 95% whiskers) with a CSV and JSON of every number.
Demonstrations come from ``--data`` stores (e.g. a demo run's) or are recorded first. Re-running resumes.

With ``--seeds N`` every cell is trained N times (training seeds seed, seed + 1, ...: own initialisation, vision
pretraining and data order; same demonstrations, same trial situations). The plot and ``sweep.csv`` then show the
pooled successes over seeds; ``sweep.json`` keeps every seed's row and, per cell with alpha > 0, the test against
alpha = 0 at the same demonstration count stratified by training seed (``eval_protocols.stratified``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from fanvla.cli import UserError
from fanvla.demo import PRESETS, Demo
from fanvla.procs import Child, fanvla_argv, run_all

PAPER_ALPHAS = (0.0, 1e-3, 1e-2, 5e-2, 0.1, 1.0)


@dataclass(frozen=True)
class Cell:
    episodes: int
    alpha: float
    training_seed: int | None = None  # None: the run's --seed (the one-seed sweep's folder names)

    @property
    def name(self) -> str:
        suffix = "" if self.training_seed is None else f"-seed{self.training_seed}"
        return f"n{self.episodes}-a{self.alpha:g}{suffix}"


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 or not math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    values = _floats(text)
    if any(v < 1 or v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return tuple(int(v) for v in values)


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser("sweep", help="sensitivity analysis in the twin: FAN alpha x demonstration count",
                                  description=__doc__)
    sweep.add_argument("--out", default="runs/sweep", help="run folder (re-run the same command to resume)")
    sweep.add_argument("--alphas", type=_floats, default=PAPER_ALPHAS,
                       help="comma-separated FAN weights; 0 = plain SFT (default: the paper's 0,1e-3,1e-2,5e-2,0.1,1)")
    sweep.add_argument("--episodes", type=_ints, default=(50, 100, 150),
                       help="demonstration counts (default 50,100,150)")
    sweep.add_argument("--data", nargs="+", default=None,
                       help="episode stores to take demonstrations from (default: record them in OUT)")
    sweep.add_argument("--tasks", default="task1,task2", help="evaluation tasks (default task1,task2)")
    sweep.add_argument("--trials", type=int, default=None, help="trials per task (default 30, quick 2)")
    sweep.add_argument("--steps", type=int, default=None, help="optimiser steps per cell (default: the demo's)")
    sweep.add_argument("--quick", action="store_true", help="tiny model, few steps and trials: checks the machinery")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--seeds", type=int, default=1, help="training seeds per cell (default 1); the plot pools "
                                                            "them, sweep.json tests each alpha against 0 by seed")
    sweep.add_argument("--config", default=None, help="hardware.yaml to start from (default: the repository's)")
    sweep.add_argument("--jobs", type=int, default=2, choices=(1, 2), help="cells trained/evaluated side by side")
    sweep.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    preset = PRESETS["quick" if args.quick else "default"]
    trials = args.trials if args.trials is not None else preset.trials
    steps = args.steps if args.steps is not None else preset.steps
    if trials < 1 or steps < 1 or args.seeds < 1:
        raise UserError(f"--trials, --steps and --seeds must be positive, got {trials}, {steps}, {args.seeds}")
    out = Path(args.out)
    # The sweep reuses the demo's stages for configuration, recording and the initial model.
    demo = Demo(out, replace(preset, episodes=max(args.episodes), steps=steps, trials=trials), args.seed, None,
                args.config, args.jobs, args.seeds)
    started = time.monotonic()
    demo.write_config()
    stores = [Path(p) for p in args.data] if args.data else None
    if stores is None:
        demo.record()
        stores = demo.stores
    cells = [Cell(n, a, None if s == args.seed else s) for s in demo.training_seeds for n in args.episodes
             for a in args.alphas]
    inits = {}
    for training_seed in demo.training_seeds:
        demo.create_init(training_seed)
        inits.update(_initialisations(demo, stores, args.episodes, training_seed))
    _train_cells(demo, cells, stores, inits, args.jobs)
    _evaluate_cells(demo, cells, args.tasks, trials, args.jobs)
    rows = _collect(demo, cells)
    _write_outputs(out, pool_seeds(rows) if args.seeds > 1 else rows)
    if args.seeds > 1:
        (out / "sweep.json").write_text(json.dumps({"per_seed": rows, "pooled": pool_seeds(rows),
                                                    "stratified": stratified_against_sft(rows)}, indent=2))
    print(f"fanvla sweep finished in {(time.monotonic() - started) / 60:.1f} min: {out / 'sweep.png'}")
    return 0


def _cell_dir(demo: Demo, cell: Cell, kind: str) -> Path:
    return demo.out / "cells" / cell.name / kind


def _in_batches(children_argv: list[tuple[str, list[str], Path]], jobs: int) -> None:
    for start in range(0, len(children_argv), jobs):
        run_all([Child(name, argv, log) for name, argv, log in children_argv[start:start + jobs]])


def _initialisations(demo: Demo, stores: list[Path], counts: list[int],
                     training_seed: int) -> dict[tuple[int, int], Path]:
    """(count, training seed) -> the model those cells start from. With vision pretraining (the demo's default) it
    is pretrained on that count's demonstrations only, so a smaller cell never sees the frames it was denied."""
    init = demo.init_dir(training_seed)
    if demo.preset.vision_pretrain_steps <= 0:
        return {(count, training_seed): init for count in counts}
    inits = {}
    for count in sorted(set(counts)):
        inits[(count, training_seed)] = demo.out / f"init-vision-{count}{init.name.removeprefix('init')}"
        demo.pretrain_vision(stores, inits[(count, training_seed)], max_episodes=count, init=init, seed=training_seed)
    return inits


def _train_cells(demo: Demo, cells: list[Cell], stores: list[Path], inits: dict[int, Path], jobs: int) -> None:
    pending = []
    for cell in cells:
        out = _cell_dir(demo, cell, "train")
        if (out / "final" / "fanvla.json").is_file():
            continue
        method, alpha = ("fan-sft", cell.alpha) if cell.alpha > 0 else ("sft", None)
        seed = demo.seed if cell.training_seed is None else cell.training_seed
        argv = demo.finetune_argv(stores, out, method, alpha, "--max-episodes", str(cell.episodes),
                                  init=inits[(cell.episodes, seed)], seed=seed)
        pending.append((f"train-{cell.name}", argv, demo.log(f"train-{cell.name}")))
    _in_batches(pending, jobs)


def _evaluate_cells(demo: Demo, cells: list[Cell], tasks: str, trials: int, jobs: int) -> None:
    pending = [(f"eval-{cell.name}", fanvla_argv(
        "eval", "run", "--backend", "sim", "--policy", str(_cell_dir(demo, cell, "train") / "final"),
        "--threads", "1", "--tasks", tasks, "--trials", str(trials), "--seed", str(demo.seed),
        "--out", str(_cell_dir(demo, cell, "eval")), "--config", str(demo.hardware)), demo.log(f"eval-{cell.name}"))
        for cell in cells]
    _in_batches(pending, jobs)


def _collect(demo: Demo, cells: list[Cell]) -> list[dict]:
    from eval_protocols.report import load_runs
    from eval_protocols.stats import wilson_interval

    rows = []
    for cell, run in zip(cells, load_runs([_cell_dir(demo, c, "eval") for c in cells]), strict=True):
        for task in sorted(run.records):
            outcome = run.outcome(task)
            if outcome is None:
                continue
            low, high = wilson_interval(outcome.successes, outcome.trials)
            seed = demo.seed if cell.training_seed is None else cell.training_seed
            rows.append({"episodes": cell.episodes, "alpha": cell.alpha, "training_seed": seed, "task": task,
                         "successes": outcome.successes, "trials": outcome.trials,
                         "rate": outcome.successes / outcome.trials, "ci_low": low, "ci_high": high})
    return rows


def pool_seeds(rows: list[dict]) -> list[dict]:
    """One row per (demonstrations, alpha, task): the seeds' trials together, with the seeds' rates."""
    from eval_protocols.stats import wilson_interval

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["episodes"], row["alpha"], row["task"]), []).append(row)
    pooled = []
    for (episodes, alpha, task), group in groups.items():
        successes, trials = sum(r["successes"] for r in group), sum(r["trials"] for r in group)
        low, high = wilson_interval(successes, trials)
        pooled.append({"episodes": episodes, "alpha": alpha, "seeds": len(group), "task": task,
                       "successes": successes, "trials": trials, "rate": successes / trials, "ci_low": low,
                       "ci_high": high, "seed_rates": " ".join(f"{r['rate']:.3f}" for r in group)})
    return pooled


def stratified_against_sft(rows: list[dict]) -> list[dict]:
    """Every alpha > 0 cell against alpha = 0 at the same demonstration count and task, stratified by seed."""
    from eval_protocols.stats import TaskOutcome
    from eval_protocols.stratified import Stratum, cmh_test, exact_stratified_test

    index = {(r["episodes"], r["alpha"], r["task"], r["training_seed"]): r for r in rows}
    out = []
    for (episodes, alpha, task) in sorted({(r["episodes"], r["alpha"], r["task"]) for r in rows if r["alpha"] > 0}):
        seeds = sorted(s for (n, a, t, s) in index if (n, a, t) == (episodes, alpha, task)
                       and (episodes, 0.0, task, s) in index)
        if not seeds:
            continue
        strata = [Stratum(TaskOutcome(index[(episodes, 0.0, task, s)]["successes"],
                                      index[(episodes, 0.0, task, s)]["trials"]),
                          TaskOutcome(index[(episodes, alpha, task, s)]["successes"],
                                      index[(episodes, alpha, task, s)]["trials"])) for s in seeds]
        exact, cmh = exact_stratified_test(strata), cmh_test(strata)
        out.append({"episodes": episodes, "alpha": alpha, "task": task, "seeds": seeds, "exact_p": exact.p_value,
                    "cmh_p": cmh.p_value, "odds_ratio": exact.odds_ratio})
    return out


def _write_outputs(out: Path, rows: list[dict]) -> None:
    with (out / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    plot_sweep(rows, out / "sweep.png")
    for row in rows:
        print(f"  n={row['episodes']:>4} alpha={row['alpha']:<6g} {row['task']}: {row['successes']}/{row['trials']}")


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Success rate vs alpha, one panel per task and one line per demonstration count (alpha = 0 at the left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({row["task"] for row in rows})
    alphas = sorted({row["alpha"] for row in rows})
    positions = {alpha: index for index, alpha in enumerate(alphas)}  # even spacing: 0 and a log range together
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False, sharey=True)
    for axis, task in zip(axes[0], tasks, strict=True):
        counts = sorted({row["episodes"] for row in rows})
        for k, episodes in enumerate(counts):
            cell_rows = sorted((r for r in rows if r["task"] == task and r["episodes"] == episodes),
                               key=lambda r: r["alpha"])
            dodge = 0.08 * (k - (len(counts) - 1) / 2)  # keep overlapping series and whiskers apart
            xs = [positions[r["alpha"]] + dodge for r in cell_rows]
            ys = [r["rate"] for r in cell_rows]
            errors = [[r["rate"] - r["ci_low"] for r in cell_rows], [r["ci_high"] - r["rate"] for r in cell_rows]]
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=f"{episodes} demos")
        axis.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        axis.set_xlabel("FAN weight alpha (0 = SFT)")
        axis.set_title(task)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("success rate (Wilson 95% CI)")
    axes[0][-1].legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
