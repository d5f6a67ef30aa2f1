"""The no-op rule on constructed sequences, at record time, and recomputed by ``filter`` without touching raw data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from collect.merge import recompute_noop
from collect.noop import NOOP_KEYS, NoopThresholds, episode_noop_mask, store_noop_mask
from collect.store import EpisodeStore
from tests.collect.store_testing import make_step, record_episode, small_config, small_schema

EPS = NoopThresholds(joint_eps_rad=0.01, gripper_eps=0.05)


def sequence(joint_path: list[float], gripper_cmd: list[float], gripper_state: list[float] | None = None,
             last_command: float | None = None) -> dict[str, np.ndarray]:
    """Joint 3 follows ``joint_path`` (others fixed); the command of step t is the joints of step t+1."""
    steps = len(joint_path)
    joints = np.tile([0.1, -0.2, 0.0, 0.3, 0.0, 0.5], (steps, 1))
    joints[:, 2] = joint_path
    commands = np.roll(joints, -1, axis=0)
    commands[-1, 2] = joint_path[-1] if last_command is None else last_command
    state = gripper_state if gripper_state is not None else gripper_cmd
    return {"joints_rad": joints, "command_joints_rad": commands,
            "command_gripper": np.array(gripper_cmd, np.float32), "gripper_state": np.array(state, np.float32)}


def mask_of(columns: dict[str, np.ndarray], thresholds: NoopThresholds = EPS) -> list[bool]:
    return episode_noop_mask(*(columns[key] for key in NOOP_KEYS), thresholds).tolist()


def test_still_arm_and_unchanged_gripper_are_noops():
    assert mask_of(sequence([0.2] * 4, [1.0] * 4)) == [True] * 4


def test_joint_motion_to_the_next_step_is_not_a_noop():
    # Moves between steps 1->2 (0.05 rad) and 2->3 (0.009 rad, below eps).
    assert mask_of(sequence([0.2, 0.2, 0.25, 0.259], [1.0] * 4)) == [True, False, True, True]


def test_threshold_is_strict_for_joints_and_inclusive_for_the_gripper():
    thresholds = NoopThresholds(joint_eps_rad=0.01, gripper_eps=0.25)  # 0.75 is exact in float32
    at_eps = sequence([0.0, 0.01, 0.01], [1.0, 1.0, 0.75])
    assert mask_of(at_eps, thresholds) == [False, True, True]
    assert mask_of(sequence([0.0, 0.01, 0.01], [1.0, 1.0, 0.7]), thresholds) == [False, True, False]


def test_a_single_joint_moving_is_enough():
    columns = sequence([0.2] * 3, [1.0] * 3)
    columns["joints_rad"][2, 5] += 0.02  # joint 6 moves from step 1 to step 2
    columns["command_joints_rad"][1, 5] += 0.02
    columns["command_joints_rad"][2, 5] += 0.02
    assert mask_of(columns) == [True, False, True]


def test_gripper_command_change_makes_that_step_not_a_noop():
    # Command closes at step 2 and stays closed: only step 2 is an action, steps 3.. are no-ops again.
    assert mask_of(sequence([0.2] * 5, [1.0, 1.0, 0.0, 0.0, 0.0])) == [True, True, False, True, True]


def test_first_step_compares_the_command_with_the_measured_gripper():
    assert mask_of(sequence([0.2] * 3, [0.0] * 3, gripper_state=[1.0, 0.6, 0.0])) == [False, True, True]
    assert mask_of(sequence([0.2] * 3, [0.0] * 3, gripper_state=[0.02, 0.0, 0.0])) == [True, True, True]


def test_last_step_uses_the_command_sent():
    assert mask_of(sequence([0.2] * 3, [1.0] * 3, last_command=0.3)) == [True, True, False]
    assert mask_of(sequence([0.2] * 3, [1.0] * 3, last_command=0.205)) == [True, True, True]


def test_zero_joint_threshold_turns_filtering_off():
    assert mask_of(sequence([0.2] * 4, [1.0] * 4), NoopThresholds(0.0, 0.0)) == [False] * 4


def test_rule_never_looks_across_an_episode_boundary():
    first = sequence([0.2] * 3, [1.0] * 3)  # ends still, command = joints
    second = sequence([0.9] * 3, [0.0] * 3, gripper_state=[0.0] * 3)  # starts far away, gripper closed
    columns = {key: np.concatenate([first[key], second[key]]) for key in NOOP_KEYS}
    assert store_noop_mask(columns, np.array([3, 6]), EPS).tolist() == [True] * 6
    assert store_noop_mask(columns, np.array([6]), EPS).tolist() == [True, True, False, False, True, True]


def test_thresholds_validation_and_config():
    with pytest.raises(ValueError, match="joint_eps_rad must be a finite number >= 0"):
        NoopThresholds(-0.1, 0.0)
    with pytest.raises(ValueError, match="gripper_eps"):
        NoopThresholds(0.1, float("nan"))
    config = small_config(**{"recording.noop_joint_eps_deg": 0.5, "recording.noop_gripper_eps": 0.2})
    assert NoopThresholds.from_config(config) == NoopThresholds(np.deg2rad(0.5), 0.2)
    assert small_schema().noop == NoopThresholds.from_config(small_config())


def raw_digest(path: Path) -> dict[str, str]:
    """Every file of the store except the no-op masks and meta/zarr.json (which holds the mask pointer)."""
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
            if "noop" not in p.relative_to(path).parts and p.relative_to(path) != Path("meta/zarr.json")}


def test_record_time_mask_and_filter_recompute_without_touching_raw_data(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        for seed in range(3):
            record_episode(store, seed, 12)
        columns = {key: store.array(key)[:] for key in NOOP_KEYS}
        recorded = store.noop_mask()
        np.testing.assert_array_equal(recorded, store_noop_mask(columns, store.episode_ends, store.noop_thresholds))
        assert 0 < recorded.sum() < 36  # the constructed episodes hold still on odd steps
    before = raw_digest(path)
    loose = NoopThresholds(joint_eps_rad=0.5, gripper_eps=1.0)
    result = recompute_noop(path, loose)
    assert result["noop_frames_before"] == int(recorded.sum()) and result["noop_frames"] == 36
    assert raw_digest(path) == before
    with EpisodeStore.open(path, mode="a") as store:
        assert store.noop_mask().all()
        assert store.noop_record["source"] == "filter" and store.noop_thresholds == loose
        record_episode(store, 3, 12)  # new episodes follow the store's current thresholds
        assert store.noop_mask()[36:].all()
    recompute_noop(path, NoopThresholds(0.0, 0.0))
    with EpisodeStore.open(path) as store:
        assert not store.noop_mask().any() and len(store.valid_indices()) == 48
        np.testing.assert_array_equal(store.array("joints_rad")[40], make_step(3, 4, store.schema)["joints_rad"])
