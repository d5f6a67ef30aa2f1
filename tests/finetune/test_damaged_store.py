"""Finetuning never trains on damaged data: a missing image frame (once an all-black frame), a missing low-dim
chunk (once zeros) or a bit flip in one (once silently wrong actions) stops the run with an error naming the chunk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetune.config import FinetuneError, TrainConfig
from finetune.data import load_training_data
from finetune.trainer import train


@pytest.fixture
def store(demo_store, tmp_path) -> Path:
    path = tmp_path / "demos.zarr"
    shutil.copytree(demo_store, path)
    return path


def _config(store: Path, init: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=(str(store),), init=str(init), out=str(out), steps=2, batch_size=4, full=True,
                       progress=False, tensorboard=False, val_every=0, save_every=0)


def test_a_missing_image_frame_stops_training(store, tiny_init, tmp_path):
    (store / "data" / "color" / "c.30.0.0.0").unlink()  # episode 2 (12 steps each)
    with pytest.raises(FinetuneError, match=r"data/color/c\.30\.0\.0\.0 is missing; it holds frame 30 of episode 2"):
        train(_config(store, tiny_init, tmp_path / "run"))
    assert not (tmp_path / "run" / "final").exists()


def test_a_missing_low_dim_chunk_stops_loading(store):
    (store / "data" / "command_tcp_pose" / "c.0.0").unlink()
    with pytest.raises(FinetuneError, match=r"data/command_tcp_pose/c\.0\.0 is missing"):
        load_training_data([store], "ee_delta")


def test_a_bit_flip_in_a_low_dim_chunk_stops_loading(store):
    chunk = store / "data" / "tcp_pose" / "c.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(FinetuneError, match=r"data/tcp_pose/c\.0\.0 fails its CRC32C checksum"):
        load_training_data([store], "ee_delta")
