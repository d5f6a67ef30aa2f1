"""Opening a store safely: is it one, may we write it, is another writer at work, and what an OSError means."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from collect.atomic_store import is_disk_full, is_not_writable
from collect.errors import (
    CorruptStoreError,
    DiskFullError,
    NotAStoreError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
    StoreNotWritableError,
)
from collect.layout import FORMAT_TAG
from collect.schema import SCHEMA_VERSION


def check_is_store(path: Path) -> None:
    if not path.exists():
        interrupted = sorted(path.parent.glob(f".{path.name}.repair-*")) if path.parent.is_dir() else []
        if interrupted:
            raise StoreNotFoundError(f"no episode store at {path}: a `fanvla collect repair` was interrupted while "
                                     f"swapping the stores. The repaired copy is {interrupted[-1]} (rename it to "
                                     f"{path}); the original is beside it as {path.name.removesuffix('.zarr')}"
                                     f".quarantine-*.zarr")
        raise StoreNotFoundError(f"no episode store at {path}: the path does not exist (check the path; a new "
                                 f"store is created by recording into it)")
    root_json = path / "zarr.json"
    if not root_json.is_file():
        raise NotAStoreError(f"{path} is not an episode store: it has no zarr.json")
    try:
        attrs = json.loads(root_json.read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError, AttributeError) as error:
        raise CorruptStoreError(f"{root_json} cannot be read ({error})", array="zarr.json") from None
    version = attrs.get(FORMAT_TAG)
    if version is None:
        raise NotAStoreError(f"{path} is a Zarr store but not a fanvla episode store (no '{FORMAT_TAG}' attribute)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptStoreError(f"{root_json}: the store layout version {version!r} is not a layout number",
                                array="zarr.json")
    if version > SCHEMA_VERSION:
        raise NotAStoreError(f"{path} was written by a newer fanvla (store format {version}, this one reads "
                             f"{SCHEMA_VERSION}); upgrade fanvla")


def acquire_writer_lock(path: Path) -> int:
    """An exclusive flock on the root zarr.json (written once at creation, never replaced)."""
    if not os.access(path, os.W_OK) or not os.access(path / "data", os.W_OK):
        raise StoreNotWritableError(
            f"cannot open {path} for appending: the directory is not writable "
            f"({'read-only file system' if read_only_fs(path) else 'permission denied'}). The saved episodes are "
            f"untouched; read them with `fanvla collect info {path}`, or copy the store to a writable disk.")
    fd = os.open(path / "zarr.json", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(f"{path} is open for writing by another process (a recorder, merge or filter); "
                               f"wait for it to finish or stop it first") from None
    return fd


def writer_active(path: Path) -> bool:
    try:
        fd = os.open(path / "zarr.json", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def os_error(action: str, path: Path, error: OSError, saved: tuple[int, int] | None) -> StoreError:
    """A StoreError for an OSError while writing, saying what was lost (only unsaved work) and what to do.

    ``saved``: (episodes, frames) that are committed, hence intact."""
    intact = "" if saved is None else f" The {saved[0]} saved episodes ({saved[1]} frames) are intact."
    if is_disk_full(error):
        return DiskFullError(f"cannot {action}: the disk holding {path} is full ({error.strerror}).{intact} "
                             f"Free some space, then resume with the same store.")
    if is_not_writable(error):
        return StoreNotWritableError(f"cannot {action}: {path} is not writable ({error.strerror}).{intact}")
    return StoreError(f"cannot {action} at {path}: {error}.{intact}")
