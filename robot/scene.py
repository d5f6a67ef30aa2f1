"""Scene placements: where the object, the box and the arm start, and how they are sampled.

Backend-independent: the twin places its bodies from a ``SceneSpec``, and the real evaluation
prints the same spec for the operator (``SceneSpec.operator_text``). Demonstrations use the nominal
distribution (hardware.yaml ``scene`` jitters); evaluation tasks perturb it with
``PerturbationRanges`` read from their YAML files. Sampling is deterministic for a seed and rejects
overlapping placements and unreachable poses.

Geometry of the props (box, objects) lives here too, so the twin and the overlap checks agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from robot.errors import IKFailedError
from robot.kinematics import NUM_JOINTS, MiniCoboKinematics
from robot.units import deg_to_rad, rad_to_deg

Range = tuple[float, float]


@dataclass(frozen=True)
class BoxGeometry:
    """The open box the object goes into (axis-aligned in the base frame)."""

    inner_mm: float = 130.0
    wall_height_mm: float = 50.0  # top of the walls above the table
    wall_thickness_mm: float = 6.0
    floor_thickness_mm: float = 4.0

    @property
    def outer_mm(self) -> float:
        return self.inner_mm + 2 * self.wall_thickness_mm


@dataclass(frozen=True)
class ObjectGeometry:
    shape: str  # "box" | "cylinder" | "hex_prism"
    size_mm: tuple[float, float, float]  # box: x, y, z edges; cylinder/hex prism: diameter (across flats), -, height
    grasp_symmetry_rad: float  # yaw period of the top-down grasp (pi/2 for a cube, 0 = any yaw)

    @property
    def height_mm(self) -> float:
        return self.size_mm[2]

    @property
    def footprint_radius_mm(self) -> float:
        """Radius of the circle that holds the footprint at any yaw."""
        if self.shape == "box":
            return 0.5 * math.hypot(self.size_mm[0], self.size_mm[1])
        if self.shape == "hex_prism":
            return self.size_mm[0] / math.sqrt(3.0)  # circumradius from the width across flats
        return 0.5 * self.size_mm[0]


BOX = BoxGeometry()
OBJECTS: dict[str, ObjectGeometry] = {
    "red_cube": ObjectGeometry("box", (40.0, 40.0, 40.0), math.pi / 2),
    "green_cylinder": ObjectGeometry("cylinder", (40.0, 40.0, 45.0), 0.0),
    "blue_prism": ObjectGeometry("hex_prism", (40.0, 40.0, 42.0), math.pi / 3),
}
# For objects named in hardware.yaml that this table does not know (a real object of the user's).
DEFAULT_OBJECT = ObjectGeometry("box", (45.0, 45.0, 45.0), math.pi / 2)

# Room around the object for the open fingers (80 mm stroke + finger thickness), and above the box
# walls for the carried object.
GRIPPER_CLEARANCE_MM = 30.0
CARRY_CLEARANCE_MM = 25.0
START_TCP_MIN_Z_MM = 60.0  # a start pose must hold the gripper clear of the table and props


def object_geometry(name: str) -> ObjectGeometry:
    return OBJECTS.get(name, DEFAULT_OBJECT)


@dataclass(frozen=True)
class SceneSpec:
    object_name: str
    object_xy_mm: tuple[float, float]
    object_yaw_rad: float
    box_xy_mm: tuple[float, float]
    start_joints_rad: tuple[float, ...]

    def instruction(self, config) -> str:
        """The task prompt from ``scene.instruction_template``; ``config`` is a HardwareConfig or its ``scene``."""
        return getattr(config, "scene", config).instruction_for(self.object_name)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> SceneSpec:
        try:
            return cls(str(data["object_name"]), _pair(data["object_xy_mm"]), float(data["object_yaw_rad"]),
                       _pair(data["box_xy_mm"]), tuple(float(q) for q in data["start_joints_rad"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a scene spec ({error}): {dict(data)}") from None

    def operator_text(self) -> str:
        """What the operator of the real robot sets up before a trial (base frame, mm and degrees)."""
        joints = ", ".join(f"{rad_to_deg(q):.1f}" for q in self.start_joints_rad)
        return (f"Place {self.object_name} with its centre at x = {self.object_xy_mm[0]:.0f} mm, "
                f"y = {self.object_xy_mm[1]:.0f} mm, turned {rad_to_deg(self.object_yaw_rad):.0f} deg about z; "
                f"place the box centre at x = {self.box_xy_mm[0]:.0f} mm, y = {self.box_xy_mm[1]:.0f} mm "
                f"(walls parallel to the base axes). The arm starts at joints [{joints}] deg.")


def _pair(value) -> tuple[float, float]:
    x, y = value
    return float(x), float(y)


def _range(value, name: str) -> Range:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a [low, high] pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{name} must be finite with low <= high, got [{lo}, {hi}]")
    return lo, hi


@dataclass(frozen=True)
class PerturbationRanges:
    """Uniform ranges added to the nominal placements (evaluation task YAML ``perturbation``)."""

    object_dx_mm: Range = (0.0, 0.0)
    object_dy_mm: Range = (0.0, 0.0)
    object_yaw_deg: Range = (0.0, 0.0)
    box_dx_mm: Range = (0.0, 0.0)
    box_dy_mm: Range = (0.0, 0.0)
    start_joint_offsets_deg: tuple[Range, ...] = field(default_factory=lambda: ((0.0, 0.0),) * NUM_JOINTS)

    def __post_init__(self) -> None:
        for name in ("object_dx_mm", "object_dy_mm", "object_yaw_deg", "box_dx_mm", "box_dy_mm"):
            object.__setattr__(self, name, _range(getattr(self, name), name))
        offsets = tuple(self.start_joint_offsets_deg)
        if len(offsets) != NUM_JOINTS:
            raise ValueError(f"start_joint_offsets_deg needs {NUM_JOINTS} [low, high] pairs, got {len(offsets)}")
        object.__setattr__(self, "start_joint_offsets_deg",
                           tuple(_range(r, f"start_joint_offsets_deg[{i}]") for i, r in enumerate(offsets)))

    @classmethod
    def nominal(cls, scene_config) -> PerturbationRanges:
        """The demonstration distribution: hardware.yaml ``scene`` jitters, symmetric about zero."""
        o, yaw, b, q = (scene_config.object_jitter_mm, scene_config.object_yaw_jitter_deg,
                        scene_config.box_jitter_mm, scene_config.start_joint_jitter_deg)
        return cls((-o, o), (-o, o), (-yaw, yaw), (-b, b), (-b, b), ((-q, q),) * NUM_JOINTS)

    @classmethod
    def from_dict(cls, data: Mapping, origin: str = "perturbation") -> PerturbationRanges:
        """From YAML; missing keys stay zero; a single pair for the joint offsets applies to every joint."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{origin}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        values = dict(data)
        offsets = values.get("start_joint_offsets_deg")
        if offsets is not None and len(offsets) == 2 and all(isinstance(v, int | float) for v in offsets):
            values["start_joint_offsets_deg"] = (tuple(offsets),) * NUM_JOINTS
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{origin}: {error}") from None


class SceneSampler:
    """Seeded sampling of ``SceneSpec``s for one hardware configuration."""

    def __init__(self, config, max_attempts: int = 500) -> None:
        self.config = config
        self.kinematics = MiniCoboKinematics.from_config(config)
        self.max_attempts = max_attempts

    def sample(self, seed: int, object_name: str | None = None, ranges: PerturbationRanges | None = None) -> SceneSpec:
        """A valid scene for ``seed``; the object is drawn uniformly from ``scene.objects`` unless named."""
        scene = self.config.scene
        names = sorted(scene.objects)
        if object_name is not None and object_name not in scene.objects:
            raise ValueError(f"unknown object {object_name!r}; hardware.yaml scene.objects has {names}")
        ranges = ranges or PerturbationRanges.nominal(scene)
        rng = np.random.default_rng(seed)
        name = object_name or names[int(rng.integers(len(names)))]
        problems: list[str] = []
        for _ in range(self.max_attempts):
            spec = self._draw(rng, name, ranges)
            problems = self.problems(spec)
            if not problems:
                return spec
        raise ValueError(f"no valid scene for seed {seed} after {self.max_attempts} draws; last draw: "
                         f"{'; '.join(problems)}. Narrow the perturbation ranges or move the nominal placements.")

    def _draw(self, rng: np.random.Generator, name: str, ranges: PerturbationRanges) -> SceneSpec:
        scene, u = self.config.scene, rng.uniform
        obj_x, obj_y = scene.object_nominal_mm
        box_x, box_y = scene.box_nominal_mm
        obj = (obj_x + u(*ranges.object_dx_mm), obj_y + u(*ranges.object_dy_mm))
        box = (box_x + u(*ranges.box_dx_mm), box_y + u(*ranges.box_dy_mm))
        yaw = deg_to_rad(u(*ranges.object_yaw_deg))
        home = self.config.robot.home_joints_deg
        joints = tuple(deg_to_rad(q + u(*r)) for q, r in zip(home, ranges.start_joint_offsets_deg, strict=True))
        return SceneSpec(name, (float(obj[0]), float(obj[1])), float(yaw), (float(box[0]), float(box[1])), joints)

    def problems(self, spec: SceneSpec) -> list[str]:
        """Why a spec cannot be used (empty when it can): overlap, workspace, joint limits, reach."""
        problems = []
        geometry = object_geometry(spec.object_name)
        gap = _square_gap_mm(spec.object_xy_mm, spec.box_xy_mm, BOX.outer_mm / 2)
        if gap < geometry.footprint_radius_mm + GRIPPER_CLEARANCE_MM:
            problems.append(f"object {gap - geometry.footprint_radius_mm:.0f} mm from the box wall "
                            f"(needs {GRIPPER_CLEARANCE_MM:.0f} mm for the fingers)")
        box_ws = self.config.safety.workspace_mm
        for label, (x, y) in (("object", spec.object_xy_mm), ("box", spec.box_xy_mm)):
            if not (box_ws.x[0] <= x <= box_ws.x[1] and box_ws.y[0] <= y <= box_ws.y[1]):
                problems.append(f"{label} at ({x:.0f}, {y:.0f}) mm lies outside safety.workspace_mm")
        q = np.asarray(spec.start_joints_rad)
        if not self.kinematics.within_limits(q):
            problems.append(f"start joints {np.round(rad_to_deg(q), 1).tolist()} deg exceed the joint limits")
            return problems
        start_tcp = self.kinematics.forward(q)
        if start_tcp[2] < START_TCP_MIN_Z_MM:
            problems.append(f"start TCP z = {start_tcp[2]:.0f} mm is below {START_TCP_MIN_Z_MM:.0f} mm")
        for label, pose in (("grasp", grasp_tcp_pose(spec)), ("release", release_tcp_pose(spec))):
            try:
                self.kinematics.inverse(pose, q)
            except IKFailedError as error:
                problems.append(f"{label} pose unreachable: {error}")
        return problems


def _square_gap_mm(point: Sequence[float], centre: Sequence[float], half_size_mm: float) -> float:
    """Distance from ``point`` to an axis-aligned square (negative inside)."""
    dx, dy = abs(point[0] - centre[0]) - half_size_mm, abs(point[1] - centre[1]) - half_size_mm
    if dx <= 0 and dy <= 0:
        return max(dx, dy)
    return math.hypot(max(dx, 0.0), max(dy, 0.0))


def _wrap(angle: float, period: float) -> float:
    """``angle`` folded into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def neutral_tool_yaw(xy_mm: Sequence[float]) -> float:
    """Yaw of a top-down tool above ``xy_mm`` with the wrist's last joint near zero.

    With the arm straight up at zero, a downward tool over a point at azimuth phi has yaw phi + pi
    when J6 = 0; choosing grasp yaws near it keeps J6 away from its limits.
    """
    return _wrap(math.atan2(xy_mm[1], xy_mm[0]) + math.pi, 2 * math.pi)


def grasp_yaw(spec: SceneSpec, near_yaw_rad: float | None = None) -> float:
    """Tool yaw that closes the fingers across the object's faces, the equivalent one nearest ``near_yaw_rad``.

    Equivalent yaws differ by the object's grasp symmetry (the parallel gripper itself repeats every
    pi); the default reference is :func:`neutral_tool_yaw` over the object.
    """
    near = neutral_tool_yaw(spec.object_xy_mm) if near_yaw_rad is None else near_yaw_rad
    period = object_geometry(spec.object_name).grasp_symmetry_rad or math.pi
    if object_geometry(spec.object_name).grasp_symmetry_rad <= 0:
        return near  # round: any yaw grasps it
    return _wrap(near + _wrap(spec.object_yaw_rad - near, period), 2 * math.pi)


def grasp_tcp_pose(spec: SceneSpec, near_yaw_rad: float | None = None) -> np.ndarray:
    """Top-down TCP pose that grasps the object at half its height (fingers close across its faces)."""
    height = object_geometry(spec.object_name).height_mm
    return np.array([*spec.object_xy_mm, height / 2, math.pi, 0.0, grasp_yaw(spec, near_yaw_rad)])


def release_tcp_pose(spec: SceneSpec, yaw_rad: float | None = None) -> np.ndarray:
    """Top-down TCP pose above the box centre from which the carried object clears the walls."""
    height = object_geometry(spec.object_name).height_mm
    z = BOX.wall_height_mm + height / 2 + CARRY_CLEARANCE_MM
    yaw = neutral_tool_yaw(spec.box_xy_mm) if yaw_rad is None else yaw_rad
    return np.array([*spec.box_xy_mm, z, math.pi, 0.0, yaw])


def sample_scene(config, seed: int, object_name: str | None = None,
                 ranges: PerturbationRanges | None = None) -> SceneSpec:
    """Shortcut for ``SceneSampler(config).sample(seed, object_name, ranges)``."""
    return SceneSampler(config).sample(seed, object_name, ranges)
