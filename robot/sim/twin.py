"""The MuJoCo twin: physics, scene, privileged state, success check and camera renders.

The twin is the *plant*. The controller logic (power, servo mode, error codes) lives in the fake
``jkrc`` module (robot/sim/fake_jkrc.py), which stands where JAKA's controller does and drives the
twin through joint targets and the gripper output, exactly as ``JakaArm`` drives the real robot.

Time: in lock-step mode ``twin.clock`` is a ``SimClock`` whose sleeps step the physics one controller
cycle (JAKA's 8 ms, whatever ``robot.servo_rate_hz`` is) at a time; in realtime mode it is a ``RealClock``
and a physics thread steps one cycle every 8 ms of wall time. One lock serialises physics steps, state
reads and render updates.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must precede the first mujoco import
os.environ.setdefault("LP_NUM_THREADS", "1")

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import mujoco
import numpy as np

from fanvla.config import CONTROLLER_CYCLE_S
from robot.clock import Clock, RealClock, TickStats
from robot.frames import matrix_to_rpy
from robot.interfaces import Intrinsics
from robot.kinematics import MiniCoboKinematics
from robot.scene import BOX, PerturbationRanges, SceneSampler, SceneSpec, object_geometry
from robot.sim import model as sim_model
from robot.sim.clock import SimClock
from robot.sim.renderer import CameraRenderer, pinhole_intrinsics
from robot.units import m_to_mm, mm_to_m

COLLISION_LEVEL_FORCE_N = {0: None, 1: 25.0, 2: 50.0, 3: 75.0, 4: 100.0, 5: 125.0}  # JAKA's levels
SETTLE_S = 0.3
AT_REST_SPEED_MM_S = 10.0
AT_REST_ANGULAR_RAD_S = 0.5


@dataclass(frozen=True)
class CollisionEvent:
    """Arm or gripper pressed against the table or the box harder than the collision level."""

    robot_geom: str
    env_geom: str
    force_n: float
    time_s: float


@dataclass(frozen=True)
class SuccessReport:
    success: bool
    inside_footprint: bool
    below_wall_top: bool
    at_rest: bool
    gripper_open: bool
    released: bool
    object_pos_mm: tuple[float, float, float]
    offset_from_box_mm: tuple[float, float]
    speed_mm_s: float
    details: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.success

    @property
    def reason(self) -> str:
        failed = [name for name in ("inside_footprint", "below_wall_top", "at_rest", "gripper_open", "released")
                  if not getattr(self, name)]
        return "success" if not failed else "not " + ", not ".join(name.replace("_", " ") for name in failed)


class Twin:
    """MuJoCo twin of the MiniCobo cell for one HardwareConfig."""

    def __init__(self, config, realtime: bool | None = None, seed: int = 0) -> None:
        self.config = config
        self.realtime = config.sim.realtime if realtime is None else bool(realtime)
        self.model = sim_model.build_model(config)
        self.data = mujoco.MjData(self.model)
        self.kinematics = MiniCoboKinematics.from_config(config)
        self.cycle_s = CONTROLLER_CYCLE_S
        self.substeps = round(self.cycle_s / self.model.opt.timestep)
        if abs(self.substeps * self.model.opt.timestep - self.cycle_s) > 1e-9:
            raise ValueError(f"sim.physics_dt_s = {self.model.opt.timestep} must divide the controller cycle "
                             f"{self.cycle_s} s")
        self.lock = threading.RLock()
        self._sampler = SceneSampler(config)
        self._rng_seed = seed
        self._scene_count = 0
        self._index_model()
        self._cycle_hooks: list[Callable[[], None]] = []
        self._reset_hooks: list[Callable[[], None]] = []
        self.collision_threshold_n: float | None = COLLISION_LEVEL_FORCE_N[config.robot.collision_level]
        self.collision: CollisionEvent | None = None
        self._renderer: CameraRenderer | None = None
        self.spec: SceneSpec | None = None
        self._physics_task = None
        self.reset_scene(self._sampler.sample(seed, ranges=PerturbationRanges()))
        if self.realtime:
            self.clock: Clock = RealClock()
            self._physics_task = self.clock.every(self.cycle_s, self.step_cycle, "twin-physics")
        else:
            self.clock = SimClock(self.step_cycle, self.cycle_s)

    # -- model bookkeeping ------------------------------------------------------------------------
    def _index_model(self) -> None:
        m = self.model
        self._arm_qpos = np.array([m.jnt_qposadr[m.joint(n).id] for n in sim_model.ARM_JOINTS])
        self._arm_dof = np.array([m.jnt_dofadr[m.joint(n).id] for n in sim_model.ARM_JOINTS])
        self._pos_act = np.array([m.actuator(f"{n}_pos").id for n in sim_model.ARM_JOINTS])
        self._vel_act = np.array([m.actuator(f"{n}_vel").id for n in sim_model.ARM_JOINTS])
        self._grip_act = m.actuator("gripper").id
        self._finger_qpos = np.array([m.jnt_qposadr[m.joint(n).id] for n in sim_model.FINGER_JOINTS])
        self._half_stroke_m = mm_to_m(self.config.gripper.stroke_mm) / 2
        self._tcp_site = m.site(sim_model.TCP_SITE).id
        self._box_mocap = m.body_mocapid[m.body(sim_model.BOX_BODY).id]
        robot_bodies = {m.body(f"link{i + 1}").id for i in range(6)} | {m.body(n).id for n in sim_model.FINGER_JOINTS}
        self._robot_geom = np.array([m.geom_bodyid[g] in robot_bodies for g in range(m.ngeom)])
        box_body = m.body(sim_model.BOX_BODY).id
        self._env_geom = np.array([m.geom_bodyid[g] == box_body for g in range(m.ngeom)])
        self._env_geom[m.geom(sim_model.TABLE_GEOM).id] = True
        self._finger_geom = np.array([m.geom_bodyid[g] in {m.body(n).id for n in sim_model.FINGER_JOINTS}
                                      for g in range(m.ngeom)])
        self._objects = {name: m.body(name).id for name in sorted(self.config.scene.objects)}
        self._object_qpos = {name: m.jnt_qposadr[m.body_jntadr[b]] for name, b in self._objects.items()}
        self._object_dof = {name: m.jnt_dofadr[m.body_jntadr[b]] for name, b in self._objects.items()}
        self._parking = {name: self.data.qpos[a:a + 7].copy() for name, a in self._object_qpos.items()}
        self._object_geoms = {name: [g for g in range(m.ngeom) if m.geom_bodyid[g] == b]
                              for name, b in self._objects.items()}
        first = self._object_geoms[next(iter(self._objects))][0]
        self._object_contact_bits = (int(m.geom_contype[first]), int(m.geom_conaffinity[first]))

    # -- hooks for the controller (fake_jkrc) ------------------------------------------------------
    def add_cycle_hook(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs at the start of every controller cycle, under the lock (the controller's tick)."""
        self._cycle_hooks.append(fn)

    def add_reset_hook(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs after every scene reset (the controller drops its motion state)."""
        self._reset_hooks.append(fn)

    # -- stepping ---------------------------------------------------------------------------------
    def step_cycle(self) -> None:
        """One controller cycle: controller tick, then physics with the joint target ramped over the cycle."""
        with self.lock:
            for hook in self._cycle_hooks:
                hook()
            if self.collision is not None:
                self._target = self._held_joints
            start, goal = self._last_target, self._target
            ctrl, vel = self.data.ctrl, (goal - start) / self.cycle_s
            ctrl[self._vel_act] = vel
            self._ramp_gripper()
            for k in range(1, self.substeps + 1):
                ctrl[self._pos_act] = start + (goal - start) * (k / self.substeps)
                mujoco.mj_step(self.model, self.data)
            self._check_collision()  # once per cycle: a position-controlled arm presses on, it does not bounce
            self._last_target = goal.copy()

    def _ramp_gripper(self) -> None:
        """Fingers travel the full stroke in three quarters of ``gripper.settle_s``."""
        goal = self._half_stroke_m if self._gripper_open else 0.0
        step = self._half_stroke_m * self.cycle_s / max(0.75 * self.config.gripper.settle_s, self.cycle_s)
        current = float(self.data.ctrl[self._grip_act])
        self.data.ctrl[self._grip_act] = current + min(max(goal - current, -step), step)

    def _check_collision(self) -> None:
        if self.collision is not None or self.collision_threshold_n is None or self.data.ncon == 0:
            return
        pairs = self.data.contact.geom[: self.data.ncon]
        g1, g2 = pairs[:, 0], pairs[:, 1]
        robot1, robot2 = self._robot_geom[g1], self._robot_geom[g2]
        if not (robot1.any() or robot2.any()):  # the usual case: only the object touches anything
            return
        hits = np.flatnonzero((robot1 & self._env_geom[g2]) | (robot2 & self._env_geom[g1]))
        if hits.size == 0:  # the fingers touch the object, not the table or the box
            return
        wrench = np.zeros(6)
        forces: dict[tuple[int, int], float] = {}
        for i in hits:
            mujoco.mj_contactForce(self.model, self.data, int(i), wrench)
            a, b = int(g1[i]), int(g2[i])
            key = (a, b) if self._robot_geom[a] else (b, a)
            forces[key] = forces.get(key, 0.0) + abs(wrench[0])
        (robot, env), force = max(forces.items(), key=lambda kv: kv[1])
        if force > self.collision_threshold_n:
            self.collision = CollisionEvent(self.model.geom(robot).name, self.model.geom(env).name, float(force),
                                            float(self.data.time))
            self._held_joints = self.data.qpos[self._arm_qpos].copy()

    # -- commands (from the controller) -----------------------------------------------------------
    def set_joint_target(self, joints_rad: np.ndarray) -> None:
        """Position the joints are driven to during the next cycle (ignored while a collision is latched)."""
        with self.lock:
            self._target = np.asarray(joints_rad, dtype=np.float64).copy()

    def joint_target(self) -> np.ndarray:
        with self.lock:
            return self._target.copy()

    def set_gripper_open(self, is_open: bool) -> None:
        with self.lock:
            self._gripper_open = bool(is_open)

    @property
    def gripper_commanded_open(self) -> bool:
        return self._gripper_open

    def set_collision_level(self, level: int) -> None:
        self.collision_threshold_n = COLLISION_LEVEL_FORCE_N[level]

    def clear_collision(self) -> None:
        with self.lock:
            self.collision = None

    # -- scene --------------------------------------------------------------------------------------
    def sample_scene(self, ranges: PerturbationRanges | None = None, object_name: str | None = None) -> SceneSpec:
        """The next scene of this twin's seeded sequence (nominal distribution unless ``ranges``)."""
        self._scene_count += 1
        return self._sampler.sample(self._rng_seed * 100_003 + self._scene_count, object_name, ranges)

    def reset_scene(self, spec: SceneSpec | None = None) -> SceneSpec:
        """Place box, object and arm per ``spec`` (or the next sampled one), open the gripper, settle.

        Reset the scene while the arm is out of servo mode: the controller drops its motion state.
        """
        spec = spec or self.sample_scene()
        if spec.object_name not in self._objects:
            raise ValueError(f"unknown object {spec.object_name!r}; the twin has {sorted(self._objects)}")
        with self.lock:
            mujoco.mj_resetData(self.model, self.data)
            for name, adr in self._object_qpos.items():
                self.data.qpos[adr:adr + 7] = self._parking[name]
                self._set_active(name, name == spec.object_name)
            height_m = mm_to_m(object_geometry(spec.object_name).height_mm)
            adr = self._object_qpos[spec.object_name]
            self.data.qpos[adr:adr + 3] = [*mm_to_m(np.asarray(spec.object_xy_mm)), height_m / 2 + 0.0005]
            self.data.qpos[adr + 3:adr + 7] = [np.cos(spec.object_yaw_rad / 2), 0, 0, np.sin(spec.object_yaw_rad / 2)]
            self.data.mocap_pos[self._box_mocap] = [*mm_to_m(np.asarray(spec.box_xy_mm)), 0.0]
            joints = np.asarray(spec.start_joints_rad, dtype=np.float64)
            self.data.qpos[self._arm_qpos] = joints
            self.data.qpos[self._finger_qpos] = self._half_stroke_m
            self.data.ctrl[self._grip_act] = self._half_stroke_m
            self._gripper_open = True
            self._target, self._last_target, self._held_joints = joints.copy(), joints.copy(), joints.copy()
            self.data.ctrl[self._pos_act] = joints
            self.collision = None
            mujoco.mj_forward(self.model, self.data)
            for _ in range(round(SETTLE_S / self.model.opt.timestep)):
                mujoco.mj_step(self.model, self.data)
            self.collision = None
            self.spec = spec
            for hook in self._reset_hooks:
                hook()
        return spec

    def _set_active(self, name: str, active: bool) -> None:
        """Objects not in the scene float without contacts where they are parked (contacts cost ~10 us each)."""
        body = self._objects[name]
        self.model.body_gravcomp[body] = 0.0 if active else 1.0
        for geom in self._object_geoms[name]:
            self.model.geom_contype[geom] = self._object_contact_bits[0] if active else 0
            self.model.geom_conaffinity[geom] = self._object_contact_bits[1] if active else 0

    # -- privileged state -------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        with self.lock:
            return self.data.qpos[self._arm_qpos].copy()

    def joint_velocities(self) -> np.ndarray:
        with self.lock:
            return self.data.qvel[self._arm_dof].copy()

    def tcp_pose(self) -> np.ndarray:
        """Measured TCP pose [x, y, z mm, rx, ry, rz rad] (MuJoCo's site)."""
        with self.lock:
            pos = m_to_mm(self.data.site_xpos[self._tcp_site])
            rot = self.data.site_xmat[self._tcp_site].reshape(3, 3)
            return np.concatenate([pos, matrix_to_rpy(rot)])

    def object_pose(self, name: str | None = None) -> np.ndarray:
        """Pose [x, y, z mm, rx, ry, rz rad] of the scene's object (or ``name``)."""
        name = name or self._scene_object()
        with self.lock:
            body = self._objects[name]
            return np.concatenate([m_to_mm(self.data.xpos[body]), matrix_to_rpy(self.data.xmat[body].reshape(3, 3))])

    def object_velocity(self, name: str | None = None) -> tuple[float, float]:
        """(linear speed mm/s, angular speed rad/s) of the object."""
        name = name or self._scene_object()
        with self.lock:
            dof = self._object_dof[name]
            qvel = self.data.qvel[dof:dof + 6]
            return float(np.linalg.norm(m_to_mm(qvel[:3]))), float(np.linalg.norm(qvel[3:]))

    def box_pose(self) -> np.ndarray:
        """Pose of the box (centre of its floor on the table), [x, y, z mm, 0, 0, 0]."""
        with self.lock:
            return np.concatenate([m_to_mm(self.data.mocap_pos[self._box_mocap]), np.zeros(3)])

    def gripper_opening(self) -> float:
        """Measured finger opening, 0 (closed) .. 1 (full stroke)."""
        with self.lock:
            return float(np.mean(self.data.qpos[self._finger_qpos]) / self._half_stroke_m)

    def object_in_gripper(self, name: str | None = None) -> bool:
        """Both fingers touch the object."""
        return len(self._finger_contacts(name)) == 2

    def _finger_contacts(self, name: str | None) -> set[int]:
        body = self._objects[name or self._scene_object()]
        touching = set()
        with self.lock:
            for g1, g2 in self.data.contact.geom[: self.data.ncon]:
                for a, b in ((g1, g2), (g2, g1)):
                    if self._finger_geom[a] and self.model.geom_bodyid[b] == body:
                        touching.add(int(self.model.geom_bodyid[a]))
        return touching

    def _scene_object(self) -> str:
        if self.spec is None:
            raise RuntimeError("no scene has been set; call reset_scene() first")
        return self.spec.object_name

    def task_success(self) -> SuccessReport:
        """Object at rest inside the box's inner footprint, below the wall top, released, gripper open."""
        with self.lock:
            pos = self.object_pose()[:3]
            box = self.box_pose()[:3]
            speed, spin = self.object_velocity()
            offset = pos[:2] - box[:2]
            inside = bool(np.all(np.abs(offset) < BOX.inner_mm / 2))
            below = bool(pos[2] < BOX.wall_height_mm)
            at_rest = speed < AT_REST_SPEED_MM_S and spin < AT_REST_ANGULAR_RAD_S
            gripper_open = self._gripper_open and self.gripper_opening() > 0.5
            released = not self._finger_contacts(None)
        ok = inside and below and at_rest and gripper_open and released
        return SuccessReport(ok, inside, below, at_rest, gripper_open, released, tuple(float(v) for v in pos),
                             (float(offset[0]), float(offset[1])), speed,
                             {"angular_speed_rad_s": spin, "object": self._scene_object()})

    # -- camera -------------------------------------------------------------------------------------
    def _render_size(self, width: int | None, height: int | None) -> tuple[int, int]:
        return width or self.config.camera.color.width, height or self.config.camera.color.height

    def render(self, width: int | None = None, height: int | None = None, depth: bool = False,
               camera: str = sim_model.CAMERA) -> tuple[np.ndarray, np.ndarray | None]:
        """Colour (H, W, 3) uint8 and, if ``depth``, z16 depth (H, W) uint16 mm from one render pass of ``camera``
        (the scene camera, or ``sim_model.WRIST_CAMERA``)."""
        width, height = self._render_size(width, height)
        if self._renderer is None:  # created outside the lock: it takes ~0.5 s, physics keeps running
            renderer = CameraRenderer(self.model, sim_model.CAMERA)
            with self.lock:
                if self._renderer is None:
                    self._renderer = renderer
            if self._renderer is not renderer:
                renderer.close()
        return self._renderer.render(self.data, self.lock, width, height, depth, camera)

    def render_color(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        return self.render(width, height)[0]

    def render_depth_mm(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        return self.render(width, height, depth=True)[1]

    def camera_frames(self) -> tuple[np.ndarray, np.ndarray | None]:
        """A D455 frame set: colour at ``camera.color``'s size and, if ``camera.depth.enabled``, z16 depth at
        ``camera.depth``'s size (one render pass when the sizes agree; depth is aligned to colour either way)."""
        color_profile, depth_profile = self.config.camera.color, self.config.camera.depth
        same_size = (color_profile.width, color_profile.height) == (depth_profile.width, depth_profile.height)
        color, depth = self.render(depth=depth_profile.enabled and same_size)
        if depth_profile.enabled and not same_size:
            depth = self.render(depth_profile.width, depth_profile.height, depth=True)[1]
        return color, depth

    def wrist_frames(self) -> tuple[np.ndarray, None]:
        """The wrist camera's colour image at ``cameras.wrist.color``'s size (no depth: it streams colour only)."""
        wrist = self._wrist_config()
        return self.render(wrist.color.width, wrist.color.height, camera=sim_model.WRIST_CAMERA)[0], None

    def wrist_intrinsics(self) -> Intrinsics:
        """Pinhole intrinsics of the wrist camera's colour images."""
        wrist = self._wrist_config()
        return pinhole_intrinsics(wrist.color.width, wrist.color.height, sim_model.wrist_camera_fovy_deg(self.config))

    def _wrist_config(self):
        if self.config.cameras.wrist is None:
            raise ValueError("this twin has no wrist camera: set cameras.wrist in hardware.yaml")
        return self.config.cameras.wrist

    def depth_intrinsics(self) -> Intrinsics:
        """Intrinsics of the depth images of :meth:`camera_frames` (same camera, depth profile size)."""
        return self.intrinsics(self.config.camera.depth.width, self.config.camera.depth.height)

    def intrinsics(self, width: int | None = None, height: int | None = None) -> Intrinsics:
        """Pinhole intrinsics of the camera at a render size (colour profile by default); depth is aligned."""
        width, height = self._render_size(width, height)
        return pinhole_intrinsics(width, height, sim_model.camera_fovy_deg(self.config))

    def physics_timing(self) -> TickStats | None:
        """Realtime mode: a copy of the physics thread's tick counts (late = started over 20% of a cycle late);
        None in lock-step, where simulated time cannot run late."""
        if self._physics_task is None:
            return None
        return replace(self._physics_task.stats)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._physics_task is not None:
            task, self._physics_task = self._physics_task, None
            task.stop()
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> Twin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
