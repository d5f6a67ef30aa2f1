"""Small episode stores for the finetuning tests, written through the real store API (collect.store).

Each step shows a coloured square on a grey table at one of four places; the place (the step's *phase*) decides
the commanded motion and the gripper, so a model can learn the action from the image and a held-out episode
follows the same rule. Joints move at every step (no no-ops) unless ``still=True`` (every step a no-op).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collect.schema import StoreSchema, recording_schema
from collect.store import EpisodeStore

REPO_ROOT = Path(__file__).resolve().parents[2]
HEIGHT_PX, WIDTH_PX = 48, 64
INTRINSICS = {"width": WIDTH_PX, "height": HEIGHT_PX, "fx": 38.0, "fy": 38.0, "ppx": 32.0, "ppy": 24.0,
              "distortion_model": "brown_conrady", "coeffs": [0.0, 0.0, 0.0, 0.0, 0.0]}
INSTRUCTIONS = ("put the red cube into the box", "put the green cylinder into the box")
# Per phase: TCP motion (mm, rad) and gripper command.
PHASE_MOTION = np.array([[6.0, 0.0, -3.0, 0.0, 0.0, 0.02],
                         [-4.0, 5.0, 0.0, 0.01, 0.0, 0.0],
                         [0.0, -5.0, 4.0, 0.0, -0.01, 0.0],
                         [3.0, 3.0, -6.0, 0.0, 0.0, -0.02]])
PHASE_GRIPPER = (1.0, 1.0, 0.0, 0.0)
PHASE_CORNERS = ((6, 8), (6, 40), (26, 8), (26, 40))  # (row, column) of the square, px
SQUARE_COLOURS = ((200, 40, 40), (40, 170, 60))


def small_schema() -> StoreSchema:
    from fanvla.config import load_hardware_config

    config = load_hardware_config(REPO_ROOT / "hardware.yaml").with_overrides(
        {"camera.color.width": WIDTH_PX, "camera.color.height": HEIGHT_PX})
    return recording_schema(config, INTRINSICS, record_depth=False)


def render(phase: int, object_index: int, rng: np.random.Generator) -> np.ndarray:
    image = np.full((HEIGHT_PX, WIDTH_PX, 3), 120, dtype=np.int16)
    image[HEIGHT_PX // 2:] += 25  # the table's far edge
    row, col = PHASE_CORNERS[phase]
    image[row:row + 14, col:col + 16] = SQUARE_COLOURS[object_index % len(SQUARE_COLOURS)]
    image += rng.integers(-6, 7, size=image.shape)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8)


def make_step(t: int, episode_seed: int, object_index: int, rng: np.random.Generator, still: bool) -> dict:
    phase = (t + episode_seed) % 4
    joints = np.full(6, 0.1) if still else 0.1 + 0.02 * t * np.arange(1, 7) + 0.001 * episode_seed
    pose = np.array([300.0 + t, -40.0 + episode_seed, 200.0, np.pi, 0.0, 0.0])
    motion = PHASE_MOTION[phase] * (1.0 + 0.05 * rng.standard_normal(6))
    gripper = 1.0 if still else PHASE_GRIPPER[phase]
    return {
        "color": render(phase, object_index, rng),
        "timestamp_s": 0.1 * t, "color_timestamp_s": 0.1 * t - 0.01, "color_frame_number": 3 * t,
        "joints_rad": joints, "tcp_pose": pose,
        "gripper_state": np.float32(gripper),
        "command_joints_rad": joints if still else joints + 0.01,
        "command_tcp_pose": pose if still else pose + motion,
        "command_gripper": np.float32(gripper),
        "command_clamped": False,
        "command_held": still,
        "capture_to_observation_s": 0.03, "observation_to_command_s": np.nan if still else 0.005,
        "command_to_motion_s": np.nan if still else 0.016,
    }


def complete_step(step: dict, schema: StoreSchema) -> dict:
    """Only the schema's keys; a key this factory does not know (added to the recorder later) gets zeros."""
    return {key: step[key] if key in step else np.zeros(spec.shape, spec.dtype) for key, spec in schema.keys.items()}


def write_store(path: Path, episodes: int = 6, steps: int = 12, still: bool = False, seed: int = 0,
                instructions: tuple[str, ...] = INSTRUCTIONS) -> Path:
    """A store of ``episodes`` episodes of ``steps`` steps; instructions alternate between two objects."""
    store = EpisodeStore.create(path, small_schema())
    try:
        for episode in range(episodes):
            rng = np.random.default_rng([seed, episode])
            object_index = episode % len(instructions)
            meta = {"instruction": instructions[object_index], "object": f"object{object_index}", "seed": episode,
                    "backend": "sim", "teleop": "scripted", "started_at": f"2026-01-01T00:{episode:02d}:00+00:00"}
            with store.begin_episode(meta, image_queue=0) as writer:
                for t in range(steps):
                    writer.add_step(complete_step(make_step(t, episode, object_index, rng, still), store.schema))
                writer.commit({"duration_s": steps / 10.0, "outcome": "success"})
    finally:
        store.close()
    return path


def empty_store(path: Path) -> Path:
    EpisodeStore.create(path, small_schema()).close()
    return path
