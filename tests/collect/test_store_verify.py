"""``fanvla collect verify | repair --quarantine | info`` on damaged stores, and stores written before checksums."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from collect.errors import CorruptStoreError, StoreLockedError, StoreNotFoundError
from collect.merge import merge_stores
from collect.repair import REPORT_NAME, repair_store
from collect.store import EpisodeStore
from collect.verify import verify_store
from fanvla.cli import main
from tests.collect.store_testing import assert_episode_intact, make_step, record_episode, small_schema
from tests.collect.test_store_bad_input import tree_digest

LAYOUT1 = Path(__file__).resolve().parent / "data" / "layout1.zarr"  # written at commit 10855ae, 3 x 7 steps
STEPS = (9, 12, 7, 10)  # frames 0..8, 9..20, 21..27, 28..37


@pytest.fixture
def demos(tmp_path) -> Path:
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        for seed, steps in enumerate(STEPS):
            record_episode(store, seed, steps)
    return path


@pytest.fixture
def layout1(tmp_path) -> Path:
    path = tmp_path / "old.zarr"
    shutil.copytree(LAYOUT1, path)
    return path


def flip_bit(path: Path, byte: int, bit: int = 2) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_verify_reports_each_damaged_episode_and_exits_1(demos, capsys):
    assert main(["collect", "verify", str(demos)]) == 0
    assert "all 4 episodes intact" in capsys.readouterr().out
    flip_bit(demos / "data" / "color" / "c.12.0.0.0", 40)
    (demos / "data" / "color" / "c.25.0.0.0").unlink()
    assert main(["collect", "verify", str(demos)]) == 1
    text = capsys.readouterr().out
    assert "DAMAGED: 2 of 4 episodes" in text
    assert "episode 1: data/color/c.12.0.0.0 fails its CRC32C checksum" in text
    assert "episode 2: data/color/c.25.0.0.0 is missing" in text and "intact episodes: 0, 3" in text
    assert main(["collect", "verify", str(demos), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["intact_episodes"] == [0, 3] and set(report["damaged_episodes"]) == {"1",
                                                                                                              "2"}


def test_info_no_longer_reports_a_damaged_store_as_fine(demos, capsys):
    (demos / "data" / "joints_rad" / "c.0.0").unlink()
    assert main(["collect", "info", str(demos)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED (4 episodes)" in out and "data/joints_rad/c.0.0 is missing" in out
    shutil.rmtree(demos)
    with EpisodeStore.create(demos, small_schema()) as store:
        record_episode(store, 0, 5)
    (demos / "data" / "color" / "c.3.0.0.0").unlink()  # info does not read frames, but checks that each one exists
    assert main(["collect", "info", str(demos), "--json"]) == 1
    integrity = json.loads(capsys.readouterr().out)["integrity"]
    assert integrity["ok"] is False and list(integrity["damaged_episodes"]) == ["0"]


def test_repair_quarantine_keeps_the_intact_episodes_trainable(demos, capsys):
    from finetune.data import load_training_data

    flip_bit(demos / "data" / "color" / "c.12.0.0.0", 40)  # episode 1
    flip_bit(demos / "meta" / "episode_ends" / "c.0", 10)  # the index: rebuilt, costs no episode
    original = tree_digest(demos)
    assert main(["collect", "repair", str(demos)]) == 2  # --quarantine is required
    assert main(["collect", "repair", str(demos), "--quarantine", "--to", str(demos.parent / "aside.zarr")]) == 0
    assert "set aside 1 damaged episode(s) [1]" in capsys.readouterr().out
    aside = demos.parent / "aside.zarr"
    report = json.loads((aside / REPORT_NAME).read_text())
    assert report["intact_episodes"] == [0, 2, 3] and report["kept"] == [0, 2, 3]
    assert {k: v for k, v in tree_digest(aside).items() if k != REPORT_NAME} == original  # moved, untouched
    with EpisodeStore.open(demos) as store:
        assert store.num_episodes == 3 and store.checksummed
        for new_index, (seed, steps) in enumerate([(0, 9), (2, 7), (3, 10)]):
            assert_episode_intact(store, new_index, seed, steps)
            assert store.episode_meta(new_index)["repaired_from"]["episode"] == seed
        assert store.attrs["repair"]["set_aside"] == [1]
    assert verify_store(demos).ok
    data = load_training_data([demos], "ee_delta")
    assert len(data.episodes) == 3
    assert main(["collect", "repair", str(demos), "--quarantine"]) == 0
    assert "nothing to repair" in capsys.readouterr().out


def test_repair_is_refused_while_a_recorder_holds_the_store(demos):
    (demos / "data" / "color" / "c.3.0.0.0").unlink()
    fd = os.open(demos / "zarr.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StoreLockedError):
            repair_store(demos)
    finally:
        os.close(fd)
    assert (demos / "meta").is_dir() and not list(demos.parent.glob("*.quarantine-*"))


def test_an_interrupted_repair_is_named_when_the_store_is_missing(demos, tmp_path):
    os.rename(demos, tmp_path / "demos.quarantine-x.zarr")
    (tmp_path / ".demos.zarr.repair-1234").mkdir()
    with pytest.raises(StoreNotFoundError, match=r"repair` was interrupted .*/\.demos\.zarr\.repair-1234"):
        EpisodeStore.open(demos)


def test_a_store_written_before_checksums_opens_and_verify_says_what_it_could_not_check(layout1, capsys):
    with EpisodeStore.open(layout1) as store:
        assert store.layout == 1 and not store.checksummed
        for seed in range(3):
            assert_episode_intact(store, seed, seed, 7)
    assert main(["collect", "verify", str(layout1)]) == 0
    out = capsys.readouterr().out
    assert "layout 1 (written before chunk checksums)" in out and "all 3 episodes intact" in out
    assert "not checked: this store was written before chunk checksums" in out
    assert "missing low-dim chunk reads as zeros and cannot be told" in out
    assert main(["collect", "info", str(layout1)]) == 0
    # Still a recorder's store: new episodes go into it (in its own layout).
    with EpisodeStore.open(layout1, mode="a") as store:
        record_episode(store, 3, 5)
    assert verify_store(layout1).ok


def test_a_layout_1_store_still_reports_what_it_can_detect(layout1):
    flip_bit(layout1 / "data" / "color" / "c.9.0.0.0", 30)  # inside the PNG: its own CRC catches it
    (layout1 / "data" / "color" / "c.15.0.0.0").unlink()
    report = verify_store(layout1)
    assert sorted(report.damaged_episodes) == [1, 2] and report.intact_episodes == [0]
    with EpisodeStore.open(layout1) as store, pytest.raises(CorruptStoreError, match=r"c\.9\.0\.0\.0 is not a "
                                                                                      r"readable png image"):
        store.array("color")[9]


def test_merge_upgrades_an_old_store_and_never_launders_damage(layout1, tmp_path):
    with merge_stores(tmp_path / "new.zarr", [layout1]) as out:
        assert out.checksummed and out.num_episodes == 3
    with EpisodeStore.open(tmp_path / "new.zarr") as store:
        for seed in range(3):
            assert_episode_intact(store, seed, seed, 7)
    flip_bit(layout1 / "data" / "color" / "c.9.0.0.0", 30)
    with pytest.raises(CorruptStoreError, match=r"c\.9\.0\.0\.0"):
        merge_stores(tmp_path / "bad.zarr", [layout1])


def test_a_filtered_mask_is_checksummed_too(demos):
    from collect.merge import recompute_noop
    from collect.noop import NoopThresholds

    recompute_noop(demos, NoopThresholds(0.02, 0.5))
    with EpisodeStore.open(demos) as store:
        assert store.noop_record["array"] == "g1"
        mask = store.noop_mask()
    flip_bit(demos / "data" / "noop" / "g1" / "c.0", 5)
    with EpisodeStore.open(demos) as store, pytest.raises(CorruptStoreError, match=r"data/noop/g1/c\.0 fails"):
        store.valid_indices()
    assert mask.shape == (sum(STEPS),)


def test_an_all_zero_chunk_is_written_so_missing_is_always_damage(tmp_path):
    schema = small_schema()
    with EpisodeStore.create(tmp_path / "z.zarr", schema) as store, store.begin_episode({}) as writer:
        for t in range(3):
            writer.add_step({**make_step(0, t, schema), "command_held": False, "command_clamped": False})
        writer.commit()
    assert (tmp_path / "z.zarr" / "data" / "command_held" / "c.0").is_file()
    with EpisodeStore.open(tmp_path / "z.zarr") as store:
        assert not np.asarray(store.array("command_held")[:]).any()
