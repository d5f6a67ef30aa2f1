"""The dataset over episode stores: split by episode, no-op skipping, instructions, statistics, fingerprint, errors."""

from __future__ import annotations

import numpy as np
import pytest

from collect.store import EpisodeStore
from finetune.config import FinetuneError
from finetune.data import default_unnorm_key, load_training_data, validation_count
from policy.action_space import actions_from_recording
from policy.normalization import compute_stats
from tests.finetune.store_factory import INSTRUCTIONS, empty_store, write_store


def test_split_is_by_episode_deterministic_and_disjoint(demo_store):
    first = load_training_data([demo_store], "ee_delta", val_fraction=0.34)
    again = load_training_data([demo_store], "ee_delta", val_fraction=0.34)
    val_episodes = {e.index for e in first.episodes if e.split == "val"}
    assert len(val_episodes) == 2  # round(0.34 * 6)
    assert val_episodes == {e.index for e in again.episodes if e.split == "val"}
    assert set(first.train.episode) & set(first.val.episode) == set()
    assert {first.episodes[e].index for e in first.val.episode} == val_episodes
    assert len(first.train) + len(first.val) == 72
    np.testing.assert_array_equal(first.train.frame, again.train.frame)


def test_validation_count_keeps_one_episode_for_training():
    assert validation_count(1, 0.5) == 0
    assert validation_count(2, 0.1) == 1
    assert validation_count(10, 0.0) == 0
    assert validation_count(3, 0.9) == 2


def test_actions_and_instructions_come_from_each_episode(demo_store):
    data = load_training_data([demo_store], "ee_delta", val_fraction=0.0)
    with EpisodeStore.open(demo_store) as store:
        for episode in data.episodes:
            arrays = store.read_episode(episode.index)
            expected = actions_from_recording(arrays, "ee_delta")
            rows = np.flatnonzero(data.train.episode == data.episodes.index(episode))
            np.testing.assert_allclose(data.train.actions[rows], expected)
            instruction = data.instructions[data.train.instruction[rows[0]]]
            assert instruction == store.episode_meta(episode.index)["instruction"]
    assert sorted(data.instructions) == sorted(INSTRUCTIONS)


def test_statistics_come_from_the_training_split_and_keep_the_gripper_absolute(demo_store):
    data = load_training_data([demo_store], "ee_delta", val_fraction=0.34)
    expected = compute_stats(data.train.actions, mask=data.spec.normalize_mask)
    np.testing.assert_allclose(data.stats.q01, expected.q01)
    np.testing.assert_allclose(data.stats.q99, expected.q99)
    assert data.stats.mask.tolist() == [True] * 6 + [False]
    everything = compute_stats(np.concatenate([data.train.actions, data.val.actions]))
    assert not np.allclose(everything.q99, data.stats.q99)  # the validation split is not used
    entry = data.dataset_statistics()
    assert entry.num_transitions == len(data.train) and entry.num_trajectories == 4


def test_noop_steps_are_skipped_by_default_and_kept_on_request(tmp_path):
    store_path = write_store(tmp_path / "s.zarr", episodes=3, steps=8)
    with EpisodeStore.open(store_path, mode="a") as store:  # mark some steps as no-ops through the store's API
        mask = np.zeros(store.num_frames, dtype=bool)
        mask[[0, 5, 9, 23]] = True
        store.replace_noop_mask(mask, store.noop_thresholds)
    skipping = load_training_data([store_path], "ee_delta", val_fraction=0.0)
    keeping = load_training_data([store_path], "ee_delta", val_fraction=0.0, skip_noops=False)
    assert len(skipping.train) == 20 and not {0, 5, 9, 23} & set(skipping.train.frame.tolist())
    assert len(keeping.train) == 24
    assert skipping.fingerprint["sha256"] != keeping.fingerprint["sha256"]


def test_several_stores_and_the_default_unnorm_key(tmp_path, demo_store):
    other = write_store(tmp_path / "more.zarr", episodes=2, steps=5, seed=3)
    data = load_training_data([demo_store, other], "ee_delta", val_fraction=0.0)
    assert len(data.train) == 72 + 10
    assert set(np.unique(data.train.store)) == {0, 1}
    assert default_unnorm_key([demo_store, other]) == "demos+more"


def test_max_episodes_takes_the_first_episodes_across_stores(tmp_path, demo_store):
    other = write_store(tmp_path / "more.zarr", episodes=2, steps=5, seed=3)
    data = load_training_data([demo_store, other], "ee_delta", val_fraction=0.0, max_episodes=7)
    assert [(e.store, e.index) for e in data.episodes] == [(0, i) for i in range(6)] + [(1, 0)]
    assert len(data.train) == 72 + 5
    assert data.fingerprint["sha256"] != load_training_data([demo_store, other], "ee_delta",
                                                            val_fraction=0.0).fingerprint["sha256"]
    with pytest.raises(FinetuneError, match="hold only 8 episodes"):
        load_training_data([demo_store, other], "ee_delta", max_episodes=9)


def test_fingerprint_is_stable_and_follows_the_data(tmp_path, demo_store):
    first = load_training_data([demo_store], "ee_delta")
    second = load_training_data([demo_store], "ee_delta")
    assert first.fingerprint == second.fingerprint
    other = write_store(tmp_path / "demos.zarr", episodes=6, steps=12, seed=1)  # same shape, other values
    assert load_training_data([other], "ee_delta").fingerprint["sha256"] != first.fingerprint["sha256"]
    assert first.fingerprint["stores"][0]["episodes"] == 6
    assert load_training_data([demo_store], "joint_delta").fingerprint["sha256"] != first.fingerprint["sha256"]


def test_empty_store_is_refused(tmp_path):
    with pytest.raises(FinetuneError, match="has no saved episodes"):
        load_training_data([empty_store(tmp_path / "empty.zarr")], "ee_delta")


def test_store_with_only_noop_frames_is_refused(tmp_path):
    still = write_store(tmp_path / "still.zarr", episodes=2, steps=6, still=True)
    with pytest.raises(FinetuneError, match="every one of the 12 recorded frames is a no-op"):
        load_training_data([still], "ee_delta")
    assert len(load_training_data([still], "ee_delta", skip_noops=False).train) > 0


def test_missing_store_and_missing_instruction_are_refused(tmp_path):
    with pytest.raises(FinetuneError, match="does not exist"):
        load_training_data([tmp_path / "nowhere.zarr"], "ee_delta")
    from tests.finetune.store_factory import complete_step, make_step, small_schema

    store = EpisodeStore.create(tmp_path / "noinstr.zarr", small_schema())
    with store.begin_episode({"object": "cube"}, image_queue=0) as writer:
        rng = np.random.default_rng(0)
        for t in range(3):
            writer.add_step(complete_step(make_step(t, 0, 0, rng, still=False), store.schema))
        writer.commit({})
    store.close()
    with pytest.raises(FinetuneError, match="episode 0 has no instruction"):
        load_training_data([tmp_path / "noinstr.zarr"], "ee_delta")
