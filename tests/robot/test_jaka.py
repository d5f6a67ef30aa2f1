"""JakaArm over the fake jkrc SDK: connection, error paths, cleanup, streaming limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot import errors
from robot.jaka import JakaArm
from robot.sim.fake_jkrc import make_jkrc
from robot.sim.twin import Twin


@pytest.fixture
def twin(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        yield twin


@pytest.fixture
def sdk(twin):
    return make_jkrc(twin)


@pytest.fixture
def lab_config(hardware_config, tmp_path):
    """hardware.yaml with JAKA's error-code file set, so that errors carry the controller's own words."""
    path = tmp_path / "jaka_error_codes.csv"
    path.write_text("code,message\n")
    return hardware_config.with_overrides({"robot.error_code_file": str(path)})


@pytest.fixture
def arm(lab_config, twin, sdk):
    arm = JakaArm(lab_config, sdk=sdk, clock=twin.clock)
    arm.connect()
    yield arm
    if arm.connected:
        arm._release(quiet=True)


def test_connect_logs_in_powers_enables_and_configures(hardware_config, twin, sdk):
    controller = sdk.controller
    arm = JakaArm(hardware_config, sdk=sdk, clock=twin.clock)
    arm.connect()
    assert controller.powered and controller.enabled and not controller.servo_mode
    assert controller.collision_level == hardware_config.robot.collision_level
    assert controller.network_exception == (hardware_config.robot.network_timeout_ms, 2)
    assert controller.tools[controller.tool_id][2] == hardware_config.robot.tcp_offset_mm
    state = arm.state()
    assert state.error is None and not state.servo_enabled
    np.testing.assert_allclose(state.tcp_pose[:3], twin.tcp_pose()[:3], atol=1e-6)  # controller TCP = the tool
    arm.disconnect()
    with pytest.raises(errors.BadHandleError, match="not connected"):
        arm.state()


def test_calls_before_login_and_without_power_map_to_typed_errors(hardware_config, twin, sdk, tmp_path):
    arm = JakaArm(hardware_config, sdk=sdk, clock=twin.clock)
    arm._rc = sdk.RC(hardware_config.robot.ip)  # a handle that never logged in
    with pytest.raises(errors.BadHandleError, match=r"jkrc.power_on returned -1 \(invalid handle"):
        arm.sdk_call("power_on")
    arm.sdk_call("login")
    with pytest.raises(errors.NotPoweredError, match=r"jkrc\.enable_robot returned -6") as info:
        arm.sdk_call("enable_robot")
    assert info.value.code == -6 and info.value.call == "enable_robot"
    assert "controller says" not in str(info.value)  # get_last_error is empty without the error-code file
    with pytest.raises(errors.ControllerFileError, match=r"returned -11 \(cannot open the file"):
        arm.sdk_call("set_errorcode_file_path", str(tmp_path / "missing.csv"))
    (tmp_path / "errors.csv").write_text("code,message\n")
    arm.sdk_call("set_errorcode_file_path", str(tmp_path / "errors.csv"))
    with pytest.raises(errors.NotPoweredError) as info:
        arm.sdk_call("enable_robot")
    assert "controller says 'enable_robot: power the robot on first'" in str(info.value)  # the controller's words
    arm.sdk_call("power_on")
    with pytest.raises(errors.NotEnabledError, match="-7"):
        arm.sdk_call("servo_move_enable", True)


def test_estop_stops_streaming_and_needs_power_again(arm, sdk):
    arm.start_servo()
    sdk.controller.press_estop()
    arm.clock.sleep(0.05)
    with pytest.raises(errors.EStopError, match="emergency stop"):
        arm.servo_joints(arm.state().joints_rad, 0.5)
    assert not arm.is_servoing
    assert "emergency stop pressed" in arm.state().error
    sdk.controller.release_estop()
    with pytest.raises(errors.NotPoweredError):
        arm.start_servo()
    arm.disconnect()
    arm.connect()  # powers on and enables again
    arm.start_servo()
    assert arm.is_servoing


def test_driving_into_the_table_is_a_latched_protective_stop(arm, twin):
    arm.start_servo()
    pose = arm.state().tcp_pose
    arm.servo_tcp(np.array([pose[0], pose[1], -20.0, *pose[3:]]), 1.0)
    with pytest.raises(errors.ProtectiveStopError, match="protective stop") as info:
        for _ in range(300):
            arm.clock.sleep(0.01)
            arm.state()
    assert info.value.code == -20 and "recover()" in str(info.value)
    assert twin.collision is not None and twin.collision.env_geom == "table"
    with pytest.raises(errors.ProtectiveStopError):  # latched
        arm.start_servo()
    arm.recover()
    arm.start_servo()
    above = arm.state().tcp_pose
    arm.servo_tcp(np.array([*above[:2], 120.0, *above[3:]]), 0.5)
    arm.clock.sleep(1.5)
    assert arm.state().tcp_pose[2] == pytest.approx(120.0, abs=0.5)


def test_soft_limits_are_refused_locally_and_by_the_controller(arm, hardware_config):
    beyond = np.asarray(hardware_config.robot.home_joints_rad)
    beyond[2] = math.radians(135.0)  # J3 limit is 125 deg
    with pytest.raises(errors.SoftLimitError, match=r"joint 3 target 135.0 deg lies outside"):
        arm.move_joints(beyond, 0.5)
    with pytest.raises(errors.SoftLimitError, match=r"jkrc.joint_move returned -22 \(soft limit\)") as info:
        arm.sdk_call("joint_move", tuple(beyond), 0, True, 0.5)
    assert "beyond the soft limit" in str(info.value)


def test_streaming_needs_servo_mode(arm):
    with pytest.raises(errors.NotInServoModeError, match="start_servo"):
        arm.servo_joints(arm.state().joints_rad, 0.1)
    with pytest.raises(errors.NotInServoModeError, match=r"jkrc\.servo_j returned -8"):
        arm.sdk_call("servo_j", tuple(arm.state().joints_rad), 0, 1)
    arm.start_servo()
    with pytest.raises(errors.CallFailedError, match="out of servo mode"):
        arm.move_home()
    with pytest.raises(errors.CallFailedError, match=r"joint_move returned 2 .*refused in servo mode"):
        arm.sdk_call("joint_move", tuple(arm.state().joints_rad), 0, True, 0.5)


def test_blocking_moves_advance_simulated_time(arm, twin, hardware_config):
    target = np.asarray(hardware_config.robot.home_joints_rad) + np.radians([20, 5, -5, 0, 0, 30])
    before = arm.clock.now_s()
    arm.move_joints(target, math.radians(30))
    assert arm.clock.now_s() - before == pytest.approx(1.5 * 1.0, abs=0.05)  # 30 deg at 30 deg/s, cubic profile
    np.testing.assert_allclose(arm.state().joints_rad, target, atol=math.radians(0.05))
    arm.move_home()
    np.testing.assert_allclose(twin.joint_positions(), hardware_config.robot.home_joints_rad, atol=math.radians(0.05))


def test_communication_loss_mid_servo_surfaces_on_the_next_call(arm, sdk):
    arm.start_servo()
    pose = arm.state().tcp_pose
    arm.servo_tcp(pose + np.array([30.0, 0, 0, 0, 0, 0]), 1.0)
    arm.clock.sleep(0.2)
    sdk.controller.drop_connection()
    arm.clock.sleep(0.05)
    with pytest.raises(errors.CommunicationError, match=r"jkrc.servo_j returned -3 \(communication error\)"):
        arm.hold()
    assert not arm.is_servoing
    with pytest.raises(errors.CommunicationError):
        arm.disconnect()  # cleanup tried every step, reported the failure
    assert not arm.connected


@pytest.mark.parametrize("interrupt", [RuntimeError("policy crashed"), KeyboardInterrupt()])
def test_leaving_the_context_on_an_exception_cleans_up(hardware_config, twin, sdk, interrupt):
    controller = sdk.controller
    arm = JakaArm(hardware_config, sdk=sdk, clock=twin.clock)
    with pytest.raises(type(interrupt)), arm:
        arm.start_servo()
        arm.clock.sleep(0.1)
        raise interrupt
    assert not controller.servo_mode and not arm.connected and not arm.is_servoing
    handle = arm._rc
    assert handle is None
    probe = sdk.RC(hardware_config.robot.ip)
    assert probe.get_joint_position()[0] == -1  # a fresh handle is not logged in; the old one logged out


def test_cleanup_failure_never_replaces_the_original_exception(hardware_config, twin, sdk):
    arm = JakaArm(hardware_config, sdk=sdk, clock=twin.clock)
    with pytest.raises(ValueError, match="original"), arm:
        sdk.controller.drop_connection()  # every cleanup call will fail with -3
        raise ValueError("original")


def _servo_log_steps(sdk, kinematics):
    joints = np.array([entry.joints for entry in sdk.controller.servo_log])
    tcp = kinematics.forward(joints)[:, :3]
    return np.abs(np.diff(joints, axis=0)), np.linalg.norm(np.diff(tcp, axis=0), axis=1)


def test_servo_steps_respect_joint_and_tcp_speed_limits(arm, sdk, hardware_config):
    arm.start_servo()
    home = np.asarray(hardware_config.robot.home_joints_rad)
    arm.servo_joints(home + np.radians([0, 0, 0, 0, 0, 60]), reach_in_s=0.01)  # J6 turns the tool in place
    arm.clock.sleep(1.0)
    pose = arm.state().tcp_pose
    arm.servo_tcp(np.array([pose[0] + 80, pose[1] - 60, pose[2], *pose[3:]]), reach_in_s=0.01)  # TCP limits
    arm.clock.sleep(1.5)
    joint_steps, tcp_steps = _servo_log_steps(sdk, arm.kinematics)
    assert joint_steps.max() <= arm.max_joint_step_rad + 1e-12
    assert joint_steps.max() > 0.99 * arm.max_joint_step_rad  # it did run at the limit
    assert tcp_steps.max() <= arm.max_tcp_step_mm + 1e-6
    assert tcp_steps.max() > 0.95 * arm.max_tcp_step_mm
    np.testing.assert_allclose(arm.state().tcp_pose[:2], [pose[0] + 80, pose[1] - 60], atol=0.2)


def test_servo_target_is_reached_on_time(arm, sdk):
    arm.start_servo()
    pose = arm.state().tcp_pose
    goal = pose + np.array([20.0, 10, -10, 0, 0, 0])
    arm.servo_tcp(goal, reach_in_s=0.4)
    sdk.controller.servo_log.clear()
    arm.clock.sleep(0.6)
    log = sdk.controller.servo_log  # the first entry is the tick at t0
    arrived = [entry.time_s for entry in log
               if np.linalg.norm(arm.kinematics.forward(np.array(entry.joints))[:3] - goal[:3]) < 0.01]
    assert arrived and arrived[0] - log[0].time_s == pytest.approx(0.4, abs=0.02)
    arm.hold()
    arm.clock.sleep(0.1)
    np.testing.assert_allclose(arm.state().tcp_pose[:3], goal[:3], atol=0.05)


def test_ik_failure_names_the_pose(arm):
    arm.start_servo()
    with pytest.raises(errors.IKFailedError, match=r"no joint solution for TCP pose \[900.0"):
        arm.servo_tcp(np.array([900.0, 0.0, 100.0, math.pi, 0.0, 0.0]), 0.5)
    assert arm.is_servoing  # a refused target leaves the stream running


def test_kinematics_come_from_the_controller_with_the_tool(arm, twin):
    joints = twin.joint_positions()
    pose = arm.forward_kinematics(joints)
    np.testing.assert_allclose(pose[:3], twin.tcp_pose()[:3], atol=1e-6)
    np.testing.assert_allclose(arm.inverse_kinematics(pose, joints), joints, atol=1e-6)
