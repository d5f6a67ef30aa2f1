"""The fake jkrc module itself: JAKA's call names, tuple returns, units and codes, as JakaArm does not use them all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot.sim.fake_jkrc import make_jkrc
from robot.sim.twin import Twin


@pytest.fixture
def rig(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        jkrc = make_jkrc(twin)
        rc = jkrc.RC(hardware_config.robot.ip)
        assert rc.login() == (0,)
        assert rc.power_on() == (0,) and rc.enable_robot() == (0,)
        yield twin, jkrc, rc


def test_two_modules_of_one_twin_share_the_controller(rig):
    twin, _, _ = rig
    other = make_jkrc(twin).RC("10.0.0.1")
    assert other.get_robot_state()[0] == -1  # its own session is not logged in
    other.login()
    assert other.get_robot_state() == (0, (0, 1, 1))  # but the controller is powered and enabled already


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
    assert twin.clock.now_s() - before == pytest.approx(1.5, abs=0.05)  # 60 mm at 60 mm/s, cubic profile
    assert rc.is_in_pos() == (0, True)
    path = np.array(samples)
    assert np.max(np.abs(path[:, 1] - start[1])) < 0.05 and np.max(np.abs(path[:, 2] - start[2])) < 0.05
    np.testing.assert_allclose(rc.get_tcp_position()[1][:3], goal[:3], atol=0.05)


def test_non_blocking_move_and_abort(rig):
    twin, _, rc = rig
    joints = np.array(rc.get_joint_position()[1])
    assert rc.joint_move([0.5, 0, 0, 0, 0, 0], 1, False, 0.5) == (0,)  # INCR, returns at once
    twin.clock.sleep(0.3)
    assert rc.is_in_pos() == (0, False)
    assert rc.motion_abort() == (0,)
    twin.clock.sleep(0.2)
    moved = np.array(rc.get_joint_position()[1]) - joints
    assert 0.01 < moved[0] < 0.5 and rc.is_in_pos() == (0, True)


def test_servo_p_and_servo_j_in_servo_mode(rig):
    twin, _, rc = rig
    assert rc.servo_move_enable(True) == (0,)
    assert rc.servo_move_use_joint_LPF(50.0)[0] == 2  # filters only outside servo mode
    pose = list(rc.get_tcp_position()[1])
    pose[2] += 1.0
    assert rc.servo_p(pose, 0) == (0,)
    twin.clock.sleep(0.1)
    assert rc.get_tcp_position()[1][2] == pytest.approx(pose[2], abs=0.02)
    joints = list(rc.get_joint_position()[1])
    jump = joints.copy()
    jump[0] += 0.2  # 0.2 rad in 8 ms: faster than the controller allows
    assert rc.servo_j(jump, 0, 1) == (-12,)
    assert rc.servo_j([0, 0, 0, 0, 0, 0.002], 1, 1) == (0,)  # INCR
    far = joints.copy()
    far[2] = math.radians(140)
    assert rc.servo_j(far, 0) == (-22,)
    assert "beyond the soft limit" in rc.get_last_error()[1][1]


def test_status_tool_io_and_kinematics_calls(rig):
    twin, _, rc = rig
    code, status = rc.get_robot_status()
    assert code == 0 and status[2] == 1 and status[3] == 1 and len(status[8]) == 6
    assert rc.set_tool_id(5)[0] == -2  # undefined tool
    flange = rc.get_tcp_position()[1]
    assert rc.set_tool_data(2, [0, 0, 100.0, 0, 0, 0], "probe") == (0,) and rc.set_tool_id(2) == (0,)
    tool = rc.get_tcp_position()[1]
    assert math.dist(flange[:3], tool[:3]) == pytest.approx(100.0, abs=1e-6)
    assert rc.set_digital_output(1, 3, 1) == (0,) and rc.get_digital_output(1, 3) == (0, 1)
    joints = rc.get_joint_position()[1]
    assert rc.kine_inverse(joints, [2000.0, 0, 0, 0, 0, 0]) == (-4,)
    code, solution = rc.kine_inverse(joints, rc.kine_forward(joints)[1])
    np.testing.assert_allclose(solution, joints, atol=1e-6)
    assert rc.set_collision_level(7)[0] == -2 and rc.set_collision_level(3) == (0,)
    assert twin.collision_threshold_n == 75.0
    assert rc.is_on_limit() == (0, False) and rc.is_in_estop() == (0, False)


def test_estop_and_power_sequence(rig):
    _, jkrc, rc = rig
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
