"""``config.json`` of an OpenVLA checkpoint: the upstream fields, parsed and validated.

We keep the upstream layout (``timm_model_ids``, ``image_sizes``, ``text_config``, ``pad_to_multiple_of``,
``n_action_bins``, ``norm_stats`` ...) so our checkpoints are openvla-7b-shaped. Tower sizes come from the
known timm ids (``policy.vit.KNOWN_VIT_SPECS``) with optional per-id overrides: ``vit_overrides`` (written by
``policy.tiny``: embed_dim, depth, num_heads, patch_size, img_size ...) or the fixture's
``fixture_timm_overrides``. ``text_config`` is a diff against the transformers 4.40.1 ``LlamaConfig``
defaults (that is how upstream saved it), so those defaults are filled in explicitly here instead of trusting
whatever today's transformers defaults are.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from policy.vit import KNOWN_VIT_SPECS, ViTSpec

CONFIG_FILE = "config.json"
OVERRIDE_KEYS = ("vit_overrides", "fixture_timm_overrides")

# transformers 4.40.1 LlamaConfig defaults (openvla-7b's text_config only stores the fields that differ).
LLAMA_4_40_DEFAULTS: dict = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02,
    "rms_norm_eps": 1e-6, "pretraining_tp": 1, "tie_word_embeddings": False, "rope_theta": 10000.0,
    "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
    "bos_token_id": 1, "eos_token_id": 2,
}


class ConfigError(ValueError):
    """config.json is missing, malformed or describes something this implementation does not support."""


@dataclass(frozen=True)
class OpenVLAConfig:
    """Parsed config.json; ``raw`` keeps every field so ``to_dict`` writes back what was read."""

    raw: dict
    featurizer: ViTSpec
    fused_featurizer: ViTSpec
    text_config: dict

    @property
    def pad_to_multiple_of(self) -> int:
        return int(self.raw.get("pad_to_multiple_of", 64))

    @property
    def n_action_bins(self) -> int:
        return int(self.raw.get("n_action_bins", 256))

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding / lm_head (32064 for openvla-7b)."""
        return int(self.text_config["vocab_size"])

    @property
    def vocab_end(self) -> int:
        """End of the tokenizer's vocabulary, where the action ids stop (upstream: vocab_size - pad_to_multiple_of)."""
        return self.vocab_size - self.pad_to_multiple_of

    @property
    def image_size(self) -> int:
        return self.featurizer.img_size

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)


def _tower_spec(timm_id: str, overrides: dict, image_size: int | None) -> ViTSpec:
    if timm_id not in KNOWN_VIT_SPECS:
        raise ConfigError(f"unsupported vision tower '{timm_id}'; supported timm ids: {sorted(KNOWN_VIT_SPECS)}")
    spec = KNOWN_VIT_SPECS[timm_id]
    fields = dict(overrides.get(timm_id, {}))
    if image_size is not None:
        fields.setdefault("img_size", image_size)
    try:
        return spec.with_overrides(fields)
    except ValueError as error:
        raise ConfigError(f"config.json: tower '{timm_id}': {error}") from None


def full_text_config(text_config: dict) -> dict:
    """The text_config with every Llama field explicit (4.40.1 defaults for the ones upstream did not store)."""
    if "model_type" not in text_config:
        raise ConfigError("config.json: text_config has no model_type")
    full = dict(text_config)
    full.pop("torch_dtype", None)  # the load dtype is chosen by the caller
    full.pop("dtype", None)
    if full["model_type"] == "llama":
        full = {**LLAMA_4_40_DEFAULTS, **full}
        full.setdefault("num_key_value_heads", full["num_attention_heads"])
    return full


def parse_config(raw: dict, source: str = CONFIG_FILE) -> OpenVLAConfig:
    for key in ("timm_model_ids", "text_config"):
        if key not in raw:
            raise ConfigError(f"{source}: missing '{key}' (is this an OpenVLA checkpoint?)")
    if not raw.get("use_fused_vision_backbone", True) or len(raw["timm_model_ids"]) != 2:
        raise ConfigError(f"{source}: only the fused two-tower backbone (dinosiglip, as in openvla-7b) is supported; "
                          f"timm_model_ids = {raw['timm_model_ids']}")
    if raw.get("arch_specifier", "no-align+fused-gelu-mlp") != "no-align+fused-gelu-mlp":
        raise ConfigError(f"{source}: arch_specifier '{raw['arch_specifier']}' is not supported "
                          f"(only 'no-align+fused-gelu-mlp')")
    overrides: dict = {}
    for key in OVERRIDE_KEYS:
        overrides.update(raw.get(key) or {})
    sizes = raw.get("image_sizes") or [None, None]
    towers = [_tower_spec(timm_id, overrides, size) for timm_id, size in zip(raw["timm_model_ids"], sizes, strict=True)]
    config = OpenVLAConfig(raw=copy.deepcopy(raw), featurizer=towers[0], fused_featurizer=towers[1],
                           text_config=full_text_config(raw["text_config"]))
    if "fanvla_oft" in raw:  # OpenVLA-OFT settings (policy/oft.py), checked here with everything else
        from policy.oft import OFTSettings

        try:
            OFTSettings.from_dict(raw["fanvla_oft"])
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    if config.vocab_end < config.n_action_bins:
        raise ConfigError(f"{source}: vocab_size {config.vocab_size} - pad_to_multiple_of {config.pad_to_multiple_of} "
                          f"leaves no room for {config.n_action_bins} action tokens")
    return config


def load_config(model_dir: str | Path) -> OpenVLAConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: not a model directory (expected config.json, safetensors, "
                          f"tokenizer files, dataset_statistics.json, preprocessor_config.json)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    return parse_config(raw, str(path))
