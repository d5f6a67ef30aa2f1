"""Training samples for OpenVLA-OFT: (frame, the next K actions), the robot state as proprio, the wrist frame.

A sample is a frame of the training table (``finetune.data``) and the actions of the K frames from it on in the
same episode: its own action and the next K - 1 samples' (no-op steps are skipped as they are for single actions,
so a chunk is the K steps the robot would execute). Near an episode's end, where fewer than K remain, the chunk is
padded by repeating the episode's final action, and the padding is **supervised, not masked**:

- every sample then has K x 7 action tokens, which ``finetune.losses`` needs (each sample the same number of
  action-token labels) and keeps each sample's weight in the per-position mean, so SFT, label smoothing and the
  FAN-SFT regulariser act on exactly the positions they act on for any other sample;
- what the padding teaches is what the robot should do after the episode's last step: keep doing its final step
  (in the demonstrations the last kept step is the release and back-off above the box); the evaluation stops at
  success, so these targets steer only the tail of a chunk predicted in the last K - 1 steps of a task;
- it is a small share of the data (K - 1 of ~80 samples per demonstration, all but the first position of them).

Upstream openvla-oft drops those samples instead (its RLDS chunking truncates each trajectory by K - 1 steps);
padding keeps the frames of the release, which are few and matter. ``chunk_targets`` returns the padding flags so
that tests and the run summary can count them.

The proprio input is the 13-D robot state ``policy.agent.STATE_LAYOUT`` (measured joints, measured TCP pose, gripper
opening as recorded), normalised with q01/q99 of the training split (every dimension, as openvla-oft's
BOUNDS_Q99); those statistics become the checkpoint's ``proprio`` entry, which the policy uses at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.augment import center_windows, normalize_pixels, to_unit_float, training_pixels
from finetune.batches import BatchBuilder, SplitArrays
from finetune.config import FinetuneError
from finetune.data import GRIPPER_STATE_KEY, SampleTable, TrainingData, store_errors
from policy.normalization import ActionStats, compute_stats, normalize

WRIST_IMAGE_KEY = "wrist_color"
STATE_KEYS = ("joints_rad", "tcp_pose", GRIPPER_STATE_KEY)  # policy.agent.STATE_LAYOUT, in that order
WRIST_AUGMENT_OFFSET = 0x3217  # the wrist frame's crops and jitter are drawn apart from the main frame's


@dataclass(frozen=True)
class ChunkTargets:
    actions: np.ndarray  # (N, K, 7) in action units
    padded: np.ndarray  # (N, K) bool: a repeat of the episode's final action


def chunk_rows(table: SampleTable, chunk: int) -> np.ndarray:
    """(N, K) table rows of each sample's chunk: the sample and the next K - 1 of its episode, the episode's last
    row repeated past its end. Needs the rows of each episode contiguous and in frame order (as loaded)."""
    if chunk < 1:
        raise FinetuneError(f"--chunk must be >= 1, got {chunk}")
    episode, frame = np.asarray(table.episode), np.asarray(table.frame)
    same = episode[1:] == episode[:-1]
    if len(episode) and (np.any(frame[1:][same] <= frame[:-1][same]) or
                         len(np.unique(episode)) != 1 + int(np.count_nonzero(~same))):
        raise FinetuneError("the sample table is not ordered by episode and frame; action chunks need each "
                            "episode's samples in order")
    ends = np.flatnonzero(np.append(~same, True))  # last row of each run
    last = np.repeat(ends, np.diff(np.concatenate([[-1], ends])))
    rows = np.arange(len(episode))[:, None] + np.arange(chunk)[None, :]
    return np.minimum(rows, last[:, None])


def chunk_targets(table: SampleTable, chunk: int) -> ChunkTargets:
    rows = chunk_rows(table, chunk)
    offsets = np.arange(chunk)[None, :]
    return ChunkTargets(actions=np.asarray(table.actions)[rows], padded=rows < np.arange(len(rows))[:, None] + offsets)


def read_states(store_paths, table: SampleTable) -> np.ndarray:
    """(N, 13) robot state of every sample (``STATE_KEYS`` concatenated), read from the stores."""
    from collect.store import EpisodeStore

    states = np.zeros((len(table), 13), dtype=np.float64)
    with store_errors():
        for index, path in enumerate(store_paths):
            rows = np.flatnonzero(np.asarray(table.store) == index)
            if not len(rows):
                continue
            with EpisodeStore.open(path, mode="r") as store:
                missing = [key for key in STATE_KEYS if key not in store.schema.keys]
                if missing:
                    raise FinetuneError(f"{path} lacks {missing}: the proprio input needs the recorded robot state")
                frames = np.asarray(table.frame)[rows]
                parts = [np.asarray(store.array(key)[:], dtype=np.float64).reshape(-1, width)[frames]
                         for key, width in zip(STATE_KEYS, (6, 6, 1), strict=True)]
                states[rows] = np.concatenate(parts, axis=1)
    if not np.isfinite(states).all():
        bad = np.unique(np.argwhere(~np.isfinite(states))[:, 0])[:5].tolist()
        raise FinetuneError(f"the recorded robot state is NaN/inf at sample rows {bad}; the recording is damaged")
    return states


def check_wrist_frames(data: TrainingData) -> None:
    """Every store must hold the wrist camera's frames (``--wrist``)."""
    from collect.store import EpisodeStore

    with store_errors():
        for path in data.store_paths:
            with EpisodeStore.open(path, mode="r") as store:
                spec = store.schema.keys.get(WRIST_IMAGE_KEY)
                if spec is None:
                    raise FinetuneError(f"--wrist: {path} has no '{WRIST_IMAGE_KEY}' images (it was recorded "
                                        f"without cameras.wrist in hardware.yaml); record with the wrist camera or "
                                        f"drop --wrist")
                if spec.dtype != "uint8" or len(spec.shape) != 3 or spec.shape[2] != 3:
                    raise FinetuneError(f"{path}: '{WRIST_IMAGE_KEY}' is {spec.dtype} {spec.shape}, expected uint8 "
                                        f"(H, W, 3) RGB")


def proprio_statistics(states: np.ndarray) -> ActionStats:
    """q01/q99 (and the rest) of the training split's states, every dimension normalised."""
    return compute_stats(states)


@dataclass
class ChunkSplit(SplitArrays):
    """``SplitArrays`` with K x 7 action tokens per row, (N, K, 7) actions, and the optional extra inputs."""

    proprio: np.ndarray | None = None  # (N, 13) float32, normalised
    wrist_frames: np.ndarray | None = None  # uint8, the same sizes as ``frames``


def chunk_split(table: SampleTable, chunk: int, stats: ActionStats, action_tokenizer, frames: np.ndarray,
                features: np.ndarray | None = None, states: np.ndarray | None = None,
                proprio_stats: ActionStats | None = None, wrist_frames: np.ndarray | None = None) -> ChunkSplit:
    targets = chunk_targets(table, chunk)
    n_tokens = targets.actions.shape[1] * targets.actions.shape[2]  # K x 7 (explicit: a split may be empty)
    tokens = action_tokenizer.encode(normalize(targets.actions, stats)).reshape(len(table), n_tokens)
    proprio = None if states is None else normalize(states, proprio_stats).astype(np.float32)
    return ChunkSplit(frames, tokens, targets.actions, np.asarray(table.instruction), features, proprio, wrist_frames)


class ChunkBatchBuilder(BatchBuilder):
    """Rows -> OFT inputs: OpenVLA's text layout with K x 7 action ids (``policy.oft``), ``proprio``, and the wrist
    frame's pixels after the main frame's (6 channels each)."""

    split: ChunkSplit

    def _finish(self, rows: np.ndarray, pixel_values: torch.Tensor | None) -> dict[str, torch.Tensor]:
        batch = super()._finish(rows, pixel_values)
        if self.split.proprio is not None:
            batch["proprio"] = torch.from_numpy(self.split.proprio[rows])
        return batch

    def training_batch(self, rows: np.ndarray, positions: np.ndarray, seed: int, augment: bool) -> dict:
        if self.split.features is not None:
            return self._finish(rows, None)
        pixels = training_pixels(self.split.frames[rows], positions, seed, self.image_size, self.settings, augment)
        if self.split.wrist_frames is not None:
            wrist = training_pixels(self.split.wrist_frames[rows], positions, seed + WRIST_AUGMENT_OFFSET,
                                    self.image_size, self.settings, augment)
            pixels = torch.cat([pixels, wrist], dim=1)
        return self._finish(rows, pixels)

    def evaluation_batch(self, rows: np.ndarray) -> dict:
        if self.split.features is not None:
            return self._finish(rows, None)
        views = [self.split.frames] + ([self.split.wrist_frames] if self.split.wrist_frames is not None else [])
        pixels = []
        for frames in views:
            chosen = frames[rows]
            if chosen.shape[1] != self.image_size:
                chosen = center_windows(chosen, self.image_size)
            pixels.append(normalize_pixels(to_unit_float(chosen), self.settings))
        return self._finish(rows, torch.cat(pixels, dim=1))
