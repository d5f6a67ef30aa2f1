from __future__ import annotations

import pytest
import yaml

from fanvla.cli import main
from fanvla.config import ConfigError, load_hardware_config
from tests.conftest import REPO_ROOT


def _write(tmp_path, mutate) -> str:
    data = yaml.safe_load((REPO_ROOT / "hardware.yaml").read_text())
    mutate(data)
    path = tmp_path / "hardware.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_repository_config_is_valid(hardware_config):
    assert len(hardware_config.robot.home_joints_rad) == 6
    assert hardware_config.recording.period_s == pytest.approx(1.0 / hardware_config.recording.rate_hz)


def test_out_of_range_value_names_key_value_and_range(tmp_path):
    path = _write(tmp_path, lambda d: d["robot"].update(servo_rate_hz=500))
    with pytest.raises(ConfigError) as info:
        load_hardware_config(path)
    message = str(info.value)
    assert "robot.servo_rate_hz = 500" in message
    assert "0 < value <= 125" in message


def test_reversed_workspace_axis_and_unknown_key_are_reported_together(tmp_path):
    def mutate(d):
        d["safety"]["workspace_mm"]["z"] = [300, 10]
        d["recording"]["rate_hz_typo"] = 10

    with pytest.raises(ConfigError) as info:
        load_hardware_config(_write(tmp_path, mutate))
    message = str(info.value)
    assert "safety.workspace_mm.z = [300, 10]" in message and "lower bound must be below upper bound" in message
    assert "recording.rate_hz_typo: unknown key" in message


def test_home_outside_joint_limits_is_rejected(tmp_path):
    path = _write(tmp_path, lambda d: d["robot"].update(home_joints_deg=[0, 150, 0, 0, 0, 0]))
    with pytest.raises(ConfigError, match=r"home_joints_deg\[1\] = 150"):
        load_hardware_config(path)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_hardware_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_hardware_config(bad)


def test_overrides_are_validated(hardware_config):
    changed = hardware_config.with_overrides({"camera.color.fps": 15})
    assert changed.camera.color.fps == 15 and hardware_config.camera.color.fps == 30
    with pytest.raises(ConfigError, match=r"camera\.color\.fps"):
        hardware_config.with_overrides({"camera.color.fps": 0})
    with pytest.raises(ConfigError, match="no such key"):
        hardware_config.with_overrides({"camera.colour.fps": 15})


def test_the_wrist_camera_is_optional_and_checked(hardware_config):
    assert hardware_config.cameras.wrist is None  # the repository's file: one camera
    wrist = hardware_config.with_overrides({"cameras.wrist": {"serial": "123"}}).cameras.wrist
    assert (wrist.color.width, wrist.color.height, wrist.color.fps) == (424, 240, 15)
    camera = wrist.as_camera_config()
    assert camera.serial == "123" and not camera.depth.enabled and camera.color == wrist.color
    with pytest.raises(ConfigError, match=r"cameras\.wrist\.colour: unknown key"):
        hardware_config.with_overrides({"cameras.wrist": {"colour": {}}})
    with pytest.raises(ConfigError, match="its own serial"):
        hardware_config.with_overrides({"camera.serial": "7", "cameras.wrist": {"serial": "7"}})
    with pytest.raises(ConfigError, match="looks nowhere"):
        hardware_config.with_overrides({"cameras.wrist": {"mount_pos_mm": [0, 0, 9], "lookat_mm": [0, 0, 9]}})
    # At the robot, two RealSense devices are told apart by serial only: refused before anything connects.
    from robot.errors import RobotError
    from robot.factory import open_robot

    with pytest.raises(RobotError, match="give both RealSense serials"):
        open_robot(hardware_config.with_overrides({"cameras.wrist": {"serial": "123"}}), "real")


def test_cli_config_command_exit_codes(tmp_path, capsys):
    assert main(["robot", "config", "--config", str(REPO_ROOT / "hardware.yaml")]) == 0
    bad = _write(tmp_path, lambda d: d["gripper"].update(io_type="flange"))
    assert main(["robot", "config", "--config", bad]) == 2
    assert "gripper.io_type = 'flange'" in capsys.readouterr().err
