"""Kinematics of the MiniCobo: the DH module and the twin's MuJoCo model against an independent DH chain."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot.errors import IKFailedError
from robot.kinematics import MiniCoboKinematics

# hardware.md's table (metres), read as modified DH with the upright zero pose (robot/kinematics.py
# explains why). Written out again here on purpose: this test must not reuse the module's code.
D_M = [0.187, 0.006, 0.0, 0.2105, 0.0, 0.1593]
A_PREV_M = [0.0, 0.0, 0.210, 0.0, 0.0, 0.0]
ALPHA_PREV = [0.0, math.pi / 2, 0.0, -math.pi / 2, math.pi / 2, -math.pi / 2]
THETA_OFFSET = [0.0, math.pi / 2, -math.pi / 2, 0.0, 0.0, 0.0]


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1.0]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])


def _trans(x, y, z):
    t = np.eye(4)
    t[:3, 3] = [x, y, z]
    return t


def reference_tcp_m(joints, tcp_offset_m):
    """Craig's convention, link by link: Rx(alpha_{i-1}) Tx(a_{i-1}) Rz(theta_i) Tz(d_i); metres."""
    t = np.eye(4)
    for i, q in enumerate(joints):
        t = t @ _rx(ALPHA_PREV[i]) @ _trans(A_PREV_M[i], 0, 0) @ _rz(q + THETA_OFFSET[i]) @ _trans(0, 0, D_M[i])
    return t @ _trans(0, 0, tcp_offset_m)


@pytest.fixture(scope="module")
def kin(hardware_config):
    return MiniCoboKinematics.from_config(hardware_config)


def _random_joints(rng, kin, n, margin=0.15):
    lo, hi = np.maximum(kin.lower_rad, -math.pi) + margin, np.minimum(kin.upper_rad, math.pi) - margin
    return rng.uniform(lo, hi, size=(n, 6))


def test_zero_pose_is_the_arm_straight_up(kin, hardware_config):
    pose = kin.forward(np.zeros(6))
    reach = 187 + 210 + 210.5 + 159.3 + hardware_config.robot.tcp_offset_mm
    np.testing.assert_allclose(pose[:3], [0.0, -6.0, reach], atol=1e-9)


def test_module_fk_matches_an_independent_dh_chain(kin, hardware_config):
    rng = np.random.default_rng(1)
    offset_m = hardware_config.robot.tcp_offset_mm / 1000
    for q in _random_joints(rng, kin, 50):
        expected = reference_tcp_m(q, offset_m)
        got = kin.tcp_matrix(q)
        np.testing.assert_allclose(got[:3, 3], expected[:3, 3] * 1000, atol=1e-6)
        np.testing.assert_allclose(got[:3, :3], expected[:3, :3], atol=1e-9)


def test_twin_site_pose_matches_an_independent_dh_chain(hardware_config):
    import mujoco

    from robot.sim.model import TCP_SITE, build_model

    model = build_model(hardware_config)
    data = mujoco.MjData(model)
    joint_adr = [model.jnt_qposadr[model.joint(f"joint{i + 1}").id] for i in range(6)]
    site = model.site(TCP_SITE).id
    offset_m = hardware_config.robot.tcp_offset_mm / 1000
    rng = np.random.default_rng(2)
    for q in rng.uniform(-math.pi, math.pi, size=(100, 6)):
        data.qpos[joint_adr] = q
        mujoco.mj_kinematics(model, data)
        expected = reference_tcp_m(q, offset_m)
        assert np.max(np.abs(data.site_xpos[site] - expected[:3, 3])) * 1000 < 0.01  # mm
        assert np.max(np.abs(data.site_xmat[site].reshape(3, 3) - expected[:3, :3])) < 1e-6


def test_batch_fk_equals_one_by_one(kin):
    q = _random_joints(np.random.default_rng(3), kin, 7)
    batch = kin.forward(q)
    assert batch.shape == (7, 6)
    for row, joints in zip(batch, q, strict=True):
        np.testing.assert_allclose(row, kin.forward(joints), atol=1e-12)


def test_jacobian_matches_finite_differences(kin):
    from robot.frames import matrix_to_rotvec

    q = _random_joints(np.random.default_rng(4), kin, 1)[0]
    jac = kin.jacobian(q)
    eps = 1e-6
    base = kin.tcp_matrix(q)
    for j in range(6):
        dq = np.zeros(6)
        dq[j] = eps
        moved = kin.tcp_matrix(q + dq)
        np.testing.assert_allclose((moved[:3, 3] - base[:3, 3]) / eps, jac[:3, j], atol=1e-3)
        np.testing.assert_allclose(matrix_to_rotvec(moved[:3, :3] @ base[:3, :3].T) / eps, jac[3:, j], atol=1e-5)


def test_ik_round_trips_from_a_nearby_seed(kin):
    rng = np.random.default_rng(5)
    for q in _random_joints(rng, kin, 30, margin=0.3):
        pose = kin.forward(q)
        seed = q + rng.normal(0, 0.15, 6)
        solution = kin.inverse(pose, seed)
        assert kin.within_limits(solution)
        reached = kin.forward(solution)
        assert np.linalg.norm(reached[:3] - pose[:3]) < 0.01
        np.testing.assert_allclose(kin.tcp_matrix(solution)[:3, :3], kin.tcp_matrix(q)[:3, :3], atol=2e-6)


def test_ik_from_the_solution_stays_there(kin, hardware_config):
    home = np.asarray(hardware_config.robot.home_joints_rad)
    np.testing.assert_allclose(kin.inverse(kin.forward(home), home), home, atol=1e-6)


def test_ik_keeps_multi_turn_joints_near_the_seed(kin, hardware_config):
    home = np.asarray(hardware_config.robot.home_joints_rad)
    seed = home.copy()
    seed[5] += 2 * math.pi  # J6 one turn further: the same pose, and IK must not unwind it
    solution = kin.inverse(kin.forward(home), seed)
    assert solution[5] == pytest.approx(seed[5], abs=1e-6)


def test_top_down_poses_over_the_table_are_reachable(kin, hardware_config):
    home = np.asarray(hardware_config.robot.home_joints_rad)
    for x, y, z in [(300, -120, 20), (300, 140, 100), (250, 0, 150), (380, 0, 20)]:
        solution = kin.inverse([x, y, z, math.pi, 0.0, 0.0], home)
        assert np.linalg.norm(kin.forward(solution)[:3] - [x, y, z]) < 0.01


def test_ik_failure_says_why(kin, hardware_config):
    home = np.asarray(hardware_config.robot.home_joints_rad)
    with pytest.raises(IKFailedError) as info:
        kin.inverse([900.0, 0.0, 100.0, math.pi, 0.0, 0.0], home)
    message = str(info.value)
    assert "IK failed for TCP pose [900.0, 0.0, 100.0] mm" in message
    assert "beyond the arm's" in message and "best attempt stayed" in message
    assert info.value.code == -4


def test_ik_respects_joint_limits(hardware_config):
    limits = list(hardware_config.robot.joint_limits_rad)
    limits[0] = (-0.1, 0.1)  # J1 nearly locked: a target far to the side needs J1 well beyond it
    kin = MiniCoboKinematics(hardware_config.robot.tcp_offset_mm, limits)
    home = np.asarray(hardware_config.robot.home_joints_rad)
    with pytest.raises(IKFailedError, match="joint limits block the best attempt at J1"):
        kin.inverse([0.0, 300.0, 100.0, math.pi, 0.0, 0.0], home)


def test_non_finite_joints_are_rejected(kin):
    with pytest.raises(ValueError, match="finite"):
        kin.forward([0, 0, float("nan"), 0, 0, 0])
    with pytest.raises(ValueError, match="last axis of 6"):
        kin.forward([0, 0, 0])
