"""Writing one episode: steps stream to disk as they come, the episode becomes visible only at commit.

Image frames are encoded and written by background threads (so a 10 Hz control loop does not wait
for PNG encoding) into the store's arrays beyond the committed frames, where no reader looks. Low-dim
values stay in memory (a few hundred bytes a step) and are written at commit, followed by the
no-op mask, the episode's metadata and, last, the commit record (collect/store.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from collect.atomic_store import fault_point
from collect.errors import StoreError
from collect.store import RESERVED_META_KEYS
from collect.store_access import os_error

if TYPE_CHECKING:
    from collect.store import EpisodeStore

log = logging.getLogger(__name__)


def _check_json(meta: Mapping[str, Any], what: str) -> None:
    reserved = RESERVED_META_KEYS & set(meta)
    if reserved:
        raise ValueError(f"{what}: keys {sorted(reserved)} are reserved (the store computes them)")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be JSON-serialisable (str, numbers, lists, dicts; no NaN): {error}") from None


class _BackgroundImages:
    """Writes image frames on worker threads (the codecs release the GIL, so they encode side by side);
    at most ``limit`` steps wait (then ``submit`` blocks)."""

    def __init__(self, store: EpisodeStore, limit: int, threads: int) -> None:
        self._store = store
        self._pool = ThreadPoolExecutor(max(threads, 1), thread_name_prefix="episode-images") if limit > 0 else None
        self._slots = threading.BoundedSemaphore(max(limit, 1))
        self._pending: list[Future] = []
        self.error: BaseException | None = None

    def submit(self, index: int, frames: dict[str, np.ndarray | bytes]) -> None:
        self.raise_error()
        if self._pool is None:
            self._write(index, frames)
            return
        self._slots.acquire()
        future = self._pool.submit(self._write, index, frames)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending = [f for f in self._pending if not f.done()] + [future]

    def _write(self, index: int, frames: dict[str, np.ndarray | bytes]) -> None:
        if self.error is not None:
            return  # an earlier frame failed: the episode cannot be saved, skip the rest
        try:
            for key, frame in frames.items():
                self._store._write_image(key, index, frame)
                fault_point("step_written", f"{key}:{index}")
        except BaseException as error:
            self.error = error
            raise

    def drain(self) -> None:
        """Wait until every submitted frame is on disk; raise the first error."""
        for future in self._pending:
            future.exception()  # waits
        self._pending = []
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class EpisodeWriter:
    """One episode being recorded. ``add_step`` per tick, then ``commit`` (or ``discard``).

    As a context manager, leaving the block without ``commit`` discards the episode."""

    def __init__(self, store: EpisodeStore, meta: dict[str, Any], *, image_queue: int = 8,
                 image_threads: int = 2) -> None:
        _check_json(meta, "episode metadata")
        self._store = store
        self._schema = store.schema
        self._meta = meta
        self.index = store.num_episodes
        self._start = store.num_frames
        self._columns: dict[str, list[np.ndarray]] = {key: [] for key in self._schema.low_dim_keys}
        self._images = _BackgroundImages(store, image_queue, image_threads)
        self._steps = 0
        self._state = "open"

    @property
    def is_open(self) -> bool:
        return self._state == "open"

    @property
    def num_steps(self) -> int:
        return self._steps

    def add_step(self, step: Mapping[str, Any]) -> int:
        """Append one step (every key of the schema; images as arrays, or encoded bytes when merging).

        Returns the step's index within the episode. A step with missing, unknown or mis-shaped keys is
        rejected (ValueError) and nothing of it is kept; the episode stays open."""
        self._require_open("add a step")
        values = self._validated(step)
        frames = {key: values[key] for key in self._schema.image_keys}
        try:
            self._images.submit(self._start + self._steps, frames)
        except OSError as error:
            self._fail(error)
        for key in self._schema.low_dim_keys:
            self._columns[key].append(values[key])
        self._steps += 1
        return self._steps - 1

    def _validated(self, step: Mapping[str, Any]) -> dict[str, np.ndarray | bytes]:
        expected = self._schema.keys
        missing, unknown = sorted(set(expected) - set(step)), sorted(set(step) - set(expected))
        if missing or unknown:
            raise ValueError(f"episode {self.index} step {self._steps}: missing keys {missing}, unknown keys "
                             f"{unknown}; the store's keys are {list(expected)}")
        values: dict[str, np.ndarray | bytes] = {}
        for key, spec in expected.items():
            if spec.is_image and isinstance(step[key], bytes):
                values[key] = step[key]
                continue
            value = np.asarray(step[key])
            if value.shape != spec.shape:
                raise ValueError(f"episode {self.index} step {self._steps}: {key} has shape {value.shape}, "
                                 f"the store expects {spec.shape} ({spec.unit})")
            if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
                raise ValueError(f"episode {self.index} step {self._steps}: {key} has dtype {value.dtype}, "
                                 f"which does not convert to the store's {spec.dtype}")
            # A copy: cameras and teleop devices reuse their buffers while the frame waits to be written.
            values[key] = np.array(value, dtype=spec.dtype, copy=True)
        return values

    def commit(self, extra_meta: Mapping[str, Any] | None = None) -> int:
        """Make the episode visible (atomically); returns its index. ``extra_meta`` joins the metadata."""
        self._require_open("commit")
        if self._steps == 0:
            raise StoreError(f"episode {self.index} has no steps; discard it instead of committing")
        meta = {**self._meta, **dict(extra_meta or {})}
        _check_json(meta, "episode metadata")
        columns = {key: np.stack(values) for key, values in self._columns.items()}
        try:
            self._images.drain()
            index = self._store._commit_episode(self._start, columns, meta)
        except OSError as error:
            self._fail(error)
        self._finish("committed")
        log.info("saved episode %d (%d steps) in %s", index, self._steps, self._store.path)
        return index

    def discard(self) -> None:
        """Throw the episode away (nothing of it becomes visible); a no-op once committed or discarded."""
        if self._state != "open":
            return
        self._finish("discarded")
        self._cut_tail()
        log.info("discarded episode %d (%d steps, not saved)", self.index, self._steps)

    def _cut_tail(self) -> None:
        try:
            self._store._truncate_to_commit()
        except OSError as error:  # e.g. still no space: the next open for appending cuts it off
            log.warning("could not remove the unsaved frames now (%s); they are discarded when the store is next "
                        "opened for appending", error)

    def _fail(self, error: OSError) -> None:
        self._finish("failed")
        self._cut_tail()
        raise os_error(f"save episode {self.index} ({self._steps} steps recorded, not saved)", self._store.path,
                       error, saved=(self._store.num_episodes, self._store.num_frames)) from error

    def _finish(self, state: str) -> None:
        self._state = state
        try:
            self._images.drain()
        except BaseException as error:  # already reported by the caller, or the episode is being thrown away
            log.debug("image writer stopped: %s", error)
        self._images.shutdown()
        self._columns = {}

    def _require_open(self, action: str) -> None:
        if self._state != "open":
            raise StoreError(f"cannot {action}: episode {self.index} is already {self._state}")

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._state == "open":
            if exc_type is not None:
                log.warning("episode %d discarded because of %s", self.index, exc_type.__name__)
            self.discard()
