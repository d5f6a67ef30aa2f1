"""The training data over one or more episode stores: samples, actions, the episode split, statistics, fingerprint.

Reads only the low-dimensional arrays and the episode metadata (images are decoded once by
``finetune.frames``). Actions come from ``policy.action_space.actions_from_recording`` (the one module that
derives them), normalisation statistics from ``policy.normalization.compute_stats`` on the TRAINING split only.

The validation split is chosen by episode: each episode gets a rank from a hash of its identity (the store's
creation time, its index, start time and instruction), and the lowest ``round(val_fraction * E)`` ranks are held
out (at least one when there are 2+ episodes). It does not depend on the training seed, so runs with different
seeds or methods on the same stores validate on the same episodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from finetune.config import FinetuneError
from policy.action_space import ACTION_DIM, ActionSpaceSpec, action_space, actions_from_recording
from policy.normalization import ActionStats, DatasetStatistics, compute_stats

log = logging.getLogger(__name__)

IMAGE_KEY = "color"
GRIPPER_STATE_KEY = "gripper_state"


@dataclass(frozen=True)
class SampleTable:
    """One row per training sample (a frame): where its image is and what the model must predict."""

    store: np.ndarray  # (N,) int: index into TrainingData.store_paths
    frame: np.ndarray  # (N,) int64: frame index inside that store
    episode: np.ndarray  # (N,) int: global episode id (TrainingData.episodes)
    instruction: np.ndarray  # (N,) int: index into TrainingData.instructions
    actions: np.ndarray  # (N, 7) float64, in the action space's units

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, rows: np.ndarray) -> SampleTable:
        return SampleTable(self.store[rows], self.frame[rows], self.episode[rows], self.instruction[rows],
                           self.actions[rows])


@dataclass(frozen=True)
class EpisodeInfo:
    store: int
    index: int
    instruction: str
    frames: int  # recorded frames
    samples: int  # frames used (no-ops skipped unless told otherwise)
    split: str  # "train" | "val" | "empty" (every step a no-op)


@dataclass
class TrainingData:
    store_paths: list[Path]
    spec: ActionSpaceSpec
    instructions: list[str]
    episodes: list[EpisodeInfo]
    train: SampleTable
    val: SampleTable
    stats: ActionStats
    proprio_stats: ActionStats
    image_shapes: list[tuple[int, int, int]]
    fingerprint: dict = field(default_factory=dict)

    def dataset_statistics(self) -> DatasetStatistics:
        train_episodes = sum(1 for episode in self.episodes if episode.split == "train")
        return DatasetStatistics(action=self.stats, proprio=self.proprio_stats, num_transitions=len(self.train),
                                 num_trajectories=train_episodes)

    def summary(self) -> str:
        counts = {split: sum(1 for e in self.episodes if e.split == split) for split in ("train", "val", "empty")}
        recorded = sum(e.frames for e in self.episodes)
        used = len(self.train) + len(self.val)
        return (f"{len(self.store_paths)} store(s), {len(self.episodes)} episodes ({counts['train']} train, "
                f"{counts['val']} validation, {counts['empty']} all no-op), {recorded} frames recorded, {used} used "
                f"({len(self.train)} train, {len(self.val)} validation), {len(self.instructions)} instruction(s), "
                f"action space {self.spec.name.value}")


def default_unnorm_key(store_paths: Sequence[str | Path]) -> str:
    """The statistics key a run gets unless told: the store names (without .zarr) joined with '+'."""
    return "+".join(Path(path).name.removesuffix(".zarr") or "data" for path in store_paths)


# ------------------------------------------------------------------------------------------- reading a store
@dataclass
class _StoreColumns:
    path: Path
    created_at: str
    episode_ends: np.ndarray
    metas: list[dict]
    raw_infos: list[str]
    columns: dict[str, np.ndarray]
    noop: np.ndarray
    image_shape: tuple[int, int, int]


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Store errors (a missing store, a chunk that is missing or fails its checksum) as FinetuneError: every read
    of the store is checked (collect/integrity.py), so damaged data stops the run instead of being trained on."""
    from collect.errors import StoreError

    try:
        yield
    except StoreError as error:
        raise FinetuneError(f"cannot read the episode store: {error}") from None


def _read_store(path: str | Path, spec: ActionSpaceSpec) -> _StoreColumns:
    from collect.store import EpisodeStore

    with store_errors(), EpisodeStore.open(path, mode="r") as store:
        if store.num_episodes == 0:
            raise FinetuneError(f"{path} has no saved episodes: record demonstrations into it first "
                                f"(fanvla collect record ... --out {path}), or check the path")
        keys = store.schema.keys
        if IMAGE_KEY not in keys:
            raise FinetuneError(f"{path} has no '{IMAGE_KEY}' images (keys: {sorted(keys)}); the policy needs them")
        image = keys[IMAGE_KEY]
        if image.dtype != "uint8" or len(image.shape) != 3 or image.shape[2] != 3:
            raise FinetuneError(f"{path}: '{IMAGE_KEY}' is {image.dtype} {image.shape}, expected uint8 (H, W, 3) "
                                f"RGB")
        needed = [*spec.required_keys, GRIPPER_STATE_KEY]
        missing = [key for key in needed if key not in keys]
        if missing:
            raise FinetuneError(f"{path} lacks {missing}, needed for the {spec.name.value} action space "
                                f"(it has {sorted(keys)})")
        low_dim = sorted(store.schema.low_dim_keys)
        columns = {key: np.asarray(store.array(key)[:]) for key in low_dim}
        metas = store.episodes_meta()
        raw_infos = [json.dumps(meta, sort_keys=True, default=str) for meta in metas]
        return _StoreColumns(Path(path), str(store.attrs.get("created_at", "")), store.episode_ends, metas,
                             raw_infos, columns, store.noop_mask(), tuple(image.shape))


def _store_sha256(columns: _StoreColumns) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(columns.episode_ends, dtype=np.int64).tobytes())
    for info in columns.raw_infos:
        digest.update(info.encode() + b"\0")
    for key in sorted(columns.columns):
        digest.update(key.encode() + b"\0" + np.ascontiguousarray(columns.columns[key]).tobytes())
    digest.update(np.ascontiguousarray(columns.noop, dtype=bool).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- the split
def _episode_rank(created_at: str, meta: dict) -> str:
    identity = f"{created_at}|{meta['index']}|{meta.get('started_at', '')}|{meta.get('instruction', '')}"
    return hashlib.sha256(identity.encode()).hexdigest()


def validation_count(num_episodes: int, val_fraction: float) -> int:
    if val_fraction <= 0 or num_episodes < 2:
        return 0
    return min(max(1, round(val_fraction * num_episodes)), num_episodes - 1)


# ------------------------------------------------------------------------------------------------ loading
def _instruction(meta: dict, path: Path) -> str:
    instruction = meta.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise FinetuneError(f"{path} episode {meta['index']} has no instruction in its metadata (got "
                            f"{instruction!r}); every episode needs one for the prompt")
    return instruction


def _episode_actions(columns: _StoreColumns, span: slice, spec: ActionSpaceSpec, where: str) -> np.ndarray:
    arrays = {key: columns.columns[key][span] for key in spec.required_keys}
    try:
        actions = actions_from_recording(arrays, spec.name)
    except (KeyError, ValueError) as error:
        raise FinetuneError(f"{where}: cannot derive {spec.name.value} actions: {error}") from None
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise FinetuneError(f"{where}: the recording gives {actions.shape[-1]}-D actions, the {spec.name.value} "
                            f"action space has {ACTION_DIM} (6 motion + gripper); check the arm's joint count")
    if not np.isfinite(actions).all():
        bad = np.unique(np.argwhere(~np.isfinite(actions))[:, 0])[:5].tolist()
        raise FinetuneError(f"{where}: actions are NaN/inf at steps {bad}; the recording is damaged there")
    return actions


def load_training_data(store_paths: Sequence[str | Path], action_space_name: str, val_fraction: float = 0.1,
                       skip_noops: bool = True, max_episodes: int | None = None) -> TrainingData:
    """Open the stores, derive actions, split by episode and compute the training split's statistics.

    ``max_episodes``: use only the first N episodes, taking the stores in the order given.
    """
    if not store_paths:
        raise FinetuneError("no episode store given")
    spec = action_space(action_space_name)
    stores = [_read_store(path, spec) for path in store_paths]
    instructions: dict[str, int] = {}
    episodes: list[EpisodeInfo] = []
    rows: dict[str, list] = {"store": [], "frame": [], "episode": [], "instruction": [], "actions": []}
    ranks: list[str] = []
    for store_index, columns in enumerate(stores):
        starts = np.concatenate([[0], columns.episode_ends[:-1]]).astype(np.int64)
        for meta, start, end in zip(columns.metas, starts, columns.episode_ends, strict=True):
            if max_episodes is not None and len(episodes) >= max_episodes:
                break
            where = f"{columns.path} episode {meta['index']}"
            instruction = _instruction(meta, columns.path)
            actions = _episode_actions(columns, slice(int(start), int(end)), spec, where)
            keep = np.ones(len(actions), bool) if not skip_noops else ~columns.noop[int(start):int(end)]
            frames = np.arange(int(start), int(end), dtype=np.int64)[keep]
            instruction_id = instructions.setdefault(instruction, len(instructions))
            episode_id = len(episodes)
            rows["store"].append(np.full(len(frames), store_index))
            rows["frame"].append(frames)
            rows["episode"].append(np.full(len(frames), episode_id))
            rows["instruction"].append(np.full(len(frames), instruction_id))
            rows["actions"].append(actions[keep])
            episodes.append(EpisodeInfo(store_index, int(meta["index"]), instruction, int(end - start),
                                        len(frames), "empty" if len(frames) == 0 else "train"))
            ranks.append(_episode_rank(columns.created_at, meta))
    table = SampleTable(*(np.concatenate(rows[name]) for name in ("store", "frame", "episode", "instruction")),
                        np.concatenate(rows["actions"]).reshape(-1, ACTION_DIM))
    if len(table) == 0:
        recorded = sum(e.frames for e in episodes)
        raise FinetuneError(f"every one of the {recorded} recorded frames is a no-op step, so nothing is left to "
                            f"train on. Check the recording (did the arm move?), lower the thresholds with "
                            f"`fanvla collect filter STORE --joint-eps-deg X`, or pass --no-skip-noops")
    episodes = _assign_split(episodes, ranks, val_fraction)
    is_val = np.array([episodes[e].split == "val" for e in table.episode], dtype=bool)
    train, val = table.subset(np.flatnonzero(~is_val)), table.subset(np.flatnonzero(is_val))
    stats = compute_stats(train.actions, mask=spec.normalize_mask)
    proprio = _proprio_stats(stores, train, spec)
    data = TrainingData([s.path for s in stores], spec, list(instructions), episodes, train, val, stats, proprio,
                        [s.image_shape for s in stores])
    if max_episodes is not None and len(episodes) < max_episodes:
        raise FinetuneError(f"--max-episodes {max_episodes}: the stores hold only {len(episodes)} episodes")
    data.fingerprint = _fingerprint(stores, data, skip_noops, max_episodes)
    return data


def _assign_split(episodes: list[EpisodeInfo], ranks: list[str], val_fraction: float) -> list[EpisodeInfo]:
    usable = [i for i, episode in enumerate(episodes) if episode.samples > 0]
    held_out = set(sorted(usable, key=lambda i: ranks[i])[: validation_count(len(usable), val_fraction)])
    return [EpisodeInfo(e.store, e.index, e.instruction, e.frames, e.samples,
                        "val" if i in held_out else e.split) for i, e in enumerate(episodes)]


def _proprio_stats(stores: list[_StoreColumns], train: SampleTable, spec: ActionSpaceSpec) -> ActionStats:
    """Statistics of the measured state in the action space's terms (pose or joints, + gripper opening)."""
    state_key = spec.required_keys[0]
    states = np.zeros((len(train), ACTION_DIM))
    for store_index, columns in enumerate(stores):
        rows = np.flatnonzero(train.store == store_index)
        frames = train.frame[rows]
        states[rows, :6] = columns.columns[state_key][frames]
        states[rows, 6] = columns.columns[GRIPPER_STATE_KEY][frames].reshape(-1)
    return compute_stats(states)


def _fingerprint(stores: list[_StoreColumns], data: TrainingData, skip_noops: bool,
                 max_episodes: int | None) -> dict:
    store_entries = [{"path": str(s.path.resolve()), "episodes": len(s.metas), "frames": int(s.episode_ends[-1]),
                      "sha256": _store_sha256(s)} for s in stores]
    split = hashlib.sha256()
    for episode in data.episodes:
        split.update(f"{episode.store}:{episode.index}:{episode.split}:{episode.samples};".encode())
    document = {
        "stores": store_entries,
        "action_space": data.spec.name.value,
        "skip_noops": skip_noops,
        "max_episodes": max_episodes,
        "train_episodes": sum(1 for e in data.episodes if e.split == "train"),
        "val_episodes": sum(1 for e in data.episodes if e.split == "val"),
        "train_frames": len(data.train),
        "val_frames": len(data.val),
        "split_sha256": split.hexdigest(),
        "images_hashed": False,  # image bytes are not hashed (cost); their count and the low-dim data are
    }
    # Content only: the same stores moved elsewhere keep their fingerprint.
    content = {**document, "stores": [{k: v for k, v in entry.items() if k != "path"} for entry in store_entries]}
    document["sha256"] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return document
