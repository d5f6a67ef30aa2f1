"""Action normalisation with the 1st/99th percentiles (OpenVLA's BOUNDS_Q99) and ``dataset_statistics.json``.

Where ``mask`` is true: ``a_norm = clip(2 * (a - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` and back
``a = 0.5 * (a_norm + 1) * (q99 - q01) + q01``. Where ``mask`` is false (the gripper in OpenVLA's data) the
value passes through unchanged in both directions. A masked dimension whose q01 == q99 (a constant in the
data) normalises to 0 and un-normalises to that constant.

``dataset_statistics.json`` (upstream format, written by finetuning and shipped inside every checkpoint)::

    {key: {"action": {mean, std, max, min, q01, q99, mask}, "proprio": {mean, std, max, min, q01, q99},
           "num_transitions": int, "num_trajectories": int}}

``key`` is the ``unnorm_key`` of ``predict_action``. numpy only (no torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASET_STATISTICS_FILE = "dataset_statistics.json"
STAT_FIELDS = ("mean", "std", "max", "min", "q01", "q99")
_EPS = 1e-8


class StatisticsError(ValueError):
    """Normalisation statistics are missing, malformed or do not fit the actions."""


@dataclass(frozen=True)
class ActionStats:
    """Per-dimension statistics of one dataset's actions (or proprio, where ``mask`` is all true)."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def __post_init__(self) -> None:
        dim = len(np.atleast_1d(self.q01))
        for name in (*STAT_FIELDS, "mask"):
            value = np.atleast_1d(np.asarray(getattr(self, name), dtype=bool if name == "mask" else np.float64))
            if value.shape != (dim,):
                raise StatisticsError(f"statistics field '{name}' has shape {value.shape}, expected ({dim},) like q01")
            if name != "mask" and not np.isfinite(value).all():
                raise StatisticsError(f"statistics field '{name}' has non-finite values: {value.tolist()}")
            object.__setattr__(self, name, value)
        if (self.q01 > self.q99).any():
            bad = np.flatnonzero(self.q01 > self.q99).tolist()
            raise StatisticsError(f"q01 > q99 on dimensions {bad}: the statistics are corrupt")

    @property
    def dim(self) -> int:
        return len(self.q01)

    @classmethod
    def from_dict(cls, data: dict, where: str = "statistics") -> ActionStats:
        missing = [name for name in STAT_FIELDS if name not in data]
        if missing:
            raise StatisticsError(f"{where}: missing fields {missing} (expected {list(STAT_FIELDS)} and optional mask)")
        q01 = np.asarray(data["q01"], dtype=np.float64)
        # A missing mask means every dimension is normalised (upstream's rule).
        mask = np.asarray(data.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        try:
            return cls(mask=mask, **{name: data[name] for name in STAT_FIELDS})
        except StatisticsError as error:
            raise StatisticsError(f"{where}: {error}") from None

    def to_dict(self, include_mask: bool = True) -> dict:
        data = {name: getattr(self, name).tolist() for name in STAT_FIELDS}
        if include_mask:
            data["mask"] = self.mask.tolist()
        return data


@dataclass(frozen=True)
class DatasetStatistics:
    """One entry of ``dataset_statistics.json``."""

    action: ActionStats
    proprio: ActionStats | None = None
    num_transitions: int = 0
    num_trajectories: int = 0

    @classmethod
    def from_dict(cls, data: dict, key: str) -> DatasetStatistics:
        if not isinstance(data, dict) or "action" not in data:
            raise StatisticsError(f"statistics entry '{key}' has no 'action' block")
        proprio = data.get("proprio")
        return cls(action=ActionStats.from_dict(data["action"], f"statistics '{key}'.action"),
                   proprio=ActionStats.from_dict(proprio, f"statistics '{key}'.proprio") if proprio else None,
                   num_transitions=int(data.get("num_transitions", 0)),
                   num_trajectories=int(data.get("num_trajectories", 0)))

    def to_dict(self) -> dict:
        data: dict = {"action": self.action.to_dict()}
        if self.proprio is not None:
            data["proprio"] = self.proprio.to_dict(include_mask=False)
        data["num_transitions"] = self.num_transitions
        data["num_trajectories"] = self.num_trajectories
        return data


def _check_actions(values: np.ndarray, stats: ActionStats, what: str) -> None:
    if values.shape[-1:] != (stats.dim,):
        raise StatisticsError(f"{what} have last dimension {values.shape[-1:]}, the statistics have {stats.dim}")
    if np.isnan(values).any():
        raise StatisticsError(f"{what} contain NaN at {np.argwhere(np.isnan(values))[:5].tolist()}")


def normalize(actions, stats: ActionStats) -> np.ndarray:
    """Actions (..., D) -> normalised in [-1, 1] on masked dimensions (see the module docstring)."""
    values = np.asarray(actions, dtype=np.float64)
    _check_actions(values, stats, "actions")
    span = stats.q99 - stats.q01
    scaled = np.clip(2.0 * (values - stats.q01) / (span + _EPS) - 1.0, -1.0, 1.0)
    scaled = np.where(span == 0.0, 0.0, scaled)
    return np.where(stats.mask, scaled, values)


def unnormalize(normalized, stats: ActionStats) -> np.ndarray:
    """Normalised actions (..., D) -> actions in the dataset's units (inverse of ``normalize`` inside [q01, q99])."""
    values = np.asarray(normalized, dtype=np.float64)
    _check_actions(values, stats, "normalised actions")
    return np.where(stats.mask, 0.5 * (values + 1.0) * (stats.q99 - stats.q01) + stats.q01, values)


def compute_stats(actions, mask=None) -> ActionStats:
    """Statistics of actions (N, D): per-dimension q01/q99 (``numpy.quantile``, linear), mean, std, min, max."""
    values = np.asarray(actions, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise StatisticsError(f"compute_stats needs a non-empty (N, D) array, got shape {values.shape}")
    if not np.isfinite(values).all():
        rows = np.unique(np.argwhere(~np.isfinite(values))[:, 0])[:5].tolist()
        raise StatisticsError(f"actions contain NaN/inf at rows {rows}")
    dim = values.shape[1]
    mask_array = np.ones(dim, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    return ActionStats(q01=np.quantile(values, 0.01, axis=0), q99=np.quantile(values, 0.99, axis=0), mask=mask_array,
                       mean=values.mean(axis=0), std=values.std(axis=0), min=values.min(axis=0),
                       max=values.max(axis=0))


def parse_norm_stats(data: dict, source: str) -> dict[str, DatasetStatistics]:
    """``{key: entry}`` (the content of dataset_statistics.json or config.json's ``norm_stats``) -> typed entries."""
    if not isinstance(data, dict) or not data:
        raise StatisticsError(f"{source}: expected a non-empty object {{unnorm_key: {{action: ...}}}}")
    try:
        return {key: DatasetStatistics.from_dict(entry, key) for key, entry in data.items()}
    except StatisticsError as error:
        raise StatisticsError(f"{source}: {error}") from None


def norm_stats_to_dict(stats: dict[str, DatasetStatistics]) -> dict:
    return {key: entry.to_dict() for key, entry in stats.items()}


def load_dataset_statistics(path: str | Path) -> dict[str, DatasetStatistics]:
    path = Path(path)
    if path.is_dir():
        path = path / DATASET_STATISTICS_FILE
    if not path.is_file():
        raise StatisticsError(f"{path} does not exist: every checkpoint must ship the normalisation statistics of "
                              f"its training data (dataset_statistics.json)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StatisticsError(f"{path} is not valid JSON: {error}") from None
    return parse_norm_stats(data, str(path))


def save_dataset_statistics(path: str | Path, stats: dict[str, DatasetStatistics]) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / DATASET_STATISTICS_FILE
    path.write_text(json.dumps(norm_stats_to_dict(stats), indent=2))
    return path


def select_unnorm_key(stats: dict[str, DatasetStatistics], unnorm_key: str | None) -> str:
    """The statistics key to use: the given one (must exist) or the only one there is."""
    if unnorm_key is None:
        if len(stats) != 1:
            raise StatisticsError(f"this model has statistics for several datasets {sorted(stats)}; pass unnorm_key")
        return next(iter(stats))
    if unnorm_key not in stats:
        raise StatisticsError(f"unnorm_key '{unnorm_key}' not in the model's statistics; available: {sorted(stats)}")
    return unnorm_key
