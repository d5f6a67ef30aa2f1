"""A stand-in for JAKA's ``jkrc`` SDK module, backed by the twin: the only faked piece of the stack.

``make_jkrc(twin, sdk="2.2")`` returns a module-like object with ``RC(ip)``; its handles have JAKA's call
names, arguments, units (rad, mm, rad/s, mm/s) and tuple returns (``(0,)`` / ``(0, data)`` / ``(code,)``)
for one SDK generation (robot/sim/fake_rc_versions.py). Behind them ``FakeController`` plays the controller.
What it models, and where each behaviour comes from (JakaCobot/jaka_robot: ``jkerr.h``, ``JAKAZuRobot.h``,
``jktypes.h`` of SDK 2.1.7..2.1.14 and of the 2023 headers; ``jkrc.pyi`` stubs of newer SDKs; hardware.md):

- an 8 ms controller cycle (JAKAZuRobot.h: "servo_j movement period for step_num * 8ms"): the twin steps it
  strictly; a ``servo_j`` target is interpolated over ``step_num`` cycles from the previous one. A servo
  stream whose targets run out before the next arrives *starves* the interpolator (the arm stops between
  targets: it stutters), one whose targets arrive before the last one was reached *supersedes* it; both are
  counted in ``controller.servo_stats`` (a driver sending step_num 1 at 62.5 Hz starves every other cycle);
- commanded vs actual joints: the interpolator's output is the *commanded* position; the drives follow it
  ``TRACKING_LAG_CYCLES`` cycles later (the arm's tracking lag: JAKA documents no figure, this one is a
  modelling choice; measure yours with ``fanvla robot latency``); ``get_joint_position`` / ``get_tcp_position``
  report the command, ``get_actual_*`` (newer SDKs) the twin's measured joints;
- user frames, the tool and the payload (JAKAZuRobot.h set_user_frame_id / set_tool_id / set_payload): poses
  come back in the active user frame with the active tool; the pendant may leave another frame active or
  lock the settings (``controller.pendant_select_user_frame``, ``controller.pendant_lock_settings``);
- JAKA's error codes (jkerr.h): not logged in -1; bad parameter -2 (a NaN or badly shaped target leaves the
  arm's target unchanged); communication lost -3 (``controller.drop_connection()``); IK failure -4; e-stop -5
  (``controller.press_estop()``); not powered -6; not enabled -7; servo calls outside servo mode -8; abnormal
  motion -12 (a servo step faster than the controller allows); protective stop -20 (arm or gripper pushed
  into the table or box harder than the collision level; latched until ``collision_recover``); soft limit -22;
  linear move error -40; IO set timeout -60 (``controller.fail_io_sets(n)``); cannot open file -11
  (``set_errorcode_file_path`` to a missing file); moves and filter changes in servo mode 2 (call failed);
- ``get_last_error`` is filled only after ``set_errorcode_file_path`` (JAKAZuRobot.h).
"""

from __future__ import annotations

import math
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fanvla.config import CONTROLLER_CYCLE_S, MINICOBO_PAYLOAD_KG, TOOL_FLANGE_OUTPUTS
from robot.errors import IKFailedError
from robot.frames import apply_pose_delta, pose_delta
from robot.kinematics import NUM_JOINTS, MiniCoboKinematics, matrix_to_pose, pose_to_matrix

OK = 0
CALL_FAILED, BAD_HANDLE, BAD_PARAMETER, COMM_ERROR, IK_FAILED = 2, -1, -2, -3, -4
ESTOP, NOT_POWERED, NOT_ENABLED, NOT_SERVO, CANNOT_OPEN_FILE, ABNORMAL_MOTION = -5, -6, -7, -8, -11, -12
PROTECTIVE_STOP, SOFT_LIMIT, LINEAR_MOVE_ERROR, IO_SET_TIMEOUT = -20, -22, -40, -60
DEPRECATED = -9998
ABS, INCR = 0, 1
CONTROLLER_MAX_JOINT_SPEED_RAD_S = math.pi  # hardware.md: bound used by a public driver
IN_POS_TOLERANCE_RAD = 1e-3
# Drives follow the commanded position this many 8 ms cycles later (a modelling choice, see the module doc).
TRACKING_LAG_CYCLES = 2
IO_TYPES = (0, 1, 2)  # cabinet, tool, extended (jktypes.h IOType)
IO_OUTPUTS = {0: 64, 1: TOOL_FLANGE_OUTPUTS, 2: 64}  # tool: the MiniCobo flange's 2 outputs (hardware.md)
GRIPPER_IO_TYPE = {"cabinet": 0, "tool": 1, "extended": 2}
SETTLE_TIMEOUT_S = 2.0  # a blocking move returns at most this long after its trajectory ends


class ServoCommand(NamedTuple):
    """One accepted servo target: controller time, wall time, joints (rad), step_num."""

    time_s: float
    wall_s: float
    joints: tuple[float, ...]
    step_num: int


@dataclass
class ServoStats:
    """How a servo stream fed the interpolator (reset with ``controller.servo_stats = ServoStats()``)."""

    commands: int = 0
    cycles: int = 0  # cycles run in servo mode
    starved_cycles: int = 0  # the last target was reached, moving, and no new one had come: the arm stalls
    superseded: int = 0  # a target replaced before the interpolator reached it


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
        if abs(twin.cycle_s - CONTROLLER_CYCLE_S) > 1e-12:
            raise ValueError(f"the twin must step the controller every {CONTROLLER_CYCLE_S} s, not {twin.cycle_s}")
        self.twin = twin
        self.lock = twin.lock
        self.config = twin.config
        self.cycle_s = CONTROLLER_CYCLE_S
        self.powered = self.enabled = self.servo_mode = self.estop = False
        self.connection_lost = False
        self.collision_level = twin.config.robot.collision_level
        self.network_exception = (100, 0)
        self.tools: dict[int, tuple[float, ...]] = {0: (0.0,) * 6}  # id 0 = the bare flange
        self.tool_id = 0
        self.user_frames: dict[int, tuple[float, ...]] = {0: (0.0,) * 6}  # id 0 = the base frame
        self.user_frame_id = 0
        self.payload: tuple[float, tuple[float, float, float]] = (0.0, (0.0, 0.0, 0.0))
        self.settings_locked = False
        self.kinematics = self._kinematics_for_tool(0.0)
        self.outputs: dict[tuple[int, int], bool] = {}
        self._io_failures_left = 0
        self.last_error: tuple[int, str] = (OK, "")
        self.error_code_file: str | None = None
        self.servo_log: deque[ServoCommand] = deque(maxlen=50_000)
        self.servo_stats = ServoStats()
        self._trajectory: _Trajectory | None = None
        self.commanded = twin.joint_positions()
        self._drive_queue: deque[np.ndarray] = deque()
        self._servo_from = self._servo_to = self.commanded.copy()
        self._servo_steps_left = 0
        self._servo_steps_total = 1
        self._time_s = 0.0
        self._reset_drives(self.commanded)
        twin.add_cycle_hook(self._on_cycle)
        twin.add_reset_hook(self._on_reset)

    def _kinematics_for_tool(self, offset_mm: float) -> MiniCoboKinematics:
        return MiniCoboKinematics(offset_mm, self.config.robot.joint_limits_rad)

    # -- test hooks (what happens at the robot without the SDK being asked) ------------------------------
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

    def pendant_select_user_frame(self, frame_id: int, pose: tuple[float, ...] | None = None) -> None:
        """Someone defined (``pose``: x, y, z mm, rx, ry, rz rad in the base frame) and selected a user frame."""
        with self.lock:
            if pose is not None:
                self.user_frames[int(frame_id)] = tuple(float(v) for v in pose)
            self.user_frame_id = int(frame_id)

    def pendant_lock_settings(self, locked: bool = True) -> None:
        """Frame, tool and payload changes are refused (call failed), as while a program owns the controller."""
        self.settings_locked = locked

    def fail_io_sets(self, count: int = 1) -> None:
        """The next ``count`` set_digital_output calls time out (-60) and leave the output as it was."""
        self._io_failures_left = int(count)

    # -- the controller's tick (runs at the start of every twin cycle) --------------------------------
    def _on_cycle(self) -> None:
        self._time_s += self.cycle_s
        if self.twin.collision is not None or self.estop:
            self._trajectory = None
        elif self._trajectory is not None:
            self._follow_trajectory()
        elif self.servo_mode:
            self._interpolate_servo()
        self._drive_queue.append(self.commanded.copy())
        self.twin.set_joint_target(self._drive_queue.popleft())

    def _follow_trajectory(self) -> None:
        target = self._trajectory.at(self._time_s)
        if target is None:
            self._fail(LINEAR_MOVE_ERROR, "linear_move: the path left the reachable workspace; motion stopped")
            self._hold_here()
            return
        self.commanded = target
        if self._trajectory.done(self._time_s):
            self._trajectory = None

    def _interpolate_servo(self) -> None:
        stats = self.servo_stats
        stats.cycles += 1
        if self._servo_steps_left == 0:
            stats.starved_cycles += bool(np.any(self._servo_to != self._servo_from))
            return
        self._servo_steps_left -= 1
        done = 1.0 - self._servo_steps_left / self._servo_steps_total
        self.commanded = self._servo_from + (self._servo_to - self._servo_from) * done

    def _on_reset(self) -> None:
        self._trajectory = None
        self.commanded = self.twin.joint_target()
        self._servo_from = self._servo_to = self.commanded.copy()
        self._servo_steps_left = 0
        self._reset_drives(self.commanded)

    def _reset_drives(self, joints: np.ndarray) -> None:
        self._drive_queue = deque(joints.copy() for _ in range(TRACKING_LAG_CYCLES))

    def _hold_here(self) -> None:
        """Stop now: command and drives both hold the measured position."""
        self._trajectory = None
        here = self.twin.joint_positions()
        self.commanded = here.copy()
        self._servo_from = self._servo_to = here.copy()
        self._servo_steps_left = 0
        self._reset_drives(here)
        self.twin.set_joint_target(here)

    def fault(self) -> tuple[int, str]:
        """The controller's own error state (status ``errcode``/``errmsg``), as opposed to a call's answer."""
        if self.estop:
            return ESTOP, "emergency stop"
        if self.twin.collision is not None:
            return PROTECTIVE_STOP, "protective stop (collision)"
        return OK, ""

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

    def numbers_arg(self, values, count: int, name: str, what: str) -> np.ndarray | tuple[int]:
        """``count`` finite numbers, or -2 naming the call (the target stays what it was)."""
        try:
            q = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            return self._fail(BAD_PARAMETER, f"{name}: {what} must be numbers, got {values!r}")
        if q.shape != (count,) or not np.all(np.isfinite(q)):
            return self._fail(BAD_PARAMETER, f"{name}: expected {count} finite {what}, got {values!r}")
        return q

    def joints_arg(self, values, name: str) -> np.ndarray | tuple[int]:
        return self.numbers_arg(values, NUM_JOINTS, name, "joint positions (rad)")

    def limit_violation(self, q: np.ndarray, name: str) -> tuple[int] | None:
        k = self.kinematics
        bad = np.flatnonzero((q < k.lower_rad) | (q > k.upper_rad))
        if bad.size:
            j = int(bad[0])
            return self._fail(SOFT_LIMIT, f"{name}: joint {j + 1} target {q[j]:.4f} rad beyond the soft limit "
                                          f"[{k.lower_rad[j]:.4f}, {k.upper_rad[j]:.4f}]")
        return None

    # -- frames: poses cross the SDK in the active user frame ------------------------------------------
    def to_user_frame(self, base_pose: np.ndarray) -> np.ndarray:
        frame = pose_to_matrix(self.user_frames[self.user_frame_id])
        return matrix_to_pose(np.linalg.inv(frame) @ pose_to_matrix(base_pose))

    def to_base_frame(self, user_pose: np.ndarray) -> np.ndarray:
        return matrix_to_pose(pose_to_matrix(self.user_frames[self.user_frame_id]) @ pose_to_matrix(user_pose))

    def tcp_pose(self, joints: np.ndarray | None = None) -> np.ndarray:
        """TCP pose of ``joints`` (default: the measured ones) in the active user frame, with the active tool."""
        return self.to_user_frame(self.kinematics.forward(self.twin.joint_positions() if joints is None else joints))

    # -- motion ---------------------------------------------------------------------------------------
    def start_joint_move(self, goal: np.ndarray, speed_rad_s: float) -> None:
        start = self.commanded.copy()
        span = float(np.max(np.abs(goal - start)))
        duration = 1.5 * span / max(speed_rad_s, 1e-6)
        self._trajectory = _Trajectory(lambda s: start + (goal - start) * _smooth(s), duration, self._time_s)

    def start_linear_move(self, goal_pose: np.ndarray, speed_mm_s: float) -> tuple[int] | None:
        """``goal_pose`` in the base frame."""
        k = self.kinematics
        seed = self.commanded.copy()
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
        """Block the caller until the move ends and the drives have caught up (advances simulated time)."""
        clock = self.twin.clock
        while self._trajectory is not None and not self.connection_lost:
            clock.sleep(self.cycle_s)
        deadline = clock.now_s() + SETTLE_TIMEOUT_S
        while not self._settled() and not self.connection_lost and clock.now_s() < deadline:
            clock.sleep(self.cycle_s)

    def _settled(self) -> bool:
        if self.twin.collision is not None or self.estop:
            return True
        error = np.max(np.abs(self.twin.joint_positions() - self.commanded))
        return error < IN_POS_TOLERANCE_RAD

    def servo_to(self, q: np.ndarray, step_num: int, name: str) -> tuple[int]:
        """Accept a servo target reached in ``step_num`` cycles from the current command."""
        step = float(np.max(np.abs(q - self._servo_to)))
        allowed = CONTROLLER_MAX_JOINT_SPEED_RAD_S * self.cycle_s * step_num
        if step > allowed:
            return self._fail(ABNORMAL_MOTION, f"{name}: a step of {step:.4f} rad in {step_num} cycle(s) exceeds the "
                                               f"controller's joint speed limit ({allowed:.4f} rad)")
        self.servo_stats.superseded += self._servo_steps_left > 0
        self.servo_stats.commands += 1
        self._servo_from, self._servo_to = self.commanded.copy(), q.copy()
        self._servo_steps_left = self._servo_steps_total = step_num
        self.servo_log.append(ServoCommand(self._time_s, time.monotonic(), tuple(float(v) for v in q), step_num))
        return (OK,)

    def servo_base(self) -> np.ndarray:
        return self._servo_to

    def set_servo_mode(self, on: bool) -> None:
        self.servo_mode = on
        self._hold_here()

    def in_position(self) -> bool:
        return self._trajectory is None and self._servo_steps_left == 0 and self._settled()

    # -- IO, tools, frames, payload ---------------------------------------------------------------------
    def set_output(self, io_type: int, index: int, level: bool) -> tuple[int]:
        if self._io_failures_left > 0:
            self._io_failures_left -= 1
            return self._fail(IO_SET_TIMEOUT, f"set_digital_output: output {index} (type {io_type}) did not answer "
                                              "in time (IO set timeout)")
        self.outputs[(io_type, index)] = level
        gripper = self.config.gripper
        if io_type == GRIPPER_IO_TYPE[gripper.io_type] and index == gripper.io_index:
            self.twin.set_gripper_open(level != gripper.close_level)
        return (OK,)

    def use_tool(self, tool_id: int) -> None:
        self.tool_id = tool_id
        self.kinematics = self._kinematics_for_tool(self.tools[tool_id][2])

    def refuse_if_locked(self, name: str) -> tuple[int] | None:
        if self.settings_locked:
            return self._fail(CALL_FAILED, f"{name}: the settings are locked by the pendant (a program owns the "
                                           "controller)")
        return None

    def set_payload(self, mass_kg: float, centroid_mm: tuple[float, float, float]) -> tuple[int]:
        if not (math.isfinite(mass_kg) and 0.0 <= mass_kg <= MINICOBO_PAYLOAD_KG):
            return self._fail(BAD_PARAMETER, f"set_payload: mass {mass_kg} kg outside 0..{MINICOBO_PAYLOAD_KG} kg")
        self.payload = (float(mass_kg), centroid_mm)
        return (OK,)

    def set_error_code_file(self, path: str) -> tuple[int]:
        if not Path(path).is_file():
            return self._fail(CANNOT_OPEN_FILE, f"set_errorcode_file_path: cannot open {path}")
        self.error_code_file = str(path)
        return (OK,)


def controller_for(twin) -> FakeController:
    """The one controller of a twin (every ``make_jkrc(twin)`` module talks to the same one)."""
    with twin.lock:
        controller = getattr(twin, "_fake_controller", None)
        if controller is None:
            controller = FakeController(twin)
            twin._fake_controller = controller  # lives and dies with the twin
    return controller


def make_jkrc(twin, sdk: str = "2.2") -> types.ModuleType:
    """A module object usable as ``jkrc`` of SDK generation ``sdk`` (robot/sim/fake_rc_versions.py):
    ``make_jkrc(twin).RC(ip)``; ``.controller`` holds the test hooks."""
    from robot.sim.fake_rc_versions import rc_class

    handle_class = rc_class(sdk)
    controller = controller_for(twin)
    module = types.ModuleType("jkrc", f"Fake JAKA jkrc module ({handle_class.SDK_VERSION}) backed by the MuJoCo twin "
                                      "(robot/sim/fake_jkrc.py)")
    module.RC = lambda ip: handle_class(ip, controller)
    module.controller = controller
    module.__file__ = __file__
    return module
