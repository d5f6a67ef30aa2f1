"""JAKA's SDK return codes: what each means, the typed error it raises here, and what to check.

Source: ``jkerr.h`` of JAKA's SDK (JakaCobot/jaka_robot, jaka_robot_v2.2/src/jaka_planner/include/jaka_planner/
jkerr.h, SDK 2.1.14, 2025-02), which lists every code below; the meanings are paraphrased, the hints are ours.
Also here: reading ``get_last_error``, whose Python return shape JAKA does not document.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from robot import errors

DEPRECATED, OBSOLETE = -9998, -9999

# code -> (error class, meaning, what to check)
CODES: dict[int, tuple[type[errors.ArmError], str, str]] = {
    2: (errors.CallFailedError, "call failed or not supported by this controller",
        "see get_last_error / the controller's log; an older controller may not implement the call"),
    -1: (errors.BadHandleError, "invalid handle (not logged in)",
         "call connect(); check robot.ip and that no other client holds the controller"),
    -2: (errors.BadParameterError, "bad parameter", "check the values passed (units: rad, mm, rad/s, mm/s)"),
    -3: (errors.CommunicationError, "communication error",
         "check the network cable/switch, robot.ip and that the controller is on"),
    -4: (errors.IKFailedError, "inverse kinematics failed", "the pose is out of reach or beyond joint limits"),
    -5: (errors.EStopError, "emergency stop pressed", "release the e-stop, then connect again (power on, enable)"),
    -6: (errors.NotPoweredError, "robot not powered", "power the arm on (cabinet power switch, e-stop released)"),
    -7: (errors.NotEnabledError, "robot not enabled", "enable the arm (connect() does it)"),
    -8: (errors.NotInServoModeError, "not in servo mode", "call start_servo() before streaming"),
    -9: (errors.NotDisabledError, "the robot must be disabled before powering off", "call disable_robot first"),
    -10: (errors.ProgramRunningError, "a program is running", "stop the program on the teach pendant/app"),
    -11: (errors.ControllerFileError, "cannot open the file (missing or unreadable)",
          "check the path (e.g. robot.error_code_file in hardware.yaml)"),
    -12: (errors.AbnormalMotionError, "abnormal motion", "the commanded motion was too fast or discontinuous"),
    -14: (errors.ControllerFileError, "FTP transfer failed", "check the controller's disk and the network"),
    -15: (errors.ValueOversizeError, "message or value too large", "send fewer or smaller values per call"),
    -16: (errors.ForwardKinematicsError, "forward kinematics failed", "check the joint values (rad) passed"),
    -17: (errors.ControllerFileError, "empty folders are not supported", "put a file in the folder first"),
    -20: (errors.ProtectiveStopError, "protective stop (collision)", "clear the obstacle, then call recover()"),
    -21: (errors.EStopError, "emergency stop", "release the e-stop, then connect again"),
    -22: (errors.SoftLimitError, "soft limit", "a target lies beyond robot.joint_limits_deg; move back inside"),
    -30: (errors.ProtocolError, "the command could not be encoded",
          "the SDK and the controller firmware may not match; update one of them"),
    -31: (errors.ProtocolError, "the controller's answer could not be decoded",
          "the SDK and the controller firmware may not match; update one of them"),
    -32: (errors.ProtocolError, "the status stream (port 10004) could not be uncompressed",
          "the SDK and the controller firmware may not match; check the network for packet loss"),
    -40: (errors.MoveError, "linear move failed", "the path leaves the workspace or passes a singularity"),
    -41: (errors.MoveError, "joint move failed", "check the target against the soft limits"),
    -42: (errors.MoveError, "circular move failed", "check the via and end points"),
    -50: (errors.ArmTimeoutError, "blocking move timed out", "the move did not finish in time; is the arm blocked?"),
    -51: (errors.ArmTimeoutError, "power on timed out", "check the cabinet's power and the e-stop"),
    -52: (errors.ArmTimeoutError, "power off timed out", "check the controller's state on the pendant"),
    -53: (errors.ArmTimeoutError, "enable timed out", "check for a servo drive error on the pendant"),
    -54: (errors.ArmTimeoutError, "disable timed out", "check the controller's state on the pendant"),
    -55: (errors.ArmTimeoutError, "setting the user frame timed out", "check the controller's state on the pendant"),
    -56: (errors.ArmTimeoutError, "setting the tool timed out", "check the controller's state on the pendant"),
    -60: (errors.IOTimeoutError, "setting an IO timed out",
          "the tool/cabinet IO did not answer: check the flange connector and the gripper's wiring"),
    -61: (errors.ArmTimeoutError, "operation timed out", "the controller did not answer in time"),
    DEPRECATED: (errors.DeprecatedCallError, "deprecated call",
                 "this SDK version deprecates the call; the driver uses its replacement where there is one"),
    OBSOLETE: (errors.DeprecatedCallError, "obsolete call (no longer available)",
               "this SDK version removed the call; the driver uses its replacement where there is one"),
}


def error_for(code: int) -> tuple[type[errors.ArmError], str, str]:
    """(error class, meaning, hint) for a return code; unknown codes are reported as such."""
    return CODES.get(code, (errors.ArmError, "unknown error code", "see JAKA's SDK manual (jkerr.h)"))


def last_error_detail(ret: Any) -> tuple[int, str] | None:
    """(code, message) from a ``get_last_error()`` answer, or None when it holds no error.

    The C API fills an ``ErrorCode {long code; char message[120]}`` (jktypes.h); the Python binding's shape is
    undocumented, so every plausible one is accepted: ``(0, (code, msg))``, ``(0, [code, msg])``,
    ``(0, code, msg)``, ``(0, {"code": .., "message": ..})``, ``(0, msg)``. Anything else is None.
    """
    if not isinstance(ret, Sequence) or isinstance(ret, str | bytes) or len(ret) < 2 or ret[0] != 0:
        return None
    body: Any = ret[1] if len(ret) == 2 else tuple(ret[1:])
    if isinstance(body, dict):
        body = (body.get("code", 0), body.get("message", body.get("msg", "")))
    if isinstance(body, str | bytes):
        body = (None, body)
    if not isinstance(body, Sequence) or len(body) < 2:
        return None
    code, message = body[0], body[1]
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    message = str(message).strip("\x00 ").strip()
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    if code == 0 or not message:
        return None
    return (code if code is not None else -1), message
