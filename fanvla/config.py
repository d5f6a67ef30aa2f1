"""hardware.yaml: typed, validated configuration for the whole stack.

The file keeps human units in its key names (``_deg``, ``_mm``, ``_s``); the models below keep
those names so that an error message can quote the key as written. Code that needs SDK units
(rad, mm) uses the ``*_rad`` properties, which convert through :mod:`robot.units`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fanvla.yaml_loader import YamlError, boolean_numbers, excerpt, load_yaml
from robot.units import deg_to_rad

ENV_CONFIG = "FANVLA_HARDWARE"
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """hardware.yaml is missing, unreadable or invalid; the message names key, value and range."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Range = tuple[float, float]


def _ordered(value: Range) -> Range:
    if not value[0] < value[1]:
        raise ValueError(f"lower bound must be below upper bound, got [{value[0]}, {value[1]}]")
    return value


# JAKA's controller interpolates servo targets in 8 ms cycles; servo_j's step_num spreads one target over
# step_num cycles (JAKAZuRobot.h, servo_j: "servo_j movement period for step_num * 8ms").
CONTROLLER_CYCLE_S = 0.008
CONTROLLER_RATE_HZ = 1.0 / CONTROLLER_CYCLE_S
# The MiniCobo's rated payload (hardware.md) and its tool flange's digital outputs (jktypes.h IO_TOOL; 2 on the
# MiniCobo flange, hardware.md).
MINICOBO_PAYLOAD_KG = 1.0
TOOL_FLANGE_OUTPUTS = 2


def servo_step_num(rate_hz: float) -> int | None:
    """The whole number of 8 ms controller cycles one servo period spans at ``rate_hz`` (None: not a whole number)."""
    step_num = round(CONTROLLER_RATE_HZ / rate_hz)
    if step_num >= 1 and abs(step_num * CONTROLLER_CYCLE_S - 1.0 / rate_hz) <= 1e-9 * step_num + 1e-12:
        return step_num
    return None


class RobotConfig(_Model):
    ip: str
    sdk_path: str | None = None
    # JAKA's error-code file from the SDK bundle: get_last_error carries the controller's message only after
    # set_errorcode_file_path (JAKAZuRobot.h); None = errors are reported with this driver's own table.
    error_code_file: str | None = None
    home_joints_deg: Annotated[list[float], Field(min_length=6, max_length=6)]
    joint_limits_deg: Annotated[list[Range], Field(min_length=6, max_length=6)]
    home_speed_deg_s: Annotated[float, Field(gt=0, le=180)]
    servo_rate_hz: Annotated[float, Field(gt=0, le=125)]
    collision_level: Annotated[int, Field(ge=0, le=5)]
    network_timeout_ms: Annotated[int, Field(ge=10, le=10_000)]
    tcp_offset_mm: Annotated[float, Field(ge=0, le=400)]
    payload_kg: Annotated[float, Field(ge=0, le=MINICOBO_PAYLOAD_KG)]
    payload_com_mm: tuple[float, float, float]

    @field_validator("servo_rate_hz")
    @classmethod
    def _whole_controller_cycles(cls, rate_hz: float) -> float:
        if servo_step_num(rate_hz) is None:
            allowed = ", ".join(f"{CONTROLLER_RATE_HZ / n:g}" for n in range(1, 7))
            raise ValueError(f"the servo period must be a whole number of JAKA's 8 ms controller cycles, i.e. "
                             f"servo_rate_hz = 125 / n ({allowed}, ...)")
        return rate_hz

    @field_validator("joint_limits_deg")
    @classmethod
    def _limits_ordered(cls, limits: list[Range]) -> list[Range]:
        return [_ordered(r) for r in limits]

    @model_validator(mode="after")
    def _home_inside_limits(self) -> RobotConfig:
        for i, (q, (lo, hi)) in enumerate(zip(self.home_joints_deg, self.joint_limits_deg, strict=True)):
            if not lo <= q <= hi:
                raise ValueError(f"home_joints_deg[{i}] = {q} lies outside joint_limits_deg[{i}] = [{lo}, {hi}]")
        return self

    @property
    def home_joints_rad(self) -> list[float]:
        return [deg_to_rad(q) for q in self.home_joints_deg]

    @property
    def joint_limits_rad(self) -> list[tuple[float, float]]:
        return [(deg_to_rad(lo), deg_to_rad(hi)) for lo, hi in self.joint_limits_deg]

    @property
    def home_speed_rad_s(self) -> float:
        return deg_to_rad(self.home_speed_deg_s)

    @property
    def servo_step_num(self) -> int:
        """servo_j's step_num: 8 ms controller cycles per servo period."""
        return servo_step_num(self.servo_rate_hz)

    @property
    def servo_period_s(self) -> float:
        return self.servo_step_num * CONTROLLER_CYCLE_S


class WorkspaceBox(_Model):
    x: Range
    y: Range
    z: Range

    @field_validator("x", "y", "z")
    @classmethod
    def _axis_ordered(cls, value: Range) -> Range:
        return _ordered(value)


class SafetyConfig(_Model):
    workspace_mm: WorkspaceBox
    max_step_tcp_mm: Annotated[float, Field(gt=0, le=100)]
    max_step_rot_deg: Annotated[float, Field(gt=0, le=45)]
    max_tcp_speed_mm_s: Annotated[float, Field(gt=0, le=1000)]
    max_joint_speed_deg_s: Annotated[float, Field(gt=0, le=180)]
    watchdog_hold_s: Annotated[float, Field(gt=0, le=10)]
    watchdog_stop_s: Annotated[float, Field(gt=0, le=60)]

    @model_validator(mode="after")
    def _stop_after_hold(self) -> SafetyConfig:
        if self.watchdog_stop_s <= self.watchdog_hold_s:
            raise ValueError(
                f"watchdog_stop_s = {self.watchdog_stop_s} must exceed watchdog_hold_s = {self.watchdog_hold_s}"
            )
        return self

    @property
    def max_step_rot_rad(self) -> float:
        return deg_to_rad(self.max_step_rot_deg)

    @property
    def max_joint_speed_rad_s(self) -> float:
        return deg_to_rad(self.max_joint_speed_deg_s)


class GripperConfig(_Model):
    kind: Literal["digital_output"]
    io_type: Literal["cabinet", "tool", "extended"]
    io_index: Annotated[int, Field(ge=0, le=63)]
    close_level: bool
    stroke_mm: Annotated[float, Field(gt=0, le=200)]
    settle_s: Annotated[float, Field(ge=0, le=5)]

    @model_validator(mode="after")
    def _output_exists(self) -> GripperConfig:
        if self.io_type == "tool" and self.io_index >= TOOL_FLANGE_OUTPUTS:
            raise ValueError(f"io_index = {self.io_index}: the MiniCobo's tool flange has {TOOL_FLANGE_OUTPUTS} "
                             f"digital outputs (io_index 0 or 1 with io_type tool)")
        return self


class StreamProfile(_Model):
    width: Annotated[int, Field(ge=16, le=1920)]
    height: Annotated[int, Field(ge=16, le=1080)]
    fps: Annotated[int, Field(ge=1, le=90)]


class DepthProfile(StreamProfile):
    enabled: bool


class CameraConfig(_Model):
    serial: str | None = None
    color: StreamProfile
    depth: DepthProfile
    align_depth_to_color: bool
    warmup_frames: Annotated[int, Field(ge=0, le=300)]
    frame_timeout_s: Annotated[float, Field(gt=0, le=30)]
    retries: Annotated[int, Field(ge=0, le=20)]


class WristCameraConfig(_Model):
    """A second RealSense on the tool flange (OpenVLA-OFT's wrist image), recorded as ``wrist_color``: colour only.

    At the robot it is opened by ``serial`` (required: with two RealSense devices connected, "the only one" is
    ambiguous). The twin renders it from a camera fixed to the flange at ``mount_pos_mm`` looking at
    ``lookat_mm`` (both in the flange frame: z along the tool axis, as robot/kinematics.py), ``hfov_deg`` wide."""

    serial: str | None = None
    color: StreamProfile = StreamProfile(width=424, height=240, fps=15)
    warmup_frames: Annotated[int, Field(ge=0, le=300)] = 10
    frame_timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    retries: Annotated[int, Field(ge=0, le=20)] = 3
    mount_pos_mm: tuple[float, float, float] = (70.0, 0.0, 20.0)
    lookat_mm: tuple[float, float, float] = (0.0, 0.0, 200.0)
    hfov_deg: Annotated[float, Field(gt=20, lt=170)] = 87.0

    @model_validator(mode="after")
    def _looks_somewhere(self) -> WristCameraConfig:
        if self.mount_pos_mm == self.lookat_mm:
            raise ValueError("mount_pos_mm and lookat_mm are the same point: the camera looks nowhere")
        return self

    def as_camera_config(self) -> CameraConfig:
        """The ``CameraConfig`` the RealSense driver opens it with: this colour stream, no depth."""
        return CameraConfig(serial=self.serial, color=self.color,
                            depth=DepthProfile(enabled=False, width=self.color.width, height=self.color.height,
                                               fps=self.color.fps),
                            align_depth_to_color=False, warmup_frames=self.warmup_frames,
                            frame_timeout_s=self.frame_timeout_s, retries=self.retries)


class CamerasConfig(_Model):
    """Cameras besides the third-person one (``camera``): ``wrist`` None = none."""

    wrist: WristCameraConfig | None = None


class RecordingConfig(_Model):
    rate_hz: Annotated[float, Field(gt=0, le=60)]
    image_codec: Literal["png", "jpeg"]
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    record_depth: bool
    noop_joint_eps_deg: Annotated[float, Field(ge=0, le=10)]
    noop_gripper_eps: Annotated[float, Field(ge=0, le=1)]

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def noop_joint_eps_rad(self) -> float:
        return deg_to_rad(self.noop_joint_eps_deg)


class KeyboardTeleopConfig(_Model):
    step_mm: Annotated[float, Field(gt=0, le=50)]
    step_deg: Annotated[float, Field(gt=0, le=30)]


class SpaceMouseTeleopConfig(_Model):
    scale_mm: Annotated[float, Field(gt=0, le=50)]
    scale_deg: Annotated[float, Field(gt=0, le=30)]
    deadzone: Annotated[float, Field(ge=0, lt=1)]
    axis_map: Annotated[list[int], Field(min_length=6, max_length=6)]
    axis_sign: Annotated[list[int], Field(min_length=6, max_length=6)]

    @field_validator("axis_map")
    @classmethod
    def _permutation(cls, value: list[int]) -> list[int]:
        if sorted(value) != list(range(6)):
            raise ValueError(f"must be a permutation of 0..5, got {value}")
        return value

    @field_validator("axis_sign")
    @classmethod
    def _signs(cls, value: list[int]) -> list[int]:
        if any(s not in (-1, 1) for s in value):
            raise ValueError(f"entries must be 1 or -1, got {value}")
        return value


class GamepadTeleopConfig(_Model):
    scale_mm: Annotated[float, Field(gt=0, le=50)]
    scale_deg: Annotated[float, Field(gt=0, le=30)]
    deadzone: Annotated[float, Field(ge=0, lt=1)]


class TeleopConfig(_Model):
    keyboard: KeyboardTeleopConfig
    spacemouse: SpaceMouseTeleopConfig
    gamepad: GamepadTeleopConfig


class SceneConfig(_Model):
    object_nominal_mm: tuple[float, float]
    object_jitter_mm: Annotated[float, Field(ge=0, le=200)]
    object_yaw_jitter_deg: Annotated[float, Field(ge=0, le=180)]
    box_nominal_mm: tuple[float, float]
    box_jitter_mm: Annotated[float, Field(ge=0, le=200)]
    start_joint_jitter_deg: Annotated[float, Field(ge=0, le=30)]
    objects: Annotated[dict[str, str], Field(min_length=1)]
    instruction_template: str

    @field_validator("instruction_template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{object}" not in value:
            raise ValueError(f"must contain the placeholder {{object}}, got {value!r}")
        return value

    def instruction_for(self, object_name: str) -> str:
        if object_name not in self.objects:
            raise ConfigError(f"unknown object {object_name!r}; hardware.yaml scene.objects has {sorted(self.objects)}")
        return self.instruction_template.format(object=self.objects[object_name])


class SimConfig(_Model):
    camera_pos_mm: tuple[float, float, float]
    camera_lookat_mm: tuple[float, float, float]
    camera_hfov_deg: Annotated[float, Field(gt=20, lt=170)]
    physics_dt_s: Annotated[float, Field(gt=0, le=CONTROLLER_CYCLE_S)]
    realtime: bool

    @field_validator("physics_dt_s")
    @classmethod
    def _divides_the_controller_cycle(cls, dt_s: float) -> float:
        steps = round(CONTROLLER_CYCLE_S / dt_s)
        if abs(steps * dt_s - CONTROLLER_CYCLE_S) > 1e-9:
            raise ValueError("must divide the controller's 8 ms cycle (the twin steps the controller every 8 ms), "
                             "e.g. 0.002 or 0.001")
        return dt_s


class HardwareConfig(_Model):
    robot: RobotConfig
    safety: SafetyConfig
    gripper: GripperConfig
    camera: CameraConfig
    cameras: CamerasConfig = CamerasConfig()
    recording: RecordingConfig
    teleop: TeleopConfig
    scene: SceneConfig
    sim: SimConfig

    source_path: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _distinct_cameras(self) -> HardwareConfig:
        wrist = self.cameras.wrist
        if wrist is not None and wrist.serial is not None and wrist.serial == self.camera.serial:
            raise ValueError(f"cameras.wrist.serial and camera.serial are both {wrist.serial!r}: the wrist camera is "
                             f"a second RealSense with its own serial")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> HardwareConfig:
        """A copy with dotted-key overrides applied, validated like the file (e.g. {"camera.color.fps": 15})."""
        data = self.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node, dict) or key not in node:
                    raise ConfigError(f"override {dotted!r}: no such key {key!r}")
                node = node[key]
            if not isinstance(node, dict) or leaf not in node:
                raise ConfigError(f"override {dotted!r}: no such key {leaf!r}")
            node[leaf] = value
        return _validate(data, origin=f"{self.source_path or 'config'} (with overrides)", source_path=self.source_path)


def _field_bounds(loc: tuple) -> str:
    """'0 < value <= 125' for the field at ``loc``, read from its Field(ge/gt/le/lt) constraints."""
    model: type[BaseModel] | None = HardwareConfig
    info = None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            break
        info = model.model_fields[part]
        annotation = info.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if info is None:
        return ""
    lower = upper = ""
    for constraint in info.metadata:
        for attr, text in (("ge", "{} <= "), ("gt", "{} < ")):
            if getattr(constraint, attr, None) is not None:
                lower = text.format(getattr(constraint, attr))
        for attr, text in (("le", " <= {}"), ("lt", " < {}")):
            if getattr(constraint, attr, None) is not None:
                upper = text.format(getattr(constraint, attr))
    return f" (allowed: {lower}value{upper})" if lower or upper else ""


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = [f"{origin} is invalid:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        elif item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {excerpt(value)}); check its spelling")
        else:  # the value's text is cut short: a huge value (e.g. an expanded alias) must not make a huge message
            lines.append(f"  {key} = {excerpt(value)}: {message}{_field_bounds(item['loc'])}")
    return "\n".join(lines)


def _validate(data: Any, origin: str, source_path: str | None) -> HardwareConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    booleans = boolean_numbers(data, HardwareConfig)
    if booleans:  # pydantic would read true as 1.0 (YAML also reads yes/no/on/off as booleans)
        raise ConfigError("\n".join([f"{origin} is invalid:", *(f"  {key}: a number is required, not a boolean "
                                                                  f"(true/false/yes/no/on/off)" for key in booleans)]))
    try:
        return HardwareConfig.model_validate({**data, "source_path": source_path})
    except ValidationError as error:
        raise ConfigError(_format_errors(error, origin)) from None


def default_config_path() -> Path:
    """FANVLA_HARDWARE, else ./hardware.yaml, else the one at the repository root."""
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    local = Path.cwd() / "hardware.yaml"
    return local if local.exists() else REPO_ROOT / "hardware.yaml"


def load_hardware_config(path: str | os.PathLike[str] | None = None) -> HardwareConfig:
    """Read and validate hardware.yaml; raise ConfigError naming key, value and allowed range."""
    config_path = Path(path) if path is not None else default_config_path()
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"hardware config not found: {config_path} (set --config or {ENV_CONFIG})") from None
    except OSError as error:
        raise ConfigError(f"cannot read hardware config {config_path}: {error.strerror}") from None
    try:
        data = load_yaml(text, str(config_path))  # duplicate keys and alias bombs are errors (fanvla/yaml_loader.py)
    except YamlError as error:
        raise ConfigError(str(error)) from None
    return _validate(data, origin=str(config_path), source_path=str(config_path))


def config_snapshot(config: HardwareConfig) -> dict[str, Any]:
    """The plain-data form stored with recordings and runs (JSON-serialisable)."""
    return config.model_dump(mode="json")
