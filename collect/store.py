"""The crash-safe Zarr v3 episode store (layout and protocol: docs/episode_store.md).

Frames of all episodes are concatenated under ``data/<key>``; ``meta/episode_ends`` and
``meta/episode_info`` describe the episodes; the *commit record* (attributes of ``meta/``, one
atomically replaced file) says how many episodes and frames are saved. Anything beyond it is an
episode that was being written when the process died: readers ignore it, and opening the store
for appending cuts it off with the message "discarded a partial episode of N frames (not committed)".

    store = EpisodeStore.open_or_create("demos.zarr", recording_schema(config, camera.intrinsics))
    with store.begin_episode({"instruction": ..., "object": ...}) as episode:
        for ...:
            episode.add_step({"color": rgb, "joints_rad": q, ...})
        episode.commit({"duration_s": 12.3, "outcome": "success"})   # leaving without commit discards

    store = EpisodeStore.open("demos.zarr")      # read-only
    store.read_episode(0)["joints_rad"], store.array("color")[17], store.valid_indices()
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

from collect import image_codec
from collect.atomic_store import AtomicLocalStore, fault_point, iter_temp_files
from collect.checked_reads import CheckedReads
from collect.errors import CorruptStoreError, IncompatibleStoreError, StoreError
from collect.integrity import LAYOUT_WITH_CHECKSUMS, append_checksum
from collect.layout import (
    ALWAYS_WRITE,
    FORMAT_TAG,
    IMAGE_CAPACITY_STEP,
    CommittedArray,
    build_empty_store,
    create_noop_array,
    meta_record,
    resize_and_write,
    utc_now_iso,
    written_frame_indices,
)
from collect.noop import NoopThresholds, episode_noop_mask
from collect.schema import SCHEMA_VERSION, StoreSchema, schema_differences
from collect.store_access import acquire_writer_lock, check_is_store, os_error, writer_active
from collect.store_checks import (
    EPISODE_ENDS,
    EPISODE_INFO,
    check_array_metadata,
    check_attributes,
    stored_meta,
)

log = logging.getLogger(__name__)

RESERVED_META_KEYS = frozenset({"index", "start", "frames"})
Mode = Literal["r", "a"]


class EpisodeStore(CheckedReads):
    """An episode store opened for reading (``mode="r"``) or appending (``mode="a"``). Use the classmethods."""

    def __init__(self, path: Path, mode: Mode, *, _lock_fd: int | None, _lenient: bool = False) -> None:
        self.path = path
        self.mode = mode
        self._lock_fd = _lock_fd
        self._zstore = AtomicLocalStore(path, read_only=mode == "r")
        self._episode_ends: np.ndarray | None = None
        # Lenient (verify, repair): a damaged episode index is rebuilt from the episodes' metadata if it can be.
        self.episode_ends_problem: CorruptStoreError | None = None
        try:
            try:
                self._root = zarr.open_group(self._zstore, mode="r" if mode == "r" else "r+")
                self._meta = self._root["meta"]
                attrs = self._root.attrs.asdict()
                self.layout = int(attrs[FORMAT_TAG])
                self.schema = StoreSchema.from_attrs(attrs)
                self.attrs = attrs
                self._data = {key: self._array(f"data/{key}") for key in self.schema.keys}
                self._episode_ends_array = self._array(EPISODE_ENDS)
                self._episode_info_array = self._array(EPISODE_INFO)
                meta_attrs = self._meta.attrs.asdict()
                self._commit = dict(meta_attrs["commit"])
                self._noop = meta_attrs.get("noop")
                self._noop_array = self._array(f"data/noop/{self._noop['array']}") if self._noop else None
            except (KeyError, TypeError, ValueError) as error:
                raise CorruptStoreError(f"{path}: the store's layout is damaged ({type(error).__name__}: {error}); "
                                        f"it was not written by an interrupted fanvla recording (writes are atomic). "
                                        f"Check the files under {path}") from None
            check_attributes(path, attrs, meta_attrs, self.layout)
            check_array_metadata(self)
            self._writer = None
            self._capacity_lock = threading.Lock()
            self._configure_guard()
            self._episode_ends = self._load_episode_ends(lenient=_lenient)
        except BaseException:
            self._release_lock()
            raise

    def _array(self, name: str) -> zarr.Array:
        """An array of the store; layout 2 writes every chunk that holds saved rows, even one of zeros, so a
        missing chunk is always damage (layout 1 left all-zero low-dim chunks out: Zarr's default)."""
        array = self._root[name]
        return array.with_config(ALWAYS_WRITE) if self.checksummed else array

    @property
    def checksummed(self) -> bool:
        """Whether every chunk carries a CRC32C (layout 2 and later); older stores are read without."""
        return self.layout >= LAYOUT_WITH_CHECKSUMS

    # --- opening ------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], schema: StoreSchema, *, layout: int = SCHEMA_VERSION,
               extra_attrs: dict[str, Any] | None = None) -> EpisodeStore:
        """Create a new empty store (built in a temporary directory, then renamed into place) and open it "a".

        ``layout=1`` writes the layout before checksums (only to measure what they cost: bench/store_bench.py);
        ``extra_attrs`` join the root attributes (``repair`` records what it set aside)."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path} already exists; append to it (EpisodeStore.open(path, mode='a'), or resume "
                             f"recording into it) or choose a new path")
        temp_path = path.parent / f".{path.name}.creating-{uuid.uuid4().hex[:8]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            build_empty_store(AtomicLocalStore(temp_path), schema, layout, extra_attrs)
            os.rename(temp_path, path)  # atomic: the store exists completely or not at all
        except OSError as error:
            shutil.rmtree(temp_path, ignore_errors=True)
            raise os_error(f"create the episode store {path}", path.parent, error, saved=None) from error
        log.info("created episode store %s (%s, %s)", path, ", ".join(schema.keys), schema.image_codec.describe())
        return cls.open(path, mode="a")

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: Mode = "r", expect: StoreSchema | None = None, *,
             _lenient: bool = False) -> EpisodeStore:
        """Open an existing store; a partial tail is discarded (with a log message). ``expect``: refuse a store
        recorded with an incompatible configuration (IncompatibleStoreError names every differing field)."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        path = Path(path)
        check_is_store(path)
        lock_fd = acquire_writer_lock(path) if mode == "a" else None
        store = cls(path, mode, _lock_fd=lock_fd, _lenient=_lenient)
        try:
            if expect is not None:
                store.check_compatible(expect)
            store._recover()
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], schema: StoreSchema) -> EpisodeStore:
        """What the recorder calls: a new store, or the existing one for appending if it is compatible."""
        path = Path(path)
        if path.exists():
            store = cls.open(path, mode="a", expect=schema)
            store._warn_if_noop_thresholds_differ(schema.noop)
            log.info("resuming %s: %d episodes, %d frames saved", path, store.num_episodes, store.num_frames)
            return store
        return cls.create(path, schema)

    def check_compatible(self, wanted: StoreSchema) -> None:
        differences = schema_differences(self.schema, wanted)
        if differences:
            raise IncompatibleStoreError(
                f"{self.path} was recorded with another configuration, so new episodes cannot be added to it:\n  "
                + "\n  ".join(differences)
                + "\nUse the hardware.yaml it was recorded with (its snapshot is in the store's attributes: "
                  "fanvla collect info --json), or record into a new store and combine them later if they match.")

    def close(self) -> None:
        if self._writer is not None and self._writer.is_open:
            self._writer.discard()
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple:
        # DataLoader workers (processes) get their own read-only handle; a writer is never shared.
        if self.mode != "r":
            raise TypeError("only a store opened with mode='r' can be sent to another process")
        return (EpisodeStore.open, (str(self.path), "r"))

    def __repr__(self) -> str:
        return (f"EpisodeStore({str(self.path)!r}, mode={self.mode!r}, episodes={self.num_episodes}, "
                f"frames={self.num_frames})")

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        return int(self._commit["episodes"])

    @property
    def num_frames(self) -> int:
        return int(self._commit["frames"])

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64: exclusive end frame of each episode (``episode_slice(i) = ends[i-1]:ends[i]``)."""
        return self._episode_ends.copy()

    def _episode_index(self, index: int) -> int:
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} does not exist: {self.path} has {self.num_episodes} episodes "
                             f"(0..{self.num_episodes - 1})")
        return index % self.num_episodes

    def episode_slice(self, index: int) -> slice:
        index = self._episode_index(index)
        start = int(self._episode_ends[index - 1]) if index > 0 else 0
        return slice(start, int(self._episode_ends[index]))

    def episode_meta(self, index: int) -> dict[str, Any]:
        """The metadata given at ``begin_episode`` and ``commit``, plus ``index``, ``start`` and ``frames``."""
        index = self._episode_index(index)
        text = np.asarray(self._read_rows(EPISODE_INFO, self._episode_info_array, index, index + 1)[0]).item()
        return self._parsed_meta(index, text)

    def episodes_meta(self) -> list[dict[str, Any]]:
        raw = self._read_rows(EPISODE_INFO, self._episode_info_array, 0, self.num_episodes)
        return [self._parsed_meta(i, str(text)) for i, text in enumerate(raw)]

    def array(self, key: str) -> CommittedArray:
        """Lazy access to one per-step key, limited to the committed frames (images decode per frame)."""
        if key not in self._data:
            raise KeyError(f"no per-step key {key!r} in {self.path}; it has {sorted(self._data)}")
        if self.schema.keys[key].is_image:
            return CommittedArray(self._data[key], self.num_frames, functools.partial(self._read_frame, key))
        return CommittedArray(self._data[key], self.num_frames,
                              read_failed=functools.partial(self._undecodable, f"data/{key}", self._data[key]))

    def read_episode(self, index: int, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays of one episode (all keys, or ``keys``) plus its ``noop`` mask."""
        span = self.episode_slice(index)
        episode = {key: self.array(key)[span] for key in (keys if keys is not None else self.schema.keys)}
        episode["noop"] = self.noop_mask()[span]
        return episode

    def noop_mask(self) -> np.ndarray:
        """(F,) bool, True for no-op steps (all False when the store has no no-op keys)."""
        if self._noop_array is None:
            return np.zeros(self.num_frames, dtype=bool)
        return np.asarray(self._read_rows(self._noop_name, self._noop_array, 0, self.num_frames), dtype=bool)

    @property
    def noop_thresholds(self) -> NoopThresholds | None:
        """The thresholds the current mask was computed with (and new episodes will use)."""
        if self._noop is None:
            return None
        return NoopThresholds(self._noop["joint_eps_rad"], self._noop["gripper_eps"])

    @property
    def noop_record(self) -> dict[str, Any] | None:
        """Thresholds, who computed the mask (``record`` or ``filter``) and when."""
        return None if self._noop is None else dict(self._noop)

    def valid_indices(self, skip_noops: bool = True) -> np.ndarray:
        """Frame indices a training view uses: every frame, less the no-op steps unless ``skip_noops=False``."""
        if not skip_noops:
            return np.arange(self.num_frames, dtype=np.int64)
        return np.flatnonzero(~self.noop_mask()).astype(np.int64)

    def episode_of(self, frames: int | np.ndarray) -> np.ndarray:
        """Episode index of each frame index."""
        return np.searchsorted(self._episode_ends, np.asarray(frames), side="right")

    # --- writing ------------------------------------------------------------------------------------------

    def begin_episode(self, meta: Mapping[str, Any] | None = None, *, image_queue: int = 8, image_threads: int = 2):
        """Start an episode; returns an :class:`~collect.episode_writer.EpisodeWriter` (also a context manager).

        Image frames are encoded and written by ``image_threads`` background threads with at most
        ``image_queue`` steps waiting (then ``add_step`` blocks); ``image_queue=0`` writes in ``add_step``."""
        from collect.episode_writer import EpisodeWriter

        self._require_writable("record an episode")
        if self._writer is not None and self._writer.is_open:
            raise StoreError(f"episode {self._writer.index} is still open in {self.path}: commit or discard it first")
        self._writer = EpisodeWriter(self, dict(meta or {}), image_queue=image_queue, image_threads=image_threads)
        return self._writer

    def _require_writable(self, action: str) -> None:
        if self.mode != "a":
            raise StoreError(f"cannot {action}: {self.path} is open read-only; open it with mode='a'")

    def _image_capacity(self, key: str, frames: int) -> None:
        """Grow an image array (in steps) so that frame ``frames - 1`` can be written."""
        array = self._data[key]
        with self._capacity_lock:  # image writer threads grow arrays one at a time
            if array.shape[0] < frames:
                capacity = -(-frames // IMAGE_CAPACITY_STEP) * IMAGE_CAPACITY_STEP
                array.resize((capacity, *array.shape[1:]))

    def _write_image(self, key: str, index: int, frame: np.ndarray | bytes) -> None:
        """Encode one frame with the array's codec and write it as its chunk file (bytes: already encoded, merge).

        The same bytes Zarr's ``array[index] = frame`` would write, without its per-call overhead (~4 ms)."""
        self._image_capacity(key, index + 1)
        if not isinstance(frame, bytes):
            codec = self._image_codec(key)
            frame = image_codec.encode_frame(np.ascontiguousarray(frame), codec.image_format, codec.level)
        if self.image_checksummed(key):
            frame = append_checksum(frame)
        self._zstore.set_sync(self._image_chunk_key(key, index), default_buffer_prototype().buffer.from_bytes(frame))

    def _commit_episode(self, start: int, columns: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int:
        """Write the low-dim data, the no-op mask and the episode's metadata, then the commit record (last)."""
        steps = len(next(iter(columns.values()))) if columns else 0
        end, index = start + steps, self.num_episodes
        fault_point("commit:start", str(index))
        writes: list[tuple[zarr.Array, int, slice | None, Any]] = [
            (self._data[key], end, slice(start, end), columns[key]) for key in self.schema.low_dim_keys]
        if self._noop_array is not None:
            mask = episode_noop_mask(columns["joints_rad"], columns["command_joints_rad"], columns["command_gripper"],
                                     columns["gripper_state"], self.noop_thresholds)
            writes.append((self._noop_array, end, slice(start, end), mask))
        writes += [(self._data[key], end, None, None) for key in self.schema.image_keys]  # drop spare capacity
        writes.append((self._episode_ends_array, index + 1, slice(index, index + 1), np.array([end], np.int64)))
        writes.append((self._episode_info_array, index + 1, slice(index, index + 1),
                       np.array([json.dumps(stored_meta(meta, steps, self.checksummed))], dtype=object)))
        resize_and_write(writes)
        fault_point("commit:before_sync", str(index))
        self._zstore.sync_to_disk()
        fault_point("commit:before_record", str(index))
        self._write_meta_attrs({"episodes": index + 1, "frames": end, "committed_at": utc_now_iso()}, self._noop)
        self._episode_ends = np.append(self._episode_ends, np.int64(end))
        fault_point("commit:after_record", str(index))
        self._zstore.sync_to_disk()  # the directory entry of the new record
        return index

    def _write_meta_attrs(self, commit: dict[str, Any], noop: dict[str, Any] | None) -> None:
        """The commit point: one atomic, fsynced replacement of meta/zarr.json; the cache follows only on success."""
        self._meta.update_attributes(meta_record(commit, noop, self.checksummed))
        self._commit, self._noop = commit, noop

    def _truncate_to_commit(self) -> None:
        """Cut every array back to the committed frames/episodes (the frames of an unsaved episode go)."""
        self._require_writable("truncate")
        frames, episodes = self.num_frames, self.num_episodes
        arrays = [*self._data.values(), *([self._noop_array] if self._noop_array is not None else [])]
        cuts = [(array, frames, None, None) for array in arrays if array.shape[0] != frames]
        cuts += [(array, episodes, None, None) for array in (self._episode_ends_array, self._episode_info_array)
                 if array.shape[0] != episodes]
        resize_and_write(cuts)
        self._zstore.sync_to_disk()

    def replace_noop_mask(self, mask: np.ndarray, thresholds: NoopThresholds, source: str = "filter") -> None:
        """Swap in a new no-op mask atomically: written as a new array, then the pointer in meta/ flips.

        Raw data is not touched; a kill at any instant leaves the old or the new mask."""
        self._require_writable("replace the no-op mask")
        if self._writer is not None and self._writer.is_open:
            raise StoreError(f"cannot replace the no-op mask while episode {self._writer.index} is being recorded")
        if self._noop is None:
            raise StoreError(f"{self.path} has no no-op mask (its schema lacks {self.schema.missing_noop_keys})")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_frames,):
            raise ValueError(f"no-op mask must have shape ({self.num_frames},), got {mask.shape}")
        old_name = self._noop["array"]
        new_name = f"g{int(old_name[1:]) + 1}"
        new_array = create_noop_array(self._root.require_group("data/noop"), new_name, overwrite=True,
                                      checksummed=self.checksummed)
        new_array.resize((self.num_frames,))
        new_array[:] = mask
        self._zstore.sync_to_disk()
        fault_point("noop:before_switch", new_name)
        record = {"array": new_name, **thresholds.to_dict(), "source": source, "computed_at": utc_now_iso()}
        self._write_meta_attrs(dict(self._commit), record)
        fault_point("noop:after_switch", new_name)
        self._zstore.sync_to_disk()
        self._noop_array = new_array
        self._configure_guard()
        self._remove_unused_noop_arrays()

    # --- recovery -----------------------------------------------------------------------------------------

    def _tail_frames(self) -> int:
        """Frames written beyond the commit record (an episode that never committed)."""
        frames = self.num_frames
        tail = max((array.shape[0] - frames for key, array in self._data.items() if key in self.schema.low_dim_keys),
                   default=0)
        for key in self.schema.image_keys:
            written = written_frame_indices(self.path / "data" / key)
            tail = max(tail, sum(1 for index in written if index >= frames))
        return max(tail, 0)

    def _recover(self) -> None:
        tail = self._tail_frames()
        if self.mode == "r":
            if tail and writer_active(self.path):
                log.info("%s: an episode is being recorded by another process (%d frames so far, not committed); "
                         "showing the %d saved episodes", self.path, tail, self.num_episodes)
            elif tail:
                log.warning("%s: discarded a partial episode of %d frames (not committed); it stays on disk until "
                            "the store is next opened for appending", self.path, tail)
            return
        fault_point("recover:start", str(tail))
        try:
            self._truncate_to_commit()
            for temp_file in iter_temp_files(self.path):
                temp_file.unlink(missing_ok=True)
            self._remove_unused_noop_arrays()
        except OSError as error:
            raise os_error("recover the store", self.path, error, saved=(self.num_episodes, self.num_frames)) from error
        if tail:
            log.warning("%s: discarded a partial episode of %d frames (not committed)", self.path, tail)

    def _remove_unused_noop_arrays(self) -> None:
        noop_dir = self.path / "data" / "noop"
        current = self._noop["array"] if self._noop else None
        if not noop_dir.is_dir():
            return
        for entry in noop_dir.iterdir():
            if entry.is_dir() and entry.name != current:
                shutil.rmtree(entry)

    def _warn_if_noop_thresholds_differ(self, wanted: NoopThresholds | None) -> None:
        current = self.noop_thresholds
        if wanted is not None and current is not None and current != wanted:
            log.warning("%s keeps its no-op thresholds %s (hardware.yaml now says %s); new episodes use the store's. "
                        "Run `fanvla collect filter %s` to recompute the mask with other thresholds.",
                        self.path, current.to_dict(), wanted.to_dict(), self.path)
