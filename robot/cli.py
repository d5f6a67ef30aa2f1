"""``fanvla robot ...``: check the hardware (or the twin), grab a snapshot, validate hardware.yaml."""

from __future__ import annotations

import argparse
import json


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="hardware.yaml (default: $FANVLA_HARDWARE, ./hardware.yaml)")


def register(subparsers: argparse._SubParsersAction) -> None:
    robot = subparsers.add_parser("robot", help="arm, gripper, camera and the simulated twin")
    commands = robot.add_subparsers(dest="robot_command", metavar="ROBOT_COMMAND", required=True)

    config = commands.add_parser("config", help="validate hardware.yaml and print it with SDK units")
    add_config_argument(config)
    config.add_argument("--json", action="store_true", help="print the validated configuration as JSON")
    config.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    from fanvla.config import config_snapshot, load_hardware_config

    config = load_hardware_config(args.config)
    if args.json:
        print(json.dumps(config_snapshot(config), indent=2))
    else:
        print(f"{config.source_path}: valid")
        print(f"  robot {config.robot.ip}, home joints (rad) {[round(q, 4) for q in config.robot.home_joints_rad]}")
        box = config.safety.workspace_mm
        print(f"  workspace (mm) x {list(box.x)} y {list(box.y)} z {list(box.z)}")
        print(f"  camera {config.camera.color.width}x{config.camera.color.height}@{config.camera.color.fps}, "
              f"recording {config.recording.rate_hz} Hz")
    return 0
