"""Image preprocessing for the fused (DINOv2 + SigLIP) backbone, as OpenVLA's ``PrismaticImageProcessor`` does it.

``resize-naive``: the whole image is resized to exactly S x S (aspect ratio not kept) with PIL's bicubic filter,
scaled to [0, 1] in float32 and normalised per backbone: channels 0:3 with the first backbone's mean/std
(ImageNet for DINOv2), channels 3:6 with the second's (0.5/0.5 for SigLIP). Both halves come from the same
resized image, giving a (6, S, S) tensor. This reproduces the official processor bit for bit (see
docs/policy.md).

The optional centre crop keeps the central ``crop_area`` (0.9) fraction of the image area (each side scaled by
sqrt(0.9)) and resizes that region to S x S in the same single bicubic step; upstream applies it at inference
to models trained with random-resized-crop augmentation (scale 0.9).

The settings come from a model directory's ``preprocessor_config.json`` (``ImageSettings``), so tiny models with
another image size work the same way. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PREPROCESSOR_CONFIG_FILE = "preprocessor_config.json"
DEFAULT_CROP_AREA = 0.9
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ImageSettings:
    """How images become ``pixel_values``: size and one (mean, std) pair per backbone.

    Read from preprocessor_config.json, the pairs are ``tvf_normalize_params`` when present, as upstream's
    ``PrismaticImageProcessor`` uses them (its stored values override the ``means``/``stds`` it was built from;
    openvla-7b's were computed under a bf16 default dtype, e.g. DINOv2 mean 0.484375 instead of 0.485), else
    ``means``/``stds``."""

    image_size: int = 224
    means: tuple[tuple[float, float, float], ...] = (IMAGENET_MEAN, SIGLIP_MEAN)
    stds: tuple[tuple[float, float, float], ...] = (IMAGENET_STD, SIGLIP_STD)

    @classmethod
    def from_preprocessor_config(cls, data: dict, source: str = PREPROCESSOR_CONFIG_FILE) -> ImageSettings:
        strategy = data.get("image_resize_strategy", "resize-naive")
        if strategy != "resize-naive":
            raise ValueError(f"{source}: image_resize_strategy '{strategy}' is not supported (only 'resize-naive', "
                             f"the strategy of openvla-7b)")
        interpolations = data.get("interpolations", ["bicubic"])
        if any(mode != "bicubic" for mode in interpolations):
            raise ValueError(f"{source}: interpolations {interpolations} are not supported (only bicubic)")
        sizes = {tuple(size) for size in data["input_sizes"]}
        if len(sizes) != 1 or len(next(iter(sizes))) != 3 or next(iter(sizes))[1] != next(iter(sizes))[2]:
            raise ValueError(f"{source}: input_sizes {data['input_sizes']} must be one square size [3, S, S]")
        means, stds = data["means"], data["stds"]
        normalize = data.get("tvf_normalize_params")
        if normalize:  # upstream's processor normalises with these stored values, not with means/stds
            try:
                stored = [entry["mean"] for entry in normalize], [entry["std"] for entry in normalize]
            except (TypeError, KeyError):
                raise ValueError(f"{source}: tvf_normalize_params must be a list of {{mean, std}} objects") from None
            if not _same_float32((means, stds), stored):  # (float32 copies of means/stds compute the same pixels)
                means, stds = stored
        if len(means) != 2 or len(stds) != 2:
            raise ValueError(f"{source}: expected means/stds for two backbones (fused DINOv2 + SigLIP)")
        return cls(image_size=int(next(iter(sizes))[1]), means=tuple(tuple(float(v) for v in m) for m in means),
                   stds=tuple(tuple(float(v) for v in s) for s in stds))

    @classmethod
    def from_directory(cls, model_dir: str | Path) -> ImageSettings:
        path = Path(model_dir) / PREPROCESSOR_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the model directory must describe its image preprocessing")
        return cls.from_preprocessor_config(json.loads(path.read_text()), str(path))

    def to_preprocessor_config(self) -> dict:
        """The ``PrismaticImageProcessor`` layout that openvla-7b's preprocessor_config.json uses."""
        size = [3, self.image_size, self.image_size]
        return {
            "image_processor_type": "PrismaticImageProcessor",
            "image_resize_strategy": "resize-naive",
            "input_sizes": [size, size],
            "interpolations": ["bicubic", "bicubic"],
            "means": [list(m) for m in self.means],
            "stds": [list(s) for s in self.stds],
            "tvf_crop_params": [{"output_size": size[1:]}, {"output_size": size[1:]}],
            "tvf_do_letterbox": False,
            "tvf_letterbox_fill": None,
            "tvf_normalize_params": [
                {"inplace": False, "mean": [float(np.float32(v)) for v in m], "std": [float(np.float32(v)) for v in s]}
                for m, s in zip(self.means, self.stds, strict=True)
            ],
            "tvf_resize_params": [
                {"antialias": True, "interpolation": 3, "max_size": None, "size": size[1:]} for _ in range(2)
            ],
            "use_fused_vision_backbone": True,
        }


def _same_float32(first, second) -> bool:
    try:
        return bool(np.array_equal(np.asarray(first, dtype=np.float32), np.asarray(second, dtype=np.float32)))
    except ValueError:  # ragged: not the same
        return False


def center_crop_box(height: int, width: int, crop_area: float = DEFAULT_CROP_AREA) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the centred region holding ``crop_area`` of the image area."""
    if not 0.0 < crop_area <= 1.0:
        raise ValueError(f"crop_area must be in (0, 1], got {crop_area}")
    scale = math.sqrt(crop_area)
    crop_w, crop_h = width * scale, height * scale
    left, top = (width - crop_w) / 2.0, (height - crop_h) / 2.0
    return (left, top, left + crop_w, top + crop_h)


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {array.dtype} (convert: np.clip(x, 0, 255).astype(np.uint8))")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"the image is empty: shape {array.shape}")
    return np.ascontiguousarray(array)


def preprocess_image_array(image_uint8_hwc: np.ndarray, settings: ImageSettings = ImageSettings(),
                           center_crop: bool = False, crop_area: float = DEFAULT_CROP_AREA,
                           crop_box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """numpy version of ``preprocess_image``: float32 (6, S, S). ``crop_box`` (left, top, right, bottom in
    pixels) selects an explicit region instead (training-time random crops); it excludes ``center_crop``."""
    array = _check_image(image_uint8_hwc)
    if center_crop and crop_box is not None:
        raise ValueError("pass either center_crop or crop_box, not both")
    if center_crop:
        crop_box = center_crop_box(array.shape[0], array.shape[1], crop_area)
    size = settings.image_size
    resized = Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC, box=crop_box)
    unit = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    halves = []
    for mean, std in zip(settings.means, settings.stds, strict=True):
        normalised = (unit - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
        halves.append(normalised.transpose(2, 0, 1))
    return np.ascontiguousarray(np.concatenate(halves, axis=0))


def preprocess_image(image_uint8_hwc: np.ndarray, image_size: int | None = None, center_crop: bool = False,
                     settings: ImageSettings | None = None, crop_area: float = DEFAULT_CROP_AREA,
                     crop_box: tuple[float, float, float, float] | None = None):
    """uint8 (H, W, 3) RGB -> torch.FloatTensor (6, S, S) for the fused backbone.

    ``settings`` (from the model directory) gives the size and normalisation; ``image_size`` overrides the size
    (default: the settings' size, 224 for openvla-7b).
    """
    import torch

    settings = settings or ImageSettings()
    if image_size is not None and image_size != settings.image_size:
        settings = ImageSettings(image_size=image_size, means=settings.means, stds=settings.stds)
    return torch.from_numpy(preprocess_image_array(image_uint8_hwc, settings, center_crop, crop_area, crop_box))
