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

    check = commands.add_parser("check", help="connect arm, gripper and camera; print state, camera rate, limits")
    add_config_argument(check)
    check.add_argument("--backend", choices=("sim", "real"), default="real")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(func=_check)

    latency = commands.add_parser("latency", help="measure the arm's command-to-motion round trip and the camera's "
                                                  "capture-to-host delay; save them next to hardware.yaml")
    add_config_argument(latency)
    latency.add_argument("--backend", choices=("sim", "real"), default="real")
    latency.add_argument("--trials", type=int, default=10, help="commanded steps of the wrist (default 10)")
    latency.add_argument("--frames", type=int, default=60, help="camera frames to time (default 60)")
    latency.add_argument("--out", default=None, help="latency file (default: robot_latency.json next to hardware.yaml)")
    latency.add_argument("--json", action="store_true", help="print the measurement as JSON")
    latency.set_defaults(func=_latency)

    snapshot = commands.add_parser("snapshot", help="save the camera's current colour image as PNG")
    add_config_argument(snapshot)
    snapshot.add_argument("--backend", choices=("sim", "real"), default="real")
    snapshot.add_argument("--out", required=True, help="output PNG path")
    snapshot.add_argument("--seed", type=int, default=0, help="scene seed (sim backend)")
    snapshot.set_defaults(func=_snapshot)


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


def _check(args: argparse.Namespace) -> int:
    from fanvla.config import load_hardware_config
    from robot.check import format_report, run_check

    report = run_check(load_hardware_config(args.config), args.backend)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0 if report.healthy else 1


def _latency(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from fanvla.config import load_hardware_config
    from robot import latency
    from robot.factory import open_robot

    if args.trials < 1 or args.frames < 1:
        raise UserError(f"--trials and --frames must be at least 1, got {args.trials} and {args.frames}")
    config = load_hardware_config(args.config)
    with open_robot(config, args.backend) as robot:
        if robot.twin is not None:
            robot.twin.reset_scene()
        result = latency.measure(robot, trials=args.trials, frames=args.frames)
    path = latency.save(args.out or latency.latency_path(config), result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(latency.format_result(result))
    print(f"saved to {path} (stored with every recording and step log from now on)")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from PIL import Image

    from fanvla.config import load_hardware_config
    from robot.factory import open_robot

    with open_robot(load_hardware_config(args.config), args.backend, seed=args.seed) as robot:
        if robot.twin is not None:
            robot.twin.reset_scene()
            robot.clock.sleep(0.1)
        frame = robot.camera.latest()
    Image.fromarray(frame.color).save(args.out)
    print(f"{args.out}: {frame.color.shape[1]}x{frame.color.shape[0]} frame {frame.frame_number}")
    return 0
