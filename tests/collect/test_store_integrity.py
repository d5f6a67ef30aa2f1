"""Nothing silent: a chunk of a saved episode that is missing, truncated or changed on disk is an error naming the
store, the array, the chunk and the episodes; never a fill value, a raw codec traceback or silently wrong numbers.

The probes of issue 27 (each failed on the store before checksums): a deleted PNG read back as a black frame and a
deleted joints chunk as zeros; a bit flip in a compressed low-dim chunk changed values silently; a truncated or
CRC-broken PNG, a truncated ``episode_ends`` and a flipped ``episode_info`` raised raw PngError / zstd errors.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from collect.errors import CorruptStoreError
from collect.store import EpisodeStore
from tests.collect.store_testing import record_episode, small_schema

EPISODE_STEPS = (9, 12, 7)  # frames 0..8, 9..20, 21..27
FLIPS_PER_KIND = 200


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("integrity") / "demos.zarr"
    with EpisodeStore.create(path, small_schema(record_depth=True)) as store:
        for seed, steps in enumerate(EPISODE_STEPS):
            record_episode(store, seed, steps)
    return path


@pytest.fixture
def store_path(pristine, tmp_path) -> Path:
    path = tmp_path / "demos.zarr"
    shutil.copytree(pristine, path)
    return path


def flip_bit(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


# --- the probes ------------------------------------------------------------------------------------------------

def test_a_deleted_png_chunk_is_an_error_not_a_black_frame(store_path):
    (store_path / "data" / "color" / "c.13.0.0.0").unlink()
    with EpisodeStore.open(store_path) as store:
        np.testing.assert_array_equal(store.array("color")[12], store.array("color")[12])  # neighbours still read
        with pytest.raises(CorruptStoreError) as error:
            store.array("color")[13]
        with pytest.raises(CorruptStoreError):
            store.read_episode(1)
    message = str(error.value)
    assert str(store_path) in message and "data/color/c.13.0.0.0 is missing" in message
    assert "frame 13 of episode 1" in message and "fanvla collect repair" in message
    assert (error.value.array, error.value.chunk, error.value.episodes) == ("data/color", "c.13.0.0.0", [1])


def test_a_deleted_joints_chunk_is_an_error_not_zeros(store_path):
    (store_path / "data" / "joints_rad" / "c.0.0").unlink()
    with EpisodeStore.open(store_path) as store:
        for read in (lambda: store.array("joints_rad")[:], lambda: store.array("joints_rad")[3],
                     lambda: store.read_episode(2)):
            with pytest.raises(CorruptStoreError, match=r"data/joints_rad/c\.0\.0 is missing; it holds frames "
                                                        r"0\.\.27 of episodes 0\.\.2"):
                read()
        store.array("tcp_pose")[:]  # other arrays are not affected


def test_a_bit_flip_in_a_compressed_low_dim_chunk_is_caught(store_path):
    chunk = store_path / "data" / "joints_rad" / "c.0.0"
    flip_bit(chunk, 8 * (chunk.stat().st_size // 2) + 3)
    with EpisodeStore.open(store_path) as store, \
            pytest.raises(CorruptStoreError, match=r"data/joints_rad/c\.0\.0 fails its CRC32C checksum"):
        store.array("joints_rad")[:]


@pytest.mark.parametrize("damage", ["truncated", "crc-broken"])
def test_a_truncated_or_crc_broken_png_names_the_file_and_episode(store_path, damage):
    chunk = store_path / "data" / "depth_mm" / "c.25.0.0"
    if damage == "truncated":
        truncate(chunk, chunk.stat().st_size // 2)
    else:
        flip_bit(chunk, 8 * 29)  # inside the IHDR chunk's CRC
    with EpisodeStore.open(store_path) as store, pytest.raises(CorruptStoreError) as error:
        store.array("depth_mm")[25]
    assert "data/depth_mm/c.25.0.0" in str(error.value) and "frame 25 of episode 2" in str(error.value)


def test_a_truncated_episode_index_fails_the_open_naming_it(store_path):
    truncate(store_path / "meta" / "episode_ends" / "c.0", 5)
    with pytest.raises(CorruptStoreError, match=r"meta/episode_ends/c\.0 fails its CRC32C .* episodes 0\.\.2"):
        EpisodeStore.open(store_path)


def test_a_flipped_episode_info_names_the_chunk_not_a_zstd_error(store_path):
    flip_bit(store_path / "meta" / "episode_info" / "c.0", 8 * 10 + 1)
    with EpisodeStore.open(store_path) as store:
        with pytest.raises(CorruptStoreError, match=r"meta/episode_info/c\.0 fails its CRC32C .* episodes 0\.\.2"):
            store.episodes_meta()
        with pytest.raises(CorruptStoreError):
            store.episode_meta(1)


def test_the_commit_record_and_the_store_attributes_are_checksummed(store_path):
    meta_json = store_path / "meta" / "zarr.json"
    meta_json.write_text(meta_json.read_text().replace('"frames": 28', '"frames": 20'))
    with pytest.raises(CorruptStoreError, match=r"commit record .* does not match its checksum"):
        EpisodeStore.open(store_path)


def test_damaged_root_attributes_and_array_metadata(pristine, tmp_path):
    path = tmp_path / "a.zarr"
    shutil.copytree(pristine, path)
    root_json = path / "zarr.json"
    root_json.write_text(root_json.read_text().replace('"rate_hz": 10.0', '"rate_hz": 12.0'))
    with pytest.raises(CorruptStoreError, match=r"attributes .* do not match their checksum"):
        EpisodeStore.open(path)
    path = tmp_path / "b.zarr"
    shutil.copytree(pristine, path)
    array_json = path / "data" / "tcp_pose" / "zarr.json"
    array_json.write_text(array_json.read_text().replace("28", "20", 1))  # its shape: fewer rows than saved
    with pytest.raises(CorruptStoreError, match=r"data/tcp_pose has 20 rows, the commit record says 28"):
        EpisodeStore.open(path)


# --- fault injection: every kind of array, every kind of damage, nothing silent ---------------------------------

def _read_images(path: Path) -> None:
    with EpisodeStore.open(path) as store:
        for index in range(store.num_frames):
            store.array("color")[index]


def _read_low_dim(path: Path) -> None:
    with EpisodeStore.open(path) as store:
        store.array("joints_rad")[:]


def _read_noop(path: Path) -> None:
    with EpisodeStore.open(path) as store:
        store.valid_indices()


def _read_index(path: Path) -> None:
    EpisodeStore.open(path).close()


def _read_metadata(path: Path) -> None:
    with EpisodeStore.open(path) as store:
        store.episodes_meta()


KINDS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "image": ("data/color/c.13.0.0.0", _read_images),
    "low-dim": ("data/joints_rad/c.0.0", _read_low_dim),
    "no-op mask": ("data/noop/g0/c.0", _read_noop),
    "episode index": ("meta/episode_ends/c.0", _read_index),
    "metadata": ("meta/episode_info/c.0", _read_metadata),
}


def _detected(path: Path, read: Callable[[Path], None], chunk: str) -> bool:
    try:
        read(path)
    except CorruptStoreError as error:
        assert chunk.rsplit("/", 1)[1] in str(error) and str(path) in str(error)
        return True
    return False


@pytest.mark.parametrize("kind", list(KINDS))
def test_fault_injection_deletion_truncation_and_random_bit_flips_are_all_detected(store_path, kind):
    chunk, read = KINDS[kind]
    file = store_path / chunk
    original = file.read_bytes()
    read(store_path)  # intact: reads
    rng = np.random.default_rng(27)
    outcomes = {"deletion": [], "truncation": [], "bit flip": []}
    file.unlink()
    outcomes["deletion"].append(_detected(store_path, read, chunk))
    for size in sorted({0, 1, 3, len(original) // 2, len(original) - 4, len(original) - 1}):
        file.write_bytes(original[:size])
        outcomes["truncation"].append(_detected(store_path, read, chunk))
    for bit in rng.choice(8 * len(original), size=min(FLIPS_PER_KIND, 8 * len(original)), replace=False):
        file.write_bytes(original)
        flip_bit(file, int(bit))
        outcomes["bit flip"].append(_detected(store_path, read, chunk))
    file.write_bytes(original)
    read(store_path)  # restored: reads again
    assert len(outcomes["bit flip"]) == FLIPS_PER_KIND
    silent = {damage: results.count(False) for damage, results in outcomes.items()}
    assert silent == {"deletion": 0, "truncation": 0, "bit flip": 0}, f"{kind}: undetected damage {silent}"
