"""The small hardware interfaces every other package programs against.

Each has one real implementation (JAKA SDK, tool-output gripper, RealSense SDK) and the simulated
twin stands *behind* those real drivers (a fake ``jkrc`` module, a software RealSense device), so
the driver code is the code that is tested. Units follow robot/units.py, frames robot/frames.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np


@dataclass(frozen=True)
class ArmState:
    joints_rad: np.ndarray  # (6,)
    tcp_pose: np.ndarray  # (6,) x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad (robot/frames.py)
    timestamp_s: float  # Clock time at which the state was read
    servo_enabled: bool = False
    error: str | None = None  # the controller's error condition in words, None when healthy


@dataclass(frozen=True)
class GripperState:
    command: float  # last commanded opening, 0 = closed .. 1 = open
    width: float | None  # measured opening 0..1 where the hardware reports one
    timestamp_s: float


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    distortion_model: str = "brown_conrady"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy, "ppx": self.ppx,
                "ppy": self.ppy, "distortion_model": self.distortion_model, "coeffs": list(self.coeffs)}


@dataclass(frozen=True)
class CameraFrame:
    color: np.ndarray  # (H, W, 3) uint8 RGB
    timestamp_s: float  # capture time reported by the device (its clock domain), seconds
    frame_number: int
    received_s: float  # Clock time at which the host received the frame set
    depth_mm: np.ndarray | None = None  # (H, W) uint16, aligned to color when alignment is on
    metadata: dict = field(default_factory=dict)


class _Connectable(ABC):
    """connect()/disconnect() and a context manager that always disconnects."""

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.disconnect()


class Arm(_Connectable):
    """A 6-joint arm with blocking moves and 125 Hz streaming (servo) control.

    Streaming: ``start_servo()``, then ``servo_joints`` / ``servo_tcp`` set a target that the
    arm's servo loop reaches by interpolating over ``reach_in_s`` at the servo rate, never faster
    than the configured speed limits. A new target replaces the old one from the current position.
    ``disconnect`` (and leaving the context manager, also on exceptions and Ctrl-C) leaves servo
    mode, aborts motion and logs out.
    """

    @abstractmethod
    def state(self) -> ArmState: ...

    @abstractmethod
    def move_joints(self, joints_rad: np.ndarray, speed_rad_s: float) -> None:
        """Blocking, speed-limited joint move (not in servo mode)."""

    @abstractmethod
    def move_home(self, speed_rad_s: float | None = None) -> None:
        """Blocking move to the configured home joints."""

    @abstractmethod
    def forward_kinematics(self, joints_rad: np.ndarray) -> np.ndarray:
        """TCP pose (6,) for the joints, from the controller's kinematics."""

    @abstractmethod
    def inverse_kinematics(self, tcp_pose: np.ndarray, seed_joints_rad: np.ndarray) -> np.ndarray:
        """Joints (6,) reaching the pose, nearest the seed; raises IKFailedError."""

    @abstractmethod
    def start_servo(self) -> None: ...

    @abstractmethod
    def servo_joints(self, joints_rad: np.ndarray, reach_in_s: float) -> None: ...

    @abstractmethod
    def servo_tcp(self, tcp_pose: np.ndarray, reach_in_s: float) -> None: ...

    @abstractmethod
    def hold(self) -> None:
        """Keep servo mode but stop where the arm is now (target := current position)."""

    @abstractmethod
    def stop_servo(self) -> None: ...

    @abstractmethod
    def abort(self) -> None:
        """Stop all motion immediately (software e-stop path)."""

    @property
    @abstractmethod
    def is_servoing(self) -> bool: ...


class Gripper(_Connectable):
    @abstractmethod
    def command(self, opening: float) -> float:
        """Command an opening in 0 (closed) .. 1 (open); returns the command actually applied."""

    def open(self) -> float:
        return self.command(1.0)

    def close(self) -> float:
        return self.command(0.0)

    @abstractmethod
    def state(self) -> GripperState: ...


class Camera(_Connectable):
    @abstractmethod
    def latest(self, timeout_s: float | None = None) -> CameraFrame:
        """The newest frame set; waits for the first one; raises CameraTimeoutError."""

    @property
    @abstractmethod
    def intrinsics(self) -> Intrinsics:
        """Colour intrinsics (depth is aligned to colour when alignment is on)."""
