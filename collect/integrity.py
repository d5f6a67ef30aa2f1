"""Chunk checksums of the episode store, and the check every read goes through (docs/episode_store.md, "Integrity").

In a store of layout 2 every chunk file ends with the CRC32C of the bytes before it (4 bytes, little-endian):

- low-dim and metadata arrays get it from Zarr's own ``crc32c`` codec, last in their codec pipeline, so any
  Zarr reader checks it as well;
- image frames are written by the store itself as ``<PNG or JPEG file><CRC32C>``, the same format (image
  viewers ignore the 4 bytes after the image's end marker).

:class:`ChunkGuard` sits in the store's file layer (``AtomicLocalStore.get``), so it sees the key of every chunk
read: before a chunk is decoded it checks that a chunk holding saved frames exists (a missing chunk would
otherwise read as zeros, Zarr's fill value) and that its checksum matches. Its errors name the store, the array,
the chunk file and the episodes with data in it. Stores of layout 1 (written before checksums) still open: the
guard then checks only that their chunks exist, and ``fanvla collect verify`` says what it could not check.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import google_crc32c

from collect.errors import CorruptStoreError

LAYOUT_WITH_CHECKSUMS = 2  # store layouts from this one on carry a CRC32C in every chunk
CHECKSUM_BYTES = 4
CHECKSUM_CODEC_NAME = "crc32c"  # Zarr's codec (zarr.codecs.Crc32cCodec)
ATTRS_CHECKSUM = "attributes_crc32c"  # root zarr.json: checksum of the other root attributes
RECORD_CHECKSUM = "record_crc32c"  # meta/zarr.json: checksum of the commit record and the no-op record

Per = Literal["frame", "episode"]


def crc32c(data: bytes) -> int:
    return int(google_crc32c.value(data))


def append_checksum(payload: bytes) -> bytes:
    """``payload`` followed by its CRC32C, as Zarr's ``crc32c`` codec writes it."""
    return payload + struct.pack("<I", crc32c(payload))


def checksum_matches(chunk: bytes) -> bool:
    return len(chunk) >= CHECKSUM_BYTES and struct.pack("<I", crc32c(chunk[:-CHECKSUM_BYTES])) == \
        chunk[-CHECKSUM_BYTES:]


def strip_checksum(chunk: bytes) -> bytes:
    return chunk[:-CHECKSUM_BYTES]


def document_checksum(document: Mapping[str, Any]) -> int:
    """CRC32C of a JSON document in canonical form (sorted keys, no spaces), for attributes held in zarr.json."""
    return crc32c(json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8"))


def has_checksum_codec(codecs: Any) -> bool:
    """Whether an array's codec pipeline (``array.metadata.codecs``) ends in Zarr's crc32c codec."""
    return any(codec.to_dict().get("name") == CHECKSUM_CODEC_NAME for codec in codecs)


def chunk_index(name: str) -> int | None:
    """Index along axis 0 of a chunk file name ``c.<i>.<j>...`` (None for anything else)."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "c" and parts[1].isdigit():
        return int(parts[1])
    return None


@dataclass(frozen=True)
class GuardedArray:
    """One array the guard watches: ``name`` (``data/joints_rad``), rows per chunk, whether a row is a frame or an
    episode, whether its chunks carry a checksum, and whether every chunk holding saved rows must exist."""

    name: str
    chunk_rows: int
    per: Per
    checksummed: bool
    must_exist: bool


# (array, chunk index) -> (where, in words, e.g. "frames 1024..2047: episodes 7..15", the episode indices)
Locate = Callable[[GuardedArray, int], tuple[str, list[int]]]


class ChunkGuard:
    """Checks every chunk read from the store (see the module docstring); watches nothing until configured."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.arrays: dict[str, GuardedArray] = {}
        self._saved: Callable[[Per], int] = lambda per: 0
        self._locate: Locate = lambda array, index: (f"chunk {index}", [])

    def configure(self, path: Path, arrays: list[GuardedArray], saved: Callable[[Per], int], locate: Locate) -> None:
        """``saved(per)``: the frames / episodes saved now (chunks beyond them are an unsaved tail, not checked)."""
        self.path, self._saved, self._locate = path, saved, locate
        self.arrays = {array.name: array for array in arrays}

    def check(self, key: str, data: bytes | None) -> None:
        prefix, _, name = key.rpartition("/")
        array = self.arrays.get(prefix)
        index = chunk_index(name) if array is not None else None
        if array is None or index is None or index * array.chunk_rows >= self._saved(array.per):
            return
        if data is None:
            if array.must_exist:
                raise self.corrupt(array, index, name, "is missing")
            return
        if array.checksummed and len(data) < CHECKSUM_BYTES:
            raise self.corrupt(array, index, name, f"is truncated ({len(data)} bytes)")
        if array.checksummed and not checksum_matches(data):
            raise self.corrupt(array, index, name, "fails its CRC32C checksum (the file was changed on disk: a bit "
                                                   "flip, a truncation or an overwrite)")

    def corrupt(self, array: GuardedArray, index: int, name: str, problem: str) -> CorruptStoreError:
        where, episodes = self._locate(array, index)
        detail = f"{array.name}/{name} {problem}; it holds {where}"
        return CorruptStoreError(
            f"{self.path}: {detail}. Nothing from it was used. `fanvla collect verify {self.path}` lists every "
            f"damaged episode, and `fanvla collect repair {self.path} --quarantine` sets them aside and keeps the rest",
            array=array.name, chunk=name, episodes=episodes, detail=detail)
