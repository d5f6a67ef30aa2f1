"""The safety layer: every command from teleop or a policy passes through :class:`SafetyLayer`.

``SafetyLayer.filter(command, arm_state, period_s)`` turns a requested TCP pose or joint target into
the joints actually sent to the arm, or into a hold. Rules, in order:

1. software e-stop latched -> rejected (hold) until ``reset_estop()``;
2. NaN/inf anywhere in the command or the measured state -> rejected (hold);
3. pose commands: TCP position clamped into ``workspace_mm``; translation limited to
   ``max_step_tcp_mm`` and rotation to ``max_step_rot_deg`` relative to the measured pose; IK from
   the measured joints (failure -> hold);
4. joints clamped into the joint limits; the joint change per command limited to
   ``max_joint_speed_deg_s * period_s`` (scaled uniformly so the joint-space direction is kept);
5. the TCP step of the resulting joints is checked against the per-step limits (joint commands are
   scaled back along their joint path until it fits) and the TCP must lie inside the workspace
   (else hold).

When the measured TCP (or joints) already lie outside a limit, e.g. after hand-guiding, the allowed
box is widened to include the measured value, so the arm may move back in but never further out.
The result records whether anything was clamped and why, and it is what recorders store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from fanvla.config import SafetyConfig
from robot.clock import Clock
from robot.errors import IKFailedError
from robot.frames import POSE_DIM, apply_pose_delta, pose_delta
from robot.interfaces import ArmState

NUM_JOINTS = 6
ForwardKinematics = Callable[[np.ndarray], np.ndarray]
InverseKinematics = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Targets are clamped this far inside the workspace so that IK round-off (the kinematics solve to
# 1e-3 mm) cannot push the final FK check over the boundary.
WORKSPACE_MARGIN_MM = 0.1
# The final check allows this much round-off on the per-step limits (they are applied exactly).
STEP_TOLERANCE_MM = 1e-3
STEP_TOLERANCE_RAD = 1e-6
# Bisection steps used to scale a joint step back until its TCP step fits the per-step limits.
_SCALE_ITERATIONS = 20


@dataclass(frozen=True, eq=False)
class Command:
    """A target for the arm: a TCP pose (mm/rad, robot/frames.py) or joints (rad), plus a gripper opening.

    ``gripper`` is 0 (closed) .. 1 (open); values outside are clipped by the safety layer, non-finite
    values reject the command. Build one with :meth:`to_pose` or :meth:`to_joints`.
    """

    tcp_pose: np.ndarray | None = None
    joints_rad: np.ndarray | None = None
    gripper: float = 1.0

    def __post_init__(self) -> None:
        if (self.tcp_pose is None) == (self.joints_rad is None):
            raise ValueError("a Command needs exactly one of tcp_pose or joints_rad")
        for name, size in (("tcp_pose", POSE_DIM), ("joints_rad", NUM_JOINTS)):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.array(value, dtype=np.float64)  # a private copy: the caller may reuse its buffer
            if array.shape != (size,):
                raise ValueError(f"Command.{name} must have shape ({size},), got {array.shape}")
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        object.__setattr__(self, "gripper", float(self.gripper))

    @classmethod
    def to_pose(cls, tcp_pose, gripper: float) -> Command:
        return cls(tcp_pose=tcp_pose, gripper=gripper)

    @classmethod
    def to_joints(cls, joints_rad, gripper: float) -> Command:
        return cls(joints_rad=joints_rad, gripper=gripper)

    @property
    def is_pose(self) -> bool:
        return self.tcp_pose is not None


@dataclass(frozen=True, eq=False)
class SafeCommand:
    """What the safety layer lets through: the joints to send, their TCP pose and the gripper opening.

    ``rejected`` (alias ``hold``): nothing should move; ``joints_rad``/``tcp_pose`` are then the
    measured ones (or NaN when the measured state itself was not finite) and ``gripper`` is the last
    accepted opening (None before the first accepted command).
    """

    joints_rad: np.ndarray
    tcp_pose: np.ndarray
    gripper: float | None
    clamped: bool
    reasons: tuple[str, ...] = ()
    rejected: bool = False

    @property
    def hold(self) -> bool:
        return self.rejected


@dataclass(frozen=True)
class _Box:
    """An axis-aligned box; ``widened_to`` includes a point outside it (move back in, never further out)."""

    lower: np.ndarray
    upper: np.ndarray

    def widened_to(self, point: np.ndarray) -> _Box:
        return _Box(np.minimum(self.lower, point), np.maximum(self.upper, point))

    def shrunk(self, margin: float) -> _Box:
        lower, upper = self.lower + margin, self.upper - margin
        return _Box(np.minimum(lower, (self.lower + self.upper) / 2), np.maximum(upper, (self.lower + self.upper) / 2))

    def contains(self, point: np.ndarray) -> bool:
        return bool(np.all(point >= self.lower) and np.all(point <= self.upper))

    def clip(self, point: np.ndarray) -> np.ndarray:
        return np.clip(point, self.lower, self.upper)


@dataclass
class _Check:
    """Collects the reasons of one filter() call."""

    reasons: list[str] = field(default_factory=list)
    clamped: bool = False

    def clamp(self, reason: str) -> None:
        self.clamped = True
        self.reasons.append(reason)


class SafetyLayer:
    """Workspace, joint limits, per-step limits, NaN rejection and a latching software e-stop."""

    def __init__(self, safety_config: SafetyConfig, joint_limits_rad: Sequence[tuple[float, float]],
                 fk: ForwardKinematics, ik: InverseKinematics) -> None:
        limits = np.asarray(joint_limits_rad, dtype=np.float64)
        if limits.shape != (NUM_JOINTS, 2) or not np.all(limits[:, 0] < limits[:, 1]):
            raise ValueError(f"joint_limits_rad must be {NUM_JOINTS} (lower, upper) pairs with lower < upper, "
                             f"got {joint_limits_rad}")
        box = safety_config.workspace_mm
        self.config = safety_config
        self.workspace = _Box(np.array([box.x[0], box.y[0], box.z[0]]), np.array([box.x[1], box.y[1], box.z[1]]))
        self.joint_limits = _Box(limits[:, 0].copy(), limits[:, 1].copy())
        self.max_step_tcp_mm = safety_config.max_step_tcp_mm
        self.max_step_rot_rad = safety_config.max_step_rot_rad
        self.max_joint_speed_rad_s = safety_config.max_joint_speed_rad_s
        self._fk, self._ik = fk, ik
        self._estop_reason: str | None = None
        self._last_gripper: float | None = None

    # -- software e-stop -------------------------------------------------------------------------
    def estop(self, reason: str) -> None:
        """Latch the software e-stop: every later command is rejected until :meth:`reset_estop`."""
        if self._estop_reason is None:
            self._estop_reason = reason or "software e-stop"

    def reset_estop(self) -> None:
        self._estop_reason = None

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> str | None:
        return self._estop_reason

    # -- the filter --------------------------------------------------------------------------------
    def max_joint_step_rad(self, period_s: float) -> float:
        return self.max_joint_speed_rad_s * period_s

    def filter(self, command: Command, arm_state: ArmState, period_s: float) -> SafeCommand:
        """The command actually to send for ``command`` given the measured ``arm_state``.

        ``period_s`` is the time until the next command (the control period); it sets the largest
        joint change allowed by ``max_joint_speed_deg_s``.
        """
        if not (math.isfinite(period_s) and period_s > 0):
            raise ValueError(f"period_s must be a positive number of seconds, got {period_s}")
        measured = np.asarray(arm_state.joints_rad, dtype=np.float64)
        if measured.shape != (NUM_JOINTS,):
            raise ValueError(f"arm_state.joints_rad must have shape ({NUM_JOINTS},), got {measured.shape}")
        if self._estop_reason is not None:
            return self._reject(measured, f"software e-stop latched: {self._estop_reason}")
        if not np.all(np.isfinite(measured)):
            return self._reject(measured, "measured joints are not finite (check the arm connection)")
        target = command.tcp_pose if command.is_pose else command.joints_rad
        if not (np.all(np.isfinite(target)) and math.isfinite(command.gripper)):
            return self._reject(measured, "command contains NaN or inf")

        check = _Check()
        measured_pose = self._fk(measured)
        workspace = self.workspace.widened_to(measured_pose[:3])
        if command.is_pose:
            target_joints = self._joints_for_pose(command.tcp_pose, measured, measured_pose, workspace, check)
            if target_joints is None:
                return self._reject(measured, *check.reasons)
        else:
            target_joints = np.array(command.joints_rad)
        joints = self._limit_joints(target_joints, measured, period_s, check)
        joints = self._limit_tcp_step(joints, measured, measured_pose, check)
        if joints is None:
            return self._reject(measured, *check.reasons)
        pose = self._fk(joints)
        if not workspace.contains(pose[:3]):
            return self._reject(measured, *check.reasons, f"TCP {np.round(pose[:3], 1).tolist()} mm would leave the "
                                f"workspace {self._workspace_text()}")
        gripper = float(np.clip(command.gripper, 0.0, 1.0))
        if gripper != command.gripper:
            check.clamp(f"gripper opening {command.gripper:g} clipped to {gripper:g}")
        self._last_gripper = gripper
        return SafeCommand(joints, pose, gripper, check.clamped, tuple(check.reasons))

    # -- rules ---------------------------------------------------------------------------------------
    def _joints_for_pose(self, tcp_pose: np.ndarray, measured: np.ndarray, measured_pose: np.ndarray,
                         workspace: _Box, check: _Check) -> np.ndarray | None:
        target = np.array(tcp_pose, dtype=np.float64)
        inner = workspace.shrunk(WORKSPACE_MARGIN_MM)
        if not inner.contains(target[:3]):
            target[:3] = inner.clip(target[:3])
            check.clamp(f"TCP target clamped into the workspace {self._workspace_text()}")
        delta = pose_delta(measured_pose, target)
        translation_mm = float(np.linalg.norm(delta[:3]))
        if translation_mm > self.max_step_tcp_mm:
            delta[:3] *= self.max_step_tcp_mm / translation_mm
            check.clamp(f"TCP step {translation_mm:.1f} mm limited to {self.max_step_tcp_mm:g} mm")
        rotation_rad = float(np.linalg.norm(delta[3:]))
        if rotation_rad > self.max_step_rot_rad:
            delta[3:] *= self.max_step_rot_rad / rotation_rad
            check.clamp(f"TCP rotation {math.degrees(rotation_rad):.1f} deg limited to "
                        f"{self.config.max_step_rot_deg:g} deg")
        limited = apply_pose_delta(measured_pose, delta)
        try:
            joints = np.asarray(self._ik(limited, measured), dtype=np.float64)
        except IKFailedError as error:
            check.reasons.append(f"IK failed: {error}")
            return None
        if joints.shape != (NUM_JOINTS,) or not np.all(np.isfinite(joints)):
            check.reasons.append(f"IK returned an invalid solution {joints}")
            return None
        return joints

    def _limit_joints(self, target: np.ndarray, measured: np.ndarray, period_s: float, check: _Check) -> np.ndarray:
        limits = self.joint_limits.widened_to(measured)
        if not limits.contains(target):
            outside = [f"J{i + 1}" for i in np.flatnonzero((target < limits.lower) | (target > limits.upper))]
            target = limits.clip(target)
            check.clamp(f"joint limits: {', '.join(outside)} clamped")
        step = target - measured
        largest_rad = float(np.max(np.abs(step)))
        max_step_rad = self.max_joint_step_rad(period_s)
        if largest_rad > max_step_rad:
            # Uniform scaling keeps the joint-space direction; the box of limits is convex, so the
            # shortened step stays inside it.
            target = measured + step * (max_step_rad / largest_rad)
            check.clamp(f"joint step {math.degrees(largest_rad):.2f} deg limited to "
                        f"{math.degrees(max_step_rad):.2f} deg ({self.config.max_joint_speed_deg_s:g} deg/s "
                        f"over {period_s:g} s)")
        return target

    def _tcp_step_ok(self, joints: np.ndarray, measured_pose: np.ndarray) -> bool:
        delta = pose_delta(measured_pose, self._fk(joints))
        return bool(np.linalg.norm(delta[:3]) <= self.max_step_tcp_mm + STEP_TOLERANCE_MM
                    and np.linalg.norm(delta[3:]) <= self.max_step_rot_rad + STEP_TOLERANCE_RAD)

    def _limit_tcp_step(self, joints: np.ndarray, measured: np.ndarray, measured_pose: np.ndarray,
                        check: _Check) -> np.ndarray | None:
        """Scale the joint step back along its path until the TCP step fits the per-step limits."""
        if self._tcp_step_ok(joints, measured_pose):
            return joints
        step = joints - measured
        feasible, infeasible = 0.0, 1.0
        for _ in range(_SCALE_ITERATIONS):
            middle = (feasible + infeasible) / 2
            if self._tcp_step_ok(measured + middle * step, measured_pose):
                feasible = middle
            else:
                infeasible = middle
        if feasible == 0.0:
            check.reasons.append("no part of the joint step keeps the TCP within the per-step limits")
            return None
        check.clamp(f"joint step scaled to {feasible:.3f} to keep the TCP step within {self.max_step_tcp_mm:g} mm "
                    f"and {self.config.max_step_rot_deg:g} deg")
        return measured + feasible * step

    def _reject(self, measured: np.ndarray, *reasons: str) -> SafeCommand:
        if np.all(np.isfinite(measured)):
            joints, pose = measured.copy(), self._fk(measured)
        else:
            joints, pose = np.full(NUM_JOINTS, np.nan), np.full(POSE_DIM, np.nan)
        return SafeCommand(joints, pose, self._last_gripper, clamped=False, reasons=tuple(reasons), rejected=True)

    def _workspace_text(self) -> str:
        lo, hi = self.workspace.lower, self.workspace.upper
        return f"x [{lo[0]:g}, {hi[0]:g}] y [{lo[1]:g}, {hi[1]:g}] z [{lo[2]:g}, {hi[2]:g}] mm"


class WatchdogStatus(StrEnum):
    OK = "ok"
    HOLD = "hold"  # no fresh command for hold_after_s: keep servo mode, stay where the arm is
    STOP = "stop"  # no fresh command for stop_after_s: stop motion, end the episode as aborted


class Watchdog:
    """Reports ``ok`` / ``hold`` / ``stop`` from the time since the last fresh command (on ``clock``).

    The timer starts when the watchdog is created (or :meth:`reset`), so a loop whose agent never
    delivers a command is held and then stopped as well.
    """

    def __init__(self, hold_after_s: float, stop_after_s: float, clock: Clock) -> None:
        if not 0 < hold_after_s < stop_after_s:
            raise ValueError(f"need 0 < hold_after_s < stop_after_s, got hold_after_s={hold_after_s}, "
                             f"stop_after_s={stop_after_s}")
        self.hold_after_s, self.stop_after_s, self._clock = hold_after_s, stop_after_s, clock
        self._last_feed_s = clock.now_s()

    @classmethod
    def from_config(cls, safety_config: SafetyConfig, clock: Clock) -> Watchdog:
        return cls(safety_config.watchdog_hold_s, safety_config.watchdog_stop_s, clock)

    def feed(self) -> None:
        """Call on every fresh command (never for a repeated one)."""
        self._last_feed_s = self._clock.now_s()

    reset = feed

    def since_last_feed_s(self) -> float:
        return self._clock.now_s() - self._last_feed_s

    def stop_due_s(self) -> float:
        """Clock time at which the status becomes ``stop`` unless a fresh command comes first."""
        return self._last_feed_s + self.stop_after_s

    def status(self) -> WatchdogStatus:
        silent_s = self.since_last_feed_s()
        if silent_s >= self.stop_after_s:
            return WatchdogStatus.STOP
        if silent_s >= self.hold_after_s:
            return WatchdogStatus.HOLD
        return WatchdogStatus.OK
