"""``fanvla robot check``: connect everything, measure the camera rate, report limits; healthy -> exit 0."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from fanvla.config import HardwareConfig
from robot.errors import RobotError
from robot.factory import Backend, open_robot
from robot.input_devices import teleop_devices
from robot.kinematics import MiniCoboKinematics
from robot.units import rad_to_deg

# A camera delivering less than this fraction of its configured rate is reported as unhealthy.
MIN_RATE_FRACTION = 0.8
# Local DH kinematics and the controller's may differ by this much before the check warns.
KINEMATICS_TOLERANCE_MM = 1.0


@dataclass
class CheckReport:
    backend: str
    healthy: bool = True
    problems: list[str] = field(default_factory=list)
    arm: dict = field(default_factory=dict)
    gripper: dict = field(default_factory=dict)
    camera: dict = field(default_factory=dict)
    safety: dict = field(default_factory=dict)
    teleop: dict = field(default_factory=dict)  # informative: a missing device does not make the check fail

    def fail(self, problem: str) -> None:
        self.healthy = False
        self.problems.append(problem)

    def to_dict(self) -> dict:
        return asdict(self)


def run_check(config: HardwareConfig, backend: Backend, measure_s: float = 1.0) -> CheckReport:
    report = CheckReport(backend)
    report.teleop = {name: status.to_dict() for name, status in teleop_devices().items()}
    try:
        with open_robot(config, backend) as robot:
            if robot.twin is not None:
                robot.twin.reset_scene()
            _check_arm(robot, report)
            _check_gripper(robot, report)
            _check_camera(robot, report, measure_s)
            report.safety = _safety_limits(config)
    except RobotError as error:
        report.fail(f"{type(error).__name__}: {error}")
    return report


def _check_arm(robot, report: CheckReport) -> None:
    state = robot.arm.state()
    report.arm = {"joints_deg": [round(float(rad_to_deg(q)), 3) for q in state.joints_rad],
                  "tcp_pose_mm_rad": [round(float(v), 4) for v in state.tcp_pose], "error": state.error,
                  "sdk": robot.arm.sdk_info() if hasattr(robot.arm, "sdk_info") else None}
    if state.error:
        report.fail(f"arm: {state.error}")
    local = MiniCoboKinematics.from_config(robot.config).forward(state.joints_rad)
    gap_mm = float(np.linalg.norm(local[:3] - state.tcp_pose[:3]))
    report.arm["local_vs_controller_fk_mm"] = round(gap_mm, 4)
    if gap_mm > KINEMATICS_TOLERANCE_MM:
        report.fail(f"arm: the DH kinematics in robot/kinematics.py disagree with the controller by {gap_mm:.2f} mm "
                    "at the current joints; check robot.tcp_offset_mm and the DH table before trusting TCP poses")


def _check_gripper(robot, report: CheckReport) -> None:
    applied = robot.gripper.open()
    state = robot.gripper.state()
    report.gripper = {"command": state.command, "width": state.width}
    if applied != 1.0 or state.command != 1.0:
        report.fail(f"gripper: commanded open but reports {state.command}")


def _check_camera(robot, report: CheckReport, measure_s: float) -> None:
    clock, camera, profile = robot.clock, robot.camera, robot.config.camera.color
    first = camera.latest()
    start_s, frames, last_number = clock.now_s(), 0, first.frame_number
    while clock.now_s() - start_s < measure_s:
        clock.sleep(0.5 / profile.fps)
        number = camera.latest().frame_number
        frames += number != last_number
        last_number = number
    rate_hz = frames / max(clock.now_s() - start_s, 1e-9)
    report.camera = {"resolution": list(first.color.shape[1::-1]), "configured_fps": profile.fps,
                     "measured_fps": round(rate_hz, 2), "depth": first.depth_mm is not None,
                     "time_base": "simulated" if clock.is_simulated else "wall",
                     "intrinsics": camera.intrinsics.to_dict()}
    if rate_hz < MIN_RATE_FRACTION * profile.fps:
        report.fail(f"camera: {rate_hz:.1f} frames/s measured, configured {profile.fps}; check the USB3 port/cable")


def _safety_limits(config: HardwareConfig) -> dict:
    safety = config.safety
    return {"workspace_mm": safety.workspace_mm.model_dump(), "max_step_tcp_mm": safety.max_step_tcp_mm,
            "max_step_rot_deg": safety.max_step_rot_deg, "max_tcp_speed_mm_s": safety.max_tcp_speed_mm_s,
            "max_joint_speed_deg_s": safety.max_joint_speed_deg_s, "joint_limits_deg": config.robot.joint_limits_deg,
            "watchdog_hold_s": safety.watchdog_hold_s, "watchdog_stop_s": safety.watchdog_stop_s}


def format_report(report: CheckReport) -> str:
    lines = [f"backend: {report.backend}"]
    if report.arm:
        lines.append(f"arm: joints (deg) {report.arm['joints_deg']}")
        lines.append(f"     TCP (mm, rad) {report.arm['tcp_pose_mm_rad']}  "
                     f"[DH vs controller FK {report.arm['local_vs_controller_fk_mm']} mm]")
    if report.arm.get("sdk"):
        sdk = report.arm["sdk"]
        lines.append(f"     SDK {sdk['version'] or '(version unknown)'}: {sdk['servo_call']} step_num "
                     f"{sdk['step_num']}, joints from {sdk['joints_call']} ({sdk['measured_state']}), state from "
                     f"{sdk['state_call']}")
    if report.gripper:
        lines.append(f"gripper: command {report.gripper['command']} width {report.gripper['width']}")
    if report.camera:
        c = report.camera
        lines.append(f"camera: {c['resolution'][0]}x{c['resolution'][1]} depth={c['depth']} "
                     f"{c['measured_fps']} frames/s measured ({c['time_base']} time; configured {c['configured_fps']})")
    if report.safety:
        s = report.safety
        lines.append(f"safety: workspace {s['workspace_mm']} mm; step <= {s['max_step_tcp_mm']} mm / "
                     f"{s['max_step_rot_deg']} deg; TCP <= {s['max_tcp_speed_mm_s']} mm/s; joints <= "
                     f"{s['max_joint_speed_deg_s']} deg/s; watchdog hold {s['watchdog_hold_s']} s stop "
                     f"{s['watchdog_stop_s']} s")
    for name, status in report.teleop.items():
        lines.append(f"teleop {name}: {'usable' if status['usable'] else 'NOT usable'}: {status['detail']}")
    lines.extend(f"PROBLEM: {problem}" for problem in report.problems)
    lines.append("healthy" if report.healthy else "NOT healthy")
    return "\n".join(lines)
