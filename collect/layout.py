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
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from collect import image_codec  # registers the fanvla.image codec with Zarr
from collect.atomic_store import AtomicLocalStore
from collect.noop import NoopThresholds
from collect.schema import SCHEMA_VERSION, KeySpec, StoreSchema

FORMAT_TAG = "fanvla_episode_store"
LOW_DIM_CHUNK = 1024  # frames per chunk of a low-dim array (~100 s at 10 Hz)
IMAGE_CAPACITY_STEP = 64  # image arrays grow by this many frames at a time during an episode
INFO_CHUNK = 64  # episodes per chunk of meta/episode_info
ENDS_CHUNK = 4096
FLAT_KEYS = {"name": "default", "separator": "."}  # chunk files data/<key>/c.<frame>.0.0 in one directory


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def software_version() -> str:
    from fanvla import __version__

    return __version__


class CommittedArray:
    """A per-step array limited to the committed frames: ``a[i]``, ``a[i:j]``, ``a[[i, k]]``, ``len(a)``."""

    def __init__(self, array: zarr.Array, length: int, read_frame: Callable[[int], np.ndarray] | None = None) -> None:
        self._array = array
        self._length = length
        self._read_frame = read_frame  # image keys: one frame straight from its chunk file

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
            return self._array[start:stop] if stop > start else np.empty((0, *self.shape[1:]), self.dtype)
        if np.ndim(index) == 0:
            position = int(index)
            if not -self._length <= position < self._length:
                raise IndexError(f"frame {position} out of range: the store has {self._length} committed frames")
            if self._read_frame is not None:
                return self._read_frame(position % self._length)
            return self._array[position % self._length]
        positions = np.asarray(index, dtype=np.int64)
        if positions.size and (positions.min() < -self._length or positions.max() >= self._length):
            raise IndexError(f"frame indices out of range: the store has {self._length} committed frames")
        return self._array.get_orthogonal_selection((positions % max(self._length, 1),))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)


def image_serializer(schema: StoreSchema, spec: KeySpec) -> image_codec.ImageCodec:
    # Depth (uint16, one channel) is always lossless PNG; colour uses the schema's codec.
    if schema.image_codec.name == "jpeg" and spec.dtype == "uint8" and len(spec.shape) == 3:
        return image_codec.ImageCodec(format="jpeg", level=schema.image_codec.jpeg_quality)
    return image_codec.ImageCodec(format="png", level=schema.image_codec.png_level)


def create_data_array(group: zarr.Group, name: str, spec: KeySpec, schema: StoreSchema) -> zarr.Array:
    common = {"dtype": spec.dtype, "fill_value": 0, "chunk_key_encoding": FLAT_KEYS,
              "config": {"write_empty_chunks": True},
              "attributes": {"unit": spec.unit, "description": spec.description}}
    if spec.is_image:
        return group.create_array(name, shape=(0, *spec.shape), chunks=(1, *spec.shape),
                                  serializer=image_serializer(schema, spec), compressors=None, **common)
    return group.create_array(name, shape=(0, *spec.shape), chunks=(LOW_DIM_CHUNK, *spec.shape),
                              compressors=ZstdCodec(level=3), **common)


def create_noop_array(group: zarr.Group, name: str, overwrite: bool = False) -> zarr.Array:
    return group.create_array(name, shape=(0,), chunks=(LOW_DIM_CHUNK,), dtype="bool", fill_value=False,
                              chunk_key_encoding=FLAT_KEYS, compressors=ZstdCodec(level=3), overwrite=overwrite,
                              attributes={"unit": "flag", "description": "True = no-op step (collect/noop.py)"})


def build_empty_store(zstore: AtomicLocalStore, schema: StoreSchema) -> None:
    root = zarr.open_group(zstore, mode="w-", attributes={
        FORMAT_TAG: SCHEMA_VERSION, "software_version": software_version(), "created_at": utc_now_iso(),
        **schema.to_attrs()})
    data = root.create_group("data")
    for name, spec in schema.keys.items():
        create_data_array(data, name, spec, schema)
    noop = None
    if schema.has_noop_keys:
        thresholds = schema.noop or NoopThresholds(0.0, 0.0)
        create_noop_array(data.create_group("noop"), "g0")
        noop = {"array": "g0", **thresholds.to_dict(), "source": "record", "computed_at": utc_now_iso()}
    meta = root.create_group("meta")
    meta.create_array("episode_ends", shape=(0,), chunks=(ENDS_CHUNK,), dtype="int64", fill_value=0,
                      chunk_key_encoding=FLAT_KEYS, compressors=ZstdCodec(level=3))
    meta.create_array("episode_info", shape=(0,), chunks=(INFO_CHUNK,), dtype=str, chunk_key_encoding=FLAT_KEYS)
    meta.update_attributes({"commit": {"episodes": 0, "frames": 0, "committed_at": utc_now_iso()}, "noop": noop})
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
