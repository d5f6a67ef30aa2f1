"""The fake jkrc module itself: JAKA's call names, tuple returns, units, codes and status layouts, per SDK
generation, as JakaArm does not use them all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot.sim.fake_jkrc import TRACKING_LAG_CYCLES, make_jkrc
from robot.sim.fake_rc_versions import LEGACY_STATUS_FIELDS, STATUS_FIELDS, status_field
from robot.sim.twin import Twin


@pytest.fixture
def twin(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        yield twin


def connect(twin, sdk: str = "2.2", error_file=None):
    jkrc = make_jkrc(twin, sdk)
    rc = jkrc.RC(twin.config.robot.ip)
    assert rc.login() == (0,)
    assert rc.power_on() == (0,) and rc.enable_robot() == (0,)
    if error_file is not None:
        assert rc.set_errorcode_file_path(str(error_file)) == (0,)
    return jkrc, rc


@pytest.fixture
def rig(twin, tmp_path):
    error_file = tmp_path / "errors.csv"
    error_file.write_text("code,message\n")
    jkrc, rc = connect(twin, error_file=error_file)
    return twin, jkrc, rc


def test_two_modules_of_one_twin_share_the_controller(twin):
    connect(twin, "2.1")
    other = make_jkrc(twin, "2.1").RC("10.0.0.1")
    assert other.get_robot_state()[0] == -1  # its own session is not logged in
    other.login()
    assert other.get_robot_state() == (0, (0, 1, 1))  # but the controller is powered and enabled already


def test_generations_differ_where_jaka_changed_the_sdk(twin):
    _, legacy = connect(twin, "legacy")
    _, v21 = connect(twin, "2.1")
    _, v22 = connect(twin, "2.2")
    for rc in (legacy, v21, v22):
        assert rc.get_sdk_version()[0] == 0 and rc.servo_j_extend([0.0] * 6, 1, 2) == (-8,)  # not in servo mode
    with pytest.raises(TypeError):
        legacy.servo_j([0.0] * 6, 1, 2)  # the old binding has no step_num
    assert v21.servo_j([0.0] * 6, 1, 2) == (-8,)
    assert not hasattr(legacy, "get_actual_joint_position") and not hasattr(v21, "get_actual_joint_position")
    assert v22.get_actual_joint_position()[0] == 0
    assert legacy.get_robot_state() == v21.get_robot_state() == (0, (0, 1, 1))
    assert v22.get_robot_state() == (-9998,)  # deprecated (jkerr.h ERR_DEPRECATE)
    assert v22.get_robot_status_simple() == (0, (0, "", 1, 1))


@pytest.mark.parametrize(("sdk", "layout"), [("legacy", LEGACY_STATUS_FIELDS), ("2.1", STATUS_FIELDS),
                                             ("2.2", STATUS_FIELDS)])
def test_status_has_the_documented_layout(twin, sdk, layout):
    _, rc = connect(twin, sdk)
    code, status = rc.get_robot_status()
    assert code == 0 and len(status) == len(layout) == (24 if sdk == "legacy" else 28)
    assert status[:4] == (0, 1, 1, 1) and status[5:7] == (0, 0)  # errcode, inpos, powered, enabled; stops
    for name in ("current_tool_id", "current_user_id", "drag_status", "on_soft_limit"):
        assert status_field(rc, status, name) == 0
    assert len(status_field(rc, status, "joint_position")) == 6
    assert len(status_field(rc, status, "cartesiantran_position")) == 6
    assert status_field(rc, status, "tio_dout") == (2, 0, 0)  # element 0 counts the flange's two outputs
    assert status_field(rc, status, "is_socket_connect") == 1
    rc.set_digital_output(1, 1, 1)
    assert status_field(rc, rc.get_robot_status()[1], "tio_dout") == (2, 0, 1)


def test_get_last_error_is_filled_only_after_the_error_code_file_is_set(twin, tmp_path):
    _, rc = connect(twin)
    assert rc.joint_move([0.0] * 5, 0, True, 0.5) == (-2,)
    assert rc.get_last_error() == (0, (0, ""))
    assert rc.set_errorcode_file_path(str(tmp_path / "missing.csv")) == (-11,)
    (tmp_path / "codes.csv").write_text("code,message\n")
    assert rc.set_errorcode_file_path(str(tmp_path / "codes.csv")) == (0,)
    assert rc.joint_move([0.0] * 5, 0, True, 0.5) == (-2,)
    code, (last, message) = rc.get_last_error()
    assert code == 0 and last == -2 and "expected 6 finite joint positions" in message


def test_linear_move_blocks_and_moves_in_a_straight_line(rig):
    twin, jkrc, rc = rig
    code, start = rc.get_tcp_position()
    assert code == 0 and len(start) == 6
    goal = list(start)
    goal[0] += 60.0
    samples = []
    jkrc.controller.twin.add_cycle_hook(lambda: samples.append(jkrc.controller.tcp_pose()))
    before = twin.clock.now_s()
    assert rc.linear_move(goal, 0, True, 60.0) == (0,)
    # 60 mm at 60 mm/s with a cubic profile, then the drives catch up with the command
    assert 1.5 <= twin.clock.now_s() - before <= 1.5 + 0.05 + 2 * TRACKING_LAG_CYCLES * 0.008
    assert rc.is_in_pos() == (0, True)
    path = np.array(samples)
    assert np.max(np.abs(path[:, 1] - start[1])) < 0.05 and np.max(np.abs(path[:, 2] - start[2])) < 0.05
    np.testing.assert_allclose(rc.get_actual_tcp_position()[1][:3], goal[:3], atol=0.05)


def test_non_blocking_move_and_abort(rig):
    twin, _, rc = rig
    joints = np.array(rc.get_actual_joint_position()[1])
    assert rc.joint_move([0.5, 0, 0, 0, 0, 0], 1, False, 0.5) == (0,)  # INCR, returns at once
    twin.clock.sleep(0.3)
    assert rc.is_in_pos() == (0, False)
    assert rc.motion_abort() == (0,)
    twin.clock.sleep(0.2)
    moved = np.array(rc.get_actual_joint_position()[1]) - joints
    assert 0.01 < moved[0] < 0.5 and rc.is_in_pos() == (0, True)


def test_servo_p_and_servo_j_in_servo_mode(rig):
    twin, _, rc = rig
    assert rc.servo_move_enable(True) == (0,)
    assert rc.servo_move_use_joint_LPF(50.0)[0] == 2  # filters only outside servo mode
    pose = list(rc.get_tcp_position()[1])
    pose[2] += 1.0
    assert rc.servo_p(pose, 0) == (0,)
    twin.clock.sleep(0.1)
    assert rc.get_actual_tcp_position()[1][2] == pytest.approx(pose[2], abs=0.02)
    joints = list(rc.get_joint_position()[1])
    jump = joints.copy()
    jump[0] += 0.2  # 0.2 rad in 8 ms: faster than the controller allows
    assert rc.servo_j(jump, 0, 1) == (-12,)
    assert rc.servo_j(jump, 0, 10) == (0,)  # the same step spread over ten 8 ms cycles is fine
    assert rc.servo_j([0, 0, 0, 0, 0, 0.002], 1, 1) == (0,)  # INCR
    far = joints.copy()
    far[2] = math.radians(140)
    assert rc.servo_j(far, 0) == (-22,)
    assert "beyond the soft limit" in rc.get_last_error()[1][1]


@pytest.mark.parametrize("call", ["servo_j", "servo_j_extend", "joint_move", "servo_p", "linear_move"])
@pytest.mark.parametrize("bad", [[math.nan, 0, 0, 0, 0, 0], [0.0] * 5, [0.0] * 7, "joints", [[0.0] * 6],
                                 [0, 0, 0, math.inf, 0, 0], None])
def test_a_nan_or_badly_shaped_target_is_refused_and_changes_nothing(rig, call, bad):
    twin, jkrc, rc = rig
    controller = jkrc.controller
    if call.startswith("servo"):
        assert rc.servo_move_enable(True) == (0,)
        assert rc.servo_j(rc.get_joint_position()[1], 0, 1) == (0,)
    before_target, before_command = controller.servo_base().copy(), controller.commanded.copy()
    args = {"servo_j": (bad, 0, 1), "servo_j_extend": (bad, 0, 1), "servo_p": (bad, 0, 1),
            "joint_move": (bad, 0, False, 0.5), "linear_move": (bad, 0, False, 10.0)}[call]
    assert getattr(rc, call)(*args) == (-2,)
    twin.clock.sleep(0.05)
    np.testing.assert_array_equal(controller.servo_base(), before_target)
    np.testing.assert_allclose(controller.commanded, before_command, atol=1e-9)
    assert controller._trajectory is None


def test_servo_j_rejects_a_bad_step_num_and_mode(rig):
    _, _, rc = rig
    rc.servo_move_enable(True)
    joints = rc.get_joint_position()[1]
    assert rc.servo_j(joints, 0, 0) == (-2,)
    assert rc.servo_j(joints, 0, 1.5) == (-2,)
    assert rc.servo_j(joints, 3, 1) == (-2,)


def test_tool_flange_has_two_outputs(rig):
    _, jkrc, rc = rig
    assert rc.set_digital_output(1, 1, 1) == (0,) and rc.get_digital_output(1, 1) == (0, 1)
    assert rc.set_digital_output(1, 2, 1) == (-2,)
    assert "type 1 has outputs 0..1" in rc.get_last_error()[1][1]
    assert rc.set_digital_output(1, -1, 1) == (-2,) and rc.set_digital_output(5, 0, 1) == (-2,)
    assert rc.set_digital_output(0, 17, 1) == (0,)  # cabinet outputs
    jkrc.controller.fail_io_sets(1)
    assert rc.set_digital_output(1, 0, 1) == (-60,)  # IO set timeout: the output keeps its level
    assert rc.get_digital_output(1, 0) == (0, 0)
    assert rc.set_digital_output(1, 0, 1) == (0,) and rc.get_digital_output(1, 0) == (0, 1)


def test_user_frame_tool_and_payload(rig):
    _, jkrc, rc = rig
    controller = jkrc.controller
    base = np.array(rc.get_tcp_position()[1])
    controller.pendant_select_user_frame(3, (100.0, -50.0, 20.0, 0.0, 0.0, math.pi / 2))
    assert rc.get_user_frame_id() == (0, 3)
    in_frame = np.array(rc.get_tcp_position()[1])
    # The frame is rotated 90 deg about z and shifted: base x becomes frame -y.
    np.testing.assert_allclose(in_frame[:3], [base[1] + 50.0, -(base[0] - 100.0), base[2] - 20.0], atol=1e-6)
    joints = rc.get_joint_position()[1]
    np.testing.assert_allclose(rc.kine_forward(joints)[1], in_frame, atol=1e-6)
    np.testing.assert_allclose(rc.kine_inverse(joints, in_frame)[1], joints, atol=1e-6)
    assert rc.set_user_frame_id(0) == (0,)
    np.testing.assert_allclose(rc.get_tcp_position()[1], base, atol=1e-6)
    assert rc.set_user_frame_id(9) == (-2,)
    flange = rc.get_tcp_position()[1]
    assert rc.set_tool_id(5)[0] == -2  # undefined tool
    assert rc.set_tool_data(2, [0, 0, 100.0, 0, 0, 0], "probe") == (0,) and rc.set_tool_id(2) == (0,)
    assert math.dist(flange[:3], rc.get_tcp_position()[1][:3]) == pytest.approx(100.0, abs=1e-6)
    assert rc.set_payload(0.4, (0.0, 0.0, 50.0)) == (0,) and rc.get_payload() == (0, (0.4, (0.0, 0.0, 50.0)))
    assert rc.set_payload(1.5, (0.0, 0.0, 50.0)) == (-2,)  # beyond the MiniCobo's 1 kg
    assert rc.set_payload(0.4, (0.0, math.nan, 50.0)) == (-2,)
    controller.pendant_lock_settings()
    assert rc.set_user_frame_id(3) == (2,) and rc.set_payload(0.1, (0, 0, 0)) == (2,)


def test_kinematics_collision_level_and_limits(rig):
    twin, _, rc = rig
    joints = rc.get_joint_position()[1]
    assert rc.kine_inverse(joints, [2000.0, 0, 0, 0, 0, 0]) == (-4,)
    assert rc.kine_inverse(joints, [math.nan, 0, 0, 0, 0, 0]) == (-2,)
    code, solution = rc.kine_inverse(joints, rc.kine_forward(joints)[1])
    assert code == 0
    np.testing.assert_allclose(solution, joints, atol=1e-6)
    assert rc.set_collision_level(7)[0] == -2 and rc.set_collision_level(3) == (0,)
    assert twin.collision_threshold_n == 75.0
    assert rc.is_on_limit() == (0, False) and rc.is_in_estop() == (0, False)


def test_estop_and_power_sequence(twin):
    jkrc, rc = connect(twin, "2.1")
    jkrc.controller.press_estop()
    assert rc.get_robot_state() == (0, (1, 0, 0))
    assert rc.power_on() == (-5,)
    assert rc.joint_move([0] * 6, 1, True, 0.5) == (-5,)
    jkrc.controller.release_estop()
    assert rc.joint_move([0] * 6, 1, True, 0.5) == (-6,)
    assert rc.power_on() == (0,)
    assert rc.joint_move([0] * 6, 1, True, 0.5) == (-7,)
    assert rc.logout() == (0,) and rc.power_on() == (-1,)
    jkrc.controller.drop_connection()
    assert rc.login() == (-3,)
