"""The handle returned by the fake ``jkrc.RC(ip)``: JAKA's call names, arguments and tuple returns.

``RC`` holds the calls every SDK generation shares (JAKAZuRobot.h / jkrc.pyi signatures); the generations
differ in robot/sim/fake_rc_versions.py. Each call checks, in the controller's order: link up (-3), logged
in (-1), then for motion e-stop (-5), protective stop (-20), power (-6), enable (-7). Poses cross the SDK
in the active user frame with the active tool. State lives in ``FakeController`` (robot/sim/fake_jkrc.py).
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


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


class RC:
    """One connection to the (fake) controller; subclasses set the SDK generation."""

    SDK_VERSION = "fanvla fake jkrc"

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

    @_call()
    def get_sdk_version(self) -> tuple:
        return (fk.OK, self.SDK_VERSION)

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
            q = c.commanded + q
        elif move_mode != fk.ABS:
            return c._fail(fk.BAD_PARAMETER, f"joint_move: move_mode must be 0 (ABS) or 1 (INCR), got {move_mode}")
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            return c._fail(fk.BAD_PARAMETER, f"joint_move: speed must be positive rad/s, got {speed!r}")
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
        pose = c.numbers_arg(end_pos, 6, "linear_move", "pose values (mm, rad)")
        if isinstance(pose, tuple):
            return pose
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            return c._fail(fk.BAD_PARAMETER, f"linear_move: speed must be positive mm/s, got {speed!r}")
        if move_mode == fk.INCR:
            pose = c.tcp_pose(c.commanded) + pose
        refused = c.start_linear_move(c.to_base_frame(pose), float(speed))
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

    @_call()
    def is_in_servomove(self) -> tuple:
        return (fk.OK, self._c.servo_mode)

    def _servo_joints(self, name: str, joint_pos, move_mode: int, step_num) -> tuple:
        c = self._c
        if not c.servo_mode:
            return c._fail(fk.NOT_SERVO, f"{name}: not in servo mode (servo_move_enable(True) first)")
        q = c.joints_arg(joint_pos, name)
        if isinstance(q, tuple):
            return q
        if not isinstance(step_num, int) or isinstance(step_num, bool) or step_num < 1:
            return c._fail(fk.BAD_PARAMETER, f"{name}: step_num must be an integer >= 1, got {step_num!r}")
        if move_mode == fk.INCR:
            q = c.servo_base() + q
        elif move_mode != fk.ABS:
            return c._fail(fk.BAD_PARAMETER, f"{name}: move_mode must be 0 (ABS) or 1 (INCR), got {move_mode}")
        refused = c.limit_violation(q, name)
        return refused if refused is not None else c.servo_to(q, step_num, name)

    @_call(motion=True)
    def servo_j(self, joint_pos, move_mode: int, step_num: int = 1) -> tuple:
        return self._servo_joints("servo_j", joint_pos, move_mode, step_num)

    @_call(motion=True)
    def servo_j_extend(self, joint_pos, move_mode: int, step_num: int = 1) -> tuple:
        return self._servo_joints("servo_j_extend", joint_pos, move_mode, step_num)

    @_call(motion=True)
    def servo_p(self, cartesian_pose, move_mode: int, step_num: int = 1) -> tuple:
        c = self._c
        if not c.servo_mode:
            return c._fail(fk.NOT_SERVO, "servo_p: not in servo mode (servo_move_enable(True) first)")
        pose = c.numbers_arg(cartesian_pose, 6, "servo_p", "pose values (mm, rad)")
        if isinstance(pose, tuple):
            return pose
        if not isinstance(step_num, int) or step_num < 1:
            return c._fail(fk.BAD_PARAMETER, f"servo_p: step_num must be an integer >= 1, got {step_num!r}")
        if move_mode == fk.INCR:
            pose = c.tcp_pose(c.servo_base()) + pose
        try:
            q = c.kinematics.inverse(c.to_base_frame(pose), c.servo_base())
        except (IKFailedError, ValueError) as error:
            return c._fail(fk.IK_FAILED, f"servo_p: {error}")
        return c.servo_to(q, step_num, "servo_p")

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
        """The controller's joint position: the command (hardware.md: may report the command)."""
        return (fk.OK, _floats(self._c.commanded))

    @_call()
    def get_tcp_position(self) -> tuple:
        return (fk.OK, _floats(self._c.tcp_pose(self._c.commanded)))

    @_call()
    def get_robot_state(self) -> tuple:
        c = self._c
        return (fk.OK, (int(c.estop), int(c.powered), int(c.enabled)))

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
    def set_errorcode_file_path(self, path: str) -> tuple:
        return self._c.set_error_code_file(str(path))

    @_call()
    def get_last_error(self) -> tuple:
        """(0, (code, message)); empty until set_errorcode_file_path was called (JAKAZuRobot.h)."""
        c = self._c
        return (fk.OK, c.last_error if c.error_code_file is not None else (fk.OK, ""))

    @_call()
    def set_network_exception_handle(self, millisecond: float, mnt: int) -> tuple:
        if mnt not in (0, 1, 2) or not millisecond > 0:
            return self._c._fail(fk.BAD_PARAMETER, f"set_network_exception_handle: bad arguments {millisecond}, {mnt}")
        self._c.network_exception = (float(millisecond), int(mnt))
        return (fk.OK,)

    # -- kinematics (with the active tool, in the active user frame) ----------------------------------
    @_call()
    def kine_inverse(self, ref_pos, cartesian_pose) -> tuple:
        c = self._c
        seed = c.joints_arg(ref_pos, "kine_inverse")
        pose = c.numbers_arg(cartesian_pose, 6, "kine_inverse", "pose values (mm, rad)")
        for refused in (seed, pose):
            if isinstance(refused, tuple):
                return refused
        try:
            q = c.kinematics.inverse(c.to_base_frame(pose), seed)
        except (IKFailedError, ValueError) as error:
            return c._fail(fk.IK_FAILED, f"kine_inverse: {error}")
        return (fk.OK, _floats(q))

    @_call()
    def kine_forward(self, joint_pos) -> tuple:
        q = self._c.joints_arg(joint_pos, "kine_forward")
        if isinstance(q, tuple):
            return q
        return (fk.OK, _floats(self._c.tcp_pose(q)))

    # -- IO, tools, frames, payload -------------------------------------------------------------------
    def _output_refused(self, name: str, iotype, index) -> tuple[int] | None:
        if iotype not in fk.IO_TYPES or not isinstance(index, int) or not 0 <= index < fk.IO_OUTPUTS[iotype]:
            count = fk.IO_OUTPUTS.get(iotype)
            what = f"type {iotype} has outputs 0..{count - 1}" if count else "types are 0 cabinet, 1 tool, 2 extend"
            return self._c._fail(fk.BAD_PARAMETER, f"{name}: no output type {iotype} index {index} ({what})")
        return None

    @_call()
    def set_digital_output(self, iotype: int, index: int, value) -> tuple:
        refused = self._output_refused("set_digital_output", iotype, index)
        return refused if refused is not None else self._c.set_output(int(iotype), int(index), bool(value))

    @_call()
    def get_digital_output(self, iotype: int, index: int) -> tuple:
        refused = self._output_refused("get_digital_output", iotype, index)
        return refused if refused is not None else (fk.OK, int(self._c.outputs.get((iotype, index), False)))

    @_call()
    def set_tool_data(self, id: int, tcp, name: str) -> tuple:
        values = np.asarray(tcp, dtype=np.float64).reshape(-1)
        if not 1 <= int(id) <= 10 or values.shape != (6,) or np.any(values[[0, 1, 3, 4, 5]] != 0):
            return self._c._fail(fk.BAD_PARAMETER, "set_tool_data: ids 1..10; this controller model supports "
                                                   f"tools offset along the flange z axis only, got {tcp!r}")
        refused = self._c.refuse_if_locked("set_tool_data")
        if refused is not None:
            return refused
        self._c.tools[int(id)] = _floats(values)
        return (fk.OK,)

    @_call()
    def set_tool_id(self, id: int) -> tuple:
        if int(id) not in self._c.tools:
            return self._c._fail(fk.BAD_PARAMETER, f"set_tool_id: tool {id} is not defined (set_tool_data first)")
        refused = self._c.refuse_if_locked("set_tool_id")
        if refused is not None:
            return refused
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

    @_call()
    def set_user_frame_id(self, id: int) -> tuple:
        if int(id) not in self._c.user_frames:
            return self._c._fail(fk.BAD_PARAMETER, f"set_user_frame_id: user frame {id} is not defined")
        refused = self._c.refuse_if_locked("set_user_frame_id")
        if refused is not None:
            return refused
        self._c.user_frame_id = int(id)
        return (fk.OK,)

    @_call()
    def get_user_frame_id(self) -> tuple:
        return (fk.OK, self._c.user_frame_id)

    @_call()
    def get_user_frame_data(self, id: int) -> tuple:
        if int(id) not in self._c.user_frames:
            return self._c._fail(fk.BAD_PARAMETER, f"get_user_frame_data: user frame {id} is not defined")
        return (fk.OK, self._c.user_frames[int(id)])

    @_call()
    def set_payload(self, mass: float, centroid) -> tuple:
        c = self._c
        centre = c.numbers_arg(centroid, 3, "set_payload", "centre-of-mass coordinates (mm)")
        if isinstance(centre, tuple):
            return centre
        refused = c.refuse_if_locked("set_payload")
        return refused if refused is not None else c.set_payload(float(mass), _floats(centre))

    @_call()
    def get_payload(self) -> tuple:
        return (fk.OK, self._c.payload)
