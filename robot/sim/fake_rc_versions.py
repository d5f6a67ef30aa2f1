"""The SDK generations the fake ``jkrc`` can play, and their ``get_robot_status`` layouts.

From JAKA's public headers and stubs (JakaCobot/jaka_robot; ``jkrc.pyi`` stubs of newer SDKs):

- ``legacy``: Python bindings before SDK 2.1.7 (the 2023 headers, commit 78546d9 "ROS supporting for
  JAKArobot"): ``servo_j(pos, mode)`` without step_num, ``servo_j_extend(pos, mode, step_num)`` for it; no
  ``get_actual_*``; ``get_robot_status`` with the 24 fields of that ``RobotStatus`` struct.
- ``2.1``: SDK 2.1.7..2.1.14 (jaka_robot_v2.2 headers): ``servo_j(pos, mode, step_num=1)``;
  ``get_robot_state`` still answers (the header marks it deprecated in favour of ``get_robot_status_simple``);
  ``get_robot_status`` with the 28 fields of that struct (tool IO, tio_key, Io_group slaves added).
- ``2.2``: newer SDKs (``jkrc.pyi`` stubs): adds ``get_actual_joint_position`` / ``get_actual_tcp_position``;
  the deprecated ``get_robot_state`` answers -9998 (jkerr.h ERR_DEPRECATE).

Array fields follow the C structs' convention: element 0 is the number of valid signals. Counts the headers do
not give for the MiniCobo (cabinet IO) are 0 here, except the outputs the fake implements.
"""

from __future__ import annotations

from robot.sim import fake_jkrc as fk
from robot.sim.fake_rc import RC, _call, _floats

LEGACY_STATUS_FIELDS = (
    "errcode", "inpos", "powered_on", "enabled", "rapidrate", "protective_stop", "emergency_stop", "dout",
    "tio_dout", "extio", "din", "tio_din", "ain", "tio_ain", "aout", "current_tool_id", "cartesiantran_position",
    "joint_position", "on_soft_limit", "current_user_id", "drag_status", "robot_monitor_data",
    "torq_sensor_monitor_data", "is_socket_connect",
)
STATUS_FIELDS = (
    "errcode", "inpos", "powered_on", "enabled", "rapidrate", "protective_stop", "emergency_stop", "dout", "din",
    "ain", "aout", "tio_dout", "tio_din", "tio_ain", "tio_key", "extio", "modbus_slave", "profinet_slave",
    "eip_slave", "current_tool_id", "cartesiantran_position", "joint_position", "on_soft_limit", "current_user_id",
    "drag_status", "robot_monitor_data", "torq_sensor_monitor_data", "is_socket_connect",
)
_EMPTY_IO_GROUP = ((0,), (0,), (0,), (0,))  # din, dout, ain, aout


def _signals(controller: fk.FakeController, io_type: int) -> tuple:
    count = fk.IO_OUTPUTS[io_type]
    return (count, *(int(controller.outputs.get((io_type, i), False)) for i in range(count)))


def status_values(rc: RC) -> dict[str, object]:
    """Every field either layout reports, by its header name."""
    c = rc._c
    velocities = c.twin.joint_velocities()
    joint_monitor = tuple((0.0, 0.0, 0.0, float(v), 0.0) for v in velocities)  # current, voltage, temp, vel, torque
    return {
        "errcode": c.fault()[0], "inpos": int(c.in_position()), "powered_on": int(c.powered),
        "enabled": int(c.enabled), "rapidrate": 1.0, "protective_stop": int(c.twin.collision is not None),
        "emergency_stop": int(c.estop), "dout": _signals(c, 0), "din": (0,), "ain": (0,), "aout": (0,),
        "tio_dout": _signals(c, 1), "tio_din": (0,), "tio_ain": (0,), "tio_key": (0, 0, 0),
        "extio": _EMPTY_IO_GROUP, "modbus_slave": _EMPTY_IO_GROUP, "profinet_slave": _EMPTY_IO_GROUP,
        "eip_slave": _EMPTY_IO_GROUP, "current_tool_id": c.tool_id,
        "cartesiantran_position": _floats(c.tcp_pose(c.commanded)), "joint_position": _floats(c.commanded),
        "on_soft_limit": int(rc._on_limit()), "current_user_id": c.user_frame_id, "drag_status": 0,
        "robot_monitor_data": (0.0, 0.0, 0.0, 0.0, 0.0, joint_monitor),
        "torq_sensor_monitor_data": ("", 0, c.payload, 0, 0, (0.0,) * 6, (0.0,) * 6, (0.0,) * 6),
        "is_socket_connect": 1,
    }


class RC21(RC):
    """SDK 2.1.7..2.1.14."""

    SDK_VERSION = "2.1 (fanvla fake jkrc)"
    STATUS_LAYOUT = STATUS_FIELDS

    @_call()
    def get_robot_status(self) -> tuple:
        values = status_values(self)
        return (fk.OK, tuple(values[name] for name in self.STATUS_LAYOUT))

    @_call()
    def get_robot_status_simple(self) -> tuple:
        c = self._c
        return (fk.OK, (*c.fault(), int(c.powered), int(c.enabled)))


class RC22(RC21):
    """Newer SDKs: measured positions, get_robot_state deprecated."""

    SDK_VERSION = "2.2 (fanvla fake jkrc)"

    @_call()
    def get_actual_joint_position(self) -> tuple:
        return (fk.OK, _floats(self._c.twin.joint_positions()))

    @_call()
    def get_actual_tcp_position(self) -> tuple:
        return (fk.OK, _floats(self._c.tcp_pose()))

    @_call()
    def get_robot_state(self) -> tuple:
        return (fk.DEPRECATED,)  # an SDK-side answer: the controller records no error for it


class RCLegacy(RC):
    """Bindings before SDK 2.1.7: servo_j without step_num, the 24-field status."""

    SDK_VERSION = "legacy (fanvla fake jkrc)"
    STATUS_LAYOUT = LEGACY_STATUS_FIELDS

    @_call(motion=True)
    def servo_j(self, joint_pos, move_mode: int) -> tuple:  # no step_num: one 8 ms cycle per target
        return self._servo_joints("servo_j", joint_pos, move_mode, 1)

    @_call()
    def get_robot_status(self) -> tuple:
        values = status_values(self)
        return (fk.OK, tuple(values[name] for name in self.STATUS_LAYOUT))


SDK_GENERATIONS: dict[str, type[RC]] = {"legacy": RCLegacy, "2.1": RC21, "2.2": RC22}


def rc_class(sdk: str) -> type[RC]:
    try:
        return SDK_GENERATIONS[sdk]
    except KeyError:
        raise ValueError(f"unknown fake SDK generation {sdk!r}; known: {', '.join(SDK_GENERATIONS)}") from None


def status_field(rc: RC, status: tuple, name: str):
    """A named field of a status tuple in ``rc``'s layout (for tests)."""
    return status[type(rc).STATUS_LAYOUT.index(name)]


__all__ = ["LEGACY_STATUS_FIELDS", "RC21", "RC22", "SDK_GENERATIONS", "STATUS_FIELDS", "RCLegacy", "rc_class",
           "status_field"]
