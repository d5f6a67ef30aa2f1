"""A summary of a model directory read from its files only (config, safetensors headers, statistics): no weights
are loaded, so ``fanvla policy info`` is instant even for the 7B checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

from policy.checkpoint import CheckpointError, checkpoint_shapes, has_tokenizer_files, load_norm_stats, weight_map
from policy.config import ConfigError, load_config
from policy.normalization import StatisticsError
from policy.vit import ViTSpec

FANVLA_FILE = "fanvla.json"


def _tower(spec: ViTSpec) -> dict:
    return {"embed_dim": spec.embed_dim, "depth": spec.depth, "num_heads": spec.num_heads,
            "patch_size": spec.patch_size, "img_size": spec.img_size, "num_patches": spec.num_patches,
            "prefix_tokens": spec.num_prefix_tokens, "layer_scale": spec.layer_scale,
            "feature_block": spec.depth - 2}


def describe_model_dir(model_dir: str | Path) -> dict:
    directory = Path(model_dir)
    try:
        config = load_config(directory)
        stats = load_norm_stats(directory, config.raw.get("norm_stats"))
    except (ConfigError, StatisticsError) as error:
        raise CheckpointError(str(error)) from None
    shapes = checkpoint_shapes(weight_map(directory))
    text = config.text_config
    vision_dim = config.featurizer.embed_dim + config.fused_featurizer.embed_dim
    info = {
        "directory": str(directory),
        "vision": {"featurizer": _tower(config.featurizer), "fused_featurizer": _tower(config.fused_featurizer)},
        "projector": [vision_dim, 4 * vision_dim, text.get("hidden_size"), text.get("hidden_size")],
        "language_model": {key: text.get(key) for key in ("model_type", "hidden_size", "num_hidden_layers",
                                                           "num_attention_heads", "intermediate_size", "vocab_size")},
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
        "tensors": len(shapes),
        "action_tokens": [config.vocab_end - config.n_action_bins, config.vocab_end - 1],
        "tokenizer": has_tokenizer_files(directory),
        "norm_stats": {key: {"action_dim": entry.action.dim, "mask": entry.action.mask.tolist(),
                             "q01": entry.action.q01.tolist(), "q99": entry.action.q99.tolist(),
                             "num_transitions": entry.num_transitions, "num_trajectories": entry.num_trajectories}
                       for key, entry in stats.items()},
        "tiny_preset": config.raw.get("fanvla_tiny_preset", {}).get("name"),
        "oft": config.raw.get("fanvla_oft"),  # OpenVLA-OFT settings (policy/oft.py); None: single actions
    }
    fanvla_file = directory / FANVLA_FILE
    if fanvla_file.is_file():
        info["action_space"] = json.loads(fanvla_file.read_text()).get("action_space")
    return info
