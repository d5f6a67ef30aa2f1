"""The on-disk layout of an episode store: how its arrays are created, grown and cut back.

docs/episode_store.md describes the result. Every array has a flat chunk-key encoding
(``data/<key>/c.<frame>.0.0.0``): one directory per array, and for images one file per frame.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from collect import image_codec  # registers the fanvla.image codec with Zarr
from collect.atomic_store import AtomicLocalStore
from collect.integrity import ATTRS_CHECKSUM, LAYOUT_WITH_CHECKSUMS, RECORD_CHECKSUM, document_checksum
from collect.noop import NoopThresholds
from collect.schema import SCHEMA_VERSION, KeySpec, StoreSchema

FORMAT_TAG = "fanvla_episode_store"
LOW_DIM_CHUNK = 1024  # frames per chunk of a low-dim array (~100 s at 10 Hz)
IMAGE_CAPACITY_STEP = 64  # image arrays grow by this many frames at a time during an episode
INFO_CHUNK = 64  # episodes per chunk of meta/episode_info
ENDS_CHUNK = 4096
FLAT_KEYS = {"name": "default", "separator": "."}  # chunk files data/<key>/c.<frame>.0.0 in one directory
# Every chunk holding saved rows is written, even all zeros: a missing chunk is then always damage, never "empty".
ALWAYS_WRITE = {"write_empty_chunks": True}


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def software_version() -> str:
    from fanvla import __version__

    return __version__


class CommittedArray:
    """A per-step array limited to the committed frames: ``a[i]``, ``a[i:j]``, ``a[[i, k]]``, ``len(a)``."""

    def __init__(self, array: zarr.Array, length: int, read_frame: Callable[[int], np.ndarray] | None = None,
                 read_failed: Callable[[Exception, np.ndarray], Exception] | None = None) -> None:
        self._array = array
        self._length = length
        self._read_frame = read_frame  # image keys: one frame straight from its chunk file
        # Zarr's decoding failed for these frame positions: returns the error to raise (naming the chunk).
        self._read_failed = read_failed

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self._array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step != 1:
                return self[np.arange(start, stop, step)]
            if stop <= start:
                return np.empty((0, *self.shape[1:]), self.dtype)
            return self._zarr_read(slice(start, stop), np.arange(start, stop))
        if np.ndim(index) == 0:
            position = int(index)
            if not -self._length <= position < self._length:
                raise IndexError(f"frame {position} out of range: the store has {self._length} committed frames")
            if self._read_frame is not None:
                return self._read_frame(position % self._length)
            return self._zarr_read(position % self._length, np.array([position % self._length]))
        positions = np.asarray(index, dtype=np.int64)
        if positions.size and (positions.min() < -self._length or positions.max() >= self._length):
            raise IndexError(f"frame indices out of range: the store has {self._length} committed frames")
        positions = positions % max(self._length, 1)
        if self._read_frame is not None:
            return np.stack([self._read_frame(int(p)) for p in positions]) if positions.size else \
                np.empty((0, *self.shape[1:]), self.dtype)
        return self._zarr_read((positions,), positions, orthogonal=True)

    def _zarr_read(self, selection: Any, positions: np.ndarray, orthogonal: bool = False) -> np.ndarray:
        try:
            if orthogonal:
                return self._array.get_orthogonal_selection(selection)
            return self._array[selection]
        except Exception as error:  # a chunk that cannot be decoded: name it (the guard's own errors pass as they are)
            if self._read_failed is None:
                raise
            raise self._read_failed(error, positions) from error

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)


def image_serializer(schema: StoreSchema, spec: KeySpec) -> image_codec.ImageCodec:
    # Depth (uint16, one channel) is always lossless PNG; colour uses the schema's codec.
    if schema.image_codec.name == "jpeg" and spec.dtype == "uint8" and len(spec.shape) == 3:
        return image_codec.ImageCodec(format="jpeg", level=schema.image_codec.jpeg_quality)
    return image_codec.ImageCodec(format="png", level=schema.image_codec.png_level)


def compressors(checksummed: bool, zstd: bool = True) -> tuple:
    """The bytes-to-bytes codecs: zstd for low-dim data, then (layout 2) Zarr's crc32c checksum, always last."""
    return (*((ZstdCodec(level=3),) if zstd else ()), *((Crc32cCodec(),) if checksummed else ()))


def create_data_array(group: zarr.Group, name: str, spec: KeySpec, schema: StoreSchema,
                      checksummed: bool = True) -> zarr.Array:
    common = {"dtype": spec.dtype, "fill_value": 0, "chunk_key_encoding": FLAT_KEYS, "config": ALWAYS_WRITE,
              "attributes": {"unit": spec.unit, "description": spec.description}}
    if spec.is_image:
        return group.create_array(name, shape=(0, *spec.shape), chunks=(1, *spec.shape),
                                  serializer=image_serializer(schema, spec),
                                  compressors=compressors(checksummed, zstd=False) or None, **common)
    return group.create_array(name, shape=(0, *spec.shape), chunks=(LOW_DIM_CHUNK, *spec.shape),
                              compressors=compressors(checksummed), **common)


def create_noop_array(group: zarr.Group, name: str, overwrite: bool = False, checksummed: bool = True) -> zarr.Array:
    # Layout 1 did not write all-False chunks of the mask; layout 2 writes every chunk.
    return group.create_array(name, shape=(0,), chunks=(LOW_DIM_CHUNK,), dtype="bool", fill_value=False,
                              chunk_key_encoding=FLAT_KEYS, compressors=compressors(checksummed), overwrite=overwrite,
                              config=ALWAYS_WRITE if checksummed else None,
                              attributes={"unit": "flag", "description": "True = no-op step (collect/noop.py)"})


def meta_record(commit: dict[str, Any], noop: dict[str, Any] | None, checksummed: bool) -> dict[str, Any]:
    """The attributes of meta/ (the commit record and the no-op record), with their checksum in layout 2."""
    record: dict[str, Any] = {"commit": commit, "noop": noop}
    if checksummed:
        record[RECORD_CHECKSUM] = document_checksum(record)
    return record


def build_empty_store(zstore: AtomicLocalStore, schema: StoreSchema, layout: int = SCHEMA_VERSION,
                      extra_attrs: dict[str, Any] | None = None) -> None:
    """Write an empty store. ``layout`` 1 is the layout before checksums (kept to measure their cost)."""
    if layout not in (1, SCHEMA_VERSION):
        raise ValueError(f"store layout must be 1 or {SCHEMA_VERSION}, got {layout!r}")
    checksummed = layout >= LAYOUT_WITH_CHECKSUMS
    attrs = {FORMAT_TAG: layout, "software_version": software_version(), "created_at": utc_now_iso(),
             **schema.to_attrs(), **(extra_attrs or {})}
    if checksummed:
        attrs[ATTRS_CHECKSUM] = document_checksum(attrs)
    root = zarr.open_group(zstore, mode="w-", attributes=attrs)
    data = root.create_group("data")
    for name, spec in schema.keys.items():
        create_data_array(data, name, spec, schema, checksummed)
    noop = None
    if schema.has_noop_keys:
        thresholds = schema.noop or NoopThresholds(0.0, 0.0)
        create_noop_array(data.create_group("noop"), "g0", checksummed=checksummed)
        noop = {"array": "g0", **thresholds.to_dict(), "source": "record", "computed_at": utc_now_iso()}
    meta = root.create_group("meta")
    config = ALWAYS_WRITE if checksummed else None
    meta.create_array("episode_ends", shape=(0,), chunks=(ENDS_CHUNK,), dtype="int64", fill_value=0,
                      chunk_key_encoding=FLAT_KEYS, compressors=compressors(checksummed), config=config)
    meta.create_array("episode_info", shape=(0,), chunks=(INFO_CHUNK,), dtype=str, chunk_key_encoding=FLAT_KEYS,
                      compressors=compressors(checksummed) if checksummed else "auto", config=config)
    meta.update_attributes(meta_record({"episodes": 0, "frames": 0, "committed_at": utc_now_iso()}, noop,
                                       checksummed))
    zstore.sync_to_disk()


def resize_and_write(writes: Sequence[tuple[zarr.Array, int, slice | None, Any]]) -> None:
    """Resize arrays (axis 0) and write a slice of each, all arrays concurrently: each replaced file is
    fsynced before its rename, and doing those flushes side by side keeps a commit short."""

    async def one(array: zarr.Array, length: int, where: slice | None, values: Any) -> None:
        target = array.async_array
        await target.resize((length, *target.shape[1:]))
        if where is not None:
            await target.setitem(where, values)

    async def all_of_them() -> None:
        await asyncio.gather(*(one(*write) for write in writes))

    sync(all_of_them())


def written_frame_indices(array_dir: Path) -> list[int]:
    """Frame indices that have a chunk file in an image array directory (``c.<frame>.0.0[.0]``)."""
    indices = []
    try:
        names = os.listdir(array_dir)
    except FileNotFoundError:
        return indices
    for name in names:
        parts = name.split(".")
        if len(parts) >= 2 and parts[0] == "c" and parts[1].isdigit():
            indices.append(int(parts[1]))
    return indices
