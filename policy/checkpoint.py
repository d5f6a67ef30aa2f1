"""Loading and saving openvla-7b-style model directories (safetensors only, no remote code, no pickle).

A directory holds ``config.json``, weights as one ``model.safetensors`` or shards ``model-0000i-of-0000n.safetensors``
with ``model.safetensors.index.json``, tokenizer files, ``dataset_statistics.json`` (falls back to config.json's
``norm_stats``, as in the released openvla-7b), ``preprocessor_config.json`` and ``processor_config.json``.

Loading checks that the weights fit the device's free memory (``policy.memory``), builds the model on the meta
device (no memory), checks every checkpoint tensor's name and shape against it before reading any data, then reads
the tensors one by one straight into their storage (``policy.safetensors_io``) in place of the meta parameters, so
host memory peaks at about one copy of the weights (plus the tensor being converted). Names are used as they are:
our modules carry upstream's parameter names, no renaming happens. Shards named by the index must live inside the
model folder.

Saving streams the tensors the same way (one tensor in flight, cast to the save dtype on the way), in shards of at
most 5 GB, and writes what upstream's own remote code needs to open the directory (``policy.interop``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from policy.config import ConfigError, load_config
from policy.interop import (
    copy_remote_code,
    copy_tokenizer_files,
    mark_tokenizer_config,
    with_model_auto_map,
    write_processor_files,
)
from policy.language_model import DEFAULT_ATTN_IMPLEMENTATION, materialize_meta_buffers
from policy.memory import MemoryPreflightError, bound_allocator_retention, preflight
from policy.normalization import (
    DATASET_STATISTICS_FILE,
    StatisticsError,
    load_dataset_statistics,
    norm_stats_to_dict,
    parse_norm_stats,
    save_dataset_statistics,
)
from policy.openvla import OpenVLA
from policy.precision import Precision, PrecisionError, resolve_precision
from policy.processing import PREPROCESSOR_CONFIG_FILE, ImageSettings
from policy.safetensors_io import (
    Header,
    SafetensorsError,
    TensorEntry,
    TensorSpec,
    read_header,
    read_tensors,
    write_file,
)
from policy.upcast import upcast_compute

log = logging.getLogger(__name__)

SINGLE_WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# transformers' default max_shard_size ("5GB"); openvla-7b's 15.08 GB of bf16 weights become 4 shards.
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
# Above this, loading also stops glibc from keeping freed multi-MB blocks (policy.memory.bound_allocator_retention).
LARGE_MODEL_BYTES = 2**30
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_LISTED = 8


class CheckpointError(ValueError):
    """A model directory cannot be loaded: the message names the file or tensor and what to check."""


# ------------------------------------------------------------------------------------------------- weights
def _inside(model_dir: Path, file_name: str, index_path: Path) -> Path:
    """The shard ``file_name`` of the index, refused unless it resolves (symlinks followed) inside the model folder:
    an index must not make the loader read files elsewhere on the machine."""
    if not isinstance(file_name, str) or not file_name:
        raise CheckpointError(f"{index_path} maps a tensor to {file_name!r}, not a file name")
    root = model_dir.resolve()
    path = (model_dir / file_name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise CheckpointError(f"{index_path} names the shard {file_name!r}, which resolves to {path}, outside the "
                              f"model folder {root}; shards must live inside the model folder")
    return model_dir / file_name


def weight_map(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it."""
    index_path, single_path = model_dir / INDEX_FILE, model_dir / SINGLE_WEIGHTS_FILE
    if index_path.is_file():
        try:
            entries = json.loads(index_path.read_text()).get("weight_map")
        except (ValueError, AttributeError) as error:
            raise CheckpointError(f"{index_path} is not a JSON object with a weight_map ({error})") from None
        if not isinstance(entries, dict) or not entries:
            raise CheckpointError(f"{index_path} has no weight_map")
        files = {name: _inside(model_dir, file, index_path) for name, file in entries.items()}
        absent = sorted({str(path) for path in files.values() if not path.is_file()})
        if absent:
            raise CheckpointError(f"{index_path} lists shards that are missing: {absent}")
        return files
    if single_path.is_file():
        return dict.fromkeys(_read_header(single_path).entries, single_path)
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{model_dir} holds only pickle-based weights {pickles}: they can execute code when "
                              f"loaded and are refused; convert them to safetensors on a trusted machine")
    raise CheckpointError(f"{model_dir} has no weights ({SINGLE_WEIGHTS_FILE} or {INDEX_FILE} with shards)")


def _read_header(path: Path) -> Header:
    try:
        return read_header(path)
    except (SafetensorsError, OSError) as error:
        raise CheckpointError(str(error)) from None


def _by_file(files: dict[str, Path]) -> dict[Path, list[str]]:
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, path in files.items():
        by_file[path].append(name)
    return by_file


def checkpoint_entries(files: dict[str, Path]) -> dict[str, TensorEntry]:
    """Every tensor's dtype, shape and size from the safetensors headers (no tensor data is read)."""
    entries = {}
    for path, names in _by_file(files).items():
        header = _read_header(path)
        for name in names:
            if name not in header.entries:
                raise CheckpointError(f"{path.name} does not contain '{name}' although the index says so")
            entries[name] = header.entries[name]
    return entries


def checkpoint_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    return {name: entry.shape for name, entry in checkpoint_entries(files).items()}


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
    """Assign every tensor of the checkpoint to the (meta-device) model, one tensor at a time (``safetensors_io``:
    each is read straight into its own storage, converted only when the dtype or device differs)."""
    files = weight_map(model_dir)
    expected, aliases = tensor_aliases(model)
    check_tensors(expected, checkpoint_shapes(files), model_dir)
    for path, names in sorted(_by_file(files).items()):
        try:
            for name, tensor in read_tensors(path, names):
                target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
                assigned = _set_tensor(model, name, tensor.to(device=device, dtype=target_dtype))
                del tensor
                for alias in aliases[name]:
                    _set_tensor(model, alias, assigned)
        except (SafetensorsError, OSError) as error:
            raise CheckpointError(f"cannot read {path}: {error}") from None


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


def load_openvla(path: str | Path, dtype: torch.dtype | str | Precision = torch.float32,
                 device: str | torch.device = "cpu", attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
                 reserve_bytes: int = 0) -> OpenVLA:
    """Load a model directory. ``dtype``: a torch dtype (weights and compute), a ``--dtype`` choice ("auto",
    "bf16", "fp32") or a resolved ``Precision`` (``policy.precision``). Before any weight is read,
    ``policy.memory.preflight`` checks that the weights at that dtype plus ``reserve_bytes`` (what the caller will
    need beside them) fit the device."""
    model_dir = Path(path)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir} is not a directory")
    device = torch.device(device)
    try:
        config = load_config(model_dir)
        norm_stats = load_norm_stats(model_dir, config.raw.get("norm_stats"))
        precision = dtype if isinstance(dtype, Precision) else resolve_precision(dtype, model_dir, device) \
            if isinstance(dtype, str) else Precision(dtype, dtype)
    except (ConfigError, StatisticsError, PrecisionError) as error:
        raise CheckpointError(str(error)) from None
    files = weight_map(model_dir)
    try:
        needed = preflight(checkpoint_entries(files).values(), precision.weights, device, reserve_bytes,
                           str(model_dir))
    except MemoryPreflightError as error:
        raise CheckpointError(str(error)) from None
    if needed > LARGE_MODEL_BYTES:
        bound_allocator_retention()
    from policy.oft import build_openvla

    with torch.device("meta"):
        model = build_openvla(config, attn_implementation)  # OpenVLA, or OpenVLA-OFT (policy/oft.py)
    load_weights(model, model_dir, precision.weights, device)
    materialize_meta_buffers(model.language_model, device)
    leftover = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftover:
        raise CheckpointError(f"{model_dir}: tensors left without values after loading: {leftover[:_LISTED]}")
    if precision.upcast:
        upcast_compute(model)
        log.info("%s: %s (this device has no bf16 arithmetic; see policy/precision.py)", model_dir,
                 precision.describe())
    model.compute_dtype = precision.compute
    model.norm_stats = norm_stats
    model.image_settings = _load_image_settings(model_dir, config.image_size)
    model.tokenizer = load_tokenizer(model_dir, model.language_model.config)
    model.name_or_path = str(model_dir)
    model.source_dir = model_dir
    return model.eval()


# ---------------------------------------------------------------------------------------------------- save
def _shard_plan(specs: list[TensorSpec], max_shard_bytes: int | None) -> list[list[TensorSpec]]:
    """Greedy, in state-dict order, as transformers' ``save_pretrained``: a new shard starts when the next tensor
    would take the current one past ``max_shard_bytes`` (a single larger tensor gets a shard of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if max_shard_bytes is not None and shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_file_name(number: int, count: int) -> str:
    return f"model-{number:05d}-of-{count:05d}.safetensors"


def write_weights(specs: list[TensorSpec], produce, out_dir: Path, max_shard_bytes: int | None) -> list[Path]:
    """Write tensors announced by ``specs`` and made one at a time by ``produce(spec)``: one ``model.safetensors``
    when they fit one shard, else upstream's ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``
    (``{"metadata": {"total_size"}, "weight_map"}``)."""
    shards = _shard_plan(specs, max_shard_bytes)
    if len(shards) == 1:
        path = out_dir / SINGLE_WEIGHTS_FILE
        write_file(path, shards[0], produce)
        return [path]
    paths, weight_index = [], {}
    for number, shard in enumerate(shards, start=1):
        path = out_dir / shard_file_name(number, len(shards))
        write_file(path, shard, produce)
        weight_index.update(dict.fromkeys((spec.name for spec in shard), path.name))
        paths.append(path)
    total = sum(spec.nbytes for spec in specs)
    (out_dir / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_index},
                                                 indent=2))
    return paths


def save_weights(model: nn.Module, out_dir: Path, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
                 dtype: torch.dtype | None = None) -> list[Path]:
    """The model's tensors, floating ones cast to ``dtype`` (default: as they are) one tensor at a time, so
    saving never holds a second copy of the weights."""
    expected, _ = tensor_aliases(model)
    state = model.state_dict(keep_vars=True)

    def target(tensor: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    specs = [TensorSpec(name, target(state[name]), tuple(state[name].shape)) for name in expected]
    return write_weights(specs, lambda spec: state[spec.name].detach().to(device="cpu", dtype=spec.dtype),
                         out_dir, max_shard_bytes)


def _existing_weights(out_dir: Path) -> list[Path]:
    return sorted([*out_dir.glob("model*.safetensors"), *out_dir.glob(INDEX_FILE)])


def save_openvla(model: OpenVLA, path: str | Path, max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
                 overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write the model in the openvla-7b checkpoint format (see the module docstring), weights in ``dtype``
    (default: the model's own), with the entries upstream's remote code needs (``policy.interop``)."""
    out_dir = Path(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = _existing_weights(out_dir)
    if existing and not overwrite:
        raise CheckpointError(f"{out_dir} already holds weights ({existing[0].name}...); pass overwrite=True or "
                              f"choose an empty directory")
    for stale in existing:
        stale.unlink()
    save_dtype = dtype or model.dtype
    save_weights(model, out_dir, max_shard_bytes, save_dtype)
    raw = model.config.to_dict()
    raw["norm_stats"] = norm_stats_to_dict(model.norm_stats) if model.norm_stats else None
    raw["torch_dtype"] = _DTYPE_NAMES.get(save_dtype, str(save_dtype).removeprefix("torch."))
    raw.setdefault("architectures", ["OpenVLAForActionPrediction"])
    (out_dir / "config.json").write_text(json.dumps(with_model_auto_map(raw), indent=2, sort_keys=True))
    text = model.config.text_config
    generation = {"bos_token_id": text.get("bos_token_id", 1), "eos_token_id": text.get("eos_token_id", 2),
                  "pad_token_id": model.pad_token_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    source = getattr(model, "source_dir", None)
    write_processor_files(out_dir, model.image_settings.to_preprocessor_config(), source)
    if model.norm_stats:
        save_dataset_statistics(out_dir / DATASET_STATISTICS_FILE, model.norm_stats)
    if source is not None and has_tokenizer_files(source):
        copy_tokenizer_files(source, out_dir)
    elif model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out_dir))
        mark_tokenizer_config(out_dir)
    if source is not None:
        copy_remote_code(source, out_dir)
    return out_dir
