"""What a run measures and where it goes: per-batch sums (loss parts, action-token accuracy, L1 in action units,
FAN diagnostics per dimension), their means, and the CSV + TensorBoard writers.

Accuracy: the argmax over the FULL vocabulary at each position that predicts an action token equals the label
(teacher forcing, as upstream reports it). L1: |unnormalise(decode(that argmax)) - recorded action| per
dimension, in the action space's units (mm, rad, gripper opening).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from finetune.losses import LossOutput
from policy.action_space import ActionSpaceSpec
from policy.action_tokenizer import ActionTokenizer
from policy.normalization import ActionStats, unnormalize
from policy.prompt import IGNORE_INDEX

METRICS_DIR = "metrics"
TRAIN_CSV = "train.csv"
VAL_CSV = "val.csv"
DIAGNOSTIC_FIELDS = ("entropy_nats", "spread_bins", "mode_prob")


def predicted_action_tokens(logits: torch.Tensor, aligned_labels: torch.Tensor,
                            action_tokenizer: ActionTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted ids, label ids), both (B, D): full-vocabulary argmax where the label is an action token."""
    targets = aligned_labels[:, 1:]
    is_action = (targets >= action_tokenizer.first_action_token_id) & (targets < action_tokenizer.vocab_end)
    is_action &= targets != IGNORE_INDEX
    batch = targets.shape[0]
    rows = logits[:, :-1][is_action]  # (B * D, V) in row-major (sample, position) order
    predicted = rows.argmax(dim=-1).view(batch, -1)
    return predicted, targets[is_action].view(batch, -1)


class MetricSums:
    """Sums over samples (for validation across batches and ranks); ``means()`` divides."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        self.sums[name] += float(value) * weight
        self.sums[f"_w_{name}"] += weight

    def merge(self, other: MetricSums) -> None:
        for name, value in other.sums.items():
            self.sums[name] += value

    def as_tensor(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([self.sums[n] for n in names] + [self.sums[f"_w_{n}"] for n in names], dtype=torch.float64)

    def names(self) -> list[str]:
        return sorted(name for name in self.sums if not name.startswith("_w_"))

    def load_tensor(self, names: list[str], values: torch.Tensor) -> None:
        count = len(names)
        for i, name in enumerate(names):
            self.sums[name] = float(values[i])
            self.sums[f"_w_{name}"] = float(values[count + i])

    def means(self) -> dict[str, float]:
        return {name: self.sums[name] / self.sums[f"_w_{name}"] for name in self.names()
                if self.sums[f"_w_{name}"] > 0}


def batch_metrics(loss: LossOutput, predicted: torch.Tensor, labels: torch.Tensor, actions: torch.Tensor,
                  action_tokenizer: ActionTokenizer, stats: ActionStats, spec: ActionSpaceSpec) -> MetricSums:
    """Metrics of one batch as sums weighted by its sample count."""
    batch = predicted.shape[0]
    sums = MetricSums()
    for name, value in (("loss", loss.total), ("ce", loss.ce), ("reg", loss.reg), ("fan_kl", loss.fan_kl)):
        if value is not None:
            sums.add(name, float(value.detach()), batch)
    correct = (predicted == labels).double().cpu().numpy()
    sums.add("accuracy", float(correct.mean()), batch)
    decoded = action_tokenizer.decode(predicted.cpu().numpy())
    l1 = np.abs(unnormalize(decoded, stats) - actions.cpu().numpy())
    for d, (dim, unit) in enumerate(zip(spec.dim_names, spec.units, strict=True)):
        sums.add(f"accuracy_{dim}", float(correct[:, d].mean()), batch)
        sums.add(f"l1_{dim}_{unit}", float(l1[:, d].mean()), batch)
    if loss.diagnostics is not None:
        for field, per_dim in loss.diagnostics.per_dimension().items():
            if field in DIAGNOSTIC_FIELDS:
                for dim, value in zip(spec.dim_names, per_dim, strict=True):
                    sums.add(f"{field}_{dim}", value, batch)
    return sums


class MetricsWriter:
    """``OUT/metrics/{train,val}.csv`` and TensorBoard (``OUT/tensorboard``); rank 0 only.

    On resume, rows after the resumed step (written by the interrupted run) are dropped first. ``files`` maps each
    split to its CSV (default: train and val; RL runs add eval)."""

    def __init__(self, out_dir: Path, tensorboard: bool, resume_step: int | None,
                 files: dict[str, str] | None = None) -> None:
        self.directory = out_dir / METRICS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files = dict(files or {"train": TRAIN_CSV, "val": VAL_CSV})
        for name in self.files.values():
            path = self.directory / name
            if resume_step is None:
                path.unlink(missing_ok=True)
            elif path.is_file():
                _truncate_after(path, resume_step)
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step)

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        path = self.directory / self.files[split]
        row = {"step": step, **{key: _round(value) for key, value in values.items()}}
        existing = path.is_file() and path.stat().st_size > 0
        fields = list(row)
        if existing:
            with path.open(newline="") as handle:
                fields = next(csv.reader(handle))
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if not existing:
                writer.writeheader()
            writer.writerow(row)
        if self._tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _round(value: float) -> float:
    return float(f"{value:.7g}") if isinstance(value, float) else value


def _truncate_after(path: Path, step: int) -> None:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(float(row[0])) <= step]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(kept)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """A metrics CSV as columns of floats (empty cells as NaN)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: np.array([float(row[key]) if row.get(key) not in (None, "") else math.nan for row in rows])
            for key in rows[0]}
