"""A Zarr ``LocalStore`` whose every file write is atomic and whose durability is ordered.

Zarr 3.1's ``LocalStore`` already writes through a temporary file and a rename, but it never calls
``fsync``: after a power cut a renamed file can come back empty, and a ``zarr.json`` that comes back
empty makes the whole store refuse to open. This store keeps Zarr's layout and adds:

- every write goes to a hidden temporary file in the same directory, then ``os.replace``;
- a write that *replaces* an existing file (every ``zarr.json``, a low-dim chunk that already holds
  saved frames) is fsynced before the rename, so after any crash the old or the new version is there;
- a write that *creates* a file (a new image frame) is not fsynced at once (that would cost one disk
  flush per frame); it is remembered and fsynced, with the directories holding it, by
  :meth:`AtomicLocalStore.sync_to_disk`, which the episode writer calls before writing its commit record.

Every full read of a chunk passes the store's :class:`~collect.integrity.ChunkGuard` (shared by the store's
clones), which checks that the chunk exists and that its checksum matches before Zarr decodes it.

Crash tests stop a process at named points through :func:`set_fault_hook` (see tests/collect).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore

from collect.integrity import ChunkGuard

TEMP_SUFFIX = ".tmp"
SYNC_THREADS = 8
# Zarr's own LocalStore leaves ``*.partial`` files behind when killed; we never create them, but a
# store touched by plain zarr may hold some.
FOREIGN_TEMP_SUFFIX = ".partial"

FaultHook = Callable[[str, str], None]
_fault_hook: FaultHook | None = None


def set_fault_hook(hook: FaultHook | None) -> None:
    """Install ``hook(point, detail)``, called at every named point of the write path (None removes it).

    Points: ``write`` (before a file is written; detail = store key), ``replace`` (temp file written,
    before the rename), and the episode writer's ``step_written``, ``commit:start``,
    ``commit:before_sync``, ``commit:before_record``, ``commit:after_record``, ``noop:before_switch``,
    ``noop:after_switch``,
    ``recover:start``. Used by the crash tests to SIGKILL a process at an exact moment.
    """
    global _fault_hook
    _fault_hook = hook


def fault_point(point: str, detail: str = "") -> None:
    hook = _fault_hook
    if hook is not None:
        hook(point, detail)


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def is_not_writable(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes | memoryview, *, fsync_now: bool = True) -> None:
    """Write ``path`` via a temp file + ``os.replace``; readers see the old or the new file, never a mix."""
    temp_path = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}"
    try:
        with open(temp_path, "wb") as handle:
            handle.write(data)
            if fsync_now:
                handle.flush()
                os.fsync(handle.fileno())
        fault_point("replace", str(path))
        os.replace(temp_path, path)
    except BaseException:
        # Includes ENOSPC half-way through: leave no temp file behind (a SIGKILL does; recovery removes it).
        temp_path.unlink(missing_ok=True)
        raise


class _SyncLedger:
    """Files and directories written since the last ``sync_to_disk``; shared by the store's clones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.files: set[Path] = set()
        self.dirs: set[Path] = set()


class AtomicLocalStore(LocalStore):
    """``LocalStore`` with atomic, durably ordered writes (see the module docstring)."""

    def __init__(self, root: Path | str, *, read_only: bool = False, _ledger: _SyncLedger | None = None,
                 _guard: ChunkGuard | None = None) -> None:
        super().__init__(root, read_only=read_only)
        self._ledger = _ledger or _SyncLedger()
        self.guard = _guard or ChunkGuard()

    def with_read_only(self, read_only: bool = False) -> Self:
        return type(self)(root=self.root, read_only=read_only, _ledger=self._ledger, _guard=self.guard)

    # --- reads: every whole chunk is checked (byte ranges are only used by Zarr for sharded arrays: none here) --

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        buffer = await super().get(key, prototype, byte_range)
        if byte_range is None:
            self.guard.check(key, None if buffer is None else buffer.to_bytes())
        return buffer

    def get_sync(self, key: str, *, prototype: BufferPrototype | None = None,
                 byte_range: ByteRequest | None = None) -> Buffer | None:
        buffer = super().get_sync(key, prototype=prototype, byte_range=byte_range)
        if byte_range is None:
            self.guard.check(key, None if buffer is None else buffer.to_bytes())
        return buffer

    # --- writes -----------------------------------------------------------------------------------------

    def _put(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        path = self.root / key
        fault_point("write", key)
        self._make_parents(path.parent)
        replacing = path.exists()
        if exclusive and replacing:
            raise FileExistsError(str(path))
        # Replacing a file must never leave an empty one after a power cut: fsync before the rename.
        fsync_now = replacing or path.name == "zarr.json"
        write_file_atomically(path, value.as_buffer_like(), fsync_now=fsync_now)
        with self._ledger.lock:
            if not fsync_now:
                self._ledger.files.add(path)
            self._ledger.dirs.add(path.parent)

    def _make_parents(self, directory: Path) -> None:
        missing = []
        probe = directory
        while not probe.exists() and probe.parent != probe:
            missing.append(probe)
            probe = probe.parent
        if not missing:
            return
        directory.mkdir(parents=True, exist_ok=True)
        with self._ledger.lock:
            self._ledger.dirs.update(p.parent for p in missing)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._check_writable()
        self._put(key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"AtomicLocalStore.set(): value must be a Buffer, got {type(value)}")
        await asyncio.to_thread(self._put, key, value, exclusive)

    async def delete(self, key: str) -> None:
        await super().delete(key)
        with self._ledger.lock:
            self._ledger.dirs.add((self.root / key).parent)

    def delete_sync(self, key: str) -> None:
        super().delete_sync(key)
        with self._ledger.lock:
            self._ledger.dirs.add((self.root / key).parent)

    # --- durability -------------------------------------------------------------------------------------

    def sync_to_disk(self) -> None:
        """fsync every file created since the last call, then the directories holding new names."""
        with self._ledger.lock:
            files, dirs = self._ledger.files, self._ledger.dirs
            self._ledger.files, self._ledger.dirs = set(), set()
        # Flushes issued side by side cost little more than one: the disk merges them.
        with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
            list(pool.map(_fsync_if_present, files))
            list(pool.map(_fsync_if_present, dirs))


def _fsync_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # deleted since (a discarded frame): nothing to persist
        fsync_path(path)


def iter_temp_files(root: Path) -> Iterator[Path]:
    """Temporary files left by a killed writer (ours and plain Zarr's)."""
    for directory, _, names in os.walk(root):
        for name in names:
            if (name.startswith(".") and name.endswith(TEMP_SUFFIX)) or name.endswith(FOREIGN_TEMP_SUFFIX):
                yield Path(directory) / name
