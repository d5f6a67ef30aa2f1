"""Reading and writing safetensors files with bounded memory: one tensor in flight, never a whole shard.

The format (huggingface/safetensors, documented in its README) is: an unsigned little-endian 64-bit header length,
a JSON header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with
spaces to a multiple of 8 bytes, then the raw little-endian tensor bytes, each at its offsets from the end of the
header. Files written here load with ``safetensors.safe_open`` and the other way round (tests/policy).

Why not ``safe_open(...).get_tensor``: it memory-maps the file, and every page it touches counts towards the
process's resident memory until the file is closed, so reading a 7 GB shard of openvla-7b held the shard's pages
*and* the copies made from them (peak ~1.4x the weights). Here each tensor is read with ``readinto`` straight into
its final storage: the page cache holds the file, the process holds the tensors, nothing else.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

HEADER_LIMIT_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
_ALIGNMENT = 8
METADATA_KEY = "__metadata__"
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file is malformed or cannot hold what was asked; the message names the file."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets from the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: Path
    data_start: int  # absolute file offset of the data section
    entries: dict[str, TensorEntry]
    metadata: dict[str, str]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _parse_entry(path: Path, name: str, raw: object, data_bytes: int) -> TensorEntry:
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= set(raw):
        raise SafetensorsError(f"{path}: header entry '{name}' lacks dtype, shape or data_offsets")
    if raw["dtype"] not in DTYPES:
        raise SafetensorsError(f"{path}: tensor '{name}' has dtype {raw['dtype']!r}, not one of {sorted(DTYPES)}")
    shape, offsets = raw["shape"], raw["data_offsets"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(f"{path}: tensor '{name}' has a malformed shape {shape!r:.80}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise SafetensorsError(f"{path}: tensor '{name}' has offsets {offsets!r:.80} outside the file's "
                               f"{data_bytes} data bytes (truncated file?)")
    dtype = DTYPES[raw["dtype"]]
    expected = math.prod(shape) * _element_size(dtype)
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(f"{path}: tensor '{name}' {raw['dtype']} {shape} needs {expected} bytes, its offsets "
                               f"span {offsets[1] - offsets[0]}")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_header(path: str | Path) -> Header:
    """The header of one file, validated against the file's size (no tensor data is read)."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(HEADER_LIMIT_BYTES, size - 8):
            raise SafetensorsError(f"{path}: header length {length} does not fit the file ({size} bytes)")
        try:
            document = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SafetensorsError(f"{path}: the header is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    metadata = document.pop(METADATA_KEY, None) or {}
    data_bytes = size - 8 - length
    entries = {name: _parse_entry(path, name, raw, data_bytes) for name, raw in document.items()}
    return Header(path=path, data_start=8 + length, entries=entries, metadata=dict(metadata))


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """The tensor's storage as writable bytes (CPU, contiguous); 0-d and empty tensors included."""
    flat = tensor.reshape(-1)
    if flat.numel() == 0:
        return memoryview(bytearray())
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def read_tensor(handle, header: Header, name: str) -> torch.Tensor:
    """Read one tensor into fresh storage from an open binary ``handle`` of ``header.path``."""
    entry = header.entries[name]
    tensor = torch.empty(entry.shape, dtype=entry.dtype, device="cpu")
    view = _byte_view(tensor)
    handle.seek(header.data_start + entry.begin)
    filled = 0
    while filled < entry.nbytes:
        count = handle.readinto(view[filled:])
        if not count:
            raise SafetensorsError(f"{header.path}: the file ended inside tensor '{name}' (truncated?)")
        filled += count
    return tensor


def read_tensors(path: str | Path, names: Iterable[str] | None = None) -> Iterable[tuple[str, torch.Tensor]]:
    """(name, tensor) for ``names`` (default: all, in file order), one at a time."""
    header = read_header(path)
    wanted = list(names) if names is not None else sorted(header.entries, key=lambda n: header.entries[n].begin)
    with Path(path).open("rb", buffering=0) as handle:
        for name in wanted:
            if name not in header.entries:
                raise SafetensorsError(f"{path} does not contain '{name}'")
            yield name, read_tensor(handle, header, name)


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor will be, before it exists: enough to write the header first."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _element_size(self.dtype)


def write_file(path: str | Path, specs: Sequence[TensorSpec], produce: Callable[[TensorSpec], torch.Tensor],
               metadata: dict[str, str] | None = None) -> int:
    """Write ``specs`` in order, asking ``produce(spec)`` for each tensor only when its turn comes, so at most one
    produced tensor is alive. The file appears under ``path`` only when complete (written as ``path.partial``).
    Returns the number of data bytes."""
    path = Path(path)
    header: dict[str, object] = {METADATA_KEY: dict(metadata or {"format": "pt"})}
    offset = 0
    for spec in specs:
        if spec.dtype not in DTYPE_NAMES:
            raise SafetensorsError(f"{path}: cannot store '{spec.name}' as {spec.dtype}")
        header[spec.name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % _ALIGNMENT)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for spec in specs:
            tensor = produce(spec)
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise SafetensorsError(f"{path}: '{spec.name}' was announced as {spec.dtype} {list(spec.shape)}, "
                                       f"got {tensor.dtype} {list(tensor.shape)}")
            handle.write(_byte_view(tensor.detach().to("cpu").contiguous()))
            del tensor
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
    return offset
