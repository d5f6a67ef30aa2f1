"""A scripted pick-and-place through the real drivers (JakaArm.servo_tcp + the gripper) in the lock-step twin."""

from __future__ import annotations

import numpy as np
import pytest

from robot.gripper import DigitalOutputGripper
from robot.jaka import JakaArm
from robot.scene import SceneSampler, grasp_tcp_pose, release_tcp_pose
from robot.sim.fake_jkrc import make_jkrc
from robot.sim.twin import Twin

APPROACH_MM = 80.0
SPEED_MM_S = 120.0


@pytest.fixture(scope="module")
def rig(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        arm = JakaArm(hardware_config, sdk=make_jkrc(twin), clock=twin.clock)
        gripper = DigitalOutputGripper(hardware_config, arm)
        with arm, gripper:
            yield twin, arm, gripper


def _go(twin, arm, pose, tolerance_mm=0.5) -> None:
    """Stream to ``pose`` in 100 ms commands like a policy would, until the TCP is there."""
    pose = np.asarray(pose, dtype=np.float64)
    distance = np.linalg.norm(pose[:3] - arm.state().tcp_pose[:3])
    arm.servo_tcp(pose, reach_in_s=max(distance / SPEED_MM_S, 0.1))
    deadline = twin.clock.now_s() + distance / SPEED_MM_S + 2.0
    while np.linalg.norm(twin.tcp_pose()[:3] - pose[:3]) > tolerance_mm:
        assert twin.clock.now_s() < deadline, f"TCP did not reach {pose[:3]} (at {twin.tcp_pose()[:3]})"
        twin.clock.sleep(0.1)


def _pick(twin, arm, gripper, spec) -> np.ndarray:
    grasp = grasp_tcp_pose(spec)
    _go(twin, arm, grasp + np.array([0.0, 0, APPROACH_MM, 0, 0, 0]))
    _go(twin, arm, grasp)
    gripper.close()
    twin.clock.sleep(gripper.settle_s + 0.1)
    lift = grasp.copy()
    lift[2] = release_tcp_pose(spec)[2]
    _go(twin, arm, lift)
    return grasp


@pytest.mark.parametrize("name", ["red_cube", "green_cylinder", "blue_prism"])
def test_scripted_pick_and_place_succeeds(rig, hardware_config, name):
    twin, arm, gripper = rig
    spec = twin.reset_scene(SceneSampler(hardware_config).sample(11, name))
    arm.start_servo()
    try:
        grasp = _pick(twin, arm, gripper, spec)
        assert twin.object_in_gripper(), "the object was not lifted between both fingers"
        assert twin.object_pose()[2] > 60.0
        _go(twin, arm, release_tcp_pose(spec, grasp[5]))
        gripper.open()
        twin.clock.sleep(1.0)
        report = twin.task_success()
        assert report, report.reason
        assert twin.collision is None
    finally:
        arm.stop_servo()


def test_dropping_outside_the_box_is_not_success(rig, hardware_config):
    twin, arm, gripper = rig
    spec = twin.reset_scene(SceneSampler(hardware_config).sample(12, "red_cube"))
    arm.start_servo()
    try:
        grasp = _pick(twin, arm, gripper, spec)
        beside = release_tcp_pose(spec, grasp[5])
        beside[0] -= 110.0  # in front of the box, on the table
        _go(twin, arm, beside)
        gripper.open()
        twin.clock.sleep(1.0)
        report = twin.task_success()
        assert not report and not report.inside_footprint and report.released and report.at_rest
        assert report.object_pos_mm[2] < 25.0  # it fell onto the table
    finally:
        arm.stop_servo()
