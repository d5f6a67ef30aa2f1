"""Connect-time set-up of the JAKA controller: error-code file, base user frame, tool and payload.

Poses from ``get_tcp_position`` and the controller's kinematics are in the active user frame with the active
tool (JAKAZuRobot.h: set_user_frame_id / set_tool_id / set_payload), and a pendant may leave any of them
active. Each is set, read back and compared; what cannot be set *and* differs is refused with a message
saying what the controller has active, since the safety layer assumes the base frame and our tool.
"""

from __future__ import annotations

import logging

import numpy as np

from robot import errors

log = logging.getLogger(__name__)

BASE_USER_FRAME = 0
TOOL_ID = 1
TOOL_NAME = "fanvla_gripper"


def set_error_code_file(arm) -> None:
    """``set_errorcode_file_path(robot.error_code_file)``, so that get_last_error carries the controller's text."""
    path = arm.config.robot.error_code_file
    if path is None:
        log.info("robot.error_code_file is not set: errors carry this driver's descriptions, not the "
                 "controller's messages (get_last_error is filled only after set_errorcode_file_path)")
        return
    try:
        arm.sdk_call("set_errorcode_file_path", str(path))
    except errors.ArmError as error:
        raise errors.ArmSetupError(f"robot.error_code_file = {path!r} in hardware.yaml: {error}",
                                   code=error.code, call=error.call) from None


def set_frames_tool_payload(arm) -> None:
    """Base user frame, our tool, the payload: set each, read it back, refuse what does not match."""
    robot = arm.config.robot
    tool = [0.0, 0.0, robot.tcp_offset_mm, 0.0, 0.0, 0.0]
    com = tuple(float(v) for v in robot.payload_com_mm)
    _set_and_verify(
        arm, "user frame", [("set_user_frame_id", (BASE_USER_FRAME,))], "get_user_frame_id",
        lambda active: int(active) == BASE_USER_FRAME,
        lambda active: f"user frame {active} is active on the controller (the pendant's selection): poses would "
                       f"come back in that frame while the safety box (safety.workspace_mm) is in the base frame. "
                       f"Select the base frame ({BASE_USER_FRAME}) on the pendant")
    _set_and_verify(
        arm, "tool", [("set_tool_data", (TOOL_ID, tool, TOOL_NAME)), ("set_tool_id", (TOOL_ID,))], "get_tool_id",
        lambda active: int(active) == TOOL_ID and _tool_offset_matches(arm, tool),
        lambda active: f"tool {active} is active on the controller, not tool {TOOL_ID} with "
                       f"robot.tcp_offset_mm = {robot.tcp_offset_mm}: the TCP would not be the fingertips. "
                       f"Select tool {TOOL_ID} on the pendant or stop the program that owns the controller")
    _set_and_verify(
        arm, "payload", [("set_payload", (float(robot.payload_kg), com))], "get_payload",
        lambda active: _payload_matches(active, robot.payload_kg, com),
        lambda active: f"the controller's payload is {active} (kg, centre of mass mm), hardware.yaml says "
                       f"{robot.payload_kg} kg at {list(com)} mm (robot.payload_kg / payload_com_mm): collision "
                       f"detection would misjudge the arm's load. Set it on the pendant or fix hardware.yaml")


def _tool_offset_matches(arm, tool: list[float]) -> bool:
    try:
        data = arm.sdk_call("get_tool_data", TOOL_ID)
    except errors.CallFailedError:  # an SDK without get_tool_data: the id check is what we have
        return True
    return bool(np.allclose(np.asarray(data, dtype=np.float64), tool, atol=1e-3))


def _set_and_verify(arm, what: str, setters, reader: str, matches, problem) -> None:
    refused: errors.ArmError | None = None
    for call, args in setters:
        try:
            arm.sdk_call(call, *args)
        except (errors.CommunicationError, errors.BadHandleError):
            raise
        except errors.ArmError as error:
            refused = error
            break
    try:
        active = arm.sdk_call(reader)
    except errors.CallFailedError:
        if refused is not None:
            raise errors.ArmSetupError(f"cannot set the {what}: {refused}", code=refused.code,
                                       call=refused.call) from None
        log.info("this SDK cannot read the %s back (%s missing); set without verification", what, reader)
        return
    if not matches(active):
        why = f" ({refused})" if refused is not None else ""
        raise errors.ArmSetupError(f"{problem(active)}{why}", call=reader)
    if refused is not None:
        log.warning("setting the %s was refused (%s) but the controller already has it as configured", what,
                    refused)


def _payload_matches(active, mass_kg: float, com_mm: tuple[float, ...]) -> bool:
    """``get_payload`` answers (mass kg, (x, y, z) mm) (jktypes.h PayLoad)."""
    try:
        mass, centre = active
        return abs(float(mass) - mass_kg) < 1e-3 and bool(np.allclose(np.asarray(centre, dtype=float), com_mm,
                                                                           atol=0.5))
    except (TypeError, ValueError):
        return False
