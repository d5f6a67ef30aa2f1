"""Units: the one place where the stack converts between them.

Conventions (the same as JAKA's Python SDK, so no conversion happens at the SDK boundary):
- joint angles in rad, joint speeds in rad/s;
- Cartesian positions in mm, linear speeds in mm/s;
- orientations as roll/pitch/yaw in rad (see robot/frames.py for the rotation order).
MuJoCo works in metres: the twin converts with ``mm_to_m`` / ``m_to_mm`` at its boundary.
Configuration files use degrees where people read them; the config loader converts with ``deg_to_rad``.
"""

from __future__ import annotations

import math

import numpy as np

MM_PER_M = 1000.0


def deg_to_rad(value_deg: float) -> float:
    return value_deg * math.pi / 180.0


def rad_to_deg(value_rad: float) -> float:
    return value_rad * 180.0 / math.pi


def _scale(value, factor: float) -> float | np.ndarray:
    result = np.asarray(value, dtype=np.float64) * factor
    return float(result) if result.ndim == 0 else result


def mm_to_m(value_mm) -> float | np.ndarray:
    return _scale(value_mm, 1.0 / MM_PER_M)


def m_to_mm(value_m) -> float | np.ndarray:
    return _scale(value_m, MM_PER_M)
