"""Shared by the episode-store tests and their crash child: small schemas and deterministic episodes.

Episode ``seed`` step ``t`` always has the same values, so a test can check, after a crash, that every
saved episode is still exactly what was recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from collect.schema import StoreSchema, recording_schema
from collect.store import EpisodeStore

if TYPE_CHECKING:
    from fanvla.config import HardwareConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
HEIGHT_PX, WIDTH_PX = 24, 32
INTRINSICS = {"width": WIDTH_PX, "height": HEIGHT_PX, "fx": 19.2, "fy": 19.2, "ppx": 16.0, "ppy": 12.0,
              "distortion_model": "brown_conrady", "coeffs": [0.0, 0.0, 0.0, 0.0, 0.0]}


def small_config(**overrides: object) -> HardwareConfig:
    from fanvla.config import load_hardware_config  # lazily: the crash child starts faster without pydantic

    base = {"camera.color.width": WIDTH_PX, "camera.color.height": HEIGHT_PX}
    return load_hardware_config(REPO_ROOT / "hardware.yaml").with_overrides({**base, **overrides})


def small_schema(record_depth: bool = False, **overrides: object) -> StoreSchema:
    return recording_schema(small_config(**overrides), INTRINSICS, record_depth=record_depth)


def make_step(seed: int, t: int, schema: StoreSchema) -> dict[str, object]:
    """Step ``t`` of episode ``seed``: joints move for even t, hold still for odd t (so some steps are no-ops)."""
    rng = np.random.default_rng(seed * 10_007 + t)
    joints = np.full(6, 0.1 * seed) + 0.01 * (t // 2) * np.arange(1, 7)
    step: dict[str, object] = {
        "timestamp_s": 100.0 * seed + 0.1 * t,
        "color_timestamp_s": 100.0 * seed + 0.1 * t - 0.02,
        "color_frame_number": 1000 * seed + 3 * t,
        "joints_rad": joints,
        "tcp_pose": np.array([300.0 + t, -50.0 + seed, 200.0, np.pi, 0.0, 0.1 * t]),
        "gripper_state": np.float32(1.0 if t < 6 else 0.0),
        "command_joints_rad": joints + 0.01 * (t % 2 == 0),
        "command_tcp_pose": np.array([301.0 + t, -50.0 + seed, 199.0, np.pi, 0.0, 0.1 * t]),
        "command_gripper": np.float32(1.0 if t < 5 else 0.0),
        "command_clamped": bool(t % 7 == 3),
        "command_held": bool(t % 5 == 4),
        "capture_to_observation_s": 0.03 + 0.001 * t,
        "observation_to_command_s": np.nan if t % 5 == 4 else 0.004,
        "command_to_motion_s": np.nan,
    }
    for key, spec in schema.keys.items():
        if spec.is_image:
            high = 256 if spec.dtype == "uint8" else 4000
            step[key] = rng.integers(0, high, spec.shape, dtype=spec.dtype)
    return {key: value for key, value in step.items() if key in schema.keys}  # a store of older keys has fewer


def episode_meta(seed: int) -> dict[str, object]:
    objects = ["red_cube", "green_cylinder", "blue_prism"]
    name = objects[seed % 3]
    return {"instruction": f"put the {name.replace('_', ' ')} into the box", "object": name, "seed": seed,
            "backend": "sim", "teleop": "scripted"}


def record_episode(store: EpisodeStore, seed: int, steps: int, image_threads: int = 2) -> int:
    with store.begin_episode(episode_meta(seed), image_threads=image_threads) as writer:
        for t in range(steps):
            writer.add_step(make_step(seed, t, store.schema))
        return writer.commit({"duration_s": steps / store.schema.rate_hz, "outcome": "success"})


def assert_episode_intact(store: EpisodeStore, index: int, seed: int, steps: int) -> None:
    episode = store.read_episode(index)
    assert store.episode_meta(index)["seed"] == seed
    assert store.episode_meta(index)["frames"] == steps
    for t in range(steps):
        expected = make_step(seed, t, store.schema)
        for key, value in expected.items():
            np.testing.assert_array_equal(episode[key][t], np.asarray(value, dtype=store.schema.keys[key].dtype),
                                          err_msg=f"episode {index} step {t} key {key}")
