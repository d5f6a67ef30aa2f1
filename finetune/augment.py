"""Image augmentation of upstream OpenVLA's recipe, on whole batches in torch (no torchvision), and pixel values.

Upstream (RLDS/dlimp) applies, in this order: a random resized crop of 0.9 of the area (aspect ratio 1), random
brightness (+-0.2, additive), contrast (x0.8..1.2 around each channel's mean), saturation (x0.8..1.2 in HSV) and
hue (+-0.05 of the hue circle), clipping to [0, 1] after each; the model is then run on a centre crop of 0.9 of
the area. Here the crop is an integer S x S window of a frame cached at round(S / sqrt(0.9)) px
(``finetune.frames``), so it needs no resampling; (S / round(S / sqrt 0.9))^2 is 0.9 within 0.1 %.

Every random number of a sample comes from ``numpy.random.default_rng([seed, AUGMENT_STREAM, position])``,
where ``position`` is the sample's place in the run's sample stream: a sample is augmented the same way however
batches are split across processes, workers or resumptions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from policy.processing import ImageSettings

AUGMENT_STREAM = 0xA11
BRIGHTNESS_DELTA = 0.2
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA = 0.05


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters, all shape (B,) (``offsets`` (B, 2): row, column of the crop window)."""

    offsets: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray
    hue: np.ndarray


def sample_params(seed: int, positions: np.ndarray, max_offset: int) -> AugmentParams:
    values = []
    for position in positions:
        rng = np.random.default_rng([seed, AUGMENT_STREAM, int(position)])
        offsets = rng.integers(0, max_offset + 1, size=2)
        values.append((*offsets, rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA), rng.uniform(*CONTRAST_RANGE),
                       rng.uniform(*SATURATION_RANGE), rng.uniform(-HUE_DELTA, HUE_DELTA)))
    table = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    return AugmentParams(offsets=table[:, :2].astype(np.int64), brightness=table[:, 2], contrast=table[:, 3],
                         saturation=table[:, 4], hue=table[:, 5])


def crop_windows(frames: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
    """(B, size, size, 3) windows of uint8 frames (B, C, C, 3) at per-sample (row, column) offsets."""
    return np.stack([frame[r:r + size, c:c + size] for frame, (r, c) in zip(frames, offsets, strict=True)])


def center_windows(frames: np.ndarray, size: int) -> np.ndarray:
    start = (frames.shape[1] - size) // 2
    return np.ascontiguousarray(frames[:, start:start + size, start:start + size])


def to_unit_float(frames_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], exactly as ``policy.processing`` scales."""
    return torch.from_numpy(np.require(frames_uint8, requirements=["C", "W"])).permute(0, 3, 1, 2).float() / 255.0


# ------------------------------------------------------------------------------------------------ colour
def _rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = rgb.unbind(dim=1)
    value, _ = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = chroma.clamp_min(1e-12)
    hue = torch.where(value == r, ((g - b) / safe) % 6.0,
                      torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    return hue, saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # Standard formula: channel k = v - v*s*clamp(min(m, 4 - m), 0, 1) with m = (k + 6h) mod 6, k = 5, 3, 1.
    channels = []
    for k in (5.0, 3.0, 1.0):
        m = (k + hue * 6.0) % 6.0
        channels.append(value - value * saturation * torch.clamp(torch.minimum(m, 4.0 - m), 0.0, 1.0))
    return torch.stack(channels, dim=1)


def color_jitter(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (upstream order), clipping to [0, 1] after each; (B, 3, H, W)."""

    def per_sample(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=images.dtype).view(-1, 1, 1, 1)

    images = (images + per_sample(params.brightness)).clamp(0.0, 1.0)
    mean = images.mean(dim=(2, 3), keepdim=True)
    images = ((images - mean) * per_sample(params.contrast) + mean).clamp(0.0, 1.0)
    hue, saturation, value = _rgb_to_hsv(images)
    saturation = (saturation * per_sample(params.saturation).squeeze(1)).clamp(0.0, 1.0)
    hue = (hue + per_sample(params.hue).squeeze(1)) % 1.0
    return _hsv_to_rgb(hue, saturation, value).clamp(0.0, 1.0)


def normalize_pixels(images: torch.Tensor, settings: ImageSettings) -> torch.Tensor:
    """(B, 3, S, S) in [0, 1] -> pixel_values (B, 6, S, S): one (mean, std) per backbone, as ``preprocess_image``."""
    halves = []
    for mean, std in zip(settings.means, settings.stds, strict=True):
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        halves.append((images - mean_t) / std_t)
    return torch.cat(halves, dim=1)


def training_pixels(frames: np.ndarray, positions: np.ndarray, seed: int, size: int, settings: ImageSettings,
                    augment: bool) -> torch.Tensor:
    """pixel_values for training frames from the cache (crop source size when ``augment``, ``size`` otherwise)."""
    if not augment:
        return normalize_pixels(to_unit_float(frames), settings)
    if frames.shape[1] < size or frames.shape[2] < size:
        raise ValueError(f"cached frames of {frames.shape[1]}x{frames.shape[2]} px cannot give {size} px crops")
    params = sample_params(seed, positions, frames.shape[1] - size)
    images = to_unit_float(crop_windows(frames, params.offsets, size))
    return normalize_pixels(color_jitter(images, params), settings)
