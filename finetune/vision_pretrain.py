"""``fanvla finetune pretrain-vision``: spatial features for a tiny model's vision towers before finetuning.

The real OpenVLA starts from towers pretrained on web images (DINOv2, SigLIP): they already say where things are.
A tiny model from ``fanvla policy init-tiny`` starts from random weights, and the action-token loss is a weak
teacher of geometry (a 256-way classification of small per-step deltas). Without this stage the tiny policy
imitates the demonstrations' phases but misjudges the gripper's position relative to the object by 10-20 mm.

This stage trains the vision towers and the projector to regress, from one camera frame, where the gripper is,
where the episode grasps and where it releases (relative to the gripper), and whether the gripper is closed. Every
label comes from what any demonstration records (the TCP pose and the gripper command), so it works on real
recordings as well as on the twin's. The language model is untouched; the result is a complete model directory
to pass to ``fanvla finetune --init``, so SFT and FAN-SFT start from the same weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune.augment import center_windows, normalize_pixels, to_unit_float, training_pixels
from finetune.batches import SampleStream, evaluation_rows
from finetune.config import FinetuneError, scheduled_lr
from finetune.data import SampleTable, TrainingData, load_training_data, store_errors
from finetune.frames import crop_source_size, ensure_frame_file, frame_file, open_frame_file
from robot.gripper import OPEN_THRESHOLD  # below it a gripper command or state is "closed"

log = logging.getLogger(__name__)

TCP_KEY, GRIPPER_COMMAND_KEY, GRIPPER_STATE_KEY = "tcp_pose", "command_gripper", "gripper_state"
TARGET_NAMES = ("tcp_x_mm", "tcp_y_mm", "tcp_z_mm", "to_grasp_x_mm", "to_grasp_y_mm", "to_grasp_z_mm",
                "to_release_x_mm", "to_release_y_mm", "to_release_z_mm", "to_object_x_mm", "to_object_y_mm",
                "to_object_z_mm", "gripper_closed")
POOL_QUERIES = 4  # attention-pooling queries: one can follow the gripper while another finds the object
POOL_DIM = 32


@dataclass(frozen=True)
class PretrainConfig:
    data: tuple[str, ...]
    init: str
    out: str
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    val_fraction: float = 0.1
    seed: int = 0
    threads: int | None = None
    frame_cache: str | None = None
    max_episodes: int | None = None  # only the first N episodes of the stores (as ``fanvla finetune``)


class GeometryHead(nn.Module):
    """Attention pooling over patch embeddings (a few learned queries), then a small MLP to the targets."""

    def __init__(self, dim: int, outputs: int) -> None:
        super().__init__()
        self.scores = nn.Linear(dim, POOL_QUERIES)
        self.values = nn.Linear(dim, POOL_QUERIES * POOL_DIM)
        self.mlp = nn.Sequential(nn.Linear(POOL_QUERIES * POOL_DIM, 128), nn.GELU(), nn.Linear(128, outputs))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        batch, count, _ = patches.shape
        weights = self.scores(patches).softmax(dim=1)  # (B, N, Q): where each query looks
        values = self.values(patches).view(batch, count, POOL_QUERIES, POOL_DIM)
        pooled = torch.einsum("bnq,bnqd->bqd", weights, values).reshape(batch, -1)
        return self.mlp(pooled)


def episode_targets(tcp_pose: np.ndarray, gripper_command: np.ndarray, gripper_state: np.ndarray) -> np.ndarray | None:
    """(T, 13) targets of one episode, or None when it never closes and then reopens the gripper (no grasp and
    release to point at). TCP positions in mm, in the robot base frame.

    ``to_object`` is where the object is relative to the TCP: at the grasp point until the grasp, in the hand
    (zero) while the gripper holds it, at the release point after. Unlike the grasp offset, it tells a gripper
    lifting the object from one coming down to it at the same place (the phase a single frame must show)."""
    closing = np.flatnonzero(gripper_command < OPEN_THRESHOLD)
    if len(closing) == 0:
        return None
    grasp_t = int(closing[0])
    opening = np.flatnonzero(gripper_command[grasp_t:] >= OPEN_THRESHOLD)
    if len(opening) == 0:
        return None
    release_t = grasp_t + int(opening[0])
    xyz = tcp_pose[:, :3].astype(np.float64)
    to_grasp, to_release = xyz[grasp_t] - xyz, xyz[release_t] - xyz
    to_object = np.zeros_like(xyz)
    to_object[:grasp_t] = to_grasp[:grasp_t]
    to_object[release_t:] = to_release[release_t:]
    closed = (gripper_state < OPEN_THRESHOLD).astype(np.float64)[:, None]
    return np.concatenate([xyz, to_grasp, to_release, to_object, closed], axis=1)


def frame_targets(data: TrainingData, table: SampleTable) -> tuple[np.ndarray, np.ndarray]:
    """Targets for every row of ``table`` and a mask of the rows whose episode has a grasp and a release."""
    targets = np.zeros((len(table), len(TARGET_NAMES)), dtype=np.float64)
    valid = np.zeros(len(table), dtype=bool)
    columns, spans = _store_columns(data.store_paths)
    for episode_id in np.unique(table.episode):
        info = data.episodes[int(episode_id)]
        store, span = columns[info.store], spans[info.store][info.index]
        episode = episode_targets(*(store[key][span] for key in (TCP_KEY, GRIPPER_COMMAND_KEY, GRIPPER_STATE_KEY)))
        if episode is None:
            continue
        rows = np.flatnonzero(table.episode == episode_id)
        targets[rows] = episode[table.frame[rows] - span.start]
        valid[rows] = True
    return targets, valid


def _store_columns(paths: list[Path]) -> tuple[list[dict[str, np.ndarray]], list[list[slice]]]:
    """The TCP and gripper columns of each store and its episodes' frame slices."""
    from collect.store import EpisodeStore

    columns, spans = [], []
    for path in paths:
        with store_errors(), EpisodeStore.open(path, mode="r") as store:
            missing = [key for key in (TCP_KEY, GRIPPER_COMMAND_KEY) if key not in store.schema.keys]
            if missing:
                raise FinetuneError(f"{path} lacks {missing}: the vision pretraining targets come from them")
            columns.append({key: np.asarray(store.array(key)[:])
                            for key in (TCP_KEY, GRIPPER_COMMAND_KEY, GRIPPER_STATE_KEY)})
            spans.append([store.episode_slice(i) for i in range(store.num_episodes)])
    return columns, spans


class _Standardiser:
    def __init__(self, targets: np.ndarray) -> None:
        self.mean = targets.mean(axis=0)
        self.std = np.maximum(targets.std(axis=0), 1e-6)

    def encode(self, targets: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((targets - self.mean) / self.std).float()

    def decode(self, values: torch.Tensor) -> np.ndarray:
        return values.detach().double().numpy() * self.std + self.mean


def _lr_at(step: int, config: PretrainConfig) -> float:
    """Warm-up (at most a tenth of the run, so short runs still decay), then cosine decay to zero."""
    return scheduled_lr(config.lr, step, config.steps, max(1, min(config.warmup_steps, config.steps // 10)))


def pretrain_vision(config: PretrainConfig) -> dict:
    """Run the stage; returns the validation errors per target (the same units as the targets)."""
    from policy.openvla import OpenVLA

    if config.steps <= 0 or config.batch_size <= 0:
        raise FinetuneError(f"--steps and --batch-size must be positive, got {config.steps} and {config.batch_size}")
    if config.max_episodes is not None and config.max_episodes < 1:
        raise FinetuneError(f"--max-episodes must be >= 1, got {config.max_episodes}")
    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise FinetuneError(f"{out} is not empty; choose a new directory for the pretrained initialisation")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = OpenVLA.from_pretrained(config.init)
    data = load_training_data(list(config.data), "ee_delta", config.val_fraction, max_episodes=config.max_episodes)
    train_table, val_table = data.train, data.val
    train_targets, train_ok = frame_targets(data, train_table)
    val_targets, val_ok = frame_targets(data, val_table)
    if not train_ok.any():
        raise FinetuneError("no training episode closes and then reopens the gripper: nothing to point the "
                            "grasp and release targets at (are these pick-and-place demonstrations?)")
    size = model.image_settings.image_size
    train_frames, val_frames = _frames(config, data, size)
    train_rows, val_rows = np.flatnonzero(train_ok), np.flatnonzero(val_ok)
    val_rows = val_rows[evaluation_rows(len(val_rows), 2048)]
    scaler = _Standardiser(train_targets[train_rows])
    head = GeometryHead(_projected_dim(model, size), len(TARGET_NAMES))
    trained = [*model.vision_backbone.parameters(), *model.projector.parameters()]
    model.language_model.requires_grad_(False)
    optimizer = torch.optim.AdamW([*trained, *head.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    stream = SampleStream(len(train_rows), config.seed)
    log.info("pretraining the vision towers on %d frames (%d validation) for %d steps of %d", len(train_rows),
             len(val_rows), config.steps, config.batch_size)
    started = time.perf_counter()
    model.train()
    for step in range(config.steps):
        positions = np.arange(step * config.batch_size, (step + 1) * config.batch_size)
        rows = train_rows[stream.rows(positions)]
        pixels = training_pixels(train_frames[rows], positions, config.seed, size, model.image_settings, augment=True)
        predicted = head(model.image_embeddings(pixels)[1])
        loss = nn.functional.mse_loss(predicted, scaler.encode(train_targets[rows]))
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.info("step %d: loss %.4f (%.1f s)", step, loss.item(), time.perf_counter() - started)
    errors = _validation_errors(model, head, scaler, val_frames, val_rows, val_targets, size)
    log.info("validation mean absolute error: %s",
             ", ".join(f"{name} {value:.2f}" for name, value in errors.items()))
    model.language_model.requires_grad_(True)
    model.save_pretrained(out)
    return errors


def _projected_dim(model, size: int) -> int:
    with torch.no_grad():
        probe = torch.zeros(1, 6, size, size)
        return int(model.image_embeddings(probe)[1].shape[-1])


def _frames(config: PretrainConfig, data: TrainingData, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The finetuner's frame cache files (shared with it through ``--frame-cache``)."""
    cache_dir = Path(config.frame_cache) if config.frame_cache else Path(config.out).parent / "frame-cache"
    jobs = ((data.train, crop_source_size(size), False, "train"), (data.val, size, True, "val"))
    arrays = []
    for table, side, crop, split in jobs:
        ensure_frame_file(cache_dir, data.fingerprint["sha256"], data.store_paths, table, side, crop, split,
                          config.threads or 2)
        arrays.append(open_frame_file(frame_file(cache_dir, data.fingerprint["sha256"], table, side, crop, split),
                                      len(table), side))
    return arrays[0], arrays[1]


@torch.no_grad()
def _validation_errors(model, head: GeometryHead, scaler: _Standardiser, frames: np.ndarray, rows: np.ndarray,
                       targets: np.ndarray, size: int) -> dict[str, float]:
    if len(rows) == 0:
        return {}
    model.eval()
    errors = []
    for start in range(0, len(rows), 128):
        chunk = rows[start:start + 128]
        images = frames[chunk]
        if images.shape[1] != size:
            images = center_windows(images, size)
        pixels = normalize_pixels(to_unit_float(images), model.image_settings)
        predicted = scaler.decode(head(model.image_embeddings(pixels)[1]))
        errors.append(np.abs(predicted - targets[chunk]))
    mean = np.concatenate(errors).mean(axis=0)
    return {name: float(value) for name, value in zip(TARGET_NAMES, mean, strict=True)}
