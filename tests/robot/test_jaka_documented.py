"""JakaArm against the fake's model of JAKA's documented behaviour (issue 23): the 8 ms servo cycle and
step_num, measured vs commanded state, frames/tool/payload at connect, SDK generations, the error table."""

from __future__ import annotations

import logging
import math
import types

import numpy as np
import pytest
import yaml

from fanvla.config import ConfigError, load_hardware_config
from robot import errors
from robot.gripper import DigitalOutputGripper
from robot.jaka import JakaArm
from robot.jaka_codes import CODES, last_error_detail
from robot.sim.fake_jkrc import TRACKING_LAG_CYCLES, ServoStats, make_jkrc
from robot.sim.twin import Twin
from tests.conftest import REPO_ROOT


@pytest.fixture
def config_62hz(hardware_config):
    return hardware_config.with_overrides({"robot.servo_rate_hz": 62.5})


class Rig:
    def __init__(self, config, sdk: str = "2.2") -> None:
        self.twin = Twin(config, realtime=False)
        self.jkrc = make_jkrc(self.twin, sdk)
        self.controller = self.jkrc.controller
        self.arm = JakaArm(config, sdk=self.jkrc, clock=self.twin.clock)

    def close(self) -> None:
        if self.arm.connected:
            self.arm._release(quiet=True)
        self.twin.close()


@pytest.fixture
def make_rig():
    rigs: list[Rig] = []

    def make(config, sdk: str = "2.2") -> Rig:
        rigs.append(Rig(config, sdk))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def stream_sine(arm, seconds: float, rate_hz: float = 10.0) -> None:
    """A 10 Hz agent sending targets that keep the arm moving (no pause between them)."""
    home = arm.state().joints_rad
    steps = int(seconds * rate_hz)
    for k in range(1, steps + 1):
        arm.servo_joints(home + np.radians([8, 4, -4, 0, 4, 12]) * math.sin(2 * math.pi * 0.5 * k / rate_hz),
                         reach_in_s=1.0 / rate_hz)
        arm.clock.sleep(1.0 / rate_hz)


# -- 1. the servo period is a whole number of 8 ms cycles ----------------------------------------------------------
def _write_config(tmp_path, **robot) -> str:
    data = yaml.safe_load((REPO_ROOT / "hardware.yaml").read_text())
    data["robot"].update(robot)
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_servo_rate_must_be_125_over_a_whole_number(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_hardware_config(_write_config(tmp_path, servo_rate_hz=100))
    message = str(info.value)
    assert "robot.servo_rate_hz = 100" in message and "whole number of JAKA's 8 ms controller cycles" in message
    assert "125, 62.5, 41.6667, 31.25, 25" in message
    config = load_hardware_config(_write_config(tmp_path, servo_rate_hz=62.5))
    assert config.robot.servo_step_num == 2 and config.robot.servo_period_s == pytest.approx(0.016)
    assert load_hardware_config(_write_config(tmp_path, servo_rate_hz=125 / 3)).robot.servo_step_num == 3


@pytest.mark.parametrize("sdk", ["legacy", "2.1", "2.2"])
def test_at_62_5_hz_each_target_spans_two_cycles_and_the_arm_never_stalls(config_62hz, make_rig, sdk):
    rig = make_rig(config_62hz, sdk)
    rig.arm.connect()
    rig.arm.start_servo()
    rig.controller.servo_stats = ServoStats()
    stream_sine(rig.arm, 1.0)
    stats = rig.controller.servo_stats
    assert stats.cycles >= 125 and abs(2 * stats.commands - stats.cycles) <= 2  # one target per two 8 ms cycles
    assert {entry.step_num for entry in rig.controller.servo_log} == {2}
    assert stats.starved_cycles == 0 and stats.superseded == 0
    assert rig.arm.capabilities.servo_call == ("servo_j_extend" if sdk == "legacy" else "servo_j")


def test_the_fake_catches_a_driver_sending_step_num_1_at_62_5_hz(config_62hz, make_rig):
    rig = make_rig(config_62hz)
    rig.arm.connect()
    rig.arm.step_num = 1  # what the driver used to send whatever servo_rate_hz said
    rig.arm.start_servo()
    rig.controller.servo_stats = ServoStats()
    stream_sine(rig.arm, 1.0)
    stats = rig.controller.servo_stats
    assert stats.starved_cycles > 0.4 * stats.cycles  # every other cycle the arm waits: it stutters


def test_the_twin_ticks_every_8_ms_whatever_the_servo_rate(config_62hz):
    with Twin(config_62hz, realtime=False) as twin:
        assert twin.cycle_s == 0.008
        twin.clock.sleep(0.1)
        assert twin.clock.cycles == 13  # ceil(0.1 / 0.008)


def test_physics_step_must_divide_the_controller_cycle(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "hardware.yaml").read_text())
    data["sim"]["physics_dt_s"] = 0.003
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"sim.physics_dt_s = 0.003: must divide the controller's 8 ms cycle"):
        load_hardware_config(path)


# -- 2. measured state from the measured calls -----------------------------------------------------------------------
def test_state_is_the_measured_arm_not_the_command(hardware_config, make_rig):
    rig = make_rig(hardware_config, "2.2")
    rig.arm.connect()
    assert rig.arm.capabilities.measured_is_actual
    rig.arm.start_servo()
    home = rig.arm.state().joints_rad
    rig.arm.servo_joints(home + np.radians([20, 0, 0, 0, 0, 30]), reach_in_s=0.5)
    rig.arm.clock.sleep(0.2)  # mid-motion: J6 turns at 60 deg/s, the drives lag the command
    state = rig.arm.state()
    np.testing.assert_allclose(state.joints_rad, rig.twin.joint_positions(), atol=1e-12)
    lag_rad = np.radians(60) * TRACKING_LAG_CYCLES * 0.008
    assert np.abs(rig.controller.commanded[5] - state.joints_rad[5]) > 0.5 * lag_rad
    np.testing.assert_allclose(state.tcp_pose, rig.controller.tcp_pose(), atol=1e-9)


@pytest.mark.parametrize("sdk", ["legacy", "2.1"])
def test_without_actual_calls_the_state_is_flagged_as_possibly_the_command(hardware_config, make_rig, sdk, caplog):
    rig = make_rig(hardware_config, sdk)
    with caplog.at_level(logging.WARNING, logger="robot.jaka"):
        rig.arm.connect()
    assert not rig.arm.capabilities.measured_is_actual
    info = rig.arm.sdk_info()
    assert info["measured_state"] == "possibly the command" and info["joints_call"] == "get_joint_position"
    assert info["version"].startswith(sdk)
    assert "may report the commanded position" in caplog.text


# -- 3. user frame, tool and payload at connect --------------------------------------------------------------------
def test_connect_selects_the_base_frame_left_active_on_the_pendant(hardware_config, make_rig):
    rig = make_rig(hardware_config)
    rig.controller.pendant_select_user_frame(2, (50.0, 80.0, 10.0, 0.0, 0.0, 0.7))
    rig.arm.connect()
    assert rig.controller.user_frame_id == 0 and rig.controller.tool_id == 1
    assert rig.controller.payload == (hardware_config.robot.payload_kg, tuple(hardware_config.robot.payload_com_mm))
    np.testing.assert_allclose(rig.arm.state().tcp_pose[:3], rig.twin.tcp_pose()[:3], atol=1e-6)  # base frame


def test_connect_refuses_a_frame_it_cannot_change_and_says_which(hardware_config, make_rig):
    rig = make_rig(hardware_config)
    rig.controller.pendant_select_user_frame(2, (50.0, 80.0, 10.0, 0.0, 0.0, 0.7))
    rig.controller.pendant_lock_settings()
    with pytest.raises(errors.ArmSetupError, match=r"user frame 2 is active on the controller.*base frame") as info:
        rig.arm.connect()
    assert "settings are locked" in str(info.value) or "call failed" in str(info.value)
    assert not rig.arm.connected


def test_locked_settings_that_already_match_are_accepted(hardware_config, make_rig, caplog):
    rig = make_rig(hardware_config)
    rig.arm.connect()
    rig.arm.disconnect()
    rig.controller.pendant_lock_settings()
    with caplog.at_level(logging.WARNING, logger="robot.jaka_setup"):
        rig.arm.connect()
    assert "already has it as configured" in caplog.text


def test_a_different_payload_that_cannot_be_set_is_refused(hardware_config, make_rig):
    rig = make_rig(hardware_config)
    rig.arm.connect()
    rig.arm.disconnect()
    rig.controller.payload = (0.9, (0.0, 0.0, 10.0))
    rig.controller.pendant_lock_settings()
    with pytest.raises(errors.ArmSetupError, match=r"payload is \(0.9, \(0.0, 0.0, 10.0\)\).*0.35 kg"):
        rig.arm.connect()


def test_payload_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"robot.payload_kg = 1.5"):
        load_hardware_config(_write_config(tmp_path, payload_kg=1.5))


# -- 4. both SDK generations, deprecated calls, error codes ---------------------------------------------------------
class _Handle:
    """A jkrc handle with some calls replaced or hidden (to play SDK variants the fake does not ship)."""

    def __init__(self, inner, hide=(), **replace) -> None:
        self._inner, self._hide, self._replace = inner, set(hide), replace

    def __getattr__(self, name):
        if name in self._hide:
            raise AttributeError(name)
        return self._replace.get(name) or getattr(self._inner, name)


def variant(jkrc, hide=(), **replace):
    return types.SimpleNamespace(RC=lambda ip: _Handle(jkrc.RC(ip), hide, **replace), controller=jkrc.controller)


def test_a_hidden_servo_j_signature_is_probed_once(config_62hz, make_rig):
    rig = make_rig(config_62hz, "2.1")
    calls = []
    handle = rig.jkrc.RC(config_62hz.robot.ip)  # a C binding shows no signature: servo_j(*args)

    def servo_j(*args):
        calls.append(len(args))
        return handle.servo_j(*args)

    rig.arm._sdk = types.SimpleNamespace(RC=lambda ip: _Handle(handle, servo_j=servo_j))
    rig.arm.connect()
    assert rig.arm.capabilities.servo_call == "servo_j" and calls == [3]  # the probe, outside servo mode


def test_an_old_binding_without_servo_j_extend_runs_only_at_125_hz(hardware_config, config_62hz, make_rig):
    slow = make_rig(config_62hz, "legacy")
    slow.arm._sdk = variant(slow.jkrc, hide={"servo_j_extend"})
    with pytest.raises(errors.ArmSetupError, match=r"set robot\.servo_rate_hz to 125"):
        slow.arm.connect()
    fast = make_rig(hardware_config, "legacy")
    fast.arm._sdk = variant(fast.jkrc, hide={"servo_j_extend"})
    fast.arm.connect()
    assert fast.arm.capabilities.servo_call == "servo_j/2"
    fast.arm.start_servo()
    stream_sine(fast.arm, 0.3)
    assert {entry.step_num for entry in fast.controller.servo_log} == {1}


@pytest.mark.parametrize(("sdk", "hide", "state_call"), [
    ("legacy", (), "get_robot_state"), ("2.2", (), "get_robot_status_simple"),
    ("2.2", ("get_robot_status_simple",), "get_robot_status"), ("legacy", ("get_robot_state",), "get_robot_status"),
])
def test_robot_state_falls_back_from_deprecated_calls(hardware_config, make_rig, sdk, hide, state_call):
    rig = make_rig(hardware_config, sdk)
    rig.arm._sdk = variant(rig.jkrc, hide=hide)
    rig.arm.connect()
    assert rig.arm.capabilities.state_call == state_call
    assert rig.arm.state().error is None
    rig.controller.press_estop()
    assert "emergency stop pressed" in rig.arm.state().error


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_documented_code_raises_its_typed_error(hardware_config, make_rig, code):
    rig = make_rig(hardware_config)
    rig.arm.connect()
    expected, meaning, _ = CODES[code]
    rig.arm._rc = _Handle(rig.arm._rc, is_in_pos=lambda: (code,))
    with pytest.raises(expected) as info:
        rig.arm.sdk_call("is_in_pos")
    assert info.value.code == code and f"jkrc.is_in_pos returned {code} ({meaning})" in str(info.value)


@pytest.mark.parametrize("answer", [
    (0, (-2, "bad target")), (0, [-2, "bad target"]), (0, -2, "bad target"), (0, {"code": -2, "message": "bad target"}),
    (0, "bad target"), (0, (-2, b"bad target\x00\x00")),
])
def test_get_last_error_is_read_in_any_shape(answer):
    assert last_error_detail(answer)[1] == "bad target"


@pytest.mark.parametrize("answer", [(0,), (0, (0, "")), (-1,), (0, None), (0, 5), "nonsense", None, (0, ("", ""))])
def test_get_last_error_without_an_error_is_none(answer):
    assert last_error_detail(answer) is None


@pytest.mark.parametrize("broken", [lambda: (0,), lambda: (0, None), lambda: 1 / 0, lambda: "???"])
def test_an_odd_get_last_error_never_masks_the_original_error(hardware_config, make_rig, broken):
    rig = make_rig(hardware_config)
    rig.arm.connect()
    rig.arm._rc = _Handle(rig.arm._rc, get_last_error=broken)
    with pytest.raises(errors.BadParameterError, match=r"jkrc.joint_move returned -2 \(bad parameter\); check"):
        rig.arm.sdk_call("joint_move", (0.0,) * 5, 0, True, 0.5)


def test_a_gripper_io_timeout_is_retried_once_then_raised(hardware_config, make_rig):
    rig = make_rig(hardware_config)
    rig.arm.connect()
    gripper = DigitalOutputGripper(hardware_config, rig.arm)
    gripper.connect()  # opens
    rig.controller.fail_io_sets(1)
    assert gripper.close() == 0.0 and not rig.twin.gripper_commanded_open  # the second try went through
    rig.controller.fail_io_sets(2)
    with pytest.raises(errors.IOTimeoutError, match=r"the gripper was not opened: .*returned -60 \(setting an IO"):
        gripper.open()
    assert gripper.state().command == 0.0 and not rig.twin.gripper_commanded_open  # still closed, and says so


def test_tool_gripper_output_must_exist_on_the_flange(tmp_path):
    data = yaml.safe_load((REPO_ROOT / "hardware.yaml").read_text())
    data["gripper"].update(io_type="tool", io_index=2)
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"gripper = .*io_index = 2: the MiniCobo's tool flange has 2 digital"):
        load_hardware_config(path)
