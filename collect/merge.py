"""Store-level operations: merge several stores into a new one; recompute the no-op mask (``filter``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from collect.errors import IncompatibleStoreError, StoreError
from collect.noop import NOOP_KEYS, NoopThresholds, store_noop_mask
from collect.schema import schema_differences
from collect.store import RESERVED_META_KEYS, EpisodeStore

log = logging.getLogger(__name__)


def merge_stores(out_path: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> EpisodeStore:
    """Copy every episode of ``sources`` (in order) into a new store at ``out_path``; returns it open "a".

    The sources must be compatible with the first one (same keys, rate, codec, robot and camera). Image
    chunks are copied as encoded bytes (a JPEG store is not re-compressed); the no-op mask of the result
    is computed with the first store's thresholds. Each episode's metadata gains ``merged_from``.
    A kill during the merge leaves ``out_path`` with the episodes copied so far (the usual commit protocol)."""
    if not sources:
        raise StoreError("merge needs at least one source store")
    out_path = Path(out_path)
    if out_path.exists():
        raise StoreError(f"{out_path} already exists; merge writes a new store, choose another output path")
    stores = [EpisodeStore.open(path, mode="r") for path in sources]
    try:
        first = stores[0]
        for other in stores[1:]:
            differences = schema_differences(first.schema, other.schema)
            if differences:
                raise IncompatibleStoreError(f"cannot merge {other.path} into a store like {first.path}:\n  "
                                             + "\n  ".join(differences))
        # The result's mask uses the thresholds the first store uses now (a filter may have changed them).
        schema = replace(first.schema, noop=first.noop_thresholds or first.schema.noop)
        out = EpisodeStore.create(out_path, schema)
        for source in stores:
            for index in range(source.num_episodes):
                copy_episode(source, index, out,
                             {"merged_from": {"store": str(source.path.resolve()), "episode": index}})
            log.info("merged %d episodes from %s", source.num_episodes, source.path)
        return out
    finally:
        for store in stores:
            store.close()


def copy_episode(source: EpisodeStore, index: int, out: EpisodeStore, provenance: dict[str, Any]) -> int:
    """Copy episode ``index`` of ``source`` into ``out`` (images as their encoded bytes); ``provenance`` joins its
    metadata (e.g. ``{"merged_from": {...}}``). Every chunk is read through the source's checks, and a frame of a
    store without checksums is decoded first, so damage is never copied under a fresh checksum."""
    meta = {k: v for k, v in source.episode_meta(index).items() if k not in RESERVED_META_KEYS}
    meta.update(provenance)
    span = source.episode_slice(index)
    low_dim = source.read_episode(index, keys=source.schema.low_dim_keys)
    unchecked = [key for key in source.schema.image_keys if not source.image_checksummed(key)]
    with out.begin_episode(meta) as writer:
        for offset, frame in enumerate(range(span.start, span.stop)):
            step: dict[str, Any] = {key: low_dim[key][offset] for key in source.schema.low_dim_keys}
            for key in source.schema.image_keys:
                if key in unchecked:
                    source.array(key)[frame]  # decodes it: a damaged PNG/JPEG raises CorruptStoreError
                step[key] = source.raw_image_chunk(key, frame)
            writer.add_step(step)
        return writer.commit()


def recompute_noop(path: str | os.PathLike[str], thresholds: NoopThresholds) -> dict[str, Any]:
    """``collect filter``: recompute the mask of every episode with ``thresholds``; raw data is untouched.

    Returns the counts before and after."""
    with EpisodeStore.open(path, mode="a") as store:
        if store.noop_record is None:
            raise StoreError(f"{store.path} has no no-op mask: its schema lacks {store.schema.missing_noop_keys}")
        before = int(store.noop_mask().sum())
        columns = {key: np.asarray(store.array(key)[:]) for key in NOOP_KEYS}
        mask = store_noop_mask(columns, store.episode_ends, thresholds)
        store.replace_noop_mask(mask, thresholds, source="filter")
        return {"path": str(store.path), "frames": store.num_frames, "noop_frames_before": before,
                "noop_frames": int(mask.sum()), **thresholds.to_dict()}
