"""Bad input: unknown path, not a store, a store from another fanvla, a read-only directory, a full disk.
Each gets a clear error, and nothing saved is lost."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from collect.atomic_store import set_fault_hook
from collect.errors import CorruptStoreError, DiskFullError, NotAStoreError, StoreNotFoundError, StoreNotWritableError
from collect.store import EpisodeStore
from tests.collect.store_testing import assert_episode_intact, make_step, record_episode, small_schema


def tree_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def mount_tmpfs(directory: Path, size: str) -> bool:
    """A real small file system (needs root and mount rights; False where that is not possible)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                            capture_output=True, check=False)
    return result.returncode == 0


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def test_unknown_path_and_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match=r"no episode store at .*missing\.zarr: the path does not exist"):
        EpisodeStore.open(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match=r"it has no zarr\.json"):
        EpisodeStore.open(tmp_path / "plain", mode="a")
    (tmp_path / "other.zarr").mkdir()
    (tmp_path / "other.zarr" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    with pytest.raises(NotAStoreError, match="not a fanvla episode store"):
        EpisodeStore.open(tmp_path / "other.zarr")


def test_store_from_a_newer_fanvla_and_damaged_metadata(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        record_episode(store, 0, 3)
    root_json = json.loads((path / "zarr.json").read_text())
    root_json["attributes"]["fanvla_episode_store"] = 99
    (path / "zarr.json").write_text(json.dumps(root_json))
    with pytest.raises(NotAStoreError, match="newer fanvla"):
        EpisodeStore.open(path)
    root_json["attributes"]["fanvla_episode_store"] = 1
    (path / "zarr.json").write_text(json.dumps(root_json))
    (path / "data" / "joints_rad" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')  # not from a crash
    with pytest.raises(CorruptStoreError, match="layout is damaged"):
        EpisodeStore.open(path)


def test_existing_path_is_not_overwritten_by_create(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        record_episode(store, 0, 3)
    with pytest.raises(Exception, match="already exists"):
        EpisodeStore.create(path, small_schema())
    assert EpisodeStore.open(path).num_episodes == 1


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory holding a one-episode store, then made read-only (a read-only mount as root, else chmod)."""
    directory = tmp_path / "ro"
    mounted = mount_tmpfs(directory, "4m")
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("running as root without mount rights: permissions cannot make a directory read-only")
        directory.mkdir()
    with EpisodeStore.create(directory / "demos.zarr", small_schema()) as store:
        record_episode(store, 0, 4)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    else:
        for path in [directory, *directory.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield directory
    if mounted:
        unmount(directory)
    else:
        for path in [directory, *directory.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_read_only_directory(read_only_dir):
    path = read_only_dir / "demos.zarr"
    before = tree_digest(path)
    with pytest.raises(StoreNotWritableError, match=r"not writable .* saved episodes are untouched"):
        EpisodeStore.open(path, mode="a")
    with pytest.raises(StoreNotWritableError, match="not writable"):
        EpisodeStore.open_or_create(path, small_schema())
    with pytest.raises(StoreNotWritableError, match="cannot create the episode store"):
        EpisodeStore.create(read_only_dir / "new.zarr", small_schema())
    with EpisodeStore.open(path) as store:  # reading needs no write access
        assert_episode_intact(store, 0, seed=0, steps=4)
    assert tree_digest(path) == before


def fill_disk(directory: Path, leave_bytes: int) -> Path:
    filler = directory / "filler.bin"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def test_disk_full_mid_episode_on_a_real_small_file_system(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "2m"):
        pytest.skip("needs root and mount rights for a small tmpfs (test_disk_full_at_the_commit_record covers "
                    "the same path with an injected ENOSPC)")
    try:
        path = disk / "demos.zarr"
        store = EpisodeStore.create(path, small_schema())
        record_episode(store, 0, 12)
        record_episode(store, 1, 12)
        filler = fill_disk(disk, leave_bytes=24 * 1024)  # room for a few frames, not for an episode
        with pytest.raises(DiskFullError) as raised, store.begin_episode({"instruction": "x"}) as writer:
            for t in range(60):
                writer.add_step(make_step(2, t, store.schema))
            writer.commit()
        message = str(raised.value)
        assert "is full" in message and "The 2 saved episodes (24 frames) are intact" in message
        store.close()
        with EpisodeStore.open(path) as reader:
            assert reader.num_episodes == 2
            for index in range(2):
                assert_episode_intact(reader, index, seed=index, steps=12)
        filler.unlink()  # the operator frees space and resumes
        with EpisodeStore.open_or_create(path, small_schema()) as resumed:
            assert record_episode(resumed, 2, 12) == 2
        with EpisodeStore.open(path) as reader:
            for index in range(3):
                assert_episode_intact(reader, index, seed=index, steps=12)
    finally:
        unmount(disk)


def test_disk_full_at_the_commit_record(tmp_path):
    """ENOSPC injected exactly when the commit record is written: the episode is not saved, the rest is."""
    path = tmp_path / "demos.zarr"

    def no_space_for_the_commit_record(point: str, detail: str) -> None:
        if point == "write" and detail == "meta/zarr.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with EpisodeStore.create(path, small_schema()) as store:
        record_episode(store, 0, 5)
        set_fault_hook(no_space_for_the_commit_record)
        try:
            with pytest.raises(DiskFullError, match=r"is full .*The 1 saved episodes \(5 frames\) are intact"):
                record_episode(store, 1, 5)
        finally:
            set_fault_hook(None)
        assert (store.num_episodes, store.num_frames) == (1, 5)
        assert record_episode(store, 1, 4) == 1  # space again: the same store goes on
    with EpisodeStore.open(path) as reader:
        assert reader.episode_ends.tolist() == [5, 9]
        assert_episode_intact(reader, 0, seed=0, steps=5)
        assert_episode_intact(reader, 1, seed=1, steps=4)
        np.testing.assert_array_equal(reader.array("color")[5], make_step(1, 0, reader.schema)["color"])
