"""Loading and saving openvla-7b-style model directories (safetensors only, no remote code, no pickle).

A directory holds ``config.json``, weights as one ``model.safetensors`` or shards ``model-0000i-of-0000n.safetensors``
with ``model.safetensors.index.json``, tokenizer files, ``dataset_statistics.json`` (falls back to config.json's
``norm_stats``, as in the released openvla-7b) and ``preprocessor_config.json``.

Loading builds the model on the meta device (no memory), checks every checkpoint tensor's name and shape against it
before reading any data, then reads shard by shard and assigns each tensor in place of its meta parameter, so
host memory peaks at about one copy of the weights (plus the tensor being converted). Names are used as they are:
our modules carry upstream's parameter names, no renaming happens.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from policy.config import ConfigError, load_config
from policy.language_model import DEFAULT_ATTN_IMPLEMENTATION, materialize_meta_buffers
from policy.normalization import (
    DATASET_STATISTICS_FILE,
    StatisticsError,
    load_dataset_statistics,
    norm_stats_to_dict,
    parse_norm_stats,
    save_dataset_statistics,
)
from policy.openvla import OpenVLA
from policy.processing import PREPROCESSOR_CONFIG_FILE, ImageSettings

log = logging.getLogger(__name__)

SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LISTED = 8


class CheckpointError(ValueError):
    """A model directory cannot be loaded: the message names the file or tensor and what to check."""


# ------------------------------------------------------------------------------------------------- weights
def weight_map(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    index_path, single_path = model_dir / INDEX_FILE, model_dir / SINGLE_WEIGHTS_FILE
    if index_path.is_file():
        entries = json.loads(index_path.read_text()).get("weight_map")
        if not isinstance(entries, dict) or not entries:
            raise CheckpointError(f"{index_path} has no weight_map")
        files = {name: model_dir / file for name, file in entries.items()}
        absent = sorted({str(path) for path in files.values() if not path.is_file()})
        if absent:
            raise CheckpointError(f"{index_path} lists shards that are missing: {absent}")
        return files
    if single_path.is_file():
        with safe_open(single_path, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), single_path)
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{model_dir} holds only pickle-based weights {pickles}: they can execute code when "
                              f"loaded and are refused; convert them to safetensors on a trusted machine")
    raise CheckpointError(f"{model_dir} has no weights ({SINGLE_WEIGHTS_FILE} or {INDEX_FILE} with shards)")


def checkpoint_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Shapes from the safetensors headers (no tensor data is read)."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, path in files.items():
        by_file[path].append(name)
    shapes = {}
    for path, names in by_file.items():
        with safe_open(path, framework="pt") as handle:
            present = set(handle.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{path.name} does not contain '{name}' although the index says so")
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def tensor_aliases(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], dict[str, list[str]]]:
    """(expected name -> shape, primary name -> other names of the same tensor), e.g. tied embeddings."""
    expected: dict[str, tuple[int, ...]] = {}
    aliases: dict[str, list[str]] = {}
    first_name: dict[int, str] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        primary = first_name.setdefault(id(tensor), name)
        if primary == name:
            expected[name] = tuple(tensor.shape)
            aliases[name] = []
        else:
            aliases[primary].append(name)
    return expected, aliases


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], model_dir: Path) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = [f"{name}: checkpoint {list(found[name])}, model {list(expected[name])}"
                  for name in expected if name in found and found[name] != expected[name]]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensors with mismatched shapes: " + "; ".join(mismatched[:_LISTED]))
    if missing:
        problems.append(f"{len(missing)} tensors missing from the checkpoint: " + ", ".join(missing[:_LISTED]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors in the checkpoint: " + ", ".join(unexpected[:_LISTED]))
    if problems:
        raise CheckpointError(f"{model_dir}: the weights do not fit config.json: " + " | ".join(problems)
                              + " (is config.json from the same model as the safetensors files?)")


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor | nn.Parameter) -> nn.Parameter | torch.Tensor:
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attribute in module._parameters:
        old = module._parameters[attribute]
        if not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=old.requires_grad)
        module._parameters[attribute] = value
    else:
        module._buffers[attribute] = value
    return value


def load_weights(model: nn.Module, model_dir: Path, dtype: torch.dtype, device: torch.device) -> None:
    """Assign every tensor of the checkpoint to the (meta-device) model, one shard at a time."""
    files = weight_map(model_dir)
    expected, aliases = tensor_aliases(model)
    check_tensors(expected, checkpoint_shapes(files), model_dir)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, path in files.items():
        by_file[path].append(name)
    for path in sorted(by_file):
        with safe_open(path, framework="pt") as handle:
            for name in by_file[path]:
                tensor = handle.get_tensor(name)
                target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
                assigned = _set_tensor(model, name, tensor.to(device=device, dtype=target_dtype))
                for alias in aliases[name]:
                    _set_tensor(model, alias, assigned)


# ---------------------------------------------------------------------------------------------------- load
def load_norm_stats(model_dir: Path, config_norm_stats: dict | None) -> dict:
    """dataset_statistics.json (written by finetuning) wins over config.json's norm_stats, as upstream."""
    if (model_dir / DATASET_STATISTICS_FILE).is_file():
        return load_dataset_statistics(model_dir)
    if config_norm_stats:
        return parse_norm_stats(config_norm_stats, f"{model_dir / 'config.json'} norm_stats")
    raise CheckpointError(f"{model_dir} has no normalisation statistics ({DATASET_STATISTICS_FILE} is missing and "
                          f"config.json has no norm_stats): actions cannot be un-normalised. Copy the "
                          f"dataset_statistics.json written by the finetuning run that produced these weights")


def _load_image_settings(model_dir: Path, image_size: int) -> ImageSettings:
    if not (model_dir / PREPROCESSOR_CONFIG_FILE).is_file():
        log.warning("%s has no %s; using the DINOv2/SigLIP defaults at %d px", model_dir, PREPROCESSOR_CONFIG_FILE,
                    image_size)
        return ImageSettings(image_size=image_size)
    settings = ImageSettings.from_directory(model_dir)
    if settings.image_size != image_size:
        raise CheckpointError(f"{model_dir / PREPROCESSOR_CONFIG_FILE} resizes to {settings.image_size} px but the "
                              f"vision towers in config.json take {image_size} px")
    return settings


def has_tokenizer_files(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(model_dir: Path, text_config=None):
    """The directory's Hugging Face tokenizer, or None when it ships no tokenizer files.

    ``text_config`` (the LLM's config) is handed to AutoTokenizer so it does not try to read config.json, whose
    model_type 'openvla' transformers does not know.
    """
    if not has_tokenizer_files(model_dir):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), config=text_config)


def load_openvla(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> OpenVLA:
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a directory")
    try:
        config = load_config(model_dir)
        norm_stats = load_norm_stats(model_dir, config.raw.get("norm_stats"))
    except (ConfigError, StatisticsError) as error:
        raise CheckpointError(str(error)) from None
    device = torch.device(device)
    with torch.device("meta"):
        model = OpenVLA(config, attn_implementation=attn_implementation)
    load_weights(model, model_dir, dtype, device)
    materialize_meta_buffers(model.language_model, device)
    leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftover:
        raise CheckpointError(f"{model_dir}: tensors left without values after loading: {leftover[:_LISTED]}")
    model.norm_stats = norm_stats
    model.image_settings = _load_image_settings(model_dir, config.image_size)
    model.tokenizer = load_tokenizer(model_dir, model.language_model.config)
    model.name_or_path = str(model_dir)
    return model.eval()


# ---------------------------------------------------------------------------------------------------- save
def _shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_weights(model: nn.Module, out_dir: Path, max_shard_bytes: int | None = None) -> list[Path]:
    expected, _ = tensor_aliases(model)
    state = model.state_dict()
    tensors = {name: state[name].detach().to("cpu").contiguous() for name in expected}
    shards = _shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        path = out_dir / SINGLE_WEIGHTS_FILE
        save_file(shards[0], str(path), metadata={"format": "pt"})
        return [path]
    paths, weight_index = [], {}
    for number, shard in enumerate(shards, start=1):
        path = out_dir / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_index.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out_dir / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_index},
                                                 indent=2))
    return paths


def _existing_weights(out_dir: Path) -> list[Path]:
    return sorted([*out_dir.glob("model*.safetensors"), *out_dir.glob(INDEX_FILE)])


def save_openvla(model: OpenVLA, path: str | Path, max_shard_bytes: int | None = None, overwrite: bool = False) -> Path:
    """Write the model in the openvla-7b checkpoint format (see the module docstring)."""
    out_dir = Path(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing_weights(out_dir)
    if existing and not overwrite:
        raise CheckpointError(f"{out_dir} already holds weights ({existing[0].name}...); pass overwrite=True or "
                              f"choose an empty directory")
    for stale in existing:
        stale.unlink()
    save_weights(model, out_dir, max_shard_bytes)
    raw = model.config.to_dict()
    raw["norm_stats"] = norm_stats_to_dict(model.norm_stats) if model.norm_stats else None
    raw["torch_dtype"] = _DTYPE_NAMES.get(model.dtype, str(model.dtype).removeprefix("torch."))
    raw.setdefault("architectures", ["OpenVLAForActionPrediction"])
    (out_dir / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    text = model.config.text_config
    generation = {"bos_token_id": text.get("bos_token_id", 1), "eos_token_id": text.get("eos_token_id", 2),
                  "pad_token_id": model.pad_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (out_dir / PREPROCESSOR_CONFIG_FILE).write_text(json.dumps(model.image_settings.to_preprocessor_config(), indent=2))
    if model.norm_stats:
        save_dataset_statistics(out_dir / DATASET_STATISTICS_FILE, model.norm_stats)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out_dir))
    return out_dir
