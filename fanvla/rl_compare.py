"""``fanvla rl compare``: PPO against FAN-PPO from one finetuned checkpoint, over seeds, evaluated alike.

1. the run's hardware.yaml (default: the repository's with the demo's camera, the one the demo's checkpoints saw);
2. the starting checkpoint evaluated once (``OUT/eval-init``: every run's point at 0 environment steps; all runs
   share the evaluation seed, so they face the same trials);
3. ``fanvla rl`` for every seed and method (``OUT/<method>-seed<s>``), one after another or two side by side
   (``--jobs 2``, one core each), each evaluated every ``--eval-every`` updates and at its end;
4. the summary (``OUT/README.md``, ``OUT/compare.json``): environment steps until the rollout success (over the last
   window of finished episodes) first reaches ``--threshold``, per seed, with the mean and a 95 % t interval across
   the seeds that reached it, and the FAN-PPO / PPO ratio of the means; ``OUT/curves.png``; and the final Task-1..4
   table through ``fanvla eval report`` (``OUT/report``: the start and every run's final evaluation).

Re-running the same command resumes every stage.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fanvla.cli import UserError

METHOD_NAMES = {"ppo": "PPO", "fan-ppo": "FAN-PPO"}
# The demo's twin camera (fanvla.demo.DEMO_CAMERA) as --set items: the demo's checkpoints were trained on it.
DEMO_CAMERA_SETTINGS = ["camera.color.width=424", "camera.color.height=240", "camera.color.fps=15",
                        "camera.depth.enabled=false", "recording.record_depth=false"]


def register_compare(actions: argparse._SubParsersAction) -> None:
    from fanvla.rl import add_run_options

    compare = actions.add_parser("compare", help="PPO vs FAN-PPO from one checkpoint over seeds; steps to a success "
                                                 "threshold; the final Task-1..4 table", description=__doc__)
    add_run_options(compare)
    compare.add_argument("--init", dest="compare_init", default="runs/demo/train-sft/final",
                         help="checkpoint both methods start from (default: the demo's SFT policy)")
    compare.add_argument("--out", dest="compare_out", required=True, help="comparison folder (re-run to resume)")
    compare.add_argument("--methods", default="ppo,fan-ppo")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    compare.add_argument("--threshold", type=float, default=0.9, help="rollout success threshold (default 0.9, the "
                                                                      "paper's)")
    compare.add_argument("--jobs", type=int, default=1, choices=(1, 2),
                         help="runs side by side (2: one core each, scenes in the training process)")
    compare.add_argument("--camera", choices=("demo", "config"), default="demo",
                         help="demo: the demo's twin camera on top of --config (default); config: --config as it is")
    compare.set_defaults(func=_compare)


@dataclass(frozen=True)
class RunSpec:
    method: str
    seed: int
    out: Path

    @property
    def name(self) -> str:
        return f"{METHOD_NAMES[self.method]} seed {self.seed}"


def steps_to_threshold(train: dict[str, np.ndarray], threshold: float) -> float | None:
    """Environment steps at the first update whose windowed rollout success reaches ``threshold`` with a full window
    (None: never within the run)."""
    if not train:
        return None
    success, full, steps = train["rollout_success_window"], train["window_full"], train["env_steps"]
    reached = np.flatnonzero((full > 0) & (success >= threshold - 1e-12))
    return float(steps[reached[0]]) if reached.size else None


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """(mean, low, high): Student-t interval of the mean across seeds (None without values; a point for one)."""
    if not values:
        return None
    mean = float(np.mean(values))
    if len(values) == 1:
        return mean, mean, mean
    from scipy import stats

    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, mean - half, mean + half


def _compare(args: argparse.Namespace) -> int:
    from fanvla.procs import Child, fanvla_argv, run_all
    from fanvla.rl import run_evaluation, write_hardware

    out = Path(args.compare_out)
    init = Path(args.compare_init)
    if not (init / "config.json").is_file():
        raise UserError(f"--init {init}: no checkpoint there (config.json missing); run 'fanvla demo' first or give "
                        f"a finetuned policy directory")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: choose from {', '.join(METHOD_NAMES)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: comma-separated integers") from None
    if not seeds or not 0 < args.threshold <= 1:
        raise UserError("need at least one seed and 0 < --threshold <= 1")
    overrides = (DEMO_CAMERA_SETTINGS if args.camera == "demo" else []) + list(args.overrides)
    hardware_path = out / "hardware.yaml"
    write_hardware(args.config, overrides, hardware_path)
    # seed by seed, both methods side by side: with --jobs 2 they share the machine alike, and an interrupted
    # comparison has every method at the first seeds
    runs = [RunSpec(method, seed, out / f"{method}-seed{seed}") for seed in seeds for method in methods]
    print("== evaluating the starting checkpoint ==", flush=True)
    start_rates = run_evaluation(init, out / "eval-init", hardware_path, args.eval_tasks, args.eval_trials,
                                 args.eval_seed, out / "logs" / "eval-init.log")
    children = []
    for spec in runs:
        if (spec.out / "rl_summary.json").is_file():
            print(f"{spec.name}: done already ({spec.out})", flush=True)
            continue
        child = Child(spec.out.name, fanvla_argv(*_run_argv(args, spec, init, hardware_path)),
                      out / "logs" / f"{spec.out.name}.log")
        if args.jobs == 1:
            child.wait()
        else:
            children.append(child)
            if len(children) == args.jobs:
                run_all(children)
                children = []
    run_all(children)
    summary = summarise(runs, out, args.threshold, start_rates)
    _final_report(runs, out)
    print("\n" + (out / "README.md").read_text())
    return 0 if summary else 1


def _run_argv(args: argparse.Namespace, spec: RunSpec, init: Path, hardware_path: Path) -> list[str]:
    argv = ["rl", "--init", str(init), "--out", str(spec.out), "--method", spec.method, "--seed", str(spec.seed),
            "--config", str(hardware_path), "--tasks", args.tasks, "--envs", str(args.envs), "--steps",
            str(args.steps), "--max-episode-steps", str(args.max_episode_steps), "--lr", f"{args.lr:g}",
            "--value-lr", f"{args.value_lr:g}", "--epochs", str(args.epochs), "--minibatch", str(args.minibatch),
            "--gamma", f"{args.gamma:g}", "--temperature", f"{args.temperature:g}", "--shaping-weight",
            f"{args.shaping_weight:g}", "--workers", str(args.workers if args.jobs == 1 else 0), "--threads",
            str(args.threads), "--save-every", str(args.save_every), "--eval-every", str(args.eval_every),
            "--eval-tasks", args.eval_tasks, "--eval-trials", str(args.eval_trials), "--eval-seed",
            str(args.eval_seed), "--no-initial-eval"]
    argv += ["--full"] if args.full else ["--lora-rank", str(args.lora_rank)]
    if args.rollout_steps is not None:
        argv += ["--rollout-steps", str(args.rollout_steps)]
    if spec.method == "fan-ppo":
        argv += [flag for flag, value in (("--alpha", args.alpha), ("--sigma", args.sigma)) if value is not None
                 for flag in (flag, f"{value:g}")]
    if not args.tensorboard:
        argv.append("--no-tensorboard")
    if (spec.out / "checkpoints").is_dir():
        argv.append("--resume")
    return argv


def summarise(runs: list[RunSpec], out: Path, threshold: float,
              start_rates: dict[str, float] | None = None) -> dict:
    """Steps to the threshold per run and per method; curves; OUT/compare.json and OUT/README.md. ``start_rates``:
    the starting checkpoint's success per evaluated task."""
    from finetune.rl.plot import load_run, plot_rl_runs

    per_method: dict[str, dict] = {}
    rows = []
    for spec in runs:
        train, evaluation = load_run(spec.out)
        reached = steps_to_threshold(train, threshold)
        final_eval = {k.removeprefix("success_"): float(v[-1]) for k, v in evaluation.items()
                      if k.startswith("success_")} if evaluation else {}
        summary_path = spec.out / "rl_summary.json"
        wall_s = json.loads(summary_path.read_text())["wall_s"] if summary_path.is_file() else None
        rows.append({"run": spec.name, "method": spec.method, "seed": spec.seed, "steps_to_threshold": reached,
                     "env_steps": float(train["env_steps"][-1]), "wall_s": wall_s,
                     "first_rollout_success": float(train["rollout_success"][0]),
                     "final_rollout_success": float(train["rollout_success_window"][-1]),
                     "final_eval": final_eval})
        entry = per_method.setdefault(spec.method, {"reached": [], "runs": 0})
        entry["runs"] += 1
        if reached is not None:
            entry["reached"].append(reached)
    for entry in per_method.values():
        entry["interval"] = mean_interval(entry["reached"])
    ratio = None
    if {"ppo", "fan-ppo"} <= set(per_method) and all(per_method[m]["interval"] for m in ("ppo", "fan-ppo")):
        ratio = per_method["fan-ppo"]["interval"][0] / per_method["ppo"]["interval"][0]
    start_mean = float(np.mean(list(start_rates.values()))) if start_rates else None
    plot_rl_runs([spec.out for spec in runs], out / "curves.png", [METHOD_NAMES[spec.method] for spec in runs],
                 threshold, start_mean)
    summary = {"threshold": threshold, "start_evaluation": start_rates, "runs": rows, "methods": per_method,
               "fan_ppo_over_ppo_steps": ratio}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text("\n".join(_markdown(rows, per_method, ratio, threshold, start_mean)) + "\n")
    return summary


def _markdown(rows: list[dict], per_method: dict, ratio: float | None, threshold: float,
              start_mean: float | None) -> list[str]:
    lines = ["# PPO vs FAN-PPO", "", f"Environment steps until the rollout success first reaches {threshold:.0%} "
             "(over the last window of finished episodes); rollout success of the first update (the starting "
             "policy, sampled) and of the last window; evaluation success (greedy, trial runner), mean over the "
             "evaluated tasks:", "",
             "| run | steps to threshold | rollout success: first update -> last window | final evaluation | "
             "wall time |", "|---|---|---|---|---|"]
    if start_mean is not None:
        lines.append(f"| start (--init) | - | - | {start_mean:.2f} | - |")
    for row in rows:
        reached = f"{row['steps_to_threshold']:,.0f}" if row["steps_to_threshold"] is not None else \
            f"not within {row['env_steps']:,.0f}"
        evaluation = row["final_eval"].get("mean")
        wall = "-" if row["wall_s"] is None else f"{row['wall_s'] / 60:.1f} min"
        lines.append(f"| {row['run']} | {reached} | {row['first_rollout_success']:.2f} -> "
                     f"{row['final_rollout_success']:.2f} | {'-' if evaluation is None else f'{evaluation:.2f}'} | "
                     f"{wall} |")
    lines += ["", "| method | seeds reaching the threshold | mean steps (95 % t interval) |", "|---|---|---|"]
    for method, entry in per_method.items():
        interval = entry["interval"]
        text = "-" if interval is None else f"{interval[0]:,.0f} ({interval[1]:,.0f} to {interval[2]:,.0f})"
        lines.append(f"| {METHOD_NAMES[method]} | {len(entry['reached'])} of {entry['runs']} | {text} |")
    lines += ["", f"FAN-PPO / PPO mean steps to the threshold: {ratio:.2f} (the paper: about 1/3)" if ratio is not None
              else "FAN-PPO / PPO: not computable (a method did not reach the threshold in any seed)",
              "", "Curves: curves.png. Final Task-1..4 table: report/README.md."]
    return lines


def _final_report(runs: list[RunSpec], out: Path) -> None:
    from fanvla.procs import Child, fanvla_argv

    finals = []
    for spec in runs:
        summary = json.loads((spec.out / "rl_summary.json").read_text())
        from finetune.rl.trainer import eval_dir

        path = eval_dir(spec.out, int(summary["updates"])) / "eval"
        if (path / "run.json").is_file():
            finals.append((spec.name, path))
    if not finals:
        return
    names = ",".join(["start (--init)"] + [name for name, _ in finals])
    Child("report", fanvla_argv("eval", "report", str(out / "eval-init"), *(str(p) for _, p in finals), "--names",
                                names, "--out", str(out / "report")), out / "logs" / "report.log").wait()
