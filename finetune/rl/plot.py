"""Curves of RL runs from their ``metrics/train.csv`` and ``metrics/eval.csv``, against environment steps.

Panels: rollout success (over the last window of finished episodes), evaluation success (mean over the evaluated
tasks, with each task dotted for a single run), the width of the action distributions (standard deviation of
pi_d in normalised action units, mean over the 7 dimensions), the FAN-KL to the fixed-sigma prior, the value loss
and the PPO clip fraction. Runs are coloured by ``group`` (e.g. the method), several runs of a group (seeds) share
its colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune.config import FinetuneError
from finetune.metrics import METRICS_DIR, read_metrics

PANELS = (("rollout_success_window", "rollout success (last episodes)"), ("eval", "evaluation success"),
          ("width_norm", "action width: std of pi_d (normalised units)"), ("fan_kl", "KL(pi || N(mu, sigma^2))"),
          ("value_loss", "value loss"), ("clip_fraction", "PPO clip fraction"))


def load_run(run: Path) -> tuple[dict, dict]:
    train_path = run / METRICS_DIR / "train.csv"
    if not train_path.is_file():
        raise FinetuneError(f"{run} has no {METRICS_DIR}/train.csv: is it the --out of a 'fanvla rl' run?")
    eval_path = run / METRICS_DIR / "eval.csv"
    return read_metrics(train_path), read_metrics(eval_path) if eval_path.is_file() else {}


def plot_rl_runs(runs: Sequence[str | Path], out: str | Path, groups: Sequence[str] | None = None,
                 threshold: float | None = None, start_success: float | None = None) -> Path:
    """``start_success``: the evaluation success of the starting checkpoint, drawn at 0 steps (runs that did not
    evaluate it themselves)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [Path(run) for run in runs]
    groups = list(groups) if groups is not None else [run.name for run in runs]
    colours = {group: f"C{i}" for i, group in enumerate(dict.fromkeys(groups))}
    figure, axes = plt.subplots(2, 3, figsize=(17, 9))
    panels = dict(zip((key for key, _ in PANELS), axes.ravel(), strict=True))
    labelled: set[str] = set()
    for run, group in zip(runs, groups, strict=True):
        train, evaluation = load_run(run)
        label = group if group not in labelled else None
        labelled.add(group)
        colour = colours[group]
        steps = train.get("env_steps", np.array([]))
        for key, axis in panels.items():
            if key != "eval" and key in train:
                axis.plot(steps, train[key], color=colour, alpha=0.8, label=label,
                          marker="." if len(steps) < 30 else None)  # short runs: points, not invisible lines
        if evaluation:
            axis = panels["eval"]
            axis.plot(evaluation["env_steps"], evaluation["success_mean"], color=colour, marker="o", label=label)
            if len(runs) == 1:
                for name, values in evaluation.items():
                    if name.startswith("success_") and name != "success_mean":
                        axis.plot(evaluation["env_steps"], values, linestyle=":", marker=".",
                                  label=name.removeprefix("success_"))
    if start_success is not None:
        panels["eval"].plot([0], [start_success], color="black", marker="*", markersize=12, linestyle="none",
                            label="start (--init)")
    for key, title in PANELS:
        axis = panels[key]
        axis.set_title(title)
        axis.set_xlabel("environment steps")
        axis.grid(alpha=0.3)
        if key in ("rollout_success_window", "eval"):
            axis.set_ylim(-0.02, 1.02)
            if threshold is not None:
                axis.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
