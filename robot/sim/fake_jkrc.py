"""A stand-in for JAKA's ``jkrc`` SDK module, backed by the twin: the only faked piece of the stack.

``make_jkrc(twin)`` returns a module-like object with ``RC(ip)``; its handles have JAKA's call names,
arguments, units (rad, mm, rad/s, mm/s) and tuple returns (``(0,)`` / ``(0, data)`` / ``(code,)``).
Behind them ``FakeController`` plays the controller: login, power, enable, servo mode, blocking and
non-blocking moves, tool frames, digital outputs and JAKA's error codes:

- not logged in -1; communication lost -3 (every call, once ``controller.drop_connection()``);
- IK failure -4; e-stop pressed -5 (``controller.press_estop()``); not powered -6; not enabled -7;
- ``servo_j``/``servo_p`` outside servo mode -8; protective stop -20 (arm or gripper pushed into the
  table or box harder than the collision level; latched until ``collision_recover``);
- target beyond the joint soft limits -22; a servo step faster than the controller allows -12;
- ``joint_move``/``linear_move`` in servo mode and filter changes in servo mode: 2 (call failed).
"""

from __future__ import annotations

import math
import time
import types
from collections import deque
from collections.abc import Callable

import numpy as np

from robot.errors import IKFailedError
from robot.frames import apply_pose_delta, pose_delta
from robot.kinematics import NUM_JOINTS, MiniCoboKinematics

OK = 0
CALL_FAILED, BAD_HANDLE, BAD_PARAMETER, COMM_ERROR, IK_FAILED = 2, -1, -2, -3, -4
ESTOP, NOT_POWERED, NOT_ENABLED, NOT_SERVO, ABNORMAL_MOTION = -5, -6, -7, -8, -12
PROTECTIVE_STOP, SOFT_LIMIT, LINEAR_MOVE_ERROR = -20, -22, -40
ABS, INCR = 0, 1
CONTROLLER_MAX_JOINT_SPEED_RAD_S = math.pi  # hardware.md: bound used by a public driver
IN_POS_TOLERANCE_RAD = 1e-3
IO_TYPES = (0, 1, 2)  # cabinet, tool, extended
GRIPPER_IO_TYPE = {"cabinet": 0, "tool": 1, "extended": 2}


class _Trajectory:
    """A blocking/non-blocking move: joint positions as a function of controller time."""

    def __init__(self, sample: Callable[[float], np.ndarray | None], duration_s: float, start_s: float) -> None:
        self.sample, self.duration_s, self.start_s = sample, duration_s, start_s

    def at(self, now_s: float) -> np.ndarray | None:
        return self.sample(min(1.0, (now_s - self.start_s) / self.duration_s) if self.duration_s > 0 else 1.0)

    def done(self, now_s: float) -> bool:
        return now_s - self.start_s >= self.duration_s


def _smooth(s: float) -> float:
    """Cubic time scaling 3s^2 - 2s^3: zero velocity at both ends, peak velocity 1.5x the mean."""
    return s * s * (3.0 - 2.0 * s)


class FakeController:
    """The JAKA controller's state machine in front of the twin (shared by every handle)."""

    def __init__(self, twin) -> None:
        self.twin = twin
        self.lock = twin.lock
        self.config = twin.config
        self.powered = self.enabled = self.servo_mode = self.estop = False
        self.connection_lost = False
        self.collision_level = twin.config.robot.collision_level
        self.network_exception = (100, 0)
        self.tools: dict[int, tuple[float, ...]] = {0: (0.0,) * 6}  # id 0 = the bare flange
        self.tool_id = 0
        self.kinematics = self._kinematics_for_tool(0.0)
        self.outputs: dict[tuple[int, int], bool] = {}
        self.last_error: tuple[int, str] = (OK, "")
        self.servo_log: deque[tuple[float, float, tuple[float, ...]]] = deque(maxlen=50_000)
        self._trajectory: _Trajectory | None = None
        self._servo_from = self._servo_to = twin.joint_positions()
        self._servo_steps_left = 0
        self._servo_steps_total = 1
        self._time_s = 0.0
        twin.add_cycle_hook(self._on_cycle)
        twin.add_reset_hook(self._on_reset)

    def _kinematics_for_tool(self, offset_mm: float) -> MiniCoboKinematics:
        return MiniCoboKinematics(offset_mm, self.config.robot.joint_limits_rad)

    # -- test hooks ---------------------------------------------------------------------------------
    def press_estop(self) -> None:
        with self.lock:
            self.estop = True
            self.powered = self.enabled = self.servo_mode = False
            self._hold_here()

    def release_estop(self) -> None:
        with self.lock:
            self.estop = False

    def drop_connection(self) -> None:
        """From now on every call answers -3; the controller applies its network-exception action."""
        with self.lock:
            self.connection_lost = True
            if self.network_exception[1] != 0:  # 1 pause / 2 stop: stop where the arm is
                self._hold_here()

    def restore_connection(self) -> None:
        self.connection_lost = False

    # -- the controller's tick (runs at the start of every twin cycle) --------------------------------
    def _on_cycle(self) -> None:
        self._time_s += self.twin.cycle_s
        if self.twin.collision is not None or self.estop:
            self._trajectory = None
            return
        if self._trajectory is not None:
            target = self._trajectory.at(self._time_s)
            if target is None:
                self._fail(LINEAR_MOVE_ERROR, "linear_move: the path left the reachable workspace; motion stopped")
                self._hold_here()
                return
            self.twin.set_joint_target(target)
            if self._trajectory.done(self._time_s):
                self._trajectory = None
        elif self.servo_mode and self._servo_steps_left > 0:
            self._servo_steps_left -= 1
            done = 1.0 - self._servo_steps_left / self._servo_steps_total
            self.twin.set_joint_target(self._servo_from + (self._servo_to - self._servo_from) * done)

    def _on_reset(self) -> None:
        self._trajectory = None
        self._servo_from = self._servo_to = self.twin.joint_target()
        self._servo_steps_left = 0

    def _hold_here(self) -> None:
        self._trajectory = None
        here = self.twin.joint_positions()
        self._servo_from = self._servo_to = here
        self._servo_steps_left = 0
        self.twin.set_joint_target(here)

    def _fail(self, code: int, message: str) -> tuple[int]:
        self.last_error = (code, message)
        return (code,)

    # -- checks shared by the calls -------------------------------------------------------------------
    def motion_precondition(self) -> tuple[int] | None:
        if self.estop:
            return self._fail(ESTOP, "emergency stop is pressed")
        if self.twin.collision is not None:
            c = self.twin.collision
            return self._fail(PROTECTIVE_STOP, f"protective stop: {c.robot_geom} hit {c.env_geom} with "
                                               f"{c.force_n:.0f} N; call collision_recover")
        if not self.powered:
            return self._fail(NOT_POWERED, "robot is not powered on")
        if not self.enabled:
            return self._fail(NOT_ENABLED, "robot is not enabled")
        return None

    def joints_arg(self, values, name: str) -> np.ndarray | tuple[int]:
        try:
            q = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return self._fail(BAD_PARAMETER, f"{name}: joint positions must be numbers, got {values!r}")
        if q.shape != (NUM_JOINTS,) or not np.all(np.isfinite(q)):
            return self._fail(BAD_PARAMETER, f"{name}: expected {NUM_JOINTS} finite joint positions, got {values!r}")
        return q

    def limit_violation(self, q: np.ndarray, name: str) -> tuple[int] | None:
        k = self.kinematics
        bad = np.flatnonzero((q < k.lower_rad) | (q > k.upper_rad))
        if bad.size:
            j = int(bad[0])
            return self._fail(SOFT_LIMIT, f"{name}: joint {j + 1} target {q[j]:.4f} rad beyond the soft limit "
                                          f"[{k.lower_rad[j]:.4f}, {k.upper_rad[j]:.4f}]")
        return None

    # -- motion ---------------------------------------------------------------------------------------
    def start_joint_move(self, goal: np.ndarray, speed_rad_s: float) -> None:
        start = self.twin.joint_target()
        span = float(np.max(np.abs(goal - start)))
        duration = 1.5 * span / max(speed_rad_s, 1e-6)
        self._trajectory = _Trajectory(lambda s: start + (goal - start) * _smooth(s), duration, self._time_s)

    def start_linear_move(self, goal_pose: np.ndarray, speed_mm_s: float) -> tuple[int] | None:
        k = self.kinematics
        seed = self.twin.joint_target()
        start_pose = k.forward(seed)
        try:
            k.inverse(goal_pose, seed)
        except IKFailedError as error:
            return self._fail(IK_FAILED, f"linear_move: {error}")
        delta = pose_delta(start_pose, goal_pose)
        duration = 1.5 * float(np.linalg.norm(delta[:3])) / max(speed_mm_s, 1e-6)
        duration = max(duration, 1.5 * float(np.linalg.norm(delta[3:])) / CONTROLLER_MAX_JOINT_SPEED_RAD_S)
        previous = [seed]

        def sample(s: float) -> np.ndarray | None:
            try:
                previous[0] = k.inverse(apply_pose_delta(start_pose, delta * _smooth(s)), previous[0])
            except IKFailedError:
                return None
            return previous[0]

        self._trajectory = _Trajectory(sample, duration, self._time_s)
        return None

    def wait_until_still(self) -> None:
        """Block the caller until the current move ends (advances simulated time in lock-step)."""
        clock = self.twin.clock
        while self._trajectory is not None and not self.connection_lost:
            clock.sleep(self.twin.cycle_s)

    def servo_to(self, q: np.ndarray, step_num: int, name: str) -> tuple[int]:
        """Accept a servo target reached in ``step_num`` cycles from the previous one."""
        step = float(np.max(np.abs(q - self._servo_to)))
        allowed = CONTROLLER_MAX_JOINT_SPEED_RAD_S * self.twin.cycle_s * step_num
        if step > allowed:
            return self._fail(ABNORMAL_MOTION, f"{name}: a step of {step:.4f} rad in {step_num} cycle(s) exceeds the "
                                               f"controller's joint speed limit ({allowed:.4f} rad)")
        self._servo_from, self._servo_to = self.twin.joint_target(), q
        self._servo_steps_left = self._servo_steps_total = step_num
        self.servo_log.append((self._time_s, time.monotonic(), tuple(q)))
        return (OK,)

    def servo_base(self) -> np.ndarray:
        return self._servo_to

    def set_servo_mode(self, on: bool) -> None:
        self.servo_mode = on
        self._hold_here()

    def in_position(self) -> bool:
        error = np.max(np.abs(self.twin.joint_positions() - self.twin.joint_target()))
        return self._trajectory is None and self._servo_steps_left == 0 and error < IN_POS_TOLERANCE_RAD

    def set_gripper_output(self, io_type: int, index: int, level: bool) -> None:
        self.outputs[(io_type, index)] = level
        gripper = self.config.gripper
        if io_type == GRIPPER_IO_TYPE[gripper.io_type] and index == gripper.io_index:
            self.twin.set_gripper_open(level != gripper.close_level)

    def tcp_pose(self) -> np.ndarray:
        return self.kinematics.forward(self.twin.joint_positions())

    def use_tool(self, tool_id: int) -> None:
        self.tool_id = tool_id
        self.kinematics = self._kinematics_for_tool(self.tools[tool_id][2])


def controller_for(twin) -> FakeController:
    """The one controller of a twin (every ``make_jkrc(twin)`` module talks to the same one)."""
    with twin.lock:
        controller = getattr(twin, "_fake_controller", None)
        if controller is None:
            controller = FakeController(twin)
            twin._fake_controller = controller  # lives and dies with the twin
    return controller


def make_jkrc(twin) -> types.ModuleType:
    """A module object usable as ``jkrc``: ``make_jkrc(twin).RC(ip)``; ``.controller`` holds the test hooks."""
    from robot.sim.fake_rc import RC

    controller = controller_for(twin)
    module = types.ModuleType("jkrc", "Fake JAKA jkrc module backed by the MuJoCo twin (robot/sim/fake_jkrc.py)")
    module.RC = lambda ip: RC(ip, controller)
    module.controller = controller
    module.__file__ = __file__
    return module


