"""What an episode store holds: its per-step keys (dtype, shape, unit), rate, image codec and the
configuration it was recorded with; and the check that decides whether a store may be resumed.

The recorder builds its schema with :func:`recording_schema` (the list of keys it writes, with units,
is :data:`RECORDING_KEYS`); docs/episode_store.md describes the same keys for people.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from collect.noop import NOOP_KEYS, NoopThresholds

SCHEMA_VERSION = 2  # the store layout written now (1: before chunk checksums; both are read)
ImageCodecName = Literal["png", "jpeg"]


@dataclass(frozen=True)
class KeySpec:
    """One per-step key: numpy dtype, per-step shape (``()`` for a scalar), unit and meaning."""

    dtype: str
    shape: tuple[int, ...]
    unit: str
    description: str

    @property
    def is_image(self) -> bool:
        return len(self.shape) >= 2

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "unit": self.unit, "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeySpec:
        return cls(str(data["dtype"]), tuple(int(n) for n in data["shape"]), str(data["unit"]),
                   str(data.get("description", "")))


def _low_dim(dtype: str, shape: tuple[int, ...], unit: str, description: str) -> KeySpec:
    return KeySpec(dtype, shape, unit, description)


POSE_UNIT = "x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad"
# The low-dimensional keys the recorder writes at every tick (images are added by recording_schema).
RECORDING_KEYS: dict[str, KeySpec] = {
    "timestamp_s": _low_dim("float64", (), "s", "Clock time of the control tick"),
    "color_timestamp_s": _low_dim("float64", (), "s", "capture time of the colour frame (device clock)"),
    "color_frame_number": _low_dim("int64", (), "count", "the camera's frame counter"),
    "joints_rad": _low_dim("float64", (6,), "rad", "measured joint angles"),
    "tcp_pose": _low_dim("float64", (6,), POSE_UNIT, "measured TCP pose in the base frame (robot/frames.py)"),
    "gripper_state": _low_dim("float32", (), "0 closed .. 1 open", "gripper opening (measured, else last command)"),
    "command_joints_rad": _low_dim("float64", (6,), "rad", "joint target sent to the arm after the safety layer"),
    "command_tcp_pose": _low_dim("float64", (6,), POSE_UNIT, "TCP target sent after the safety layer"),
    "command_gripper": _low_dim("float32", (), "0 closed .. 1 open", "gripper command sent"),
    "command_clamped": _low_dim("bool", (), "flag", "the safety layer changed the agent's command"),
    "command_held": _low_dim("bool", (), "flag", "no fresh safe command: the arm held (command = measured state)"),
    # The step's delays (robot/latency.py step_timing; the calibrated figures are in the episode metadata).
    "capture_to_observation_s": _low_dim("float64", (), "s", "camera capture to the end of the observation"),
    "observation_to_command_s": _low_dim("float64", (), "s", "end of this tick's observation to the command sent at "
                                                             "this tick (NaN: none sent)"),
    "command_to_motion_s": _low_dim("float64", (), "s", "command to arm motion, from `fanvla robot latency` (NaN: "
                                                        "held or not measured)"),
}

WRIST_COLOR_KEY = "wrist_color"  # the wrist camera's frames (hardware.yaml cameras.wrist), when it is configured
# Per-step keys of the wrist camera, added by recording_schema when hardware.yaml sets cameras.wrist.
WRIST_KEYS: dict[str, KeySpec] = {
    "wrist_color_timestamp_s": _low_dim("float64", (), "s", "capture time of the wrist camera's frame (device clock)"),
    "wrist_color_frame_number": _low_dim("int64", (), "count", "the wrist camera's frame counter"),
}

# hardware.yaml fields that do not change what is recorded (connection and start-up settings):
# ignored when deciding whether a store may be resumed with the current configuration.
IGNORED_HARDWARE_FIELDS = frozenset({
    "robot.ip", "robot.sdk_path", "robot.error_code_file", "robot.network_timeout_ms", "robot.payload_kg",
    "robot.payload_com_mm",
    "camera.warmup_frames", "camera.frame_timeout_s", "camera.retries",
})
COMPARED_HARDWARE_SECTIONS = ("robot", "camera")


@dataclass(frozen=True)
class ImageCodecSpec:
    name: ImageCodecName = "png"
    jpeg_quality: int = 92
    png_level: int = 1

    def __post_init__(self) -> None:
        if self.name not in ("png", "jpeg"):
            raise ValueError(f"image codec must be 'png' (lossless) or 'jpeg', got {self.name!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not 0 <= self.png_level <= 9:
            raise ValueError(f"png_level must be in 0..9, got {self.png_level}")

    def describe(self) -> str:
        return f"jpeg (quality {self.jpeg_quality})" if self.name == "jpeg" else f"png (level {self.png_level})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "jpeg_quality": self.jpeg_quality, "png_level": self.png_level}


@dataclass(frozen=True)
class StoreSchema:
    """Everything fixed when a store is created. ``hardware`` is ``fanvla.config.config_snapshot(...)``."""

    keys: Mapping[str, KeySpec]
    rate_hz: float
    image_codec: ImageCodecSpec = field(default_factory=ImageCodecSpec)
    noop: NoopThresholds | None = None
    camera_intrinsics: Mapping[str, Any] | None = None
    hardware: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a store schema needs at least one per-step key")
        for name, spec in self.keys.items():
            if not name.isidentifier() or name == "noop":
                raise ValueError(f"per-step key {name!r} must be a Python identifier and not 'noop'")
            np.dtype(spec.dtype)  # raises TypeError naming an unknown dtype
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if self.noop is not None and not self.has_noop_keys:
            raise ValueError(f"no-op thresholds given but the schema lacks keys {self.missing_noop_keys}")

    @property
    def image_keys(self) -> list[str]:
        return [name for name, spec in self.keys.items() if spec.is_image]

    @property
    def low_dim_keys(self) -> list[str]:
        return [name for name, spec in self.keys.items() if not spec.is_image]

    @property
    def missing_noop_keys(self) -> list[str]:
        return [key for key in NOOP_KEYS if key not in self.keys]

    @property
    def has_noop_keys(self) -> bool:
        return not self.missing_noop_keys

    def to_attrs(self) -> dict[str, Any]:
        return {
            "keys": {name: spec.to_dict() for name, spec in self.keys.items()},
            "units": {name: spec.unit for name, spec in self.keys.items()},
            "rate_hz": float(self.rate_hz),
            "image_codec": self.image_codec.to_dict(),
            "noop_thresholds": None if self.noop is None else self.noop.to_dict(),
            "camera_intrinsics": None if self.camera_intrinsics is None else dict(self.camera_intrinsics),
            "hardware": None if self.hardware is None else dict(self.hardware),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoreSchema:
        noop = attrs.get("noop_thresholds")
        return cls(
            keys={name: KeySpec.from_dict(spec) for name, spec in attrs["keys"].items()},
            rate_hz=float(attrs["rate_hz"]),
            image_codec=ImageCodecSpec(**attrs["image_codec"]),
            noop=None if noop is None else NoopThresholds(**noop),
            camera_intrinsics=attrs.get("camera_intrinsics"),
            hardware=attrs.get("hardware"),
        )


def recording_schema(config, intrinsics=None, *, record_depth: bool | None = None) -> StoreSchema:
    """The schema the recorder writes, from a ``HardwareConfig`` and the camera's ``Intrinsics`` (or dict).

    Image size from ``camera.color``; depth (``depth_mm``, aligned to colour when ``camera.align_depth_to_color``)
    when ``recording.record_depth`` and ``camera.depth.enabled``; the wrist camera's frames (``wrist_color`` at
    ``cameras.wrist.color``'s size, with their timestamps) when ``cameras.wrist`` is set; rate, codec and no-op
    thresholds from ``recording``; the whole file as a snapshot.
    """
    from fanvla.config import config_snapshot

    color = config.camera.color
    keys = {"color": KeySpec("uint8", (color.height, color.width, 3), "RGB", "colour frame, RGB order")}
    if record_depth is None:
        record_depth = config.recording.record_depth and config.camera.depth.enabled
    if record_depth:
        depth = color if config.camera.align_depth_to_color else config.camera.depth
        keys["depth_mm"] = KeySpec("uint16", (depth.height, depth.width), "mm", "depth, 0 = no reading")
    wrist = config.cameras.wrist
    if wrist is not None:
        keys[WRIST_COLOR_KEY] = KeySpec("uint8", (wrist.color.height, wrist.color.width, 3), "RGB",
                                        "wrist camera's colour frame, RGB order")
    keys.update(RECORDING_KEYS)
    if wrist is not None:
        keys.update(WRIST_KEYS)
    if intrinsics is not None and not isinstance(intrinsics, Mapping):
        intrinsics = intrinsics.to_dict()
    recording = config.recording
    return StoreSchema(
        keys=keys,
        rate_hz=recording.rate_hz,
        image_codec=ImageCodecSpec(recording.image_codec, recording.jpeg_quality),
        noop=NoopThresholds.from_config(config),
        camera_intrinsics=intrinsics,
        hardware=config_snapshot(config),
    )


def schema_differences(stored: StoreSchema, wanted: StoreSchema) -> list[str]:
    """Why a store recorded with ``stored`` cannot take episodes recorded with ``wanted`` (empty: it can).

    Compared: per-step keys (names, dtypes, shapes), rate, image codec, camera intrinsics (when both
    are known) and the robot and camera sections of the hardware snapshot (except
    :data:`IGNORED_HARDWARE_FIELDS`). The no-op thresholds are not compared: the store keeps its own.
    """
    differences = []
    for name in sorted(set(stored.keys) | set(wanted.keys)):
        old, new = stored.keys.get(name), wanted.keys.get(name)
        if old is None or new is None:
            differences.append(f"per-step key {name!r}: {'absent' if old is None else 'present'} in the store, "
                               f"{'absent' if new is None else 'present'} now")
        elif (old.dtype, old.shape) != (new.dtype, new.shape):
            differences.append(f"per-step key {name!r}: {old.dtype} {old.shape} in the store, "
                               f"{new.dtype} {new.shape} now")
    if not math.isclose(stored.rate_hz, wanted.rate_hz, rel_tol=1e-9):
        differences.append(f"recording.rate_hz: {stored.rate_hz:g} in the store, {wanted.rate_hz:g} now")
    if stored.image_codec.describe() != wanted.image_codec.describe():
        differences.append(f"image codec: {stored.image_codec.describe()} in the store, "
                           f"{wanted.image_codec.describe()} now")
    if stored.camera_intrinsics is not None and wanted.camera_intrinsics is not None:
        differences += _differences("camera intrinsics", stored.camera_intrinsics, wanted.camera_intrinsics)
    if stored.hardware is not None and wanted.hardware is not None:
        for section in COMPARED_HARDWARE_SECTIONS:
            differences += _differences(section, stored.hardware.get(section), wanted.hardware.get(section))
    return differences


def _differences(path: str, old: Any, new: Any) -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return [difference for key in sorted(set(old) | set(new), key=str)
                for difference in _differences(f"{path}.{key}", old.get(key), new.get(key))]
    if path in IGNORED_HARDWARE_FIELDS or _same_value(old, new):
        return []
    return [f"{path}: {old!r} in the store, {new!r} now"]


def _same_value(old: Any, new: Any) -> bool:
    if isinstance(old, (int, float)) and isinstance(new, (int, float)) and not isinstance(old, bool):
        return math.isclose(float(old), float(new), rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(_same_value(a, b) for a, b in zip(old, new, strict=True))
    return old == new
