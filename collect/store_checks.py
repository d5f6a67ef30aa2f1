"""Checks an episode store makes when it opens: attribute checksums, array metadata against the schema, the
episode index against the commit record. Each failure is a CorruptStoreError naming the file and what is wrong.

The chunk-level checks of every read are in ``collect/integrity.py``; docs/episode_store.md lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from collect.errors import CorruptStoreError
from collect.integrity import (
    ATTRS_CHECKSUM,
    LAYOUT_WITH_CHECKSUMS,
    RECORD_CHECKSUM,
    GuardedArray,
    Per,
    document_checksum,
    has_checksum_codec,
)

if TYPE_CHECKING:
    from collect.store import EpisodeStore

EPISODE_ENDS = "meta/episode_ends"
EPISODE_INFO = "meta/episode_info"
STORED_LENGTH_KEY = "frames"  # layout 2 keeps each episode's length in its metadata too (a second copy of the index)


def chunk_name(array: zarr.Array, index: int) -> str:
    """The chunk file name (``c.<index>.0.0``) of the chunk ``index`` along axis 0."""
    return array.metadata.encode_chunk_key((int(index),) + (0,) * (array.ndim - 1))


def guarded_array(name: str, array: zarr.Array, per: Per, must_exist: bool) -> GuardedArray:
    return GuardedArray(name, int(array.chunks[0]), per, has_checksum_codec(array.metadata.codecs), must_exist)


def stored_meta(meta: Mapping[str, Any], frames: int, checksummed: bool) -> dict[str, Any]:
    """What ``meta/episode_info`` holds for an episode: its metadata, plus (layout 2) its length."""
    return {**meta, STORED_LENGTH_KEY: int(frames)} if checksummed else dict(meta)


def check_attributes(path: Path, attrs: Mapping[str, Any], meta_attrs: Mapping[str, Any], layout: int) -> None:
    """Layout 2: the root attributes and the commit record match the checksums stored beside them."""
    if layout < LAYOUT_WITH_CHECKSUMS:
        return
    root = {key: value for key, value in attrs.items() if key != ATTRS_CHECKSUM}
    if attrs.get(ATTRS_CHECKSUM) != document_checksum(root):
        raise CorruptStoreError(f"{path}/zarr.json: the store's attributes (schema, rate, codec, hardware snapshot) "
                                f"do not match their checksum: the file was changed after the store was created",
                                array="zarr.json")
    record = {key: value for key, value in meta_attrs.items() if key != RECORD_CHECKSUM}
    if meta_attrs.get(RECORD_CHECKSUM) != document_checksum(record):
        raise CorruptStoreError(f"{path}/meta/zarr.json: the commit record (saved episodes and frames) does not match "
                                f"its checksum: the file was changed on disk", array="meta/zarr.json")


def check_array_metadata(store: EpisodeStore) -> None:
    """Every array has the dtype and frame shape of the schema, holds at least the saved rows, and (layout 2)
    carries the checksum codec: a damaged ``zarr.json`` of an array must not change what is read."""
    problems = []
    for key, spec in store.schema.keys.items():
        array = store._data[key]
        if np.dtype(array.dtype) != np.dtype(spec.dtype) or tuple(array.shape[1:]) != spec.shape:
            problems.append(f"data/{key} is {array.dtype} {tuple(array.shape[1:])} per frame, the schema says "
                            f"{spec.dtype} {spec.shape}")
    rows = {f"data/{key}": (array, store.num_frames) for key, array in store._data.items()}
    if store._noop_array is not None:
        rows[f"data/noop/{store._noop['array']}"] = (store._noop_array, store.num_frames)
    rows[EPISODE_ENDS] = (store._episode_ends_array, store.num_episodes)
    rows[EPISODE_INFO] = (store._episode_info_array, store.num_episodes)
    for name, (array, saved) in rows.items():
        if array.shape[0] < saved:
            problems.append(f"{name} has {array.shape[0]} rows, the commit record says {saved} are saved")
        if store.checksummed and not has_checksum_codec(array.metadata.codecs):
            problems.append(f"{name} has no crc32c codec, which every array of a layout-2 store has")
    if problems:
        raise CorruptStoreError(f"{store.path}: the arrays' metadata (their zarr.json files) is damaged: "
                                + "; ".join(problems))


def check_episode_ends(store: EpisodeStore, ends: np.ndarray) -> None:
    """The episode index agrees with the commit record: E positive, increasing ends, the last one = F."""
    if len(ends) != store.num_episodes:
        raise store._corrupt_rows(EPISODE_ENDS, max(len(ends) - 1, 0), f"holds {len(ends)} episode ends, the commit "
                                                                       f"record says {store.num_episodes} episodes")
    if not len(ends):
        if store.num_frames:
            raise CorruptStoreError(f"{store.path}: the commit record says 0 episodes but {store.num_frames} frames",
                                    array="meta/zarr.json")
        return
    steps = np.diff(np.concatenate([[0], ends]))
    bad = np.flatnonzero(steps <= 0)
    if len(bad):
        raise store._corrupt_rows(EPISODE_ENDS, int(bad[0]), f"is not increasing at episode {int(bad[0])} "
                                                             f"(end frame {int(ends[bad[0]])})")
    if ends[-1] != store.num_frames:
        raise store._corrupt_rows(EPISODE_ENDS, len(ends) - 1, f"ends the last episode at frame {int(ends[-1])}, the "
                                                               f"commit record says {store.num_frames} frames")


def episode_ends_from_info(store: EpisodeStore) -> np.ndarray | None:
    """The episode index rebuilt from the lengths kept in the episodes' metadata (layout 2); None if it cannot be."""
    try:
        texts = store._read_rows(EPISODE_INFO, store._episode_info_array, 0, store.num_episodes)
    except CorruptStoreError:
        return None
    lengths = []
    for text in texts:
        try:
            length = json.loads(str(text)).get(STORED_LENGTH_KEY)
        except (ValueError, AttributeError):
            return None
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            return None
        lengths.append(length)
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
    if len(ends) != store.num_episodes or (len(ends) and ends[-1] != store.num_frames):
        return None
    return ends
