"""Tiny, randomly initialised OpenVLA models for CPU work, written in the exact checkpoint format of openvla-7b.

Same classes as the real model (DINOv2-style + SigLIP-style towers, fused-gelu-mlp projector, Llama), only
smaller: the image size, patch size, tower widths/depths/heads and the Llama shape come from a ``TinyPreset``
and are recorded in config.json (``image_sizes`` and ``vit_overrides``), so every downstream tool loads a tiny
model with ``OpenVLA.from_pretrained`` like the 7B one.

Presets: ``test`` (builds in about a second, for tests of other packages) and ``demo`` (sized to learn a simulated
pick-and-place on 2 CPU cores; the lead tunes it), and their OpenVLA-OFT variants ``test-oft`` and ``demo-oft``
(the same sizes, a chunk of 8 actions decoded in parallel and the proprio token: policy/oft.py; ``num_images=2``
adds the wrist camera). Any field can be overridden (``overrides={"image_size": 128}`` or ``fanvla policy init-tiny
--set image_size=128``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from policy.normalization import ActionStats, DatasetStatistics, parse_norm_stats

PRESET_KEY = "fanvla_tiny_preset"
DINO_ID = "vit_large_patch14_reg4_dinov2.lvd142m"
SIGLIP_ID = "vit_so400m_patch14_siglip_224"
UNTRAINED_STATS_KEY = "untrained"
POS_EMBED_INITS = ("sincos", "random")


@dataclass(frozen=True)
class TinyPreset:
    image_size: int
    patch_size: int
    dino_width: int
    dino_depth: int
    dino_heads: int
    siglip_width: int
    siglip_depth: int
    siglip_heads: int
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_intermediate: int
    max_text_pieces: int = 512
    layer_scale_init: float = 0.1  # DINOv2 uses 1e-5 when pretraining; a from-scratch tiny model learns faster
    # "sincos": position embeddings start as a fixed 2-D sine-cosine grid (MAE), so patch tokens know where
    # they are from the first step; "random": small random values, as timm initialises them.
    pos_embed_init: str = "sincos"
    # OpenVLA-OFT (policy/oft.py): actions per chunk (0 = plain OpenVLA), the proprio token, images per observation.
    chunk_size: int = 0
    use_proprio: bool = False
    num_images: int = 1

    def __post_init__(self) -> None:
        if self.pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init must be one of {POS_EMBED_INITS}, got '{self.pos_embed_init}'")
        if self.chunk_size == 0 and (self.use_proprio or self.num_images != 1):
            raise ValueError("use_proprio and num_images need an OpenVLA-OFT preset (chunk_size >= 1)")

    def oft_settings(self):
        """The ``OFTSettings`` of an OFT preset, None for a plain OpenVLA one."""
        from policy.oft import OFTSettings

        if self.chunk_size == 0:
            return None
        return OFTSettings(chunk_size=self.chunk_size, num_images=self.num_images, use_proprio=self.use_proprio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, TinyPreset] = {
    # 56 px / patch 14 = 16 patches; depth 3 so the feature block (depth-2) is neither the first nor the last.
    "test": TinyPreset(image_size=56, patch_size=14, dino_width=32, dino_depth=3, dino_heads=2, siglip_width=32,
                       siglip_depth=3, siglip_heads=2, llm_hidden=64, llm_layers=2, llm_heads=4,
                       llm_intermediate=128),
    # 112 px / patch 14 = 64 patches.
    "demo": TinyPreset(image_size=112, patch_size=14, dino_width=64, dino_depth=4, dino_heads=4, siglip_width=64,
                       siglip_depth=4, siglip_heads=4, llm_hidden=128, llm_layers=3, llm_heads=4,
                       llm_intermediate=344),
}
# OpenVLA-OFT variants: the same model sizes, K = 8 actions decoded in parallel, with the proprio token.
PRESETS.update({f"{name}-oft": replace(PRESETS[name], chunk_size=8, use_proprio=True) for name in ("test", "demo")})


def resolve_preset(name: str, overrides: dict | None = None) -> TinyPreset:
    """The named preset with fields replaced; string values (from the CLI) are converted to the field type."""
    if name not in PRESETS:
        raise ValueError(f"unknown tiny preset '{name}'; available: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if not overrides:
        return preset
    types = {field.name: type(getattr(preset, field.name)) for field in fields(preset)}
    unknown = sorted(set(overrides) - set(types))
    if unknown:
        raise ValueError(f"unknown preset fields {unknown}; known: {sorted(types)}")
    try:
        converted = {key: _convert(types[key], value) for key, value in overrides.items()}
    except ValueError as error:
        raise ValueError(f"bad preset override {overrides}: {error}") from None
    return replace(preset, **converted)


def _convert(kind: type, value):
    """A CLI string (or a value) as the field's type; booleans accept true/false/1/0/yes/no."""
    if kind is bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{value!r} is not a boolean (true/false)")
        return lowered in ("true", "1", "yes")
    return kind(value)


def tiny_config_dict(preset: TinyPreset, vocab_end: int, preset_name: str) -> dict:
    """config.json content: openvla-7b's fields, with the sizes of this preset (and its OFT block, if any)."""
    settings = preset.oft_settings()
    config = _openvla_config_dict(preset, vocab_end, preset_name)
    if settings is not None:
        config["fanvla_oft"] = settings.to_dict()
    return config


def _openvla_config_dict(preset: TinyPreset, vocab_end: int, preset_name: str) -> dict:
    pad_multiple = 64
    vit = {"img_size": preset.image_size, "patch_size": preset.patch_size}
    return {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "image_resize_strategy": "resize-naive",
        "image_sizes": [preset.image_size, preset.image_size],
        "llm_backbone_id": "llama-tiny",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": None,
        "output_projector_states": False,
        "pad_to_multiple_of": pad_multiple,
        "pad_token_id": vocab_end,
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_end + pad_multiple, "pad_token_id": vocab_end,
            "hidden_size": preset.llm_hidden, "intermediate_size": preset.llm_intermediate,
            "num_hidden_layers": preset.llm_layers, "num_attention_heads": preset.llm_heads,
            "num_key_value_heads": preset.llm_heads, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
        },
        "timm_model_ids": [DINO_ID, SIGLIP_ID],
        "timm_override_act_layers": [None, None],
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-tiny",
        "vit_overrides": {
            DINO_ID: {**vit, "embed_dim": preset.dino_width, "depth": preset.dino_depth,
                      "num_heads": preset.dino_heads},
            SIGLIP_ID: {**vit, "embed_dim": preset.siglip_width, "depth": preset.siglip_depth,
                        "num_heads": preset.siglip_heads},
        },
        PRESET_KEY: {"name": preset_name, **asdict(preset)},
    }


def untrained_norm_stats(action_dim: int = 7) -> dict[str, DatasetStatistics]:
    """Placeholder statistics (identity on [-1, 1], last dimension = absolute gripper) for a model not yet trained;
    finetuning replaces them with the statistics of its data."""
    low, high = -np.ones(action_dim), np.ones(action_dim)
    mask = np.array([True] * (action_dim - 1) + [False])
    stats = ActionStats(q01=low, q99=high, mask=mask, mean=np.zeros(action_dim), std=np.ones(action_dim),
                        min=low, max=high)
    return {UNTRAINED_STATS_KEY: DatasetStatistics(action=stats)}


def _as_statistics(norm_stats: dict) -> dict[str, DatasetStatistics]:
    """Typed statistics, or the dataset_statistics.json layout ({key: {"action": {...}, ...}}) parsed."""
    if all(isinstance(entry, DatasetStatistics) for entry in norm_stats.values()):
        return dict(norm_stats)
    return parse_norm_stats(norm_stats, "norm_stats")


def sincos_position_grid(grid: int, dim: int) -> np.ndarray:
    """(grid*grid, dim) 2-D sine-cosine position embedding in raster order: half the channels encode the row,
    half the column, each as sines and cosines of geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"a sine-cosine position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / 10000.0 ** (np.arange(quarter) / quarter)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows.reshape(-1), cols.reshape(-1)):
        angles = coordinate[:, None] * frequencies[None, :]
        parts += [np.sin(angles), np.cos(angles)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def _init_vision_weights(module, layer_scale_init: float, pos_embed_init: str) -> None:
    import torch
    from torch import nn

    from policy.vit import AttentionPoolLatent, LayerScale, VisionTransformer

    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Conv2d):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            nn.init.zeros_(sub.bias)
        elif isinstance(sub, LayerScale):
            nn.init.constant_(sub.scale_factor, layer_scale_init)
        elif isinstance(sub, VisionTransformer):
            if pos_embed_init == "sincos":  # the values are checked by TinyPreset
                grid = sincos_position_grid(sub.spec.grid_size, sub.spec.embed_dim)
                sub.pos_embed.copy_(torch.from_numpy(grid)[None])
            else:
                nn.init.trunc_normal_(sub.pos_embed, std=0.02)
            for name in ("cls_token", "reg_token"):
                if hasattr(sub, name):
                    nn.init.normal_(getattr(sub, name), std=0.02)
        elif isinstance(sub, AttentionPoolLatent):
            nn.init.trunc_normal_(sub.latent, std=sub.latent.shape[-1] ** -0.5)


def build_tiny_model(preset: str | TinyPreset = "test", seed: int = 0, instructions: Iterable[str] | None = None,
                     norm_stats: dict | None = None, overrides: dict | None = None):
    """A random-initialised tiny ``OpenVLA`` in memory (tokenizer, statistics and image settings attached).

    ``norm_stats``: ``{key: DatasetStatistics}`` or the same in dataset_statistics.json layout; default: the
    placeholder ``untrained`` entry.
    """
    import torch

    from policy.config import parse_config
    from policy.oft import build_openvla
    from policy.tiny_tokenizer import train_tiny_tokenizer

    name = preset if isinstance(preset, str) else "custom"
    spec = resolve_preset(preset, overrides) if isinstance(preset, str) else replace(preset, **(overrides or {}))
    tokenizer, vocab_end = train_tiny_tokenizer(instructions, spec.max_text_pieces)
    config = parse_config(tiny_config_dict(spec, vocab_end, name), source=f"tiny preset '{name}'")
    torch.manual_seed(seed)
    model = build_openvla(config)
    with torch.no_grad():
        _init_vision_weights(model.vision_backbone, spec.layer_scale_init, spec.pos_embed_init)
        for linear in (model.projector.fc1, model.projector.fc2, model.projector.fc3):
            torch.nn.init.normal_(linear.weight, std=1.0 / math.sqrt(linear.in_features))
            torch.nn.init.zeros_(linear.bias)
    model.tokenizer = tokenizer
    model.norm_stats = _as_statistics(norm_stats) if norm_stats else untrained_norm_stats()
    return model.eval()


def build_tiny(out_dir: str | Path, preset: str | TinyPreset = "test", seed: int = 0,
               instructions: Iterable[str] | None = None, norm_stats: dict | None = None,
               overrides: dict | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write a random-initialised tiny model directory (openvla-7b checkpoint format) and return its path."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory (nothing was written)")
    model = build_tiny_model(preset, seed, instructions, norm_stats, overrides)
    return model.save_pretrained(out, max_shard_bytes=max_shard_bytes)
