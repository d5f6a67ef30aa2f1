"""The model side of a run: load the initial model in its precision (after a memory pre-flight), check it fits the
data, make it trainable (LoRA or full, optional activation recomputation), and export the final self-contained
policy directory (merged weights, adapter, statistics, fanvla.json)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetune.config import FinetuneError, TrainConfig
from finetune.data import TrainingData
from policy.action_space import ACTION_DIM
from policy.model_info import FANVLA_FILE
from policy.openvla import OpenVLA
from policy.precision import Precision
from policy.prompt import encode_prompt

log = logging.getLogger(__name__)

ADAPTER_DIR = "lora_adapter"
FANVLA_FORMAT = 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FinetuneError(f"--device {name}: CUDA is not available (torch build or machine); use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


def training_precision(config: TrainConfig, device: torch.device) -> tuple[Precision, torch.dtype]:
    """(how --init is held for training, the dtype the export is written in). LoRA keeps the frozen base in
    --dtype (bf16 weights are computed in float32 on a device without bf16 arithmetic, policy.precision); full
    finetuning keeps float32 master weights, because AdamW's small updates vanish when rounded to bf16's 8-bit
    mantissa, and exports in --dtype."""
    from policy.precision import PrecisionError, resolve_precision

    try:
        resolved = resolve_precision(config.dtype, config.init, device)
    except PrecisionError as error:
        raise FinetuneError(str(error)) from None
    held = Precision(torch.float32, torch.float32) if config.full else resolved
    return held, resolved.weights


def training_reserve_bytes(config: TrainConfig, model: OpenVLA, text_tokens: int = 48) -> int:
    """An estimate of the memory a run needs beside the frozen weights: trainable parameters with their gradients
    and AdamW moments (16 bytes each in float32) and activations of one micro-batch (the input of every layer when
    activations are recomputed, every layer's intermediates when not). ``model`` may be on the meta device."""
    if config.full:
        trainable = sum(p.numel() for p in model.parameters())
    else:
        modules = dict(model.named_modules())
        targets = list(config.lora_targets) if config.lora_targets else model.lora_target_modules()
        trainable = sum(config.lora_rank * (modules[name].in_features + modules[name].out_features)
                        for name in targets if isinstance(modules.get(name), nn.Linear))
    text = model.language_model.config.get_text_config()
    sequence = model.vision_backbone.num_patches + text_tokens
    tokens = config.batch_size * sequence
    per_layer = tokens * (16 * text.hidden_size + 3 * text.intermediate_size) * 4
    layers = text.num_hidden_layers
    activations = tokens * text.hidden_size * 4 * layers + per_layer if config.gradient_checkpointing \
        else per_layer * layers
    return 16 * trainable + activations


def load_initial_model(config: TrainConfig, device: torch.device, precision: Precision,
                       for_training: bool = True) -> OpenVLA:
    """--init in ``precision``; the memory pre-flight counts what training needs beside the weights
    (``training_reserve_bytes``), or only the adapters when the model is loaded to export a finished run."""
    from policy.checkpoint import CheckpointError
    from policy.config import ConfigError, load_config

    path = Path(config.init)
    if not path.is_dir():
        raise FinetuneError(f"--init {path}: not a directory; give a model directory (openvla-7b layout, or one made "
                            f"by `fanvla policy init-tiny`)")
    try:
        from policy.oft import build_openvla

        with torch.device("meta"):
            skeleton = build_openvla(load_config(path))
        reserve = training_reserve_bytes(config, skeleton) if for_training \
            else training_reserve_bytes(config.replace(batch_size=0), skeleton) // 4
        return OpenVLA.from_pretrained(path, dtype=precision, device=device, reserve_bytes=reserve)
    except (CheckpointError, ConfigError) as error:
        raise FinetuneError(f"--init {path}: {error}") from None


def model_action_dims(model: OpenVLA) -> dict[str, int]:
    return {key: entry.action.dim for key, entry in model.norm_stats.items()}


def check_model_fits(model: OpenVLA, data: TrainingData, init: str) -> None:
    """Refuse, before training, a model that cannot learn these actions or read these instructions."""
    if model.tokenizer is None:
        raise FinetuneError(f"--init {init} has no tokenizer files (tokenizer.json / tokenizer_config.json); the "
                            f"instructions cannot be encoded. Use a model directory that ships its tokenizer")
    dims = model_action_dims(model)
    wrong = {key: dim for key, dim in dims.items() if dim != ACTION_DIM}
    if wrong:
        found = "/".join(str(dim) for dim in sorted(set(wrong.values())))
        raise FinetuneError(f"action dimension mismatch: --init {init} was trained for {found}-D "
                            f"actions (statistics {sorted(wrong)}), the {data.spec.name.value} action space of the "
                            f"data has {ACTION_DIM} (6 motion + gripper). Start from a model made for 7-D actions")
    unk = getattr(model.tokenizer, "unk_token_id", None)
    for instruction in data.instructions:
        ids = encode_prompt(model.tokenizer, instruction)
        if unk is not None and unk in ids:
            raise FinetuneError(f"the tokenizer of --init {init} cannot encode the instruction {instruction!r} (it "
                                f"produces <unk>); use plain ASCII or a model whose tokenizer knows the characters")


def make_trainable(model: OpenVLA, config: TrainConfig) -> nn.Module:
    """Full finetuning (every parameter) or peft LoRA on ``model.lora_target_modules()`` (every Linear but lm_head);
    with ``freeze_vision`` the vision towers take no part in either. LoRA adapters are float32 whatever the base's
    dtype (peft's ``autocast_adapter_dtype``), as upstream trains them under bf16 autocast."""
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.full:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        if config.freeze_vision:
            model.vision_backbone.requires_grad_(False)
        return model
    from peft import LoraConfig, get_peft_model

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    targets = list(config.lora_targets) if config.lora_targets else model.lora_target_modules()
    if config.freeze_vision:
        targets = [name for name in targets if not name.startswith("vision_backbone.")]
    # New modules (OpenVLA-OFT's proprio projector) have nothing to adapt: they are trained in full.
    in_full = [name for name in getattr(model, "trained_in_full", list)() if name not in targets]
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.effective_lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, init_lora_weights="gaussian", modules_to_save=in_full or None)
    try:
        return get_peft_model(model, lora, autocast_adapter_dtype=True)
    except ValueError as error:
        raise FinetuneError(f"LoRA could not be attached ({error}); check --lora-targets against the model's Linear "
                            f"layers") from None


def trainable_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}


def describe_parameters(module: nn.Module) -> str:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in trainable_parameters(module).values())
    return f"{trainable:,} trainable of {total:,} parameters ({100.0 * trainable / max(total, 1):.1f} %)"


def export_final(module: nn.Module, config: TrainConfig, data: TrainingData, unnorm_key: str, final_dir: Path,
                 record: dict[str, Any], save_dtype: torch.dtype) -> tuple[Path, OpenVLA]:
    """Write the policy directory: merged weights in ``save_dtype`` + adapter (LoRA), statistics, tokenizer,
    fanvla.json (last).

    Returns the directory and the merged model. The directory is built under a temporary name and renamed into
    place, so ``final_dir`` is complete or absent. Consumes ``module``: LoRA is merged into the base weights in
    place (peft adds each layer's B @ A to its weight, one layer at a time), and the weights are written one tensor
    at a time, so no second copy of the model exists.
    """
    from policy.deployment import weights_fingerprint

    temp = final_dir.with_name(f".{final_dir.name}.writing")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    if config.full:
        model = module
    else:
        module.save_pretrained(str(temp / ADAPTER_DIR), save_embedding_layers=False)
        model = module.merge_and_unload()
    model.norm_stats = {unnorm_key: data.dataset_statistics()}
    model.save_pretrained(temp, dtype=save_dtype)
    weights, method = weights_fingerprint(temp)
    document = {
        "format": FANVLA_FORMAT,
        "action_space": data.spec.describe(),
        "unnorm_key": unnorm_key,
        "center_crop": bool(config.augment),
        "image_size": model.image_settings.image_size,
        "method": config.method,
        "alpha": config.alpha if config.method == "fan-sft" else None,
        "epsilon": config.epsilon if config.method == "label-smoothing" else None,
        "finetuning": "full" if config.full else {"lora_rank": config.lora_rank,
                                                  "lora_alpha": config.effective_lora_alpha,
                                                  "merged": True, "adapter": ADAPTER_DIR},
        "training_config": config.to_dict(),
        "data": data.fingerprint,
        "fingerprints": {"weights": weights, "weights_method": method, "data": f"sha256:{data.fingerprint['sha256']}",
                         "init": record.pop("init_fingerprint", None)},
        **record,
    }
    (temp / FANVLA_FILE).write_text(json.dumps(document, indent=2, default=_json_default))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    temp.rename(final_dir)
    return final_dir, model


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
