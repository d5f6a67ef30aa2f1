"""Action spaces: the ONE module that turns recordings into policy actions and actions into arm commands.

An action is 7 numbers: six motion deltas and the gripper opening. The delta is taken from the
*measured* state to the command actually sent at that step (after the safety layer), so that at
run time ``target = measured state + predicted delta`` reproduces what the demonstrator did.

- ``ee_delta``: [dx_mm, dy_mm, dz_mm, rotation vector (3, rad, base frame)] TCP delta (robot/frames.py),
- ``joint_delta``: [dq1..dq6 rad] joint delta,
and in both the gripper as an absolute opening (1 = open, 0 = closed), which, as upstream OpenVLA
does, is not normalised (mask false in dataset_statistics.json).

numpy only: the robot PC imports this without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from robot.frames import apply_pose_delta, pose_delta
from robot.interfaces import ArmState
from robot.safety import Command

ACTION_DIM = 7
GRIPPER_INDEX = 6


class ActionSpace(StrEnum):
    EE_DELTA = "ee_delta"
    JOINT_DELTA = "joint_delta"


@dataclass(frozen=True)
class ActionSpaceSpec:
    name: ActionSpace
    dim_names: tuple[str, ...]
    units: tuple[str, ...]
    required_keys: tuple[str, ...]

    @property
    def normalize_mask(self) -> tuple[bool, ...]:
        """Which dimensions are q01/q99-normalised: all but the gripper (kept absolute, as upstream)."""
        return tuple(i != GRIPPER_INDEX for i in range(ACTION_DIM))

    def describe(self) -> dict:
        """The record stored in checkpoints (fanvla.json) and served by /metadata."""
        return {"name": self.name.value, "dims": list(self.dim_names), "units": list(self.units),
                "normalized": list(self.normalize_mask), "gripper": "absolute opening, 1 = open, 0 = closed"}


SPECS: dict[ActionSpace, ActionSpaceSpec] = {
    ActionSpace.EE_DELTA: ActionSpaceSpec(
        ActionSpace.EE_DELTA, ("dx", "dy", "dz", "drx", "dry", "drz", "gripper"),
        ("mm", "mm", "mm", "rad", "rad", "rad", "opening"),
        ("tcp_pose", "command_tcp_pose", "command_gripper")),
    ActionSpace.JOINT_DELTA: ActionSpaceSpec(
        ActionSpace.JOINT_DELTA, ("dq1", "dq2", "dq3", "dq4", "dq5", "dq6", "gripper"),
        ("rad",) * 6 + ("opening",),
        ("joints_rad", "command_joints_rad", "command_gripper")),
}


def action_space(name: str | ActionSpace) -> ActionSpaceSpec:
    try:
        return SPECS[ActionSpace(name)]
    except ValueError:
        raise ValueError(f"unknown action space {name!r}; choose one of {', '.join(s.value for s in ActionSpace)}") \
            from None


def actions_from_recording(arrays: Mapping[str, np.ndarray], space: str | ActionSpace) -> np.ndarray:
    """(T, 7) float64 actions from one episode's recorded arrays (keys: docs/episode_store.md)."""
    spec = action_space(space)
    missing = [key for key in spec.required_keys if key not in arrays]
    if missing:
        raise KeyError(f"the recording lacks {missing} needed for the {spec.name.value} action space")
    gripper = np.asarray(arrays["command_gripper"], dtype=np.float64).reshape(-1)
    if spec.name is ActionSpace.EE_DELTA:
        measured, sent = (np.asarray(arrays[k], dtype=np.float64) for k in ("tcp_pose", "command_tcp_pose"))
        motion = np.stack([pose_delta(a, b) for a, b in zip(measured, sent, strict=True)]) if len(measured) \
            else np.zeros((0, 6))
    else:
        motion = np.asarray(arrays["command_joints_rad"], dtype=np.float64) - \
            np.asarray(arrays["joints_rad"], dtype=np.float64)
    if len(motion) != len(gripper):
        raise ValueError(f"recording arrays disagree in length: {len(motion)} motion rows, {len(gripper)} gripper")
    return np.concatenate([motion, gripper[:, None]], axis=1)


def command_from_action(action, arm_state: ArmState, space: str | ActionSpace) -> Command:
    """The arm command for a predicted action, relative to the measured state (the safety layer comes next)."""
    spec = action_space(space)
    values = np.asarray(action, dtype=np.float64).reshape(-1)
    if values.shape != (ACTION_DIM,):
        raise ValueError(f"an action has {ACTION_DIM} values, got shape {np.shape(action)}")
    gripper = float(np.clip(values[GRIPPER_INDEX], 0.0, 1.0)) if np.isfinite(values[GRIPPER_INDEX]) \
        else float("nan")
    if spec.name is ActionSpace.EE_DELTA:
        return Command.to_pose(apply_pose_delta(arm_state.tcp_pose, values[:6]), gripper)
    return Command.to_joints(np.asarray(arm_state.joints_rad, dtype=np.float64) + values[:6], gripper)
