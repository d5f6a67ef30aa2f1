"""Shared by the recorder tests: a small, fast hardware configuration and a subscriber that keeps copies."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml

from robot.runtime import Observation, Step

REPO_ROOT = Path(__file__).resolve().parents[2]
# Small frames and one frame per control tick: an episode in the lock-step twin takes about a second.
SMALL = {"camera.color.width": 64, "camera.color.height": 48, "camera.color.fps": 10,
         "camera.depth.enabled": False, "camera.depth.width": 64, "camera.depth.height": 48,
         "camera.depth.fps": 10}
# A small wrist camera (cameras.wrist), one frame per control tick.
SMALL_WRIST = {"cameras.wrist": {"color": {"width": 64, "height": 48, "fps": 10}}}


def small_config(**overrides: object):
    from fanvla.config import load_hardware_config

    return load_hardware_config(REPO_ROOT / "hardware.yaml").with_overrides({**SMALL, **overrides})


def write_config(path: Path, config) -> Path:
    """hardware.yaml for ``config`` (for the command line's --config)."""
    from fanvla.config import config_snapshot

    path.write_text(yaml.safe_dump(config_snapshot(config), sort_keys=False), encoding="utf-8")
    return path


class Keeper:
    """A subscriber keeping deep copies of every step and result (what the loop produced)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.results = []

    def on_episode_start(self, instruction: str) -> None:
        self.steps = []

    def on_step(self, step: Step) -> None:
        self.steps.append(copy.deepcopy(step))

    def on_episode_end(self, result) -> None:
        self.results.append(result)

    def column(self, name: str) -> np.ndarray:
        return np.stack([np.asarray(value_of(step, name)) for step in self.steps])


def value_of(step: Step, name: str):
    """What the store should hold for ``name`` at ``step`` (independent of collect/recorder.py's code)."""
    o: Observation = step.observation
    held = step.sent is None
    if name.startswith("wrist_"):  # the wrist camera's frame, as the loop observed it
        return {"wrist_color": o.wrist.color, "wrist_color_timestamp_s": o.wrist.timestamp_s,
                "wrist_color_frame_number": o.wrist.frame_number}[name]
    return {
        "color": o.frame.color, "depth_mm": o.frame.depth_mm, "timestamp_s": o.time_s,
        "color_timestamp_s": o.frame.timestamp_s, "color_frame_number": o.frame.frame_number,
        "joints_rad": o.arm.joints_rad, "tcp_pose": o.arm.tcp_pose, "gripper_state": o.gripper.command,
        "command_joints_rad": o.arm.joints_rad if held else step.sent.joints_rad,
        "command_tcp_pose": o.arm.tcp_pose if held else step.sent.tcp_pose,
        "command_gripper": o.gripper.command if held else step.sent.gripper,
        "command_clamped": (not held) and step.sent.clamped, "command_held": held,
        **{key: step.timing.get(key, float("nan")) for key in
           ("capture_to_observation_s", "observation_to_command_s", "command_to_motion_s")},
    }[name]
