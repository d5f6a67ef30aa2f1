"""Errors of the episode store. Every message says what happened, what is safe, and what to do."""

from __future__ import annotations

from collections.abc import Sequence


class StoreError(Exception):
    """Base class: the episode store cannot do what was asked; nothing saved was lost."""


class StoreNotFoundError(StoreError):
    """No episode store at the given path."""


class NotAStoreError(StoreError):
    """The path exists but is not a fanvla episode store (or one written by a newer fanvla)."""


class IncompatibleStoreError(StoreError):
    """The store was recorded with another configuration (image shape, keys, rate, codec, robot, camera)."""


class StoreLockedError(StoreError):
    """Another process has the store open for writing."""


class StoreNotWritableError(StoreError):
    """The store (or its parent directory) cannot be written: read-only file system or permissions."""


class DiskFullError(StoreError):
    """The disk filled up while writing; the episode in progress was not saved, saved episodes are intact."""


class CorruptStoreError(StoreError):
    """A file the store needs is missing, fails its checksum or cannot be parsed; a crash does not cause this
    (writes are atomic). ``array``, ``chunk`` and ``episodes`` say where, when known; ``detail`` is the problem
    in one short line (without the advice)."""

    def __init__(self, message: str, *, array: str | None = None, chunk: str | None = None,
                 episodes: Sequence[int] | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.array, self.chunk = array, chunk
        self.episodes = list(episodes) if episodes is not None else None
        self.detail = detail or message
