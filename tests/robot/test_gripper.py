"""DigitalOutputGripper: a binary device on one controller output; in the twin it drives the fingers."""

from __future__ import annotations

import math

import pytest

from robot.errors import BadHandleError, BadParameterError
from robot.gripper import IO_TYPE_CODES, DigitalOutputGripper, make_gripper
from robot.jaka import JakaArm
from robot.sim.fake_jkrc import make_jkrc
from robot.sim.twin import Twin


@pytest.fixture
def rig(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        sdk = make_jkrc(twin)
        arm = JakaArm(hardware_config, sdk=sdk, clock=twin.clock)
        with arm:
            yield twin, sdk.controller, arm


def _output(controller, config) -> bool:
    return controller.outputs[(IO_TYPE_CODES[config.gripper.io_type], config.gripper.io_index)]


def test_command_threshold_and_output_level(rig, hardware_config):
    twin, controller, arm = rig
    gripper = make_gripper(hardware_config, arm)
    assert isinstance(gripper, DigitalOutputGripper)
    gripper.connect()  # opens
    close_level = hardware_config.gripper.close_level
    assert _output(controller, hardware_config) == (not close_level)
    assert gripper.command(0.49) == 0.0 and _output(controller, hardware_config) == close_level
    assert gripper.command(0.5) == 1.0 and _output(controller, hardware_config) == (not close_level)
    assert gripper.close() == 0.0
    state = gripper.state()
    assert state.command == 0.0 and state.width is None and state.timestamp_s == twin.clock.now_s()


def test_inverted_close_level_flips_the_output(hardware_config):
    config = hardware_config.with_overrides({"gripper.close_level": not hardware_config.gripper.close_level})
    with Twin(config, realtime=False) as twin:
        sdk = make_jkrc(twin)
        with JakaArm(config, sdk=sdk, clock=twin.clock) as arm:
            gripper = DigitalOutputGripper(config, arm)
            gripper.close()
            assert _output(sdk.controller, config) == config.gripper.close_level
            twin.clock.sleep(config.gripper.settle_s)
            assert twin.gripper_opening() < 0.05  # the twin follows the configured level


def test_fingers_follow_the_output_within_settle_time(rig, hardware_config):
    twin, _, arm = rig
    gripper = DigitalOutputGripper(hardware_config, arm)
    gripper.close()
    assert not gripper.settled
    twin.clock.sleep(hardware_config.gripper.settle_s)
    assert gripper.settled and twin.gripper_opening() < 0.05
    gripper.open()
    twin.clock.sleep(hardware_config.gripper.settle_s)
    assert twin.gripper_opening() > 0.95


def test_bad_commands_and_a_disconnected_arm_are_refused(rig, hardware_config):
    _, _, arm = rig
    gripper = DigitalOutputGripper(hardware_config, arm)
    with pytest.raises(BadParameterError, match="finite"):
        gripper.command(math.nan)
    arm.disconnect()
    with pytest.raises(BadHandleError, match="not connected"):
        gripper.close()
