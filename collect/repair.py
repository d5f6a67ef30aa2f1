"""``fanvla collect repair STORE --quarantine``: keep the intact episodes, move the damaged store aside.

What happens, in this order (the store's writer lock is held throughout, so no recorder can join in):

1. ``verify_store`` finds the damaged episodes (every chunk read and checked).
2. The intact episodes are copied, through the same checks, into a new store next to it
   (``.<name>.repair-<id>``; layout 2, so it has checksums even when the original had none), which is then
   verified in full.
3. The original directory, untouched and holding the damaged episodes, is renamed to the quarantine path
   (default ``<name>.quarantine-<UTC time>.zarr`` beside it) with ``repair_report.json`` inside; the new store
   takes the original's name. Nothing is deleted: remove the quarantine when you no longer need it.

A kill before step 3 leaves the original as it was (the hidden copy is removed by the next repair). A kill
between the two renames leaves the original at the quarantine path and the complete copy at its hidden name;
``EpisodeStore.open`` then names both.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from collect.atomic_store import fsync_path
from collect.errors import StoreError
from collect.layout import utc_now_iso
from collect.merge import copy_episode
from collect.store import EpisodeStore
from collect.store_access import acquire_writer_lock, check_is_store, os_error
from collect.verify import VerifyReport, verify_store

log = logging.getLogger(__name__)

REPORT_NAME = "repair_report.json"
REPAIR_TEMP_INFIX = ".repair-"


@dataclass(frozen=True)
class RepairResult:
    path: Path
    kept: list[int]  # original indices of the episodes in the repaired store, in order
    set_aside: list[int]  # original indices of the damaged episodes
    quarantine: Path | None  # where the original store went (None: nothing to repair)
    report: VerifyReport

    def text(self) -> str:
        if self.quarantine is None:
            return f"{self.path}: nothing to repair (all {len(self.kept)} episodes intact)"
        return (f"{self.path}: kept {len(self.kept)} intact episodes (verified); set aside {len(self.set_aside)} "
                f"damaged episode(s) {self.set_aside}. The original store, untouched, is now {self.quarantine} "
                f"(with {REPORT_NAME}); delete it when you no longer need the damaged episodes.")


def default_quarantine(path: Path) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return path.parent / f"{path.name.removesuffix('.zarr')}.quarantine-{stamp}.zarr"


def repair_store(path: str | os.PathLike[str], quarantine: str | os.PathLike[str] | None = None) -> RepairResult:
    """Keep the intact episodes of the store at ``path``; move the original (with the damaged ones) aside."""
    path = Path(path)
    check_is_store(path)
    target = Path(quarantine) if quarantine is not None else default_quarantine(path)
    if target.exists():
        raise StoreError(f"the quarantine path {target} already exists; give another with --to")
    lock_fd = acquire_writer_lock(path)  # no recorder, merge or filter may write while we decide
    try:
        _remove_stale_copies(path)
        report = verify_store(path)
        if report.fatal is not None:
            raise StoreError(f"cannot repair {path}: {report.fatal}. Nothing was changed; restore it from a backup")
        if report.ok:
            return RepairResult(path, list(range(report.episodes)), [], None, report)
        kept = report.intact_episodes
        copy = _copy_intact(path, kept, report, target)
        _swap(path, copy, target, report, kept)
    finally:
        os.close(lock_fd)
    result = RepairResult(path, kept, sorted(report.damaged_episodes), target, report)
    log.info("%s", result.text())
    return result


def _remove_stale_copies(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}{REPAIR_TEMP_INFIX}*"):
        log.info("removing %s, left by an interrupted repair before it finished", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _copy_intact(path: Path, kept: list[int], report: VerifyReport, target: Path) -> Path:
    copy = path.parent / f".{path.name}{REPAIR_TEMP_INFIX}{uuid.uuid4().hex[:8]}"
    with EpisodeStore.open(path, mode="r", _lenient=True) as source:
        schema = replace(source.schema, noop=source.noop_thresholds or source.schema.noop)
        record = {"repaired_at": utc_now_iso(), "original_created_at": source.attrs.get("created_at"),
                  "quarantine": str(target.resolve()), "kept": kept, "set_aside": sorted(report.damaged_episodes)}
        try:
            with EpisodeStore.create(copy, schema, extra_attrs={"repair": record}) as out:
                for index in kept:
                    copy_episode(source, index, out, {"repaired_from": {"store": str(target.resolve()),
                                                                        "episode": index}})
        except BaseException:
            shutil.rmtree(copy, ignore_errors=True)
            raise
    check = verify_store(copy)
    if not check.ok:
        shutil.rmtree(copy, ignore_errors=True)
        raise StoreError(f"the repaired copy of {path} did not verify ({check.text()}); nothing was changed")
    return copy


def _swap(path: Path, copy: Path, target: Path, report: VerifyReport, kept: list[int]) -> None:
    document: dict[str, Any] = {**report.to_dict(), "repaired_at": utc_now_iso(), "kept": kept,
                                "repaired_store": str(path.resolve())}
    try:
        (path / REPORT_NAME).write_text(json.dumps(document, indent=2), encoding="utf-8")
        os.rename(path, target)
        os.rename(copy, path)
        fsync_path(path.parent)
        if target.parent != path.parent:
            fsync_path(target.parent)
    except OSError as error:
        raise os_error("move the repaired store into place", path, error, saved=None) from error
