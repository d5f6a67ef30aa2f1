"""How an episode store reads what it checks: image frames straight from their chunk files, rows through Zarr,
and errors that name the store, the array, the chunk file and the episodes with data in it.

A mixin of :class:`collect.store.EpisodeStore` (kept apart so that store.py reads like the write protocol). The
chunk-level checks themselves are :class:`collect.integrity.ChunkGuard`'s, in the store's file layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from collect import image_codec
from collect.atomic_store import AtomicLocalStore
from collect.errors import CorruptStoreError
from collect.integrity import GuardedArray, strip_checksum
from collect.schema import StoreSchema
from collect.store_checks import (
    EPISODE_ENDS,
    EPISODE_INFO,
    check_episode_ends,
    chunk_name,
    episode_ends_from_info,
    guarded_array,
)


class CheckedReads:
    """Checked reading for :class:`~collect.store.EpisodeStore` (which sets the attributes below)."""

    path: Path
    schema: StoreSchema
    _zstore: AtomicLocalStore
    _data: dict[str, zarr.Array]
    _noop: dict[str, Any] | None
    _noop_array: zarr.Array | None
    _episode_ends_array: zarr.Array
    _episode_info_array: zarr.Array
    _episode_ends: np.ndarray | None
    episode_ends_problem: CorruptStoreError | None
    checksummed: bool
    num_frames: int
    num_episodes: int

    @property
    def _noop_name(self) -> str:
        return f"data/noop/{self._noop['array']}" if self._noop else ""

    def raw_image_chunk(self, key: str, index: int) -> bytes | None:
        """The encoded PNG/JPEG bytes of frame ``index`` of an image key, its checksum checked and removed (None
        only for a frame beyond the saved ones that was never written)."""
        buffer = self._zstore.get_sync(self._image_chunk_key(key, index))
        if buffer is None:
            return None
        chunk = buffer.to_bytes()
        return strip_checksum(chunk) if self.image_checksummed(key) else chunk

    def image_checksummed(self, key: str) -> bool:
        """Whether the frames of image key ``key`` carry a CRC32C (layout 2)."""
        return self._zstore.guard.arrays[f"data/{key}"].checksummed

    def _image_chunk_key(self, key: str, index: int) -> str:
        return f"data/{key}/{chunk_name(self._data[key], int(index))}"

    def _image_codec(self, key: str) -> image_codec.ImageCodec:
        return self._data[key].metadata.codecs[0]

    def _read_frame(self, key: str, index: int) -> np.ndarray:
        """One frame: its chunk file decoded directly (the chunk *is* the image; Zarr's machinery adds ~1 ms)."""
        data = self.raw_image_chunk(key, index)
        spec = self.schema.keys[key]
        image_format = self._image_codec(key).image_format
        if data is None:
            raise self._corrupt_rows(f"data/{key}", index, "is missing")
        try:
            frame = image_codec.decode_frame(data, image_format)
        except Exception as error:  # imagecodecs raises its own error types (PngError, Jpeg8Error, ...)
            raise self._corrupt_rows(f"data/{key}", index, f"is not a readable {image_format} image "
                                                           f"({type(error).__name__}: {error})") from None
        if frame.shape != spec.shape or frame.dtype != np.dtype(spec.dtype):
            raise self._corrupt_rows(f"data/{key}", index, f"holds a {frame.shape} {frame.dtype} image, the store "
                                                           f"expects {spec.shape} {spec.dtype}")
        return frame

    def _parsed_meta(self, index: int, text: str) -> dict[str, Any]:
        span = self.episode_slice(index)
        frames = span.stop - span.start
        try:
            meta = json.loads(text)
            if not isinstance(meta, dict):
                raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        except ValueError as error:
            raise self._corrupt_rows(EPISODE_INFO, index, f"holds unreadable metadata for episode {index} "
                                                          f"({error})") from None
        if "frames" in meta and meta["frames"] != frames:  # layout 2 stores each episode's length in both places
            raise self._corrupt_rows(EPISODE_INFO, index, f"says episode {index} has {meta['frames']} frames, "
                                                          f"meta/episode_ends says {frames}")
        return {**meta, "index": index, "start": span.start, "frames": frames}

    def _configure_guard(self) -> None:
        # Layout 1 left all-zero low-dim chunks out (they read as zeros); its image frames are always written.
        arrays = [guarded_array(f"data/{key}", array, "frame",
                                must_exist=self.checksummed or self.schema.keys[key].is_image)
                  for key, array in self._data.items()]
        if self._noop_array is not None:
            arrays.append(guarded_array(self._noop_name, self._noop_array, "frame", must_exist=self.checksummed))
        arrays += [guarded_array(EPISODE_ENDS, self._episode_ends_array, "episode", must_exist=True),
                   guarded_array(EPISODE_INFO, self._episode_info_array, "episode", must_exist=True)]
        self._zstore.guard.configure(self.path, arrays, self._saved_rows, self._locate_chunk)

    def _saved_rows(self, per: str) -> int:
        return self.num_frames if per == "frame" else self.num_episodes

    def _locate_chunk(self, array: GuardedArray, index: int) -> tuple[str, list[int]]:
        first = index * array.chunk_rows
        last = min(first + array.chunk_rows, self._saved_rows(array.per)) - 1
        if array.per == "episode":
            return (f"episode {first}" if first == last else f"episodes {first}..{last}"), list(range(first, last + 1))
        frames = f"frame {first}" if first == last else f"frames {first}..{last}"
        if self._episode_ends is None or not len(self._episode_ends):
            return f"{frames} (episodes unknown: the episode index is not readable)", []
        first_episode, last_episode = (int(e) for e in self.episode_of(np.array([first, last])))
        episodes = list(range(first_episode, min(last_episode, self.num_episodes - 1) + 1))
        named = f"episode {episodes[0]}" if len(episodes) == 1 else f"episodes {episodes[0]}..{episodes[-1]}"
        return f"{frames} of {named}", episodes

    def _corrupt_rows(self, name: str, row: int, problem: str) -> CorruptStoreError:
        """The error for the chunk of array ``name`` that holds row ``row`` (a frame or an episode)."""
        guard = self._zstore.guard
        array = guard.arrays[name]
        index = row // array.chunk_rows
        return guard.corrupt(array, index, chunk_name(self._zarr_array(name), index), problem)

    def _zarr_array(self, name: str) -> zarr.Array:
        if name == EPISODE_ENDS:
            return self._episode_ends_array
        if name == EPISODE_INFO:
            return self._episode_info_array
        return self._noop_array if name == self._noop_name else self._data[name.removeprefix("data/")]

    def _read_rows(self, name: str, array: zarr.Array, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` through Zarr; a chunk that cannot be decoded raises an error naming it."""
        if stop <= start:
            return array[0:0]
        try:
            return array[start:stop]
        except Exception as error:
            raise self._undecodable(name, array, error, np.arange(start, stop)) from error

    def _undecodable(self, name: str, array: zarr.Array, error: Exception, rows: np.ndarray) -> Exception:
        """Zarr failed to read ``rows``: find the chunk that does not decode (the guard's own errors name theirs)."""
        if isinstance(error, CorruptStoreError):
            return error
        chunk_rows = array.chunks[0]
        for index in np.unique(np.asarray(rows) // chunk_rows):
            try:
                array[int(index) * chunk_rows: int(index + 1) * chunk_rows]
            except Exception as chunk_error:
                problem = f"cannot be decoded ({type(chunk_error).__name__}: {chunk_error})"
                return self._corrupt_rows(name, int(index) * chunk_rows, problem)
        return error

    def _load_episode_ends(self, lenient: bool) -> np.ndarray:
        """meta/episode_ends up to the commit record, checked against it; lenient: rebuilt from the episodes'
        metadata when it is damaged (``episode_ends_problem`` says why)."""
        try:
            ends = np.asarray(self._read_rows(EPISODE_ENDS, self._episode_ends_array, 0, self.num_episodes),
                              dtype=np.int64)
            check_episode_ends(self, ends)
            return ends
        except CorruptStoreError as error:
            if not lenient:
                raise
            self.episode_ends_problem = error
        ends = episode_ends_from_info(self)
        return ends if ends is not None else np.zeros(0, dtype=np.int64)

