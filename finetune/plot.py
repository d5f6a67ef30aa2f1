"""``fanvla finetune plot RUN [RUN ...] --out curves.png``: a run's curves from its ``metrics/*.csv``.

Panels: training loss (total and plain cross-entropy, smoothed), validation cross-entropy, action-token
accuracy (validation, and training smoothed), validation L1 per dimension in its unit, and the FAN diagnostics
per dimension on the validation split: entropy, spread around the mode (bins) and probability of the mode.
Several runs share the panels (one colour per run; per-dimension panels use line styles per run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetune.config import FinetuneError
from finetune.metrics import METRICS_DIR, TRAIN_CSV, VAL_CSV, read_metrics

DIMENSION_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "black")
RUN_STYLES = ("-", "--", ":", "-.")


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 3 or window <= 1:
        return values
    window = min(window, len(values))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _load(run: Path) -> tuple[dict, dict]:
    train_path, val_path = run / METRICS_DIR / TRAIN_CSV, run / METRICS_DIR / VAL_CSV
    if not train_path.is_file():
        raise FinetuneError(f"{run} has no {METRICS_DIR}/{TRAIN_CSV}: is it the --out directory of a finetuning run?")
    return read_metrics(train_path), read_metrics(val_path) if val_path.is_file() else {}


def _per_dimension(columns: dict, prefix: str) -> list[tuple[str, np.ndarray]]:
    return [(name.removeprefix(prefix), values) for name, values in columns.items() if name.startswith(prefix)]


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [(Path(run), *_load(Path(run))) for run in runs]
    figure, axes = plt.subplots(3, 3, figsize=(16, 12))
    panels = axes.ravel()
    for run_index, (run, train, val) in enumerate(loaded):
        label, colour, style = run.name, f"C{run_index}", RUN_STYLES[run_index % len(RUN_STYLES)]
        window = max(1, len(train.get("step", [])) // 50)
        steps = train["step"]
        panels[0].plot(steps, _smooth(train["loss"], window), color=colour, label=f"{label} total")
        panels[0].plot(steps, _smooth(train["ce"], window), color=colour, linestyle="--", label=f"{label} CE")
        panels[2].plot(steps, _smooth(train["accuracy"], window), color=colour, alpha=0.4, label=f"{label} train")
        if not val:
            continue
        panels[1].plot(val["step"], val["ce"], color=colour, marker=".", label=f"{label} CE")
        if "fan_kl" in val:
            panels[1].plot(val["step"], val["fan_kl"], color=colour, linestyle=":", label=f"{label} KL(pi||q)")
        panels[2].plot(val["step"], val["accuracy"], color=colour, marker=".", label=f"{label} validation")
        for panel, prefix in ((panels[3], "l1_"), (panels[5], "entropy_nats_"), (panels[6], "spread_bins_"),
                              (panels[7], "mode_prob_")):
            for dim_index, (name, values) in enumerate(_per_dimension(val, prefix)):
                if prefix == "l1_" and name.endswith("_opening"):
                    panels[4].plot(val["step"], values, color=colour, linestyle=style, label=f"{label} {name}")
                    continue
                panel.plot(val["step"], values, color=DIMENSION_COLOURS[dim_index % 7], linestyle=style,
                           label=f"{label} {name}" if run_index == 0 or dim_index == 0 else None)
        panels[8].plot(steps, train["lr"], color=colour, label=label)
    titles = ("training loss (smoothed)", "validation: cross-entropy and FAN KL", "action-token accuracy",
              "validation L1 per dimension (action units)", "validation L1 gripper (opening)",
              "validation entropy per dimension (nats)", "validation spread around the mode (bins)",
              "validation probability of the mode", "learning rate")
    for panel, title in zip(panels, titles, strict=True):
        panel.set_title(title, fontsize=10)
        panel.set_xlabel("step")
        panel.grid(alpha=0.3)
        if panel.has_data():
            panel.legend(fontsize=7)
    panels[3].set_yscale("log")
    figure.tight_layout()
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=90)
    plt.close(figure)
    return out_path
