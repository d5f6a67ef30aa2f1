"""Build the robot bundle for a backend: the same drivers, real hardware or the twin behind them.

``open_robot(config, "real")`` talks to the JAKA controller through JAKA's ``jkrc`` and to the D455
through ``pyrealsense2``. ``open_robot(config, "sim")`` puts the MuJoCo twin behind those very
drivers: a fake ``jkrc`` module and a software RealSense device fed with the twin's renders.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from fanvla.config import HardwareConfig
from robot.clock import Clock, PeriodicTask, RealClock
from robot.errors import RobotError
from robot.gripper import make_gripper
from robot.interfaces import Arm, ArmState, Camera, CameraFrame, Gripper, GripperState
from robot.jaka import JakaArm
from robot.latency import load as load_latency
from robot.safety import SafetyLayer

log = logging.getLogger(__name__)

Backend = Literal["sim", "real"]
BACKENDS: tuple[Backend, ...] = ("sim", "real")
WRIST_SOFTWARE_SERIAL = "SW0000000406"  # the twin's wrist camera when cameras.wrist.serial is null


@dataclass
class Robot:
    """Everything a control loop needs, connected; ``close()`` (or ``with``) releases it in reverse order."""

    config: HardwareConfig
    backend: Backend
    arm: Arm
    gripper: Gripper
    camera: Camera
    clock: Clock
    safety: SafetyLayer
    twin: object | None = None  # robot.sim.twin.Twin for the sim backend: scene control and scoring
    _exit: ExitStack = field(default_factory=ExitStack, repr=False)
    latency: dict | None = None  # this backend's figures from `fanvla robot latency` (robot/latency.py), if measured
    wrist_camera: Camera | None = None  # hardware.yaml cameras.wrist: a second RealSense on the flange, if any

    def observe_parts(self) -> tuple[CameraFrame, ArmState, GripperState]:
        return self.camera.latest(), self.arm.state(), self.gripper.state()

    def hardware_info(self) -> dict:
        """What every recording keeps about the hardware behind it: the SDK and the calls used (measured or
        possibly commanded state), frames, tool and payload; the camera and its timestamp domain; latency; the
        wrist camera (with its intrinsics) when there is one."""
        sdk_info = getattr(self.arm, "sdk_info", None)
        keys = ("serial", "device_name", "timestamp_domain")
        camera = {key: getattr(self.camera, key, None) for key in keys}
        info = {"backend": self.backend, "arm": sdk_info() if sdk_info is not None else None, "camera": camera,
                "latency": self.latency}
        if self.wrist_camera is not None:
            info["wrist_camera"] = {**{key: getattr(self.wrist_camera, key, None) for key in keys},
                                    "intrinsics": self.wrist_camera.intrinsics.to_dict()}
        return info

    def go_home(self) -> None:
        """Leave servo mode if needed and move home (blocking, speed-limited)."""
        if self.arm.is_servoing:
            self.arm.hold()
            self.arm.stop_servo()
        self.arm.move_home()

    def move_to_start(self, joints_rad) -> None:
        """Blocking joint move to an episode's start pose (used by the real evaluation; the twin teleports)."""
        if self.arm.is_servoing:
            self.arm.hold()
            self.arm.stop_servo()
        self.arm.move_joints(np.asarray(joints_rad, dtype=np.float64), self.config.robot.home_speed_rad_s)

    def estop(self, reason: str) -> None:
        """Software e-stop: latch the safety layer and abort motion now."""
        self.safety.estop(reason)
        self.arm.abort()

    def close(self) -> None:
        self._exit.close()

    def __enter__(self) -> Robot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safety_for(config: HardwareConfig, arm: Arm) -> SafetyLayer:
    # The controller's own kinematics are the truth at the robot; in the twin the fake SDK answers them.
    return SafetyLayer(config.safety, config.robot.joint_limits_rad, arm.forward_kinematics, arm.inverse_kinematics)


def open_robot(config: HardwareConfig, backend: Backend, *, seed: int = 0, realtime: bool | None = None,
               with_camera: bool = True) -> Robot:
    """Connect arm, gripper and camera for ``backend``; on any failure everything opened so far is released."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    stack = ExitStack()
    try:
        robot = _open_sim(config, stack, seed, realtime, with_camera) if backend == "sim" \
            else _open_real(config, stack, with_camera)
    except BaseException:
        stack.close()
        raise
    robot.latency = load_latency(config, backend)
    return robot


def _open_real(config: HardwareConfig, stack: ExitStack, with_camera: bool) -> Robot:
    from robot.realsense import RealSenseCamera

    wrist = config.cameras.wrist if with_camera else None
    if wrist is not None and (wrist.serial is None or config.camera.serial is None):  # before anything connects
        raise RobotError("cameras.wrist is set: give both RealSense serials (camera.serial and cameras.wrist.serial "
                         "in hardware.yaml; rs-enumerate-devices lists them), so that neither camera is taken for the "
                         "other")
    clock = RealClock()
    arm = stack.enter_context(JakaArm(config, clock=clock))
    gripper = stack.enter_context(make_gripper(config, arm))
    camera = stack.enter_context(RealSenseCamera(config.camera, clock)) if with_camera else _NoCamera()
    wrist_camera = None if wrist is None else stack.enter_context(RealSenseCamera(wrist.as_camera_config(), clock))
    return Robot(config, "real", arm, gripper, camera, clock, _safety_for(config, arm), None, stack,
                 wrist_camera=wrist_camera)


def _open_sim(config: HardwareConfig, stack: ExitStack, seed: int, realtime: bool | None,
              with_camera: bool) -> Robot:
    from robot.sim.fake_jkrc import make_jkrc
    from robot.sim.twin import Twin

    twin = stack.enter_context(Twin(config, realtime=realtime, seed=seed))
    arm = stack.enter_context(JakaArm(config, sdk=make_jkrc(twin), clock=twin.clock))
    gripper = stack.enter_context(make_gripper(config, arm))
    camera: Camera = _NoCamera()
    wrist_camera = None
    if with_camera:
        camera = _start_software_camera(config, twin, stack)
        if config.cameras.wrist is not None:
            wrist_camera = _start_software_wrist_camera(config, twin, stack)
    return Robot(config, "sim", arm, gripper, camera, twin.clock, _safety_for(config, arm), twin, stack,
                 wrist_camera=wrist_camera)


def _start_software_camera(config: HardwareConfig, twin, stack: ExitStack) -> Camera:
    from robot.sim.software_realsense import SoftwareRealSense

    device = SoftwareRealSense(config.camera, twin.intrinsics(), twin.camera_frames,
                               depth_intrinsics=twin.depth_intrinsics())
    return _run_software_device(device, twin, stack)


def _start_software_wrist_camera(config: HardwareConfig, twin, stack: ExitStack) -> Camera:
    """A second software RealSense (its own context and serial) fed with the twin's wrist camera renders."""
    from robot.sim.software_realsense import SoftwareRealSense

    wrist = config.cameras.wrist
    device = SoftwareRealSense(wrist.as_camera_config(), twin.wrist_intrinsics(), twin.wrist_frames,
                               serial=wrist.serial or WRIST_SOFTWARE_SERIAL)
    return _run_software_device(device, twin, stack)


def _run_software_device(device, twin, stack: ExitStack) -> Camera:
    camera = stack.enter_context(device.camera(twin.clock))
    task: PeriodicTask = device.start(twin.clock, camera)
    stack.callback(_stop_quietly, device)
    log.debug("software RealSense started (%s)", task.name)
    return camera


def _stop_quietly(device) -> None:
    try:
        device.stop()
    except Exception as error:  # the frame task's own failure was already raised to the caller
        log.debug("software RealSense stop: %s", error)


class _NoCamera(Camera):
    """Used with ``with_camera=False`` (arm-only checks): any read says so instead of failing obscurely."""

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def latest(self, timeout_s: float | None = None) -> CameraFrame:
        raise RobotError("this robot was opened without a camera (with_camera=False)")

    @property
    def intrinsics(self):
        raise RobotError("this robot was opened without a camera (with_camera=False)")
