"""Finding JAKA's ``jkrc`` bundle, and what the loaded SDK generation can do (detected once at connect).

JAKA's Python SDK changed between generations (JakaCobot/jaka_robot headers; ``jkrc.pyi`` stubs; hardware.md):

- ``servo_j``: older bindings take ``servo_j(pos, mode)`` and set step_num through ``servo_j_extend(pos, mode,
  step_num)``; SDK 2.1.7 and later take ``servo_j(pos, mode, step_num=1)``.
- measured state: newer SDKs have ``get_actual_joint_position`` / ``get_actual_tcp_position``; without them
  ``get_joint_position`` / ``get_tcp_position`` may report the commanded position.
- ``get_robot_state`` is deprecated (JAKAZuRobot.h 2.1.14: use ``get_robot_status_simple``) and may answer
  -9998 / -9999 (jkerr.h); the fallback is ``get_robot_status_simple`` + ``is_in_estop``, else the leading
  fields of ``get_robot_status`` (errcode, inpos, powered_on, enabled, rapidrate, protective_stop,
  emergency_stop: the same seven in every published layout).
"""

from __future__ import annotations

import ctypes
import importlib
import inspect
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from robot import errors
from robot.jaka_codes import DEPRECATED, OBSOLETE

log = logging.getLogger(__name__)

ENV_SDK_PATH = "FANVLA_JKRC_PATH"
ACTUAL_JOINTS, ACTUAL_TCP = "get_actual_joint_position", "get_actual_tcp_position"
COMMAND_JOINTS, COMMAND_TCP = "get_joint_position", "get_tcp_position"
_GONE = (DEPRECATED, OBSOLETE)


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


@dataclass(frozen=True)
class SdkCapabilities:
    """Which calls this driver uses on the loaded SDK; stored with every recording (``to_dict``)."""

    version: str | None
    servo_call: str  # "servo_j" (takes step_num), "servo_j_extend", or "servo_j/2" (no step_num: 125 Hz only)
    joints_call: str
    tcp_call: str
    state_call: str  # "get_robot_state", "get_robot_status_simple" or "get_robot_status"

    @property
    def measured_is_actual(self) -> bool:
        return self.joints_call == ACTUAL_JOINTS

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "measured_state": "actual" if self.measured_is_actual else "possibly the command"}


def sdk_version(rc) -> str | None:
    """``get_sdk_version()`` as text (a string, or a tuple of numbers in some stubs); None when unavailable."""
    try:
        ret = rc.get_sdk_version()
    except Exception as error:  # absent or failing: the version is informative only
        log.debug("get_sdk_version: %s", error)
        return None
    if not isinstance(ret, tuple) or len(ret) < 2 or ret[0] != 0:
        return None
    value = ret[1]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, tuple | list):
        value = ".".join(str(v) for v in value)
    return str(value).strip("\x00 ").strip() or None


def _positional_capacity(method) -> int | None:
    """How many positional arguments ``method`` takes; None when the binding hides its signature."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):  # C extensions without a text signature
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def detect_servo_call(rc, joints: tuple[float, ...], step_num: int) -> str:
    """The call that sends a servo target with ``step_num``; probed outside servo mode when the signature is hidden."""
    capacity = _positional_capacity(rc.servo_j)
    if capacity is None:
        try:  # outside servo mode the controller refuses it (-8); a binding without step_num raises TypeError
            rc.servo_j(joints, 0, 1)
            capacity = 3
        except TypeError:
            capacity = 2
    if capacity >= 3:
        return "servo_j"
    if hasattr(rc, "servo_j_extend"):
        return "servo_j_extend"
    if step_num == 1:
        return "servo_j/2"
    raise errors.ArmSetupError(f"this SDK's servo_j takes no step_num and it has no servo_j_extend, so a servo period "
                               f"of {step_num} x 8 ms cannot be sent: set robot.servo_rate_hz to 125 in hardware.yaml "
                               f"or use SDK 2.1.7 or later", call="servo_j")


def _answers(rc, name: str) -> bool:
    """``rc.name()`` exists and answers 0 (not deprecated, obsolete or unsupported)."""
    method = getattr(rc, name, None)
    if method is None:
        return False
    ret = method()
    code = int(ret[0])
    if code in _GONE or code == 2:
        log.info("jkrc.%s answered %d: not used", name, code)
        return False
    return True


def detect_capabilities(rc, joints: tuple[float, ...], step_num: int) -> SdkCapabilities:
    measured = _answers(rc, ACTUAL_JOINTS) and _answers(rc, ACTUAL_TCP)
    if _answers(rc, "get_robot_state"):
        state_call = "get_robot_state"
    elif hasattr(rc, "get_robot_status_simple"):
        state_call = "get_robot_status_simple"
    else:
        state_call = "get_robot_status"
    return SdkCapabilities(
        version=sdk_version(rc), servo_call=detect_servo_call(rc, joints, step_num),
        joints_call=ACTUAL_JOINTS if measured else COMMAND_JOINTS, tcp_call=ACTUAL_TCP if measured else COMMAND_TCP,
        state_call=state_call)


def describe(capabilities: SdkCapabilities) -> str:
    c = capabilities
    measured = (f"measured state from {c.joints_call} / {c.tcp_call}" if c.measured_is_actual else
                f"no get_actual_* calls: joints and TCP come from {c.joints_call} / {c.tcp_call}, which may report "
                "the commanded position (recorded as such in the store metadata)")
    return f"JAKA SDK {c.version or '(version unknown)'}: servo targets via {c.servo_call}; {measured}; " \
           f"robot state via {c.state_call}"
