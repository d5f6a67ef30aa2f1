"""Each rule of the safety layer, the watchdog and the software e-stop, on the MiniCobo's kinematics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot.errors import IKFailedError
from robot.frames import apply_pose_delta, pose_delta
from robot.interfaces import ArmState
from robot.kinematics import MiniCoboKinematics
from robot.safety import Command, SafetyLayer, Watchdog, WatchdogStatus
from robot.sim.clock import SimClock

PERIOD_S = 0.1
DOWN = (math.pi, 0.0, 0.0)  # tool pointing at the table


@pytest.fixture(scope="module")
def kinematics(hardware_config):
    return MiniCoboKinematics.from_config(hardware_config)


@pytest.fixture
def layer(hardware_config, kinematics):
    return SafetyLayer(hardware_config.safety, hardware_config.robot.joint_limits_rad, kinematics.forward,
                       kinematics.inverse)


def reachable_state(hardware_config, kinematics, candidates) -> ArmState:
    """The first candidate TCP position (tool down) the arm reaches from home, as a measured state."""
    home = np.array(hardware_config.robot.home_joints_rad)
    for position in candidates:
        try:
            joints = kinematics.inverse([*position, *DOWN], home)
        except IKFailedError:
            continue
        return ArmState(joints_rad=joints, tcp_pose=kinematics.forward(joints), timestamp_s=0.0)
    pytest.fail(f"none of {candidates} is reachable with the tool pointing down: check robot/kinematics.py")


def workspace_centre(hardware_config) -> tuple[float, float, float]:
    box = hardware_config.safety.workspace_mm
    return (sum(box.x) / 2, sum(box.y) / 2, sum(box.z) / 2)


@pytest.fixture
def work_state(hardware_config, kinematics) -> ArmState:
    """A state well inside the workspace (every step of 20 mm stays inside)."""
    cx, cy, cz = workspace_centre(hardware_config)
    return reachable_state(hardware_config, kinematics, [(cx, cy, cz), (cx - 40, cy, cz), (cx, cy, cz - 40),
                                                         (cx - 60, cy, cz - 40)])


def shifted(pose, dx=0.0, dy=0.0, dz=0.0, rotvec=(0.0, 0.0, 0.0)) -> np.ndarray:
    return apply_pose_delta(pose, [dx, dy, dz, *rotvec])


def test_a_small_pose_step_passes_unchanged(layer, work_state, kinematics):
    target = shifted(work_state.tcp_pose, 5.0, -3.0, 2.0, (0.0, 0.0, math.radians(2)))
    sent = layer.filter(Command.to_pose(target, 0.5), work_state, PERIOD_S)
    assert not sent.rejected and not sent.clamped and sent.reasons == ()
    np.testing.assert_allclose(sent.tcp_pose[:3], target[:3], atol=0.01)
    np.testing.assert_allclose(pose_delta(target, sent.tcp_pose)[3:], 0.0, atol=1e-4)
    np.testing.assert_allclose(kinematics.forward(sent.joints_rad), sent.tcp_pose)
    assert sent.gripper == 0.5


def test_translation_is_limited_per_command(layer, work_state, hardware_config):
    target = shifted(work_state.tcp_pose, dy=100.0)
    sent = layer.filter(Command.to_pose(target, 1.0), work_state, PERIOD_S)
    step = sent.tcp_pose[:3] - work_state.tcp_pose[:3]
    assert sent.clamped and not sent.rejected
    assert np.linalg.norm(step) == pytest.approx(hardware_config.safety.max_step_tcp_mm, abs=0.01)
    np.testing.assert_allclose(step / np.linalg.norm(step), [0.0, 1.0, 0.0], atol=1e-3)  # same direction
    assert any("TCP step 100.0 mm limited to 20 mm" in reason for reason in sent.reasons)


def test_rotation_is_limited_per_command(layer, work_state, hardware_config):
    target = shifted(work_state.tcp_pose, rotvec=(0.0, 0.0, math.radians(45)))
    # 0.2 s: at 90 deg/s the joints may turn 18 deg, so the 10 deg rotation limit is the one that binds.
    sent = layer.filter(Command.to_pose(target, 1.0), work_state, 0.2)
    rotation = pose_delta(work_state.tcp_pose, sent.tcp_pose)[3:]
    assert math.degrees(np.linalg.norm(rotation)) == pytest.approx(hardware_config.safety.max_step_rot_deg, abs=1e-3)
    np.testing.assert_allclose(rotation / np.linalg.norm(rotation), [0.0, 0.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(sent.tcp_pose[:3], work_state.tcp_pose[:3], atol=0.01)
    assert any("rotation 45.0 deg limited to 10 deg" in reason for reason in sent.reasons)


def test_tcp_target_is_clamped_into_the_workspace(layer, hardware_config, kinematics):
    box = hardware_config.safety.workspace_mm
    cx, cy, _ = workspace_centre(hardware_config)
    near_floor = reachable_state(hardware_config, kinematics, [(cx, cy, box.z[0] + 5), (cx - 40, cy, box.z[0] + 5)])
    target = shifted(near_floor.tcp_pose, dz=-15.0)  # 10 mm below the workspace floor
    sent = layer.filter(Command.to_pose(target, 1.0), near_floor, PERIOD_S)
    assert not sent.rejected and sent.clamped
    assert box.z[0] <= sent.tcp_pose[2] < box.z[0] + 0.2
    assert any("clamped into the workspace" in reason for reason in sent.reasons)


def test_outside_the_workspace_the_arm_may_move_back_but_not_further_out(layer, hardware_config, kinematics):
    """E.g. after hand-guiding: the allowed box widens to the measured TCP, so the arm can only come back in."""
    box = hardware_config.safety.workspace_mm
    _, cy, cz = workspace_centre(hardware_config)
    outside = reachable_state(hardware_config, kinematics, [(box.x[0] - 15, cy, cz), (box.x[0] - 15, cy, cz - 40),
                                                            (box.x[0] - 15, cy + 40, cz)])
    away = layer.filter(Command.to_pose(shifted(outside.tcp_pose, dx=-10.0), 1.0), outside, PERIOD_S)
    assert not away.rejected and away.tcp_pose[0] >= outside.tcp_pose[0] - 1e-6
    assert any("clamped into the workspace" in reason for reason in away.reasons)
    back = layer.filter(Command.to_pose(shifted(outside.tcp_pose, dx=50.0), 1.0), outside, PERIOD_S)
    assert not back.rejected
    assert back.tcp_pose[0] == pytest.approx(outside.tcp_pose[0] + hardware_config.safety.max_step_tcp_mm, abs=0.01)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_commands_are_rejected(layer, work_state, bad):
    pose = work_state.tcp_pose.copy()
    pose[4] = bad
    joints = work_state.joints_rad.copy()
    joints[2] = bad
    for command in (Command.to_pose(pose, 1.0), Command.to_joints(joints, 1.0),
                    Command.to_pose(work_state.tcp_pose, bad)):
        sent = layer.filter(command, work_state, PERIOD_S)
        assert sent.rejected and sent.hold
        assert sent.reasons == ("command contains NaN or inf",)
        np.testing.assert_array_equal(sent.joints_rad, work_state.joints_rad)


def test_a_non_finite_measured_state_holds(layer, work_state):
    joints = work_state.joints_rad.copy()
    joints[0] = math.nan
    broken = ArmState(joints_rad=joints, tcp_pose=work_state.tcp_pose, timestamp_s=0.0)
    sent = layer.filter(Command.to_joints(work_state.joints_rad, 1.0), broken, PERIOD_S)
    assert sent.rejected and "measured joints are not finite" in sent.reasons[0]


def test_ik_failure_holds(hardware_config, kinematics, work_state):
    # The same kinematics with joint 1 locked where it is: a sideways step has no solution.
    limits = list(hardware_config.robot.joint_limits_rad)
    q1 = float(work_state.joints_rad[0])
    limits[0] = (q1 - 1e-4, q1 + 1e-4)
    locked = MiniCoboKinematics(hardware_config.robot.tcp_offset_mm, limits)
    layer = SafetyLayer(hardware_config.safety, hardware_config.robot.joint_limits_rad, locked.forward,
                        locked.inverse)
    sent = layer.filter(Command.to_pose(shifted(work_state.tcp_pose, dy=15.0), 1.0), work_state, PERIOD_S)
    assert sent.rejected and sent.reasons[-1].startswith("IK failed")
    np.testing.assert_array_equal(sent.joints_rad, work_state.joints_rad)


def test_joints_are_clamped_into_their_limits(layer, hardware_config, work_state):
    upper_j6 = hardware_config.robot.joint_limits_rad[5][1]
    joints = work_state.joints_rad.copy()
    joints[5] = upper_j6 - math.radians(4)  # J6 rolls the tool about the TCP axis: the TCP stays put
    state = ArmState(joints_rad=joints, tcp_pose=work_state.tcp_pose, timestamp_s=0.0)
    target = joints.copy()
    target[5] = upper_j6 + math.radians(3)
    sent = layer.filter(Command.to_joints(target, 1.0), state, PERIOD_S)
    assert not sent.rejected and sent.clamped
    assert sent.joints_rad[5] == pytest.approx(upper_j6)
    assert any("joint limits: J6 clamped" in reason for reason in sent.reasons)


def test_joint_change_is_limited_by_the_joint_speed_keeping_its_direction(layer, hardware_config, work_state):
    period_s = 0.05
    max_step = hardware_config.safety.max_joint_speed_rad_s * period_s  # 4.5 deg at 90 deg/s
    delta = np.radians([0.0, 0.0, 0.0, 10.0, 0.0, 20.0])
    sent = layer.filter(Command.to_joints(work_state.joints_rad + delta, 1.0), work_state, period_s)
    step = sent.joints_rad - work_state.joints_rad
    assert not sent.rejected and sent.clamped
    assert np.max(np.abs(step)) == pytest.approx(max_step)
    np.testing.assert_allclose(step, delta * (max_step / np.max(np.abs(delta))), atol=1e-12)
    assert any("joint step 20.00 deg limited to 4.50 deg" in reason for reason in sent.reasons)


def test_joint_commands_respect_the_tcp_step_limit(layer, hardware_config, work_state):
    delta = np.radians([8.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # within 9 deg per 0.1 s, but the TCP swings > 20 mm
    sent = layer.filter(Command.to_joints(work_state.joints_rad + delta, 1.0), work_state, PERIOD_S)
    tcp_step = np.linalg.norm(sent.tcp_pose[:3] - work_state.tcp_pose[:3])
    assert not sent.rejected and sent.clamped
    assert hardware_config.safety.max_step_tcp_mm - 0.01 <= tcp_step <= hardware_config.safety.max_step_tcp_mm + 1e-3
    step = sent.joints_rad - work_state.joints_rad
    assert 0.0 < step[0] < delta[0] and np.allclose(step[1:], 0.0)


def test_a_joint_command_leaving_the_workspace_holds(layer, hardware_config, kinematics):
    box = hardware_config.safety.workspace_mm
    cx, cy, _ = workspace_centre(hardware_config)
    near_floor = reachable_state(hardware_config, kinematics, [(cx, cy, box.z[0] + 3), (cx - 40, cy, box.z[0] + 3)])
    # Joint step that lowers the TCP by ~10 mm: from the Jacobian, along -z.
    jac = kinematics.jacobian(near_floor.joints_rad)
    step = np.linalg.lstsq(jac, [0.0, 0.0, -10.0, 0.0, 0.0, 0.0], rcond=None)[0]
    sent = layer.filter(Command.to_joints(near_floor.joints_rad + step, 1.0), near_floor, PERIOD_S)
    assert sent.rejected and "would leave the workspace" in sent.reasons[-1]


def test_gripper_opening_is_clipped(layer, work_state):
    opened = layer.filter(Command.to_pose(work_state.tcp_pose, 1.7), work_state, PERIOD_S)
    assert opened.gripper == 1.0 and opened.clamped and "gripper opening 1.7 clipped to 1" in opened.reasons
    closed = layer.filter(Command.to_pose(work_state.tcp_pose, -0.2), work_state, PERIOD_S)
    assert closed.gripper == 0.0 and closed.clamped
    held = layer.filter(Command.to_pose(work_state.tcp_pose, math.nan), work_state, PERIOD_S)
    assert held.rejected and held.gripper == 0.0  # the last accepted opening


def test_estop_latches_until_reset(layer, work_state):
    command = Command.to_pose(shifted(work_state.tcp_pose, dx=5.0), 1.0)
    layer.estop("operator pressed stop")
    layer.estop("a second reason does not replace the first")
    for _ in range(3):
        sent = layer.filter(command, work_state, PERIOD_S)
        assert sent.rejected and sent.reasons == ("software e-stop latched: operator pressed stop",)
        np.testing.assert_array_equal(sent.joints_rad, work_state.joints_rad)
    assert layer.estopped and layer.estop_reason == "operator pressed stop"
    layer.reset_estop()
    assert not layer.estopped
    assert not layer.filter(command, work_state, PERIOD_S).rejected


def test_command_validation():
    with pytest.raises(ValueError, match="exactly one"):
        Command(gripper=1.0)
    with pytest.raises(ValueError, match="exactly one"):
        Command(tcp_pose=np.zeros(6), joints_rad=np.zeros(6))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        Command.to_joints(np.zeros(5), 1.0)
    source = np.zeros(6)
    command = Command.to_pose(source, 1.0)
    source[0] = 99.0  # the command keeps its own read-only copy
    assert command.tcp_pose[0] == 0.0 and not command.tcp_pose.flags.writeable


def test_period_must_be_positive(layer, work_state):
    with pytest.raises(ValueError, match="period_s"):
        layer.filter(Command.to_pose(work_state.tcp_pose, 1.0), work_state, 0.0)


def test_watchdog_holds_then_stops_on_the_clock():
    clock = SimClock(lambda: None, cycle_s=0.008)
    watchdog = Watchdog(hold_after_s=0.35, stop_after_s=1.5, clock=clock)
    assert watchdog.status() == WatchdogStatus.OK == "ok"
    clock.sleep_until(0.3)
    watchdog.feed()
    clock.sleep_until(0.6)
    assert watchdog.status() == "ok"  # 0.3 s since the last command
    clock.sleep_until(0.66)
    assert watchdog.status() == "hold"
    clock.sleep_until(1.79)
    assert watchdog.status() == "hold"
    clock.sleep_until(1.81)
    assert watchdog.status() == "stop"
    watchdog.feed()
    assert watchdog.status() == "ok" and watchdog.since_last_feed_s() == 0.0


def test_watchdog_counts_from_creation_and_checks_its_limits(hardware_config):
    clock = SimClock(lambda: None, cycle_s=0.008)
    clock.sleep_until(5.0)
    watchdog = Watchdog.from_config(hardware_config.safety, clock)
    assert watchdog.status() == "ok"
    clock.sleep_until(5.0 + hardware_config.safety.watchdog_stop_s)
    assert watchdog.status() == "stop"
    with pytest.raises(ValueError, match="hold_after_s < stop_after_s"):
        Watchdog(1.0, 0.5, clock)
