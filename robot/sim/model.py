"""The twin's MuJoCo model (MJCF generated here), built from the same DH table as robot/kinematics.py.

Frames: the MuJoCo world frame is the robot base frame (x forward, y left, z up), the table top is
z = 0 and MuJoCo's metres are converted from the stack's millimetres at this boundary only. Each
arm body is one modified-DH joint frame, so MuJoCo's forward kinematics is the DH forward
kinematics; the ``tcp`` site sits ``robot.tcp_offset_mm`` along the flange z axis at the fingertip
centre.

Contact groups (contype/conaffinity bits): the environment (table, box) and the objects collide with
everything; the arm and gripper collide with the environment and the objects but not with each
other (the real arm has no self-collision check at this level either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot.kinematics import MINICOBO_DH, NUM_JOINTS
from robot.scene import BOX, OBJECTS, ObjectGeometry
from robot.units import mm_to_m, rad_to_deg

ARM_JOINTS = tuple(f"joint{i + 1}" for i in range(NUM_JOINTS))
FINGER_JOINTS = ("finger_left", "finger_right")
TCP_SITE = "tcp"
CAMERA = "scene_camera"
WRIST_CAMERA = "wrist_camera"  # on link6 (the flange frame), present when hardware.yaml sets cameras.wrist
BOX_BODY = "box"
TABLE_GEOM = "table"
ROBOT_BODY_PREFIX = "link"

# Per-joint drive: reflected rotor inertia (kg m^2), position gain (N m/rad), velocity gain, torque limit.
# Stiff and well damped so that a target sent each 8 ms is tracked within a fraction of a degree.
_ARMATURE = (0.2, 0.2, 0.15, 0.05, 0.05, 0.03)
_KP = (6000.0, 6000.0, 4500.0, 1500.0, 1500.0, 900.0)
_TORQUE_LIMIT_NM = (80.0, 80.0, 60.0, 20.0, 20.0, 12.0)
_NATURAL_FREQUENCY = 150.0  # rad/s; kv = 2 * zeta * wn * armature
# Above 1 because the links add inertia to the armature: the loaded joint ends up near critical damping.
_DAMPING_RATIO = 1.8

# Visual/collision radii (mm) of the joint housings and link tubes.
_HOUSING_RADIUS_MM = (52.0, 48.0, 42.0, 36.0, 34.0, 32.0)
_TUBE_RADIUS_MM = (45.0, 40.0, 34.0, 30.0, 30.0, 30.0)

FINGER_HALF_STROKE_M = 0.04  # default; the builder uses gripper.stroke_mm / 2
_FINGER_FORCE_N = 25.0
_OBJECT_MASS_KG = 0.06
_OBJECT_RGBA = {"red_cube": "0.85 0.12 0.1 1", "green_cylinder": "0.1 0.65 0.2 1", "blue_prism": "0.12 0.3 0.85 1"}
PARKING_X_M = 2.5  # unused objects wait behind the camera, out of view (the twin disables their contacts)


@dataclass(frozen=True)
class GripperDims:
    """Gripper geometry along the flange z axis (mm). The TCP is 12 mm above the fingertips."""

    adapter_mm: float = 14.0
    body_height_mm: float = 52.0
    finger_thickness_mm: float = 8.0
    finger_width_mm: float = 20.0
    tip_below_tcp_mm: float = 12.0


def _fmt(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in np.ravel(values))


def _quat_from_matrix(rot: np.ndarray) -> np.ndarray:
    """w, x, y, z quaternion of a rotation matrix (MuJoCo's order)."""
    import mujoco

    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rot, dtype=np.float64).ravel())
    return quat


def _look_at_axes(pos_mm, lookat_mm, up=(0.0, 0.0, 1.0),
                  parallel: str = "sim.camera_pos_mm is straight above sim.camera_lookat_mm") -> np.ndarray:
    """MuJoCo camera xyaxes: x to the image right, y to the image top (towards ``up``), looking along -z."""
    forward = np.asarray(lookat_mm, float) - np.asarray(pos_mm, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, float))
    if np.linalg.norm(right) < 1e-6:
        raise ValueError(f"{parallel}; tilt the camera a little")
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return np.concatenate([right, up])


def camera_fovy_deg(config) -> float:
    """Vertical field of view of the twin's camera: ``sim.camera_hfov_deg`` across the colour profile's width.

    MuJoCo fixes a camera's vertical FOV; deriving it from the horizontal one keeps the D455's wide view
    whatever colour resolution (4:3 or 16:9) is configured.
    """
    return _fovy_deg(config.sim.camera_hfov_deg, config.camera.color)


def wrist_camera_fovy_deg(config) -> float:
    """Vertical field of view of the wrist camera (``cameras.wrist.hfov_deg`` across its colour width)."""
    wrist = config.cameras.wrist
    return _fovy_deg(wrist.hfov_deg, wrist.color)


def _fovy_deg(hfov_deg: float, color) -> float:
    half_h = math.tan(math.radians(hfov_deg) / 2.0)
    return rad_to_deg(2.0 * math.atan(half_h * color.height / color.width))


def _wrist_camera(config) -> str:
    """The wrist camera in the flange frame (link6), its image top towards the flange's +x (the camera's side)."""
    wrist = config.cameras.wrist
    if wrist is None:
        return ""
    xyaxes = _look_at_axes(wrist.mount_pos_mm, wrist.lookat_mm, up=(1.0, 0.0, 0.0),
                           parallel="cameras.wrist.lookat_mm lies straight along the flange x axis from mount_pos_mm")
    pos = mm_to_m(np.asarray(wrist.mount_pos_mm, float))
    return (f'<camera name="{WRIST_CAMERA}" pos="{_fmt(pos)}" xyaxes="{_fmt(xyaxes)}" '
            f'fovy="{wrist_camera_fovy_deg(config):.5f}"/>')


def _link_geoms(i: int) -> str:
    """Joint housing (cylinder on the joint axis) and the tube to the next joint origin, in body i's frame."""
    radius = mm_to_m(_HOUSING_RADIUS_MM[i])
    dark, light = "0.25 0.27 0.3 1", "0.92 0.92 0.9 1"
    half = radius * 0.9
    parts = [f'<geom name="link{i + 1}_housing" type="cylinder" size="{radius:.4f} {half:.4f}" rgba="{dark}" '
             f'class="robot"/>']
    if i + 1 < NUM_JOINTS:
        offset = mm_to_m(MINICOBO_DH[i + 1].fixed_matrix()[:3, 3])
        if np.linalg.norm(offset) > 0.02:
            parts.append(f'<geom name="link{i + 1}_tube" type="capsule" fromto="0 0 0 {_fmt(offset)}" '
                         f'size="{mm_to_m(_TUBE_RADIUS_MM[i]):.4f}" rgba="{light}" class="robot"/>')
    return "\n".join(parts)


def _gripper(tcp_offset_mm: float, stroke_mm: float, dims: GripperDims) -> str:
    adapter = mm_to_m(dims.adapter_mm)
    body_h = mm_to_m(dims.body_height_mm)
    tcp = mm_to_m(tcp_offset_mm)
    tip = tcp + mm_to_m(dims.tip_below_tcp_mm)
    finger_top = adapter + body_h
    if tcp - mm_to_m(dims.tip_below_tcp_mm) <= finger_top:
        raise ValueError(f"robot.tcp_offset_mm = {tcp_offset_mm} leaves no room for the gripper fingers "
                         f"(needs more than {dims.adapter_mm + dims.body_height_mm + dims.tip_below_tcp_mm:.0f} mm)")
    finger_half_len = (tip - finger_top) / 2
    finger_mid = (tip + finger_top) / 2
    t, w = mm_to_m(dims.finger_thickness_mm), mm_to_m(dims.finger_width_mm)
    half_stroke = mm_to_m(stroke_mm) / 2
    body_half_y = half_stroke + t + 0.008
    fingers = []
    for name, sign in (("finger_left", 1.0), ("finger_right", -1.0)):
        fingers.append(f"""
      <body name="{name}" pos="0 0 {finger_mid:.4f}" gravcomp="1">
        <joint name="{name}" type="slide" axis="0 {sign:g} 0" range="0 {half_stroke:.4f}" armature="0.01"
               damping="2"/>
        <geom name="{name}_pad" type="box" pos="0 {sign * t / 2:.4f} 0"
              size="{w / 2:.4f} {t / 2:.4f} {finger_half_len:.4f}" rgba="0.2 0.2 0.22 1" class="finger"/>
      </body>""")
    return f"""
      <geom name="gripper_adapter" type="cylinder" pos="0 0 {adapter / 2:.4f}" size="0.032 {adapter / 2:.4f}"
            rgba="0.3 0.3 0.32 1" class="robot"/>
      <geom name="gripper_body" type="box" pos="0 0 {adapter + body_h / 2:.4f}"
            size="0.024 {body_half_y:.4f} {body_h / 2:.4f}" rgba="0.15 0.15 0.17 1" class="robot"/>
      <site name="{TCP_SITE}" pos="0 0 {tcp:.5f}" size="0.004" rgba="1 0.6 0 0.6" group="4"/>
      {"".join(fingers)}"""


def _arm(config) -> str:
    """Nested bodies link1..link6, one per DH joint frame, the gripper on link6."""
    dims = GripperDims()
    close = ""
    body = ""
    for i, link in enumerate(MINICOBO_DH):
        fixed = link.fixed_matrix()
        pos = mm_to_m(fixed[:3, 3])
        quat = _quat_from_matrix(fixed[:3, :3])
        lo, hi = config.robot.joint_limits_rad[i]
        body += f"""
    <body name="link{i + 1}" pos="{_fmt(pos)}" quat="{_fmt(quat)}" gravcomp="1">
      <inertial pos="0 0 0" mass="{1.2 - 0.15 * i:.2f}" diaginertia="0.004 0.004 0.003"/>
      <joint name="joint{i + 1}" axis="0 0 1" range="{lo:.6f} {hi:.6f}" armature="{_ARMATURE[i]}" damping="0.5"/>
      {_link_geoms(i)}"""
        close += "\n    </body>"
    gripper = _gripper(config.robot.tcp_offset_mm, config.gripper.stroke_mm, dims)
    return body + gripper + _wrist_camera(config) + close


def _actuators(config) -> str:
    lines = []
    for i, name in enumerate(ARM_JOINTS):
        lo, hi = config.robot.joint_limits_rad[i]
        kv = 2.0 * _DAMPING_RATIO * _NATURAL_FREQUENCY * _ARMATURE[i]
        limit = _TORQUE_LIMIT_NM[i]
        lines.append(f'<position name="{name}_pos" joint="{name}" kp="{_KP[i]}" ctrlrange="{lo:.6f} {hi:.6f}" '
                     f'forcerange="{-limit} {limit}"/>')
        # Velocity feed-forward: with the target's velocity as ctrl the pair is PD control without ramp lag.
        lines.append(f'<velocity name="{name}_vel" joint="{name}" kv="{kv:.4g}" ctrlrange="-10 10" '
                     f'forcerange="{-limit} {limit}"/>')
    half_stroke = mm_to_m(config.gripper.stroke_mm) / 2
    lines.append(f'<position name="gripper" joint="finger_left" kp="600" kv="20" ctrlrange="0 {half_stroke:.4f}" '
                 f'forcerange="{-_FINGER_FORCE_N} {_FINGER_FORCE_N}"/>')
    return "\n    ".join(lines)


def _box_body() -> str:
    inner, wall = mm_to_m(BOX.inner_mm), mm_to_m(BOX.wall_thickness_mm)
    height, floor = mm_to_m(BOX.wall_height_mm), mm_to_m(BOX.floor_thickness_mm)
    half_out = inner / 2 + wall
    wall_half_z = (height - floor) / 2
    wall_z = floor + wall_half_z
    walls = []
    for name, pos, size in (
        ("box_wall_px", (inner / 2 + wall / 2, 0, wall_z), (wall / 2, half_out, wall_half_z)),
        ("box_wall_nx", (-inner / 2 - wall / 2, 0, wall_z), (wall / 2, half_out, wall_half_z)),
        ("box_wall_py", (0, inner / 2 + wall / 2, wall_z), (inner / 2, wall / 2, wall_half_z)),
        ("box_wall_ny", (0, -inner / 2 - wall / 2, wall_z), (inner / 2, wall / 2, wall_half_z)),
    ):
        walls.append(f'<geom name="{name}" type="box" pos="{_fmt(pos)}" size="{_fmt(size)}" class="env" '
                     f'rgba="0.72 0.55 0.35 1"/>')
    return f"""
    <body name="{BOX_BODY}" mocap="true" pos="0.3 0.15 0">
      <geom name="box_floor" type="box" pos="0 0 {floor / 2:.4f}" size="{half_out:.4f} {half_out:.4f} {floor / 2:.4f}"
            class="env" rgba="0.62 0.47 0.3 1"/>
      {" ".join(walls)}
    </body>"""


def _hex_vertices(geometry: ObjectGeometry) -> str:
    radius = mm_to_m(geometry.size_mm[0]) / math.sqrt(3.0)
    half_h = mm_to_m(geometry.height_mm) / 2
    points = [(radius * math.cos(k * math.pi / 3), radius * math.sin(k * math.pi / 3), z)
              for z in (-half_h, half_h) for k in range(6)]
    return _fmt(points)


def _object_geom(name: str, geometry: ObjectGeometry) -> str:
    rgba = _OBJECT_RGBA[name]
    sx, sy, sz = (mm_to_m(v) / 2 for v in geometry.size_mm)
    if geometry.shape == "box":
        shape = f'type="box" size="{sx:.4f} {sy:.4f} {sz:.4f}"'
    elif geometry.shape == "cylinder":
        shape = f'type="cylinder" size="{sx:.4f} {sz:.4f}"'
    else:
        shape = f'type="mesh" mesh="{name}_mesh"'
    return f'<geom name="{name}_geom" {shape} rgba="{rgba}" class="object" mass="{_OBJECT_MASS_KG}"/>'


def _objects(names) -> tuple[str, str]:
    """(mesh assets, bodies) of the graspable objects, parked out of view until a scene places one."""
    assets, bodies = [], []
    for index, name in enumerate(names):
        geometry = OBJECTS[name]
        if geometry.shape == "hex_prism":
            assets.append(f'<mesh name="{name}_mesh" vertex="{_hex_vertices(geometry)}"/>')
        park = (PARKING_X_M, 0.3 * index, -0.75 + mm_to_m(geometry.height_mm) / 2 + 0.001)
        bodies.append(f"""
    <body name="{name}" pos="{_fmt(park)}">
      <freejoint name="{name}_free"/>
      {_object_geom(name, geometry)}
    </body>""")
    return "\n    ".join(assets), "".join(bodies)


def build_mjcf(config) -> str:
    """The MJCF of the twin for a HardwareConfig (arm, gripper, table, box, objects, light, camera)."""
    unknown = sorted(set(config.scene.objects) - set(OBJECTS))
    if unknown:
        raise ValueError(f"the twin has no model for scene object(s) {unknown}; it models {sorted(OBJECTS)}. "
                         f"Remove them from hardware.yaml scene.objects for the sim backend.")
    cam_pos = mm_to_m(np.asarray(config.sim.camera_pos_mm, float))
    xyaxes = _look_at_axes(config.sim.camera_pos_mm, config.sim.camera_lookat_mm)
    wrist = config.cameras.wrist.color if config.cameras.wrist is not None else config.camera.color
    offwidth = max(1280, config.camera.color.width, config.camera.depth.width, wrist.width)
    offheight = max(720, config.camera.color.height, config.camera.depth.height, wrist.height)
    mesh_assets, object_bodies = _objects(sorted(config.scene.objects))
    return f"""<mujoco model="minicobo_twin">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{config.sim.physics_dt_s}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <statistic extent="1.5" center="0.3 0 0.1"/>
  <visual>
    <global offwidth="{offwidth}" offheight="{offheight}"/>
    <quality shadowsize="0" offsamples="0"/>
    <map znear="0.01" zfar="8"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.35 0.35 0.35" specular="0.02 0.02 0.02"/>
  </visual>
  <default>
    <default class="robot">
      <geom contype="2" conaffinity="1" condim="3" friction="0.6 0.01 0.001"/>
    </default>
    <default class="finger">
      <geom contype="2" conaffinity="1" condim="4" friction="1.5 0.02 0.002" solref="0.005 1"
            solimp="0.95 0.99 0.001"/>
    </default>
    <default class="env">
      <geom contype="1" conaffinity="3" condim="3" friction="0.7 0.01 0.001"/>
    </default>
    <default class="object">
      <geom contype="1" conaffinity="3" condim="4" friction="1.2 0.02 0.002" solref="0.005 1"
            solimp="0.95 0.99 0.001"/>
    </default>
  </default>
  <asset>
    <material name="floor" rgba="0.4 0.4 0.42 1" specular="0.1"/>  <!-- untextured: textures double llvmpipe's cost -->
    <material name="table" rgba="0.78 0.74 0.66 1" specular="0.05" shininess="0.1"/>
    {mesh_assets}
  </asset>
  <worldbody>
    <light name="overhead" pos="0.3 0 1.5" dir="0 0 -1" directional="true" diffuse="0.5 0.5 0.5"
           specular="0.1 0.1 0.1" castshadow="false"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="4 4 0.1" material="floor" class="env"/>
    <geom name="{TABLE_GEOM}" type="box" pos="0.25 0 -0.02" size="0.65 0.6 0.02" material="table" class="env"/>
    <geom name="robot_base" type="cylinder" pos="0 0 0.07" size="0.06 0.07" rgba="0.25 0.27 0.3 1" contype="0"
          conaffinity="0"/>
    <camera name="{CAMERA}" pos="{_fmt(cam_pos)}" xyaxes="{_fmt(xyaxes)}" fovy="{camera_fovy_deg(config):.5f}"/>
    {_arm(config)}
    {_box_body()}
    {object_bodies}
  </worldbody>
  <equality>
    <joint name="finger_coupling" joint1="finger_left" joint2="finger_right" solref="0.005 1"/>
  </equality>
  <actuator>
    {_actuators(config)}
  </actuator>
</mujoco>
"""


def build_model(config):
    """Compiled ``mujoco.MjModel`` of :func:`build_mjcf`."""
    import mujoco

    return mujoco.MjModel.from_xml_string(build_mjcf(config))
