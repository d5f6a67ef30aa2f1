"""The episode store: layout on disk, round trips per codec, the writer API, readers, resume and locking."""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import struct

import google_crc32c
import imagecodecs
import numpy as np
import pytest
import zarr

from collect.errors import IncompatibleStoreError, StoreError, StoreLockedError
from collect.schema import ImageCodecSpec
from collect.store import EpisodeStore
from fanvla import __version__
from tests.collect.store_testing import (
    INTRINSICS,
    assert_episode_intact,
    episode_meta,
    make_step,
    record_episode,
    small_config,
    small_schema,
)


@pytest.fixture
def store_path(tmp_path):
    return tmp_path / "demos.zarr"


def test_layout_attributes_and_chunks_on_disk(store_path):
    schema = small_schema(record_depth=True)
    with EpisodeStore.create(store_path, schema) as store:
        record_episode(store, seed=0, steps=5)
    root = zarr.open_group(store_path, mode="r")
    attrs = root.attrs.asdict()
    assert attrs["fanvla_episode_store"] == 2 and attrs["software_version"] == __version__
    assert attrs["units"]["joints_rad"] == "rad" and attrs["units"]["depth_mm"] == "mm"
    assert attrs["units"]["tcp_pose"].startswith("x_mm")
    assert attrs["camera_intrinsics"] == INTRINSICS
    assert attrs["hardware"]["robot"]["tcp_offset_mm"] == small_config().robot.tcp_offset_mm
    assert attrs["rate_hz"] == 10.0 and attrs["image_codec"]["name"] == "png"
    assert root["data/joints_rad"].attrs["unit"] == "rad"
    assert root["data/color"].chunks == (1, 24, 32, 3) and root["data/depth_mm"].chunks == (1, 24, 32)
    assert root["meta/episode_ends"][:].tolist() == [5]
    assert json.loads(root["meta/episode_info"][0:1][0])["object"] == "red_cube"
    assert root["meta"].attrs["commit"]["episodes"] == 1 and root["meta"].attrs["commit"]["frames"] == 5
    # One frame per chunk, and each chunk file is a PNG image (colour) / 16-bit PNG (depth) followed by the CRC32C
    # of its bytes (4 bytes, little-endian: Zarr's crc32c codec), which image decoders ignore.
    chunk = (store_path / "data" / "color" / "c.3.0.0.0").read_bytes()
    assert chunk[:8] == b"\x89PNG\r\n\x1a\n" and chunk[-4:] == struct.pack("<I", google_crc32c.value(chunk[:-4]))
    frame = imagecodecs.png_decode(chunk)
    np.testing.assert_array_equal(frame, make_step(0, 3, schema)["color"])
    depth = imagecodecs.png_decode((store_path / "data" / "depth_mm" / "c.3.0.0").read_bytes())
    assert depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, make_step(0, 3, schema)["depth_mm"])


def test_round_trip_of_several_episodes_is_exact(store_path):
    schema = small_schema(record_depth=True)
    with EpisodeStore.create(store_path, schema) as store:
        for seed, steps in enumerate([7, 3, 11]):
            assert record_episode(store, seed, steps) == seed
    with EpisodeStore.open(store_path) as store:
        assert (store.num_episodes, store.num_frames) == (3, 21)
        assert store.episode_ends.tolist() == [7, 10, 21]
        assert store.episode_slice(1) == slice(7, 10) and store.episode_slice(-1) == slice(10, 21)
        for seed, steps in enumerate([7, 3, 11]):
            assert_episode_intact(store, seed, seed, steps)
        meta = store.episode_meta(2)
        assert meta == {**episode_meta(2), "duration_s": 1.1, "outcome": "success", "index": 2, "start": 10,
                        "frames": 11}
        assert [m["frames"] for m in store.episodes_meta()] == [7, 3, 11]
        assert store.episode_of(np.array([0, 6, 7, 20])).tolist() == [0, 0, 1, 2]


def test_jpeg_codec_is_lossy_but_close_and_smaller(tmp_path):
    smooth = np.zeros((24, 32, 3), np.uint8)
    smooth[:, :, 0] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    smooth[:, :, 1] = 120
    schemas = {codec: small_schema(**{"recording.image_codec": codec}) for codec in ("png", "jpeg")}
    sizes = {}
    for codec, schema in schemas.items():
        with EpisodeStore.create(tmp_path / f"{codec}.zarr", schema) as store, store.begin_episode({}) as writer:
            writer.add_step({**make_step(0, 0, schema), "color": smooth})
            writer.commit()
            sizes[codec] = len(store.raw_image_chunk("color", 0))
            decoded = store.array("color")[0]
        error = np.abs(decoded.astype(int) - smooth.astype(int))
        assert (error.max() == 0) if codec == "png" else (0 < error.mean() < 4)
    assert zarr.open_array(tmp_path / "jpeg.zarr", path="data/color").metadata.to_dict()["codecs"][0] == {
        "name": "fanvla.image", "configuration": {"format": "jpeg", "level": 92}}
    jpeg_bytes = EpisodeStore.open(tmp_path / "jpeg.zarr").raw_image_chunk("color", 0)
    assert imagecodecs.jpeg8_decode(jpeg_bytes).shape == (24, 32, 3)


def test_committed_array_indexing_stays_within_saved_frames(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store:
        record_episode(store, 0, 6)
        writer = store.begin_episode({})
        for t in range(4):  # an open episode: its frames are on disk but not visible
            writer.add_step(make_step(1, t, store.schema))
        joints = store.array("joints_rad")
        assert joints.shape == (6, 6) and len(store.array("color")) == 6
        np.testing.assert_array_equal(joints[-1], make_step(0, 5, store.schema)["joints_rad"])
        np.testing.assert_array_equal(joints[[0, 5]][1], joints[5])
        assert joints[1:6:2].shape == (3, 6) and joints[10:20].shape == (0, 6)
        with pytest.raises(IndexError, match="6 committed frames"):
            store.array("color")[6]
        with pytest.raises(IndexError, match="episode 1 does not exist"):
            store.episode_meta(1)
        writer.discard()
    assert not (store_path / "data" / "color" / "c.6.0.0.0").exists()


def test_discard_and_exception_leave_nothing_behind(store_path, caplog):
    with EpisodeStore.create(store_path, small_schema()) as store:
        record_episode(store, 0, 4)
        with pytest.raises(RuntimeError), store.begin_episode({}) as writer:
            for t in range(70):  # beyond one capacity step of the image array
                writer.add_step(make_step(1, t, store.schema))
            raise RuntimeError("operator pressed re-record")
        assert not writer.is_open
        assert record_episode(store, 1, 3) == 1
    caplog.set_level(logging.WARNING)
    with EpisodeStore.open(store_path, mode="a") as store:
        assert "partial" not in caplog.text
        assert store.num_frames == 7 and zarr.open_array(store_path, path="data/color").shape[0] == 7
        assert sorted(p.name for p in (store_path / "data" / "color").glob("c.*")) == [f"c.{i}.0.0.0" for i in range(7)]
        assert_episode_intact(store, 1, seed=1, steps=3)


def test_bad_steps_are_rejected_and_the_episode_stays_usable(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store, store.begin_episode({"instruction": "x"}) as writer:
        good = make_step(0, 0, store.schema)
        with pytest.raises(ValueError, match=r"missing keys \['joints_rad'\]"):
            writer.add_step({k: v for k, v in good.items() if k != "joints_rad"})
        with pytest.raises(ValueError, match=r"unknown keys \['velocity'\]"):
            writer.add_step({**good, "velocity": 1.0})
        with pytest.raises(ValueError, match=r"color has shape \(48, 64, 3\), the store expects \(24, 32, 3\)"):
            writer.add_step({**good, "color": np.zeros((48, 64, 3), np.uint8)})
        with pytest.raises(ValueError, match="color has dtype float64"):
            writer.add_step({**good, "color": np.zeros((24, 32, 3))})
        assert writer.add_step(good) == 0
        with pytest.raises(ValueError, match="JSON-serialisable"):
            writer.commit({"scene": object()})
        with pytest.raises(ValueError, match="reserved"):
            writer.commit({"frames": 3})
        assert writer.commit({"scene": {"object_xy_mm": [330.0, -120.0]}}) == 0
    assert EpisodeStore.open(store_path).episode_meta(0)["scene"] == {"object_xy_mm": [330.0, -120.0]}


def test_empty_episode_cannot_be_committed_and_one_writer_at_a_time(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store:
        writer = store.begin_episode({})
        with pytest.raises(StoreError, match="no steps"):
            writer.commit()
        with pytest.raises(StoreError, match="still open"):
            store.begin_episode({})
        writer.discard()
        with pytest.raises(StoreError, match="already discarded"):
            writer.add_step(make_step(0, 0, store.schema))
    with EpisodeStore.open(store_path) as reader, pytest.raises(StoreError, match="open read-only"):
        reader.begin_episode({})


def test_writer_streams_frames_to_disk_before_commit(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store, store.begin_episode({}) as writer:
        for t in range(20):
            writer.add_step(make_step(0, t, store.schema))
        writer._images.drain()
        assert len(list((store_path / "data" / "color").glob("c.*"))) == 20
        assert EpisodeStore.open(store_path).num_frames == 0  # invisible until commit
        writer.commit()
    assert EpisodeStore.open(store_path).num_frames == 20


def test_resume_appends_and_refuses_an_incompatible_configuration(store_path):
    with EpisodeStore.open_or_create(store_path, small_schema()) as store:
        record_episode(store, 0, 3)
    # Connection settings do not matter; the store keeps its no-op thresholds (with a warning).
    same = small_schema(**{"robot.ip": "10.0.0.7", "recording.noop_gripper_eps": 0.2})
    with EpisodeStore.open_or_create(store_path, same) as store:
        assert record_episode(store, 1, 3) == 1
        assert store.noop_thresholds.gripper_eps == 0.01
    cases = {
        "camera.color.width": (64, "per-step key 'color': uint8 (24, 32, 3) in the store, uint8 (24, 64, 3) now"),
        "recording.rate_hz": (15.0, "recording.rate_hz: 10 in the store, 15 now"),
        "recording.image_codec": ("jpeg", "image codec: png (level 1) in the store, jpeg (quality 92) now"),
        "robot.tcp_offset_mm": (100.0, "robot.tcp_offset_mm: 120.0 in the store, 100.0 now"),
        "camera.depth.enabled": (False, "camera.depth.enabled: True in the store, False now"),
    }
    for key, (value, message) in cases.items():
        with pytest.raises(IncompatibleStoreError) as raised:
            EpisodeStore.open_or_create(store_path, small_schema(**{key: value}))
        assert message in str(raised.value), str(raised.value)
    with pytest.raises(IncompatibleStoreError, match="depth_mm"):
        EpisodeStore.open(store_path, mode="a", expect=small_schema(record_depth=True))
    with pytest.raises(IncompatibleStoreError, match=r"camera intrinsics\.fx: 19\.2 in the store, 20\.0 now"):
        schema = small_schema()
        from dataclasses import replace

        EpisodeStore.open(store_path, mode="a", expect=replace(schema, camera_intrinsics={**INTRINSICS, "fx": 20.0}))
    with EpisodeStore.open(store_path) as store:  # refusals changed nothing
        assert store.num_episodes == 2
        assert_episode_intact(store, 1, seed=1, steps=3)


def test_second_writer_is_refused_while_readers_are_welcome(store_path, caplog):
    with EpisodeStore.create(store_path, small_schema()) as store:
        record_episode(store, 0, 3)
        with pytest.raises(StoreLockedError, match="open for writing by another process"):
            EpisodeStore.open(store_path, mode="a")
        writer = store.begin_episode({})
        writer.add_step(make_step(1, 0, store.schema))
        writer._images.drain()
        caplog.set_level(logging.INFO)
        with EpisodeStore.open(store_path) as reader:
            assert reader.num_episodes == 1
        assert "being recorded by another process (1 frames so far" in caplog.text
        writer.discard()
    EpisodeStore.open(store_path, mode="a").close()  # the lock went with the writer


def _read_frames(args):
    store, frames = args
    return [store.array("color")[i].sum() for i in frames]


def test_reader_is_picklable_for_worker_processes(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store:
        record_episode(store, 0, 8)
        with pytest.raises(TypeError, match="mode='r'"):
            pickle.dumps(store)
    reader = EpisodeStore.open(store_path)
    expected = [int(reader.array("color")[i].sum()) for i in range(8)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_read_frames, [(reader, range(0, 4)), (reader, range(4, 8))])
    assert [int(v) for part in results for v in part] == expected


def test_noop_mask_and_valid_indices(store_path):
    with EpisodeStore.create(store_path, small_schema()) as store:
        record_episode(store, 0, 12)
        mask = store.noop_mask()
        assert mask.dtype == bool and mask.shape == (12,) and 0 < mask.sum() < 12
        np.testing.assert_array_equal(store.valid_indices(), np.flatnonzero(~mask))
        np.testing.assert_array_equal(store.valid_indices(skip_noops=False), np.arange(12))
        np.testing.assert_array_equal(store.read_episode(0, keys=["timestamp_s"])["noop"], mask)


def test_schema_rejects_bad_codec_settings():
    with pytest.raises(ValueError, match="'png' \\(lossless\\) or 'jpeg'"):
        ImageCodecSpec("webp")
    with pytest.raises(ValueError, match="jpeg_quality"):
        ImageCodecSpec("jpeg", jpeg_quality=0)
