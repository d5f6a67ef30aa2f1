"""Patch features computed once per frame, for runs whose vision towers are frozen and frames not augmented.

With ``--freeze-vision`` and ``--no-augment`` a frame always gives the same output of the vision towers, so the
run computes it once at the start instead of at every step: each step then runs only the projector and the
language model. Training is the same computation (the towers have no dropout or other randomness), only faster:
on the demo's tiny model the towers are about a third of a step's time (docs/finetune.md).

The features are kept in memory as float32; runs whose features would not fit ``memory_limit_bytes`` (a 7B
model's 2176-wide towers on a large recording) fall back to running the frozen towers at every step.
"""

from __future__ import annotations

import numpy as np
import torch

from finetune.augment import center_windows, normalize_pixels, to_unit_float

DEFAULT_MEMORY_LIMIT_BYTES = 4 * 2**30
BATCH = 128


def feature_shape(model, image_size: int) -> tuple[int, int]:
    """(patches, width) of the vision towers' output for one image."""
    with torch.no_grad():
        probe = torch.zeros(1, 6, image_size, image_size, device=model.device, dtype=model.dtype)
        return tuple(model.vision_backbone(probe).shape[1:])


def fits_in_memory(model, image_size: int, num_frames: int,
                   limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES) -> tuple[bool, int]:
    """(whether the features of ``num_frames`` frames fit the limit, their size in bytes)."""
    patches, width = feature_shape(model, image_size)
    size = num_frames * patches * width * 4
    return size <= limit_bytes, size


@torch.no_grad()
def compute_patch_features(model, frames: np.ndarray, image_size: int, batch_size: int = BATCH) -> np.ndarray:
    """(N, patches, width) float32 tower outputs for uint8 frames (N, C, C, 3), as a training step without
    augmentation would compute them (a larger cached frame is centre-cut to ``image_size``, as validation does)."""
    backbone = model.vision_backbone
    backbone_training = backbone.training
    backbone.eval()
    try:
        patches, width = feature_shape(model, image_size)
        features = np.empty((len(frames), patches, width), dtype=np.float32)
        for start in range(0, len(frames), batch_size):
            chunk = np.asarray(frames[start:start + batch_size])
            if chunk.shape[1] != image_size:
                chunk = center_windows(chunk, image_size)
            pixels = normalize_pixels(to_unit_float(chunk), model.image_settings)
            output = backbone(pixels.to(device=model.device, dtype=model.dtype))
            features[start:start + len(chunk)] = output.float().cpu().numpy()
        return features
    finally:
        backbone.train(backbone_training)
