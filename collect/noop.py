"""The no-op rule (the paper's filter): the one definition, used at record time and by ``collect filter``.

Step ``t`` of an episode is a no-op when

- every joint moves less than ``joint_eps_rad`` from step ``t`` to step ``t+1`` (for the last step of
  the episode, where no next measurement exists, the distance to the command sent at that step:
  ``|command_joints_rad[t] - joints_rad[t]|``), AND
- the gripper command did not change from ``t-1`` to ``t`` by more than ``gripper_eps`` (at ``t = 0``
  the command is compared with the measured gripper state).

``joint_eps_rad = 0`` therefore marks nothing (no motion is below zero): filtering is off.
Raw frames are never dropped: the mask is stored next to them and training views skip masked steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The per-step keys the rule reads (see docs/episode_store.md for units).
NOOP_KEYS = ("joints_rad", "command_joints_rad", "command_gripper", "gripper_state")


@dataclass(frozen=True)
class NoopThresholds:
    joint_eps_rad: float
    gripper_eps: float

    def __post_init__(self) -> None:
        for name in ("joint_eps_rad", "gripper_eps"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"no-op threshold {name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_config(cls, config) -> NoopThresholds:
        """From hardware.yaml ``recording.noop_joint_eps_deg`` / ``noop_gripper_eps``."""
        return cls(config.recording.noop_joint_eps_rad, config.recording.noop_gripper_eps)

    def to_dict(self) -> dict[str, float]:
        return {"joint_eps_rad": float(self.joint_eps_rad), "gripper_eps": float(self.gripper_eps)}


def episode_noop_mask(joints_rad: np.ndarray, command_joints_rad: np.ndarray, command_gripper: np.ndarray,
                      gripper_state: np.ndarray, thresholds: NoopThresholds) -> np.ndarray:
    """(T,) bool: True where step t of ONE episode is a no-op. Inputs are that episode's (T, 6) / (T,) arrays."""
    joints = np.asarray(joints_rad, dtype=np.float64)
    commands = np.asarray(command_joints_rad, dtype=np.float64)
    gripper_cmd = np.asarray(command_gripper, dtype=np.float64).reshape(-1)
    gripper_meas = np.asarray(gripper_state, dtype=np.float64).reshape(-1)
    steps = joints.shape[0]
    if not (commands.shape == joints.shape and gripper_cmd.shape == gripper_meas.shape == (steps,)):
        raise ValueError(f"no-op rule: inconsistent shapes joints {joints.shape}, commands {commands.shape}, "
                         f"command_gripper {gripper_cmd.shape}, gripper_state {gripper_meas.shape}")
    if steps == 0:
        return np.zeros(0, dtype=bool)
    next_joints = np.concatenate([joints[1:], commands[-1:]], axis=0)
    joints_still = np.all(np.abs(next_joints - joints) < thresholds.joint_eps_rad, axis=1)
    previous_gripper = np.concatenate([gripper_meas[:1], gripper_cmd[:-1]])
    gripper_unchanged = np.abs(gripper_cmd - previous_gripper) <= thresholds.gripper_eps
    return joints_still & gripper_unchanged


def store_noop_mask(columns: dict[str, np.ndarray], episode_ends: np.ndarray, thresholds: NoopThresholds) -> np.ndarray:
    """(F,) bool for a whole store: the rule applied episode by episode (it never looks across a boundary)."""
    total = int(episode_ends[-1]) if len(episode_ends) else 0
    mask = np.zeros(total, dtype=bool)
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        part = {key: columns[key][start:end] for key in NOOP_KEYS}
        mask[start:end] = episode_noop_mask(part["joints_rad"], part["command_joints_rad"], part["command_gripper"],
                                            part["gripper_state"], thresholds)
        start = int(end)
    return mask
