"""A random-weight model directory at full size, written without holding the model in memory.

``fanvla policy init-random --preset openvla-7b --dtype bf16 --out DIR`` writes what the released openvla-7b
looks like (config.json with the exact 7B geometry, bf16 weights in three shards of at most 7 GB as upstream's
converter wrote them, the Llama-2 tokenizer, preprocessor and generation configs) but with random weights and
placeholder statistics: the full-size path (load, predict, LoRA step, merge, export) can then be exercised on any
machine without a download (``bench/scale_7b.py``).

Each tensor is generated when the writer reaches it (``policy.safetensors_io.write_file``) from a generator seeded by
the seed and the tensor's name, so memory stays at one tensor and the same seed gives the same bytes. Rules, as
the models' own initialisers: biases 0, normalisation weights 1, DINOv2 LayerScale 1e-5 (timm's ``init_values``),
everything else N(0, 0.02) (Llama's ``initializer_range``, timm's trunc-normal std).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from torch import nn

from policy.checkpoint import CheckpointError, write_weights
from policy.config import parse_config
from policy.interop import copy_tokenizer_files, with_model_auto_map, write_processor_files
from policy.normalization import DATASET_STATISTICS_FILE, save_dataset_statistics
from policy.openvla import OpenVLA
from policy.processing import ImageSettings
from policy.safetensors_io import TensorSpec
from policy.tiny import untrained_norm_stats
from policy.vit import LayerScale

# upstream's converter: save_pretrained(max_shard_size="7GB") -> 3 shards for openvla-7b's 15.08 GB.
UPSTREAM_7B_SHARD_BYTES = 7 * 10**9
INIT_STD = 0.02
LAYER_SCALE_INIT = 1e-5
STAMP_FILE = "random_init.json"  # what was generated (preset, seed, dtype): tools may reuse a directory by it


def openvla_7b_config() -> dict:
    """config.json of openvla-7b as upstream's converter wrote it (prism-dinosiglip-224px+7b; Llama-2 fields other
    than these are the transformers 4.40.1 defaults, policy.config.LLAMA_4_40_DEFAULTS)."""
    return {
        "arch_specifier": "no-align+fused-gelu-mlp",
        "architectures": ["OpenVLAForActionPrediction"],
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "image_resize_strategy": "resize-naive",
        "image_sizes": [224, 224],
        "llm_backbone_id": "llama2-7b-pure",
        "llm_max_length": 2048,
        "model_type": "openvla",
        "n_action_bins": 256,
        "norm_stats": None,
        "output_projector_states": False,
        "pad_to_multiple_of": 64,
        "pad_token_id": 32000,
        "text_config": {"model_type": "llama", "pad_token_id": 32000, "torch_dtype": "bfloat16", "vocab_size": 32064},
        "timm_model_ids": ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        "timm_override_act_layers": [None, None],
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_fused_vision_backbone": True,
        "vision_backbone_id": "dinosiglip-vit-so-224px",
    }


PRESETS = {"openvla-7b": openvla_7b_config}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _init_rule(model: nn.Module, name: str) -> str:
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attribute == "bias":
        return "zeros"
    if _is_norm(module):
        return "ones"
    if isinstance(module, LayerScale):
        return "layer_scale"
    return "normal"


def _random_tensor(spec: TensorSpec, rule: str, seed: int) -> torch.Tensor:
    if rule == "zeros":
        return torch.zeros(spec.shape, dtype=spec.dtype)
    if rule == "ones":
        return torch.ones(spec.shape, dtype=spec.dtype)
    if rule == "layer_scale":
        return torch.full(spec.shape, LAYER_SCALE_INIT, dtype=spec.dtype)
    generator = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(spec.name.encode()))
    return torch.empty(spec.shape).normal_(0.0, INIT_STD, generator=generator).to(spec.dtype)


def write_random_checkpoint(out_dir: str | Path, config: dict, dtype: torch.dtype, seed: int = 0,
                            tokenizer_dir: Path | None = None, max_shard_bytes: int = UPSTREAM_7B_SHARD_BYTES,
                            preset: str = "custom") -> Path:
    """Write a random-weight model directory for ``config`` (see the module docstring); ``tokenizer_dir``'s files
    are copied byte for byte. The directory must be new or empty."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new directory (nothing was written)")
    out.mkdir(parents=True, exist_ok=True)
    parsed = parse_config(config, source=f"preset '{preset}'")
    with torch.device("meta"):
        model = OpenVLA(parsed)
    state = model.state_dict()
    specs = [TensorSpec(name, dtype if tensor.is_floating_point() else tensor.dtype, tuple(tensor.shape))
             for name, tensor in state.items()]
    rules = {spec.name: _init_rule(model, spec.name) for spec in specs}
    write_weights(specs, lambda spec: _random_tensor(spec, rules[spec.name], seed), out, max_shard_bytes)
    raw = {**config, "torch_dtype": str(dtype).removeprefix("torch.")}
    (out / "config.json").write_text(json.dumps(with_model_auto_map(raw), indent=2, sort_keys=True))
    generation = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": parsed.vocab_end}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    write_processor_files(out, ImageSettings(image_size=parsed.image_size).to_preprocessor_config(), None)
    save_dataset_statistics(out / DATASET_STATISTICS_FILE, untrained_norm_stats())
    if tokenizer_dir is not None:
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise CheckpointError(f"{tokenizer_dir} has no tokenizer.json to copy")
        copy_tokenizer_files(tokenizer_dir, out)
    stamp = {"preset": preset, "seed": seed, "dtype": str(dtype).removeprefix("torch."),
             "parameters": sum(t.numel() for t in state.values())}
    (out / STAMP_FILE).write_text(json.dumps(stamp, indent=2))
    return out
