"""The handle returned by the fake ``jkrc.RC(ip)``: JAKA's call names and tuple returns.

Each call checks, in the controller's order: link up (-3), logged in (-1), then for motion e-stop
(-5), protective stop (-20), power (-6), enable (-7). State lives in ``FakeController``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from robot.errors import IKFailedError
from robot.sim import fake_jkrc as fk
from robot.units import deg_to_rad


def _call(motion: bool = False, login: bool = True) -> Callable:
    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(self: RC, *args, **kwargs) -> tuple:
            c, name = self._c, method.__name__.removeprefix("_start_")
            with c.lock:
                if c.connection_lost:
                    return c._fail(fk.COMM_ERROR, f"{name}: no connection to the controller at {self.ip}")
                if login and not self._logged_in:
                    return c._fail(fk.BAD_HANDLE, f"{name}: not logged in (call login first)")
                if motion:
                    refused = c.motion_precondition()
                    if refused is not None:
                        return refused
                return method(self, *args, **kwargs)
        return guarded
    return wrap


class RC:
    """One connection to the (fake) controller."""

    def __init__(self, ip: str, controller: fk.FakeController) -> None:
        self.ip = ip
        self._c = controller
        self._logged_in = False

    # -- session and power --------------------------------------------------------------------------
    @_call(login=False)
    def login(self) -> tuple:
        self._logged_in = True
        return (fk.OK,)

    @_call()
    def logout(self) -> tuple:
        self._logged_in = False
        return (fk.OK,)

    @_call()
    def power_on(self) -> tuple:
        if self._c.estop:
            return self._c._fail(fk.ESTOP, "power_on: emergency stop is pressed; release it first")
        self._c.powered = True
        return (fk.OK,)

    @_call()
    def power_off(self) -> tuple:
        self._c.powered = self._c.enabled = self._c.servo_mode = False
        self._c._hold_here()
        return (fk.OK,)

    @_call()
    def enable_robot(self) -> tuple:
        if self._c.estop:
            return self._c._fail(fk.ESTOP, "enable_robot: emergency stop is pressed")
        if not self._c.powered:
            return self._c._fail(fk.NOT_POWERED, "enable_robot: power the robot on first")
        self._c.enabled = True
        return (fk.OK,)

    @_call()
    def disable_robot(self) -> tuple:
        self._c.enabled = self._c.servo_mode = False
        self._c._hold_here()
        return (fk.OK,)

    # -- point-to-point motion ----------------------------------------------------------------------
    def joint_move(self, joint_pos, move_mode: int, is_block: bool, speed: float) -> tuple:
        result = self._start_joint_move(joint_pos, move_mode, speed)
        return self._finish_move(result, is_block)

    @_call(motion=True)
    def _start_joint_move(self, joint_pos, move_mode: int, speed: float) -> tuple:
        c = self._c
        if c.servo_mode:
            return c._fail(fk.CALL_FAILED, "joint_move: refused in servo mode (servo_move_enable(False) first)")
        q = c.joints_arg(joint_pos, "joint_move")
        if isinstance(q, tuple):
            return q
        if move_mode == fk.INCR:
            q = c.twin.joint_target() + q
        elif move_mode != fk.ABS:
            return c._fail(fk.BAD_PARAMETER, f"joint_move: move_mode must be 0 (ABS) or 1 (INCR), got {move_mode}")
        if not (math.isfinite(speed) and speed > 0):
            return c._fail(fk.BAD_PARAMETER, f"joint_move: speed must be positive rad/s, got {speed}")
        refused = c.limit_violation(q, "joint_move")
        if refused is not None:
            return refused
        c.start_joint_move(q, min(float(speed), fk.CONTROLLER_MAX_JOINT_SPEED_RAD_S))
        return (fk.OK,)

    def linear_move(self, end_pos, move_mode: int, is_block: bool, speed: float) -> tuple:
        return self._finish_move(self._start_linear_move(end_pos, move_mode, speed), is_block)

    @_call(motion=True)
    def _start_linear_move(self, end_pos, move_mode: int, speed: float) -> tuple:
        c = self._c
        if c.servo_mode:
            return c._fail(fk.CALL_FAILED, "linear_move: refused in servo mode (servo_move_enable(False) first)")
        pose = np.asarray(end_pos, dtype=np.float64).reshape(-1)
        if pose.shape != (6,) or not np.all(np.isfinite(pose)) or not speed > 0:
            return c._fail(fk.BAD_PARAMETER, f"linear_move: expected 6 finite pose values and speed > 0, got "
                                             f"{end_pos!r}, {speed!r}")
        if move_mode == fk.INCR:
            pose = c.tcp_pose() + pose
        refused = c.start_linear_move(pose, float(speed))
        return refused if refused is not None else (fk.OK,)

    def _finish_move(self, result: tuple, is_block: bool) -> tuple:
        """A blocking move returns when the arm stops; outside the lock so physics can run."""
        if result[0] != fk.OK or not is_block:
            return result
        self._c.wait_until_still()
        with self._c.lock:
            if self._c.connection_lost:
                return (fk.COMM_ERROR,)
            refused = self._c.motion_precondition()
            if refused is not None:
                return refused
            if self._c.last_error[0] == fk.LINEAR_MOVE_ERROR:
                return (fk.LINEAR_MOVE_ERROR,)
        return result

    @_call()
    def motion_abort(self) -> tuple:
        self._c._hold_here()
        return (fk.OK,)

    @_call()
    def is_in_pos(self) -> tuple:
        return (fk.OK, self._c.in_position())

    # -- servo (streaming) mode ---------------------------------------------------------------------
    @_call()
    def servo_move_enable(self, enable: bool) -> tuple:
        c = self._c
        if enable:
            refused = c.motion_precondition()
            if refused is not None:
                return refused
        c.set_servo_mode(bool(enable))
        return (fk.OK,)

    @_call(motion=True)
    def servo_j(self, joint_pos, move_mode: int, step_num: int = 1) -> tuple:
        c = self._c
        if not c.servo_mode:
            return c._fail(fk.NOT_SERVO, "servo_j: not in servo mode (servo_move_enable(True) first)")
        q = c.joints_arg(joint_pos, "servo_j")
        if isinstance(q, tuple):
            return q
        if move_mode == fk.INCR:
            q = c.servo_base() + q
        if int(step_num) < 1:
            return c._fail(fk.BAD_PARAMETER, f"servo_j: step_num must be >= 1, got {step_num}")
        refused = c.limit_violation(q, "servo_j")
        return refused if refused is not None else c.servo_to(q, int(step_num), "servo_j")

    @_call(motion=True)
    def servo_p(self, cartesian_pose, move_mode: int, step_num: int = 1) -> tuple:
        c = self._c
        if not c.servo_mode:
            return c._fail(fk.NOT_SERVO, "servo_p: not in servo mode (servo_move_enable(True) first)")
        pose = np.asarray(cartesian_pose, dtype=np.float64).reshape(-1)
        if move_mode == fk.INCR:
            pose = c.kinematics.forward(c.servo_base()) + pose
        try:
            q = c.kinematics.inverse(pose, c.servo_base())
        except (IKFailedError, ValueError) as error:
            return c._fail(fk.IK_FAILED, f"servo_p: {error}")
        return c.servo_to(q, max(1, int(step_num)), "servo_p")

    @_call()
    def servo_move_use_none_filter(self) -> tuple:
        if self._c.servo_mode:
            return self._c._fail(fk.CALL_FAILED, "servo filters can only be set outside servo mode")
        return (fk.OK,)

    @_call()
    def servo_move_use_joint_LPF(self, cutoffFreq: float) -> tuple:
        if self._c.servo_mode:
            return self._c._fail(fk.CALL_FAILED, "servo filters can only be set outside servo mode")
        if not cutoffFreq > 0:
            return self._c._fail(fk.BAD_PARAMETER, f"servo_move_use_joint_LPF: cutoff must be > 0 Hz, got {cutoffFreq}")
        return (fk.OK,)

    # -- state ---------------------------------------------------------------------------------------
    @_call()
    def get_joint_position(self) -> tuple:
        return (fk.OK, tuple(float(q) for q in self._c.twin.joint_positions()))

    @_call()
    def get_tcp_position(self) -> tuple:
        return (fk.OK, tuple(float(v) for v in self._c.tcp_pose()))

    @_call()
    def get_robot_state(self) -> tuple:
        c = self._c
        return (fk.OK, (int(c.estop), int(c.powered), int(c.enabled)))

    @_call()
    def get_robot_status(self) -> tuple:
        """Reduced status: (errcode, inpos, powered_on, enabled, rapidrate, protective_stop, emergency_stop,
        tcp_position, joint_position, on_soft_limit, servo_enabled)."""
        c = self._c
        return (fk.OK, (c.last_error[0], int(c.in_position()), int(c.powered), int(c.enabled), 1.0,
                        int(c.twin.collision is not None), int(c.estop), tuple(c.tcp_pose()),
                        tuple(c.twin.joint_positions()), int(self._on_limit()), int(c.servo_mode)))

    @_call()
    def is_in_collision(self) -> tuple:
        return (fk.OK, self._c.twin.collision is not None)

    @_call()
    def collision_recover(self) -> tuple:
        self._c.twin.clear_collision()
        self._c._hold_here()
        return (fk.OK,)

    @_call()
    def set_collision_level(self, level: int) -> tuple:
        if level not in range(6):
            return self._c._fail(fk.BAD_PARAMETER, f"set_collision_level: level must be 0..5, got {level}")
        self._c.collision_level = int(level)
        self._c.twin.set_collision_level(int(level))
        return (fk.OK,)

    @_call()
    def get_collision_level(self) -> tuple:
        return (fk.OK, self._c.collision_level)

    def _on_limit(self) -> bool:
        q, k = self._c.twin.joint_positions(), self._c.kinematics
        margin = deg_to_rad(0.5)
        return bool(np.any((q <= k.lower_rad + margin) | (q >= k.upper_rad - margin)))

    @_call()
    def is_on_limit(self) -> tuple:
        return (fk.OK, self._on_limit())

    @_call()
    def is_in_estop(self) -> tuple:
        return (fk.OK, self._c.estop)

    @_call()
    def clear_error(self) -> tuple:
        self._c.last_error = (fk.OK, "")
        return (fk.OK,)

    @_call()
    def get_last_error(self) -> tuple:
        return (fk.OK, self._c.last_error)

    @_call()
    def set_network_exception_handle(self, millisecond: float, mnt: int) -> tuple:
        if mnt not in (0, 1, 2) or not millisecond > 0:
            return self._c._fail(fk.BAD_PARAMETER, f"set_network_exception_handle: bad arguments {millisecond}, {mnt}")
        self._c.network_exception = (float(millisecond), int(mnt))
        return (fk.OK,)

    # -- kinematics (with the active tool) ------------------------------------------------------------
    @_call()
    def kine_inverse(self, ref_pos, cartesian_pose) -> tuple:
        c = self._c
        try:
            pose, seed = np.asarray(cartesian_pose, dtype=np.float64), np.asarray(ref_pos, dtype=np.float64)
            q = c.kinematics.inverse(pose, seed)
        except (IKFailedError, ValueError) as error:
            return c._fail(fk.IK_FAILED, f"kine_inverse: {error}")
        return (fk.OK, tuple(float(v) for v in q))

    @_call()
    def kine_forward(self, joint_pos) -> tuple:
        q = self._c.joints_arg(joint_pos, "kine_forward")
        if isinstance(q, tuple):
            return q
        return (fk.OK, tuple(float(v) for v in self._c.kinematics.forward(q)))

    # -- IO and tools -----------------------------------------------------------------------------------
    @_call()
    def set_digital_output(self, iotype: int, index: int, value) -> tuple:
        if iotype not in fk.IO_TYPES or not 0 <= int(index) < 64:
            return self._c._fail(fk.BAD_PARAMETER, f"set_digital_output: no output type {iotype} index {index}")
        self._c.set_gripper_output(int(iotype), int(index), bool(value))
        return (fk.OK,)

    @_call()
    def get_digital_output(self, iotype: int, index: int) -> tuple:
        return (fk.OK, int(self._c.outputs.get((int(iotype), int(index)), False)))

    @_call()
    def set_tool_data(self, id: int, tcp, name: str) -> tuple:
        values = np.asarray(tcp, dtype=np.float64).reshape(-1)
        if not 1 <= int(id) <= 10 or values.shape != (6,) or np.any(values[[0, 1, 3, 4, 5]] != 0):
            return self._c._fail(fk.BAD_PARAMETER, "set_tool_data: ids 1..10; this controller model supports "
                                                   f"tools offset along the flange z axis only, got {tcp!r}")
        self._c.tools[int(id)] = tuple(float(v) for v in values)
        return (fk.OK,)

    @_call()
    def set_tool_id(self, id: int) -> tuple:
        if int(id) not in self._c.tools:
            return self._c._fail(fk.BAD_PARAMETER, f"set_tool_id: tool {id} is not defined (set_tool_data first)")
        self._c.use_tool(int(id))
        return (fk.OK,)

    @_call()
    def get_tool_id(self) -> tuple:
        return (fk.OK, self._c.tool_id)

    @_call()
    def get_tool_data(self, id: int) -> tuple:
        if int(id) not in self._c.tools:
            return self._c._fail(fk.BAD_PARAMETER, f"get_tool_data: tool {id} is not defined")
        return (fk.OK, self._c.tools[int(id)])
