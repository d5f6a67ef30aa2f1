"""``fanvla collect verify``: read every saved chunk of a store and say, episode by episode, what is intact.

Each chunk is read through the store's checks (``collect/integrity.py``): it must exist, match its CRC32C
(layout 2) and decode. A damaged chunk makes every episode with data in it damaged: an image frame belongs to
one episode, a low-dim chunk (1024 frames) to every episode it overlaps, a chunk of ``meta/episode_info`` to the
64 episodes whose metadata it holds. A damaged episode index (``meta/episode_ends``) is rebuilt from the lengths
kept in the episodes' metadata (layout 2), so it costs no episode.

Layout-1 stores (written before checksums) are checked as far as they can be: presence of image frames, decoding
of everything; the report lists what could not be checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from collect.errors import CorruptStoreError
from collect.layout import written_frame_indices
from collect.store import EpisodeStore
from collect.store_checks import EPISODE_ENDS, EPISODE_INFO

ImageCheck = Literal["checksum", "decode", "presence"]
IMAGE_THREADS = 4


@dataclass(frozen=True)
class Damage:
    """One damaged chunk (or file): where, what is wrong, and the episodes it takes with it ([] = none)."""

    array: str
    chunk: str | None
    problem: str
    episodes: list[int]


@dataclass
class VerifyReport:
    path: str
    layout: int = 0
    checksummed: bool = False
    episodes: int = 0
    frames: int = 0
    chunks_checked: int = 0  # low-dim, no-op mask and metadata chunks
    image_frames_checked: dict[str, int] = field(default_factory=dict)
    image_check: ImageCheck = "checksum"
    damage: list[Damage] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    fatal: str | None = None  # the store cannot be read at all: no episode can be vouched for

    @property
    def damaged_episodes(self) -> dict[int, list[Damage]]:
        damaged: dict[int, list[Damage]] = {}
        for item in self.damage:
            for episode in item.episodes:
                damaged.setdefault(episode, []).append(item)
        return dict(sorted(damaged.items()))

    @property
    def intact_episodes(self) -> list[int]:
        if self.fatal is not None:
            return []
        damaged = self.damaged_episodes
        return [index for index in range(self.episodes) if index not in damaged]

    @property
    def ok(self) -> bool:
        return self.fatal is None and not self.damage

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "intact_episodes": self.intact_episodes,
                "damaged_episodes": {str(index): [f"{item.array}/{item.chunk}: {item.problem}" if item.chunk
                                                  else f"{item.array}: {item.problem}" for item in items]
                                     for index, items in self.damaged_episodes.items()}}

    def text(self) -> str:
        kind = "CRC32C in every chunk" if self.checksummed else "written before chunk checksums"
        lines = [f"{self.path}: layout {self.layout} ({kind}), {self.episodes} episodes, {self.frames} frames"]
        if self.fatal is not None:
            return "\n".join([*lines, f"  UNREADABLE: {self.fatal}", "  no episode can be vouched for; "
                              "restore the store from a backup"])
        images = ", ".join(f"{count} {key} frames" for key, count in self.image_frames_checked.items())
        how = {"checksum": "checksums" if self.checksummed else "decoded", "decode": "decoded",
               "presence": "presence only"}[self.image_check]
        lines.append(f"  checked: {self.chunks_checked} low-dim and metadata chunks, {images or 'no images'} "
                     f"({how})")
        damaged = self.damaged_episodes
        if not self.damage:
            lines.append(f"  all {self.episodes} episodes intact")
        else:
            lines.append(f"  DAMAGED: {len(damaged)} of {self.episodes} episodes")
            for index, items in damaged.items():
                for item in items:
                    lines.append(f"    episode {index}: {item.problem}")
            for item in self.damage:
                if not item.episodes:
                    lines.append(f"    (no episode lost) {item.problem}")
            lines.append(f"  intact episodes: {_ranges(self.intact_episodes) or 'none'}")
            if damaged:
                lines.append(f"  `fanvla collect repair {self.path} --quarantine` keeps the intact episodes and "
                             f"moves the damaged store aside")
        lines += [f"  not checked: {item}" for item in self.not_checked]
        return "\n".join(lines)


def _ranges(indices: Iterable[int]) -> str:
    parts: list[str] = []
    for index in indices:
        if parts and parts[-1][1] == index - 1:
            parts[-1] = (parts[-1][0], index)
        else:
            parts.append((index, index))  # type: ignore[arg-type]
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)  # type: ignore[misc]


def verify_store(path: str | os.PathLike[str], images: ImageCheck = "checksum") -> VerifyReport:
    """Check every saved chunk of the store at ``path`` (read-only). ``images``: ``checksum`` (layout 2; a
    layout-1 store's frames are decoded instead), ``decode`` (also decode every frame) or ``presence`` (only that
    every frame's file exists: what ``fanvla collect info`` does, cheap on large stores)."""
    report = VerifyReport(str(path), image_check=images)
    try:
        store = EpisodeStore.open(path, mode="r", _lenient=True)
    except CorruptStoreError as error:
        report.fatal = error.detail
        return report
    with store:
        report.layout, report.checksummed = store.layout, store.checksummed
        report.episodes, report.frames = store.num_episodes, store.num_frames
        if not _check_episode_index(store, report):
            return report
        _check_metadata(store, report)
        for name, array in _low_dim_arrays(store):
            _check_rows(store, report, name, array, store.num_frames)
        for key in store.schema.image_keys:
            _check_images(store, report, key, images)
        report.not_checked = _not_checked(store, images)
    return report


def _check_episode_index(store: EpisodeStore, report: VerifyReport) -> bool:
    problem = store.episode_ends_problem
    if problem is None:
        report.chunks_checked += _chunks(store._episode_ends_array.chunks[0], store.num_episodes)
        return True
    if len(store.episode_ends) == store.num_episodes:
        report.damage.append(Damage(EPISODE_ENDS, problem.chunk, f"{problem.detail} (rebuilt from the lengths kept "
                                                                 f"in the episodes' metadata: no episode is lost; "
                                                                 f"repair writes it again)", []))
        return True
    report.fatal = f"{problem.detail}, and it cannot be rebuilt from the episodes' metadata"
    return False


def _check_metadata(store: EpisodeStore, report: VerifyReport) -> None:
    rows = store._episode_info_array.chunks[0]
    for first in range(0, store.num_episodes, rows):
        last = min(first + rows, store.num_episodes)
        try:
            texts = store._read_rows(EPISODE_INFO, store._episode_info_array, first, last)
        except Exception as error:
            report.damage.append(_damage(store, EPISODE_INFO, first, error))
            continue
        finally:
            report.chunks_checked += 1
        for offset, text in enumerate(texts):
            try:
                store._parsed_meta(first + offset, str(text))
            except CorruptStoreError as error:
                report.damage.append(Damage(EPISODE_INFO, error.chunk, error.detail, [first + offset]))


def _low_dim_arrays(store: EpisodeStore) -> list[tuple[str, Any]]:
    arrays = [(f"data/{key}", store._data[key]) for key in store.schema.low_dim_keys]
    if store._noop_array is not None:
        arrays.append((store._noop_name, store._noop_array))
    return arrays


def _check_rows(store: EpisodeStore, report: VerifyReport, name: str, array: Any, saved: int) -> None:
    rows = array.chunks[0]
    for first in range(0, saved, rows):
        report.chunks_checked += 1
        try:
            store._read_rows(name, array, first, min(first + rows, saved))
        except Exception as error:
            report.damage.append(_damage(store, name, first, error))


def _check_images(store: EpisodeStore, report: VerifyReport, key: str, images: ImageCheck) -> None:
    name = f"data/{key}"
    if images == "presence":
        written = set(written_frame_indices(store.path / "data" / key))
        for index in sorted(set(range(store.num_frames)) - written):
            report.damage.append(_damage(store, name, index, store._corrupt_rows(name, index, "is missing")))
        report.image_frames_checked[key] = store.num_frames
        return
    decode = images == "decode" or not store._zstore.guard.arrays[name].checksummed
    read: Callable[[int], Any] = (lambda i: store._read_frame(key, i)) if decode else \
        (lambda i: store.raw_image_chunk(key, i))

    def check(index: int) -> Damage | None:
        try:
            read(index)
        except Exception as error:
            return _damage(store, name, index, error)
        return None

    with ThreadPoolExecutor(IMAGE_THREADS) as pool:
        report.damage += [item for item in pool.map(check, range(store.num_frames)) if item is not None]
    report.image_frames_checked[key] = store.num_frames


def _damage(store: EpisodeStore, name: str, row: int, error: Exception) -> Damage:
    if not isinstance(error, CorruptStoreError) or error.array is None:
        error = store._corrupt_rows(name, row, f"cannot be read ({type(error).__name__}: {error})")
    return Damage(error.array or name, error.chunk, error.detail, list(error.episodes or []))


def _chunks(rows: int, saved: int) -> int:
    return -(-saved // rows)


def _not_checked(store: EpisodeStore, images: ImageCheck) -> list[str]:
    notes = []
    if images == "presence" and store.schema.image_keys:
        notes.append("image frames: only that each one's file exists (`fanvla collect verify` reads them all)")
    if store.checksummed:
        return notes
    notes += [
        "this store was written before chunk checksums (layout 1): a bit flip inside a low-dim, no-op or metadata "
        "chunk is found only when it breaks decoding (zstd) or the episode index's consistency",
        "layout 1 leaves all-zero low-dim chunks out, so a missing low-dim chunk reads as zeros and cannot be told "
        "from one",
        "the store's attributes and commit record carry no checksum in layout 1",
    ]
    if store.schema.image_codec.name == "jpeg":
        notes.append("JPEG frames have no checksum in layout 1: only that each one decodes")
    elif store.schema.image_keys and images != "presence":
        notes.append("PNG frames were checked by decoding them (PNG's own CRC per block), not by a file checksum")
    notes.append(f"`fanvla collect merge NEW.zarr {store.path}` copies it into a store with checksums")
    return notes

