"""Typed errors of the robot layer. Every message says what happened and what to check."""

from __future__ import annotations


class RobotError(RuntimeError):
    """Base class of every hardware-layer error."""


class SDKNotFoundError(RobotError):
    """JAKA's jkrc module cannot be imported (missing, or built for another Python)."""


class ArmError(RobotError):
    """The arm controller refused or failed a call; ``code`` is the SDK's return code."""

    code: int | None = None

    def __init__(self, message: str, code: int | None = None, call: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.call = call


class CallFailedError(ArmError):
    code = 2


class BadHandleError(ArmError):
    code = -1


class BadParameterError(ArmError):
    code = -2


class CommunicationError(ArmError):
    code = -3


class IKFailedError(ArmError):
    code = -4


class EStopError(ArmError):
    code = -5


class NotPoweredError(ArmError):
    code = -6


class NotEnabledError(ArmError):
    code = -7


class NotInServoModeError(ArmError):
    code = -8


class NotDisabledError(ArmError):
    """-9: the robot must be disabled before it is powered off."""

    code = -9


class ProgramRunningError(ArmError):
    code = -10


class AbnormalMotionError(ArmError):
    code = -12


class ControllerFileError(ArmError):
    """-11, -14, -17: a file on (or for) the controller could not be opened, transferred or found."""


class ValueOversizeError(ArmError):
    """-15: a message or value exceeded what the controller accepts."""

    code = -15


class ForwardKinematicsError(ArmError):
    """-16: kine_forward failed."""

    code = -16


class ProtocolError(ArmError):
    """-30..-32: a command or the controller's status stream could not be encoded, decoded or uncompressed."""


class ProtectiveStopError(ArmError):
    code = -20


class SoftLimitError(ArmError):
    code = -22


class MoveError(ArmError):
    """-40/-41/-42: a linear, joint or circular move failed."""


class ArmTimeoutError(ArmError):
    """-50..-56, -61: the controller timed out."""


class IOTimeoutError(ArmTimeoutError):
    """-60: setting a digital/analog output timed out (e.g. the tool IO board did not answer)."""

    code = -60


class DeprecatedCallError(ArmError):
    """-9998 / -9999: the call is deprecated or obsolete in this SDK version; use its replacement."""


class ArmSetupError(ArmError):
    """The controller's frames, tool or payload are not what hardware.yaml says, and could not be set."""


class CameraError(RobotError):
    """The camera could not be opened or stopped delivering frames."""


class CameraTimeoutError(CameraError):
    """No frame arrived within the configured time (after retries)."""


class SafetyStop(RobotError):
    """The safety layer stopped the arm (software e-stop, watchdog, non-finite command)."""
