"""``JakaArm``: the MiniCobo through JAKA's ``jkrc`` SDK (or the twin's fake of it, same code path).

Every SDK call goes through ``JakaArm.sdk_call``, which maps JAKA's return codes to the typed errors
of robot/errors.py with the call name, the code's meaning and what to check. Streaming runs a
125 Hz servo loop on ``clock.every``: each cycle it moves the commanded joints towards the latest
target so that the target is reached ``reach_in_s`` after it was set, never faster than
``safety.max_joint_speed_deg_s`` per joint nor ``safety.max_tcp_speed_mm_s`` at the TCP, and sends
``servo_j(joints, ABS)``. An error in that loop stops it and is raised by the next call.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType, TracebackType

import numpy as np

from robot import errors
from robot.clock import Clock, PeriodicTask, RealClock
from robot.interfaces import Arm, ArmState
from robot.kinematics import NUM_JOINTS, MiniCoboKinematics
from robot.units import rad_to_deg

log = logging.getLogger(__name__)

ENV_SDK_PATH = "FANVLA_JKRC_PATH"
ABS, INCR = 0, 1  # JAKA move_mode
NETWORK_ACTION_STOP = 2  # set_network_exception_handle: 0 keep moving, 1 pause, 2 stop
TOOL_ID = 1
TOOL_NAME = "fanvla_gripper"

# code -> (error class, meaning, what to check)
_CODES: dict[int, tuple[type[errors.ArmError], str, str]] = {
    2: (errors.CallFailedError, "call failed", "see get_last_error on the controller / the app's log"),
    -1: (errors.BadHandleError, "invalid handle (not logged in)", "call connect(); check robot.ip and that no "
                                                                    "other client holds the controller"),
    -2: (errors.BadParameterError, "bad parameter", "check the values passed (units: rad, mm, rad/s, mm/s)"),
    -3: (errors.CommunicationError, "communication error", "check the network cable/switch, robot.ip and that the "
                                                           "controller is on"),
    -4: (errors.IKFailedError, "inverse kinematics failed", "the pose is out of reach or beyond joint limits"),
    -5: (errors.EStopError, "emergency stop pressed", "release the e-stop, then connect again (power on, enable)"),
    -6: (errors.NotPoweredError, "robot not powered", "power the arm on (cabinet power switch, e-stop released)"),
    -7: (errors.NotEnabledError, "robot not enabled", "enable the arm (connect() does it)"),
    -8: (errors.NotInServoModeError, "not in servo mode", "call start_servo() before streaming"),
    -10: (errors.ProgramRunningError, "a program is running", "stop the program on the teach pendant/app"),
    -12: (errors.AbnormalMotionError, "abnormal motion", "the commanded motion was too fast or discontinuous"),
    -20: (errors.ProtectiveStopError, "protective stop (collision)", "clear the obstacle, then call recover()"),
    -21: (errors.EStopError, "emergency stop", "release the e-stop, then connect again"),
    -22: (errors.SoftLimitError, "soft limit", "a target lies beyond robot.joint_limits_deg; move back inside"),
}


def _error_for(code: int) -> tuple[type[errors.ArmError], str, str]:
    if code in _CODES:
        return _CODES[code]
    if code in (-40, -41, -42):
        return errors.MoveError, "move error", "the linear/joint/circular move could not be planned or executed"
    if -56 <= code <= -50:
        return errors.ArmTimeoutError, "controller timeout", "the controller did not answer in time"
    return errors.ArmError, "unknown error code", "see JAKA's SDK manual"


def load_jkrc(sdk_path: str | None = None) -> ModuleType:
    """Import JAKA's ``jkrc`` from ``$FANVLA_JKRC_PATH`` or ``sdk_path`` (else from sys.path).

    The folder goes on sys.path; ``libjakaAPI.so`` there is preloaded globally, because the dynamic
    loader reads LD_LIBRARY_PATH only at process start (it is still extended for child processes).
    """
    folder = os.environ.get(ENV_SDK_PATH) or sdk_path
    where = f"{ENV_SDK_PATH} / robot.sdk_path"
    if folder:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise errors.SDKNotFoundError(f"JAKA SDK folder {path} (from {where}) does not exist; point it at the "
                                          f"folder holding jkrc.so and libjakaAPI.so")
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(path), os.environ.get("LD_LIBRARY_PATH")]))
        for lib in path.glob("libjakaAPI*.so*"):
            try:
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            except OSError as error:
                raise errors.SDKNotFoundError(f"cannot load {lib}: {error} (wrong architecture? this machine is "
                                              f"{os.uname().machine})") from None
    python = f"CPython {sys.version_info.major}.{sys.version_info.minor} ({sys.executable})"
    try:
        return importlib.import_module("jkrc")
    except ModuleNotFoundError as error:
        if error.name != "jkrc":
            raise
        found = sorted(p.name for p in Path(folder).glob("jkrc*")) if folder else []
        if found:  # e.g. jkrc.cpython-38-x86_64-linux-gnu.so: this Python does not even look at it
            raise errors.SDKNotFoundError(
                f"{folder} holds {found}, none of which this Python can import: jkrc.so is built for one CPython "
                f"version and must match {python}. Get the bundle built for Python "
                f"{sys.version_info.major}.{sys.version_info.minor}.") from None
        raise errors.SDKNotFoundError(
            f"JAKA's jkrc module was not found{f' in {folder}' if folder else ''}. Set {ENV_SDK_PATH} or "
            f"robot.sdk_path in hardware.yaml to the folder holding jkrc.so and libjakaAPI.so (JAKA's Python "
            f"SDK bundle for Linux {os.uname().machine}; it is not on PyPI).") from None
    except ImportError as error:
        found = sorted(p.name for p in Path(folder).glob("jkrc*")) if folder else []
        raise errors.SDKNotFoundError(
            f"jkrc exists but does not import into this Python: {error}. jkrc.so is built for one CPython "
            f"version and must match {python}; files found: {found or 'none'}. Get the bundle built for "
            f"Python {sys.version_info.major}.{sys.version_info.minor}, or run the stack with the Python the "
            f"bundle was built for.") from None


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
        period = config.robot.servo_period_s
        self.servo_period_s = period
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
        cls, meaning, hint = _error_for(code)
        detail = self._controller_detail(rc, code)
        raise cls(f"jkrc.{name} returned {code} ({meaning}){detail}; {hint}", code=code, call=name)

    def _controller_detail(self, rc, code: int) -> str:
        if code in (-1, -3):  # the controller cannot be asked
            return ""
        try:
            with self._sdk_lock:
                ret = rc.get_last_error()
        except Exception:  # the detail is a courtesy; never mask the original error
            return ""
        if ret[0] == 0 and len(ret) > 1 and ret[1] and ret[1][0] != 0:
            return f": controller says {ret[1][1]!r}"
        return ""

    # -- connection -------------------------------------------------------------------------------
    def connect(self) -> None:
        """login -> power_on -> enable, then collision level, network handling, tool frame, no servo filter."""
        if self._rc is not None:
            return
        sdk = self._sdk or load_jkrc(self.config.robot.sdk_path)
        robot = self.config.robot
        self._rc = sdk.RC(robot.ip)
        try:
            self.sdk_call("login")
            self.sdk_call("power_on")
            self.sdk_call("enable_robot")
            self.sdk_call("set_collision_level", robot.collision_level)
            self.sdk_call("set_network_exception_handle", float(robot.network_timeout_ms), NETWORK_ACTION_STOP)
            self.sdk_call("set_tool_data", TOOL_ID, [0.0, 0.0, robot.tcp_offset_mm, 0.0, 0.0, 0.0], TOOL_NAME)
            self.sdk_call("set_tool_id", TOOL_ID)
            self.sdk_call("servo_move_enable", False)  # a client that crashed may have left servo mode on
            self.sdk_call("servo_move_use_none_filter")  # this driver interpolates itself
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
        self._raise_servo_error()
        joints = np.asarray(self.sdk_call("get_joint_position"), dtype=np.float64)
        tcp = np.asarray(self.sdk_call("get_tcp_position"), dtype=np.float64)
        estop, powered, enabled = self.sdk_call("get_robot_state")
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
        here = np.asarray(self.sdk_call("get_joint_position"), dtype=np.float64)
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
            self.sdk_call("servo_j", _joints_tuple(command), ABS, 1)
            with self._target_lock:
                self._commanded = command
                self._commanded_tcp_mm = self._tcp_mm(command)
        except BaseException as error:
            self._servo_error = error
            raise

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
