"""``JakaArm``: the MiniCobo through JAKA's ``jkrc`` SDK (or the twin's fake of it, same code path).

Every SDK call goes through ``JakaArm.sdk_call``, which maps JAKA's return codes to the typed errors
of robot/errors.py with the call name, the code's meaning and what to check (robot/jaka_codes.py).
At connect the driver detects what the SDK generation offers (robot/jaka_sdk.py), sets the base user
frame, the tool and the payload (or refuses, saying what the pendant has active).

Streaming runs a servo loop every ``robot.servo_rate_hz`` (125 / n Hz) on ``clock.every``: each period
it moves the commanded joints towards the latest target so that the target is reached ``reach_in_s``
after it was set, never faster than ``safety.max_joint_speed_deg_s`` per joint nor
``safety.max_tcp_speed_mm_s`` at the TCP, and sends ``servo_j(joints, ABS, step_num)`` with
``step_num = period / 8 ms``: the controller interpolates each target over that many of its 8 ms
cycles (JAKAZuRobot.h), so the arm moves without a pause between targets. An error in that loop
stops it and is raised by the next call.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType, TracebackType

import numpy as np

from robot import errors
from robot.clock import Clock, PeriodicTask, RealClock
from robot.interfaces import Arm, ArmState
from robot.jaka_codes import DEPRECATED, OBSOLETE, error_for, last_error_detail
from robot.jaka_sdk import ENV_SDK_PATH, SdkCapabilities, describe, detect_capabilities, load_jkrc
from robot.jaka_setup import BASE_USER_FRAME, TOOL_ID, set_error_code_file, set_frames_tool_payload
from robot.kinematics import NUM_JOINTS, MiniCoboKinematics
from robot.units import rad_to_deg

log = logging.getLogger(__name__)

__all__ = ["ENV_SDK_PATH", "JakaArm", "load_jkrc"]

ABS, INCR = 0, 1  # JAKA move_mode
NETWORK_ACTION_STOP = 2  # set_network_exception_handle: 0 keep moving, 1 pause, 2 stop
_NO_DETAIL_CODES = (-1, -3, DEPRECATED, OBSOLETE)  # the controller cannot (or need not) be asked why


class JakaArm(Arm):
    """The MiniCobo arm over ``jkrc``; pass ``sdk=make_jkrc(twin)`` and ``clock=twin.clock`` for the twin."""

    def __init__(self, config, sdk: ModuleType | None = None, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or RealClock()
        self.kinematics = MiniCoboKinematics.from_config(config)  # local FK for the TCP speed limit only
        self._sdk = sdk
        self._rc = None
        self._sdk_lock = threading.RLock()
        self._target_lock = threading.Lock()
        self._servo_task: PeriodicTask | None = None
        self._servo_error: BaseException | None = None
        self.capabilities: SdkCapabilities | None = None
        period = config.robot.servo_period_s
        self.servo_period_s = period
        self.step_num = config.robot.servo_step_num  # 8 ms controller cycles per servo period
        self.max_joint_step_rad = config.safety.max_joint_speed_rad_s * period
        self.max_tcp_step_mm = config.safety.max_tcp_speed_mm_s * period
        self._commanded = np.zeros(NUM_JOINTS)
        self._commanded_tcp_mm = np.zeros(3)
        self._goal = np.zeros(NUM_JOINTS)
        self._deadline_s = 0.0

    # -- SDK calls --------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._rc is not None

    def sdk_call(self, name: str, *args):
        """Call ``rc.<name>(*args)``; return its data (``ret[1]``) or raise the typed error for its code."""
        rc = self._rc
        if rc is None:
            raise errors.BadHandleError(f"jkrc.{name}: the arm is not connected; call connect() first", call=name)
        method = getattr(rc, name, None)
        if method is None:
            raise errors.CallFailedError(f"jkrc has no call {name!r}: the SDK version differs from the one this "
                                         f"driver was written for", call=name)
        with self._sdk_lock:
            ret = method(*args)
        code = int(ret[0])
        if code == 0:
            return ret[1] if len(ret) > 1 else None
        cls, meaning, hint = error_for(code)
        detail = self._controller_detail(rc, code)
        raise cls(f"jkrc.{name} returned {code} ({meaning}){detail}; {hint}", code=code, call=name)

    def _controller_detail(self, rc, code: int) -> str:
        if code in _NO_DETAIL_CODES:
            return ""
        try:  # the detail is a courtesy: whatever the SDK answers, never mask the original error
            with self._sdk_lock:
                detail = last_error_detail(rc.get_last_error())
        except Exception as error:
            log.debug("get_last_error: %s", error)
            return ""
        return f": controller says {detail[1]!r}" if detail else ""

    # -- connection -------------------------------------------------------------------------------
    def connect(self) -> None:
        """login -> power on -> enable; error-code file, collision level, network handling; base user frame,
        tool and payload (verified); servo mode off without filter; then detect what the SDK offers."""
        if self._rc is not None:
            return
        sdk = self._sdk or load_jkrc(self.config.robot.sdk_path)
        robot = self.config.robot
        self._rc = sdk.RC(robot.ip)
        try:
            self.sdk_call("login")
            self.sdk_call("power_on")
            self.sdk_call("enable_robot")
            set_error_code_file(self)
            self.sdk_call("set_collision_level", robot.collision_level)
            self.sdk_call("set_network_exception_handle", float(robot.network_timeout_ms), NETWORK_ACTION_STOP)
            set_frames_tool_payload(self)
            self.sdk_call("servo_move_enable", False)  # a client that crashed may have left servo mode on
            self.sdk_call("servo_move_use_none_filter")  # this driver interpolates itself
            here = _joints_tuple(self.sdk_call("get_joint_position"))
            with self._sdk_lock:
                self.capabilities = detect_capabilities(self._rc, here, self.step_num)
            (log.info if self.capabilities.measured_is_actual else log.warning)("%s", describe(self.capabilities))
            if self.sdk_call("is_in_collision"):  # stay connected so that recover() can be called
                log.warning("the arm is in a protective stop: clear the obstacle, then call JakaArm.recover()")
        except BaseException:
            self._release(quiet=True)
            raise

    def disconnect(self) -> None:
        """Leave servo mode, abort motion, log out; raises the first failure after trying every step."""
        failures = self._release(quiet=False)
        if failures:
            raise failures[0]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.disconnect()
            return
        self._release(quiet=True)  # never raise over the original exception (KeyboardInterrupt included)

    def _release(self, quiet: bool) -> list[BaseException]:
        failures: list[BaseException] = []
        self._stop_servo_task(failures)
        if self._rc is not None:
            for call, args in (("servo_move_enable", (False,)), ("motion_abort", ()), ("logout", ())):
                try:
                    self.sdk_call(call, *args)
                except Exception as error:
                    failures.append(error)
        self._rc = None
        level = logging.WARNING if quiet else logging.DEBUG  # when not quiet the caller raises the first one
        for failure in failures:
            log.log(level, "JakaArm cleanup: %s", failure)
        return failures

    def recover(self) -> None:
        """Clear a protective stop (after the obstacle is gone) and the controller's error."""
        self.sdk_call("collision_recover")
        self.sdk_call("clear_error")

    # -- state and kinematics ---------------------------------------------------------------------
    def state(self) -> ArmState:
        """Measured joints and TCP (``get_actual_*`` where the SDK has them: see ``capabilities``) and problems."""
        self._raise_servo_error()
        caps = self._require_capabilities()
        joints = np.asarray(self.sdk_call(caps.joints_call), dtype=np.float64)
        tcp = np.asarray(self.sdk_call(caps.tcp_call), dtype=np.float64)
        estop, powered, enabled = self._robot_flags(caps.state_call)
        problems = []
        if estop:
            problems.append("emergency stop pressed")
        if self.sdk_call("is_in_collision"):
            problems.append("protective stop (collision)")
        if not powered:
            problems.append("not powered")
        elif not enabled:
            problems.append("not enabled")
        return ArmState(joints, tcp, self.clock.now_s(), self.is_servoing, "; ".join(problems) or None)

    def _require_capabilities(self) -> SdkCapabilities:
        if self.capabilities is None:
            raise errors.BadHandleError("the arm is not connected; call connect() first", call="state")
        return self.capabilities

    def _robot_flags(self, call: str) -> tuple[bool, bool, bool]:
        """(e-stop, powered, enabled) from the call the SDK supports (robot/jaka_sdk.py)."""
        if call == "get_robot_state":
            estop, powered, enabled = self.sdk_call(call)
        elif call == "get_robot_status_simple":
            status = self.sdk_call(call)  # errcode, errmsg, powered_on, enabled (jktypes.h RobotStatus_simple)
            estop, powered, enabled = self.sdk_call("is_in_estop"), status[2], status[3]
        else:
            status = self.sdk_call(call)  # errcode, inpos, powered_on, enabled, rapidrate, protective_stop, e-stop
            estop, powered, enabled = status[6], status[2], status[3]
        return bool(estop), bool(powered), bool(enabled)

    def sdk_info(self) -> dict:
        """What the store's metadata records about the controller link (SDK version, calls used, frames)."""
        caps = self._require_capabilities()
        robot = self.config.robot
        return {**caps.to_dict(), "step_num": self.step_num, "servo_period_s": self.servo_period_s,
                "user_frame_id": BASE_USER_FRAME, "tool_id": TOOL_ID, "tcp_offset_mm": robot.tcp_offset_mm,
                "payload_kg": robot.payload_kg, "payload_com_mm": list(robot.payload_com_mm)}

    def forward_kinematics(self, joints_rad: np.ndarray) -> np.ndarray:
        return np.asarray(self.sdk_call("kine_forward", _joints_tuple(joints_rad)), dtype=np.float64)

    def inverse_kinematics(self, tcp_pose: np.ndarray, seed_joints_rad: np.ndarray) -> np.ndarray:
        pose = np.asarray(tcp_pose, dtype=np.float64)
        if pose.shape != (6,) or not np.all(np.isfinite(pose)):
            raise errors.BadParameterError(f"TCP pose must be 6 finite numbers [mm, rad], got {tcp_pose}")
        try:
            result = self.sdk_call("kine_inverse", _joints_tuple(seed_joints_rad), tuple(float(v) for v in pose))
        except errors.IKFailedError as error:
            raise errors.IKFailedError(f"no joint solution for TCP pose {np.round(pose, 3).tolist()} "
                                       f"(mm, rad): {error}", call="kine_inverse") from None
        return np.asarray(result, dtype=np.float64)

    # -- blocking moves ---------------------------------------------------------------------------
    def move_joints(self, joints_rad: np.ndarray, speed_rad_s: float) -> None:
        self._raise_servo_error()
        if self.is_servoing:
            raise errors.CallFailedError("move_joints needs the arm out of servo mode: call stop_servo() first",
                                         call="joint_move")
        joints = self._checked_joints(joints_rad)
        speed = min(float(speed_rad_s), self.config.safety.max_joint_speed_rad_s)
        if not speed > 0:
            raise errors.BadParameterError(f"speed_rad_s must be positive, got {speed_rad_s}", call="joint_move")
        self.sdk_call("joint_move", _joints_tuple(joints), ABS, True, speed)

    def move_home(self, speed_rad_s: float | None = None) -> None:
        home = np.asarray(self.config.robot.home_joints_rad)
        self.move_joints(home, speed_rad_s or self.config.robot.home_speed_rad_s)

    def _checked_joints(self, joints_rad) -> np.ndarray:
        joints = np.asarray(joints_rad, dtype=np.float64)
        if joints.shape != (NUM_JOINTS,) or not np.all(np.isfinite(joints)):
            raise errors.BadParameterError(f"joint target must be {NUM_JOINTS} finite angles in rad, got {joints_rad}")
        k = self.kinematics
        outside = np.flatnonzero((joints < k.lower_rad) | (joints > k.upper_rad))
        if outside.size:
            j = int(outside[0])
            limits = self.config.robot.joint_limits_deg[j]
            raise errors.SoftLimitError(f"joint {j + 1} target {rad_to_deg(joints[j]):.1f} deg lies outside "
                                        f"robot.joint_limits_deg {limits}", call="servo_j")
        return joints

    # -- streaming ----------------------------------------------------------------------------------
    @property
    def is_servoing(self) -> bool:
        return self._servo_task is not None and self._servo_task.running

    def start_servo(self) -> None:
        self._raise_servo_error()
        if self.is_servoing:
            return
        self._stop_servo_task([])
        here = np.asarray(self.sdk_call(self._require_capabilities().joints_call), dtype=np.float64)
        self.sdk_call("servo_move_enable", True)
        with self._target_lock:
            self._commanded, self._goal = here.copy(), here.copy()
            self._commanded_tcp_mm = self.kinematics.tcp_matrix(here)[:3, 3]
            self._deadline_s = self.clock.now_s()
        self._servo_task = self.clock.every(self.servo_period_s, self._servo_tick, "jaka-servo")

    def servo_joints(self, joints_rad: np.ndarray, reach_in_s: float) -> None:
        self._require_servo()
        joints = self._checked_joints(joints_rad)
        with self._target_lock:
            self._goal = joints
            self._deadline_s = self.clock.now_s() + max(0.0, float(reach_in_s))

    def servo_tcp(self, tcp_pose: np.ndarray, reach_in_s: float) -> None:
        self._require_servo()
        with self._target_lock:
            seed = self._goal.copy()
        self.servo_joints(self.inverse_kinematics(tcp_pose, seed), reach_in_s)

    def hold(self) -> None:
        self._require_servo()
        with self._target_lock:
            self._goal = self._commanded.copy()
            self._deadline_s = self.clock.now_s()

    def stop_servo(self) -> None:
        failures: list[BaseException] = []
        self._stop_servo_task(failures)
        self.sdk_call("servo_move_enable", False)
        self._raise_servo_error()

    def abort(self) -> None:
        """Stop streaming and all motion now; tries every step and logs (never raises) what failed."""
        failures: list[BaseException] = []
        self._stop_servo_task(failures)
        for call, args in (("motion_abort", ()), ("servo_move_enable", (False,))):
            try:
                self.sdk_call(call, *args)
            except Exception as error:
                failures.append(error)
        for failure in failures:
            log.error("JakaArm.abort: %s", failure)

    def _require_servo(self) -> None:
        self._raise_servo_error()
        if not self.is_servoing:
            raise errors.NotInServoModeError("the servo loop is not running: call start_servo() first", call="servo_j")

    def _raise_servo_error(self) -> None:
        error, self._servo_error = self._servo_error, None
        if error is not None:
            self._stop_servo_task([])
            raise error

    def _stop_servo_task(self, failures: list[BaseException]) -> None:
        task, self._servo_task = self._servo_task, None
        if task is not None:
            try:
                task.stop()
            except BaseException as error:  # the loop's own error; kept in _servo_error as well
                if error is not self._servo_error:
                    failures.append(error)

    def _servo_tick(self) -> None:
        try:
            with self._target_lock:
                command = self._next_command(self.clock.now_s())
            self._send_servo_target(command)
            with self._target_lock:
                self._commanded = command
                self._commanded_tcp_mm = self._tcp_mm(command)
        except BaseException as error:
            self._servo_error = error
            raise

    def _send_servo_target(self, joints: np.ndarray) -> None:
        """One target reached over ``step_num`` 8 ms controller cycles, i.e. by the next servo period."""
        call = self.capabilities.servo_call
        if call == "servo_j/2":  # an old binding without step_num; only valid at 125 Hz (step_num 1)
            self.sdk_call("servo_j", _joints_tuple(joints), ABS)
        else:
            self.sdk_call(call, _joints_tuple(joints), ABS, self.step_num)

    def _tcp_mm(self, joints: np.ndarray) -> np.ndarray:
        return self.kinematics.tcp_matrix(joints)[:3, 3]

    def _next_command(self, now_s: float) -> np.ndarray:
        """One servo step towards the goal: on time for the deadline, within the joint and TCP speed limits."""
        delta = self._goal - self._commanded
        remaining_s = self._deadline_s - now_s
        if remaining_s > self.servo_period_s:
            delta = delta * (self.servo_period_s / remaining_s)
        largest = float(np.max(np.abs(delta)))
        if largest > self.max_joint_step_rad:
            delta = delta * (self.max_joint_step_rad / largest)
        # The TCP moves nearly linearly in the joint step; rescale until the step's TCP travel fits.
        for _ in range(3):
            travel = float(np.linalg.norm(self._tcp_mm(self._commanded + delta) - self._commanded_tcp_mm))
            if travel <= self.max_tcp_step_mm:
                break
            delta = delta * (0.98 * self.max_tcp_step_mm / travel)
        return self._commanded + delta


def _joints_tuple(joints_rad) -> tuple[float, ...]:
    joints = np.asarray(joints_rad, dtype=np.float64)
    if joints.shape != (NUM_JOINTS,) or not np.all(np.isfinite(joints)):
        raise errors.BadParameterError(f"expected {NUM_JOINTS} finite joint angles in rad, got {joints_rad}")
    return tuple(float(q) for q in joints)
