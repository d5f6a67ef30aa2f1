"""Kinematics of the JAKA MiniCobo: forward kinematics, Jacobian and numerical inverse kinematics.

The one source of truth for the arm's geometry: the twin's MuJoCo model (robot/sim/model.py) is
built from the same table, so MuJoCo's forward kinematics equals this module's.

DH convention. hardware.md lists the public driver's parameters per joint as (d, a, alpha). Read
as *standard* DH (``Rz(q) Tz(d) Tx(a) Rx(alpha)``) that table makes joint 2 coaxial with joint 1
(alpha_1 = 0 and a_1 = 0), i.e. a degenerate 5-DoF arm. Read as *modified* (Craig) DH, where row i
holds ``(d_i, a_{i-1}, alpha_{i-1})`` and ``T_i = Rx(alpha_{i-1}) Tx(a_{i-1}) Rz(q_i) Tz(d_i)``, it
is the MiniCobo's real layout: vertical base joint, shoulder and elbow pitch joints with a 210 mm
upper arm, a 210.5 mm forearm along the joint-4 roll axis, a spherical wrist and a 159.3 mm flange
offset (reach 576 mm, as published). This module uses the modified reading.

Joint zero. The table carries no theta offsets, so its zero pose has the upper arm horizontal and
the forearm vertical; the URDF's limits (J2 +/-119, J3 +/-130, J5 +/-119 deg), symmetric about
zero, then forbid every elbow-up pose with the tool pointing down. Limits symmetric about zero
belong to the upright ("candle") zero pose, so joint 2 carries a +90 deg and joint 3 a -90 deg
offset: all joints at zero = the arm straight up. Check the zero positions and signs against the
controller's ``kine_forward`` before trusting this at the robot.

Units: joints rad, positions mm, orientations JAKA RPY (robot/frames.py). Poses are
``[x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad]`` of the TCP, which sits ``tcp_offset_mm`` along the
flange z axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robot.errors import IKFailedError
from robot.frames import matrix_to_rotvec, matrix_to_rpy, rpy_to_matrix
from robot.units import m_to_mm, rad_to_deg

NUM_JOINTS = 6

# The public driver's table, metres (hardware.md); converted to mm once, below.
_DH_D_M = (0.187, 0.006, 0.0, 0.2105, 0.0, 0.1593)
_DH_A_M = (0.0, 0.0, 0.210, 0.0, 0.0, 0.0)
_DH_ALPHA_RAD = (0.0, math.pi / 2, 0.0, -math.pi / 2, math.pi / 2, -math.pi / 2)
_THETA_OFFSET_RAD = (0.0, math.pi / 2, -math.pi / 2, 0.0, 0.0, 0.0)  # zero pose = arm straight up (see above)


@dataclass(frozen=True)
class DHLink:
    """One row of the modified DH table: ``T = Rx(alpha_prev) Tx(a_prev) Rz(q + theta_offset) Tz(d)``."""

    d_mm: float
    a_prev_mm: float
    alpha_prev_rad: float
    theta_offset_rad: float = 0.0

    def fixed_matrix(self) -> np.ndarray:
        """``Rx(alpha_prev) Tx(a_prev) Rz(theta_offset) Tz(d)``: the joint frame at q = 0 in its parent.

        Rz and Tz commute, so the joint's own ``Rz(q)`` can follow this fixed part.
        """
        ca, sa = math.cos(self.alpha_prev_rad), math.sin(self.alpha_prev_rad)
        ct, st = math.cos(self.theta_offset_rad), math.sin(self.theta_offset_rad)
        rot_x = np.array([[1.0, 0.0, 0.0], [0.0, ca, -sa], [0.0, sa, ca]])
        rot_z = np.array([[ct, -st, 0.0], [st, ct, 0.0], [0.0, 0.0, 1.0]])
        m = np.eye(4)
        m[:3, :3] = rot_x @ rot_z
        m[:3, 3] = rot_x @ np.array([self.a_prev_mm, 0.0, 0.0]) + m[:3, :3] @ np.array([0.0, 0.0, self.d_mm])
        return m


MINICOBO_DH: tuple[DHLink, ...] = tuple(
    DHLink(float(m_to_mm(d)), float(m_to_mm(a)), alpha, theta)
    for d, a, alpha, theta in zip(_DH_D_M, _DH_A_M, _DH_ALPHA_RAD, _THETA_OFFSET_RAD, strict=True)
)
SHOULDER_HEIGHT_MM = MINICOBO_DH[0].d_mm
UPPER_ARM_MM = MINICOBO_DH[2].a_prev_mm
FOREARM_MM = MINICOBO_DH[3].d_mm
FLANGE_OFFSET_MM = MINICOBO_DH[5].d_mm

# Orientation errors are weighted as if one radian were this many millimetres, so that the damped
# least-squares step balances position and orientation for an arm of this size.
_ROT_WEIGHT_MM = 200.0


def _as_joints(joints_rad) -> np.ndarray:
    q = np.asarray(joints_rad, dtype=np.float64)
    if q.shape[-1:] != (NUM_JOINTS,):
        raise ValueError(f"expected joint angles with a last axis of {NUM_JOINTS}, got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"joint angles must be finite, got {q}")
    return q


def _rot_z(q: np.ndarray) -> np.ndarray:
    """Batch of homogeneous z rotations, shape (..., 4, 4)."""
    c, s = np.cos(q), np.sin(q)
    m = np.zeros((*q.shape, 4, 4))
    m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1] = c, -s, s, c
    m[..., 2, 2] = m[..., 3, 3] = 1.0
    return m


def pose_to_matrix(tcp_pose) -> np.ndarray:
    pose = np.asarray(tcp_pose, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = rpy_to_matrix(pose[3:6])
    m[:3, 3] = pose[:3]
    return m


def matrix_to_pose(matrix: np.ndarray) -> np.ndarray:
    return np.concatenate([matrix[:3, 3], matrix_to_rpy(matrix[:3, :3])])


class MiniCoboKinematics:
    """FK, Jacobian and IK of the MiniCobo with a tool ``tcp_offset_mm`` along the flange z axis."""

    def __init__(self, tcp_offset_mm: float = 0.0, joint_limits_rad: Sequence[tuple[float, float]] | None = None,
                 dh: Sequence[DHLink] = MINICOBO_DH) -> None:
        self.tcp_offset_mm = float(tcp_offset_mm)
        self.dh = tuple(dh)
        self._fixed = np.stack([link.fixed_matrix() for link in self.dh])
        self._tool = np.eye(4)
        self._tool[2, 3] = self.tcp_offset_mm
        limits = joint_limits_rad if joint_limits_rad is not None else [(-2 * math.pi, 2 * math.pi)] * NUM_JOINTS
        self.lower_rad = np.array([lo for lo, _ in limits], dtype=np.float64)
        self.upper_rad = np.array([hi for _, hi in limits], dtype=np.float64)

    @classmethod
    def from_config(cls, config) -> MiniCoboKinematics:
        """From a HardwareConfig (tool offset and joint limits of its ``robot`` section)."""
        return cls(config.robot.tcp_offset_mm, config.robot.joint_limits_rad)

    # -- forward kinematics --------------------------------------------------------------------
    def frames(self, joints_rad) -> np.ndarray:
        """Joint frames 1..6 and the TCP frame in the base frame, shape (..., 7, 4, 4), mm."""
        q = _as_joints(joints_rad)
        local = self._fixed @ _rot_z(q)  # (..., 6, 4, 4)
        out = np.empty((*q.shape[:-1], NUM_JOINTS + 1, 4, 4))
        m = local[..., 0, :, :]
        out[..., 0, :, :] = m
        for i in range(1, NUM_JOINTS):
            m = m @ local[..., i, :, :]
            out[..., i, :, :] = m
        out[..., NUM_JOINTS, :, :] = m @ self._tool
        return out

    def flange_matrix(self, joints_rad) -> np.ndarray:
        return self.frames(joints_rad)[..., NUM_JOINTS - 1, :, :]

    def tcp_matrix(self, joints_rad) -> np.ndarray:
        return self.frames(joints_rad)[..., NUM_JOINTS, :, :]

    def forward(self, joints_rad) -> np.ndarray:
        """TCP pose(s) ``[x, y, z mm, rx, ry, rz rad]``; accepts (6,) or (N, 6)."""
        m = self.tcp_matrix(joints_rad)
        if m.ndim == 2:
            return matrix_to_pose(m)
        flat = m.reshape(-1, 4, 4)
        return np.stack([matrix_to_pose(t) for t in flat]).reshape(*m.shape[:-2], 6)

    def jacobian(self, joints_rad) -> np.ndarray:
        """Geometric Jacobian at the TCP, (6, 6): rows vx, vy, vz (mm/rad) then wx, wy, wz (rad/rad)."""
        return self._jacobian_from_frames(self.frames(joints_rad))

    @staticmethod
    def _jacobian_from_frames(frames: np.ndarray) -> np.ndarray:
        axes = frames[:NUM_JOINTS, :3, 2]
        origins = frames[:NUM_JOINTS, :3, 3]
        tcp = frames[NUM_JOINTS, :3, 3]
        return np.vstack([np.cross(axes, tcp - origins).T, axes.T])

    # -- limits ---------------------------------------------------------------------------------
    def within_limits(self, joints_rad, tolerance_rad: float = 1e-9) -> bool:
        q = _as_joints(joints_rad)
        return bool(np.all(q >= self.lower_rad - tolerance_rad) and np.all(q <= self.upper_rad + tolerance_rad))

    def clip_to_limits(self, joints_rad) -> np.ndarray:
        return np.clip(_as_joints(joints_rad), self.lower_rad, self.upper_rad)

    # -- inverse kinematics ---------------------------------------------------------------------
    def inverse(self, tcp_pose, seed_joints_rad, *, pos_tol_mm: float = 1e-3, rot_tol_rad: float = 1e-6,
                max_iterations: int = 100, restarts: int = 6) -> np.ndarray:
        """Joints reaching ``tcp_pose`` (position and orientation) within the joint limits, nearest the seed.

        Damped least squares from the seed; when that does not converge, from a few deterministic
        perturbations of it. Raises IKFailedError saying how far the best attempt stayed and why.
        """
        target = pose_to_matrix(np.asarray(tcp_pose, dtype=np.float64))
        if not np.all(np.isfinite(target)):
            raise IKFailedError(f"IK target pose is not finite: {tcp_pose}", call="kinematics.inverse")
        seed = self.clip_to_limits(seed_joints_rad)
        rng = np.random.default_rng(0)
        best: tuple[float, np.ndarray, float, float] | None = None
        solutions = []
        for attempt in range(restarts + 1):
            start = seed if attempt == 0 else self.clip_to_limits(seed + rng.normal(0.0, 0.6 * attempt ** 0.5, 6))
            q, pos_err, rot_err = self._solve(target, start, pos_tol_mm, rot_tol_rad, max_iterations)
            if pos_err <= pos_tol_mm and rot_err <= rot_tol_rad:
                solutions.append(self._nearest_turn(q, seed))
                if attempt == 0:
                    break
            score = pos_err + _ROT_WEIGHT_MM * rot_err
            if best is None or score < best[0]:
                best = (score, q, pos_err, rot_err)
        if solutions:
            return min(solutions, key=lambda s: float(np.sum((s - seed) ** 2)))
        assert best is not None
        raise IKFailedError(self._failure_message(target, seed, best[1], best[2], best[3]), call="kinematics.inverse")

    def _solve(self, target: np.ndarray, start: np.ndarray, pos_tol_mm: float, rot_tol_rad: float,
               max_iterations: int) -> tuple[np.ndarray, float, float]:
        """Levenberg-Marquardt damped least squares, clamped to the joint limits every step."""
        weights = np.array([1.0, 1.0, 1.0, _ROT_WEIGHT_MM, _ROT_WEIGHT_MM, _ROT_WEIGHT_MM])
        q = start.copy()
        frames = self.frames(q)
        error = _pose_error(target, frames[NUM_JOINTS])
        cost = float(np.sum((weights * error) ** 2))
        damping = 1.0
        for _ in range(max_iterations):
            if np.linalg.norm(error[:3]) <= pos_tol_mm and np.linalg.norm(error[3:]) <= rot_tol_rad:
                break
            jac = weights[:, None] * self._jacobian_from_frames(frames)
            step = jac.T @ np.linalg.solve(jac @ jac.T + damping * np.eye(6), weights * error)
            candidate = np.clip(q + step, self.lower_rad, self.upper_rad)
            cand_frames = self.frames(candidate)
            cand_error = _pose_error(target, cand_frames[NUM_JOINTS])
            cand_cost = float(np.sum((weights * cand_error) ** 2))
            if cand_cost < cost:
                q, frames, error, cost = candidate, cand_frames, cand_error, cand_cost
                damping = max(damping * 0.2, 1e-9)
            else:
                damping *= 10.0
                if damping > 1e9:
                    break
        return q, float(np.linalg.norm(error[:3])), float(np.linalg.norm(error[3:]))

    def _nearest_turn(self, q: np.ndarray, seed: np.ndarray) -> np.ndarray:
        """Shift joints by whole turns towards the seed where the limits allow (J1, J4, J6 span +/-360 deg)."""
        out = q.copy()
        turns = np.round((seed - q) / (2 * math.pi))
        shifted = q + turns * 2 * math.pi
        ok = (shifted >= self.lower_rad) & (shifted <= self.upper_rad)
        out[ok] = shifted[ok]
        return out

    def _failure_message(self, target: np.ndarray, seed: np.ndarray, best_q: np.ndarray, pos_err: float,
                         rot_err: float) -> str:
        pose = matrix_to_pose(target)
        reasons = []
        wrist = target[:3, 3] - (FLANGE_OFFSET_MM + self.tcp_offset_mm) * target[:3, 2]
        shoulder = np.array([0.0, 0.0, SHOULDER_HEIGHT_MM])
        reach = math.hypot(UPPER_ARM_MM + FOREARM_MM, MINICOBO_DH[1].d_mm)
        distance = float(np.linalg.norm(wrist - shoulder))
        if distance > reach:
            reasons.append(f"the wrist centre would be {distance:.0f} mm from the shoulder, beyond the arm's "
                           f"{reach:.0f} mm (move the target closer or tilt the tool)")
        at_limit = [f"J{i + 1}" for i in range(NUM_JOINTS)
                    if min(best_q[i] - self.lower_rad[i], self.upper_rad[i] - best_q[i]) < 1e-6]
        if at_limit:
            reasons.append(f"joint limits block the best attempt at {', '.join(at_limit)}")
        why = "; ".join(reasons) if reasons else "no solution found near the seed (target near a singularity?)"
        return (f"IK failed for TCP pose [{pose[0]:.1f}, {pose[1]:.1f}, {pose[2]:.1f}] mm, rpy "
                f"[{pose[3]:.3f}, {pose[4]:.3f}, {pose[5]:.3f}] rad from seed "
                f"{np.round(rad_to_deg(seed), 1).tolist()} deg: best attempt stayed {pos_err:.1f} mm and "
                f"{rad_to_deg(rot_err):.2f} deg away; {why}")


def _pose_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """[position error mm, rotation vector rad] taking ``current`` to ``target`` (base frame)."""
    return np.concatenate([target[:3, 3] - current[:3, 3], matrix_to_rotvec(target[:3, :3] @ current[:3, :3].T)])
