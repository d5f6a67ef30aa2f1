"""Frames and rotation conventions: the one place that defines them.

- Base frame: the robot base on the table top; x forward (towards the workspace), y to the left,
  z up; the table top is z = 0. Scene placements, the TCP workspace box and the twin use it.
- TCP pose: ``[x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad]`` of the tool centre point in the base
  frame. The orientation is JAKA's RPY: fixed-axis X-Y-Z, i.e. ``R = Rz(rz) @ Ry(ry) @ Rx(rx)``.
- Orientation deltas (actions, safety limits) are rotation vectors (axis * angle, rad) expressed in
  the base frame: ``R_target = exp(delta) @ R_current``.
"""

from __future__ import annotations

import numpy as np

POSE_DIM = 6  # x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad


def rpy_to_matrix(rpy_rad) -> np.ndarray:
    rx, ry, rz = (float(v) for v in rpy_rad)
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return np.array([
        [cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx],
        [sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx],
        [-sy, cy * sx, cy * cx],
    ])


def matrix_to_rpy(matrix) -> np.ndarray:
    r = np.asarray(matrix, dtype=np.float64)
    ry = np.arctan2(-r[2, 0], np.hypot(r[0, 0], r[1, 0]))
    if np.hypot(r[0, 0], r[1, 0]) < 1e-9:  # gimbal lock: put all yaw into rx
        return np.array([np.arctan2(-r[1, 2], r[1, 1]), ry, 0.0])
    return np.array([np.arctan2(r[2, 1], r[2, 2]), ry, np.arctan2(r[1, 0], r[0, 0])])


def rotvec_to_matrix(rotvec) -> np.ndarray:
    v = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def matrix_to_rotvec(matrix) -> np.ndarray:
    r = np.asarray(matrix, dtype=np.float64)
    cos_angle = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos_angle))
    if angle < 1e-9:
        return np.zeros(3)
    if np.pi - angle < 1e-6:  # near pi: axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(r) + 1.0) / 2.0, 0.0, None))
        signs = np.sign([1.0, r[0, 1] + r[1, 0], r[0, 2] + r[2, 0]])
        signs[signs == 0] = 1.0
        return angle * axis * signs
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return angle * axis


def pose_delta(pose_from, pose_to) -> np.ndarray:
    """[dx_mm, dy_mm, dz_mm, rotvec(3) rad] taking ``pose_from`` to ``pose_to`` (base-frame rotation)."""
    a, b = np.asarray(pose_from, dtype=np.float64), np.asarray(pose_to, dtype=np.float64)
    rot = rpy_to_matrix(b[3:]) @ rpy_to_matrix(a[3:]).T
    return np.concatenate([b[:3] - a[:3], matrix_to_rotvec(rot)])


def apply_pose_delta(pose, delta) -> np.ndarray:
    """Inverse of :func:`pose_delta`: the pose reached from ``pose`` by ``delta``."""
    p, d = np.asarray(pose, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    rot = rotvec_to_matrix(d[3:]) @ rpy_to_matrix(p[3:])
    return np.concatenate([p[:3] + d[:3], matrix_to_rpy(rot)])
