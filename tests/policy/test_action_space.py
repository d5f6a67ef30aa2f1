from __future__ import annotations

import numpy as np
import pytest

from policy.action_space import ACTION_DIM, action_space, actions_from_recording, command_from_action
from robot.frames import rpy_to_matrix
from robot.interfaces import ArmState


def _recording(steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tcp = np.column_stack([rng.uniform(200, 400, (steps, 3)), rng.uniform(-0.5, 0.5, (steps, 3))])
    tcp[:, 3] += np.pi  # gripper pointing down, as recorded
    command_tcp = tcp + np.column_stack([rng.normal(0, 5, (steps, 3)), rng.normal(0, 0.05, (steps, 3))])
    joints = rng.uniform(-1, 1, (steps, 6))
    return {"tcp_pose": tcp, "command_tcp_pose": command_tcp, "joints_rad": joints,
            "command_joints_rad": joints + rng.normal(0, 0.01, (steps, 6)),
            "command_gripper": rng.integers(0, 2, steps).astype(np.float32)}


@pytest.mark.parametrize("space", ["ee_delta", "joint_delta"])
def test_action_then_command_reproduces_what_was_sent(space):
    rec = _recording(40)
    actions = actions_from_recording(rec, space)
    assert actions.shape == (40, ACTION_DIM)
    assert np.array_equal(actions[:, 6], rec["command_gripper"].astype(np.float64))
    for t in range(40):
        state = ArmState(rec["joints_rad"][t], rec["tcp_pose"][t], 0.0)
        command = command_from_action(actions[t], state, space)
        assert command.gripper == rec["command_gripper"][t]
        if space == "ee_delta":
            assert np.allclose(command.tcp_pose[:3], rec["command_tcp_pose"][t, :3], atol=1e-9)
            assert np.allclose(rpy_to_matrix(command.tcp_pose[3:]), rpy_to_matrix(rec["command_tcp_pose"][t, 3:]),
                               atol=1e-9)
        else:
            assert np.allclose(command.joints_rad, rec["command_joints_rad"][t], atol=1e-12)


def test_ee_delta_units_are_mm_and_rotation_vector():
    rec = _recording(1)
    rec["command_tcp_pose"] = rec["tcp_pose"].copy()
    rec["command_tcp_pose"][0, 2] += 7.5
    action = actions_from_recording(rec, "ee_delta")[0]
    assert np.allclose(action[:6], [0, 0, 7.5, 0, 0, 0], atol=1e-9)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown action space 'cartesian'"):
        action_space("cartesian")
    rec = _recording(3)
    del rec["command_tcp_pose"]
    with pytest.raises(KeyError, match="command_tcp_pose"):
        actions_from_recording(rec, "ee_delta")
    with pytest.raises(ValueError, match="7 values"):
        command_from_action(np.zeros(6), ArmState(np.zeros(6), np.zeros(6), 0.0), "ee_delta")


def test_gripper_is_clipped_and_the_mask_leaves_it_absolute():
    state = ArmState(np.zeros(6), np.array([300.0, 0, 100, np.pi, 0, 0]), 0.0)
    assert command_from_action([0, 0, 0, 0, 0, 0, 1.7], state, "ee_delta").gripper == 1.0
    assert action_space("ee_delta").normalize_mask == (True,) * 6 + (False,)
