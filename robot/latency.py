"""Latency of the sensing-acting chain: measured once per set-up, stored, and attached to every control step.

The chain of one step: camera capture -> observation (frame + arm state read) -> command sent (after the agent
and the safety layer) -> motion start (the arm's measured joints begin to move). Two of its delays are
properties of the hardware and are measured by ``fanvla robot latency`` in the manner of UMI (Chi et al., 2024,
who measure each device's latency once and compensate for it):

- the arm's round trip: from a commanded step (``servo_joints``) to the first measured motion, polling the
  arm's measured joints (``get_actual_joint_position``; an SDK without it reports the command and the figure
  is flagged as unreliable);
- the camera's capture-to-host delay: host receipt minus capture time, per frame, from the ``global_time``
  stamps a D455 gives (librealsense maps the device clock onto the host's system clock).

The figures are saved as JSON next to hardware.yaml (``robot_latency.json``, one entry per backend), loaded
with the robot, stored in each episode's metadata, and combined per step with the delays measured at that step
(``step_timing``), which the recorder and the policy step log keep. (A delay *added* to a policy's answers to
rehearse a slower model is a different thing: robot/injected_latency.py.)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from robot.interfaces import CameraFrame

log = logging.getLogger(__name__)

LATENCY_FILE = "robot_latency.json"
FORMAT_VERSION = 1
STEP_DEG = 2.0  # the commanded step on the last joint (the wrist turns in place: nothing moves through space)
MOTION_THRESHOLD_DEG = 0.05  # measured motion beyond this counts as the start of motion
RESPONSE_TIMEOUT_S = 1.0
TIMING_KEYS = ("capture_to_observation_s", "observation_to_command_s", "command_to_motion_s")


def latency_path(config) -> Path:
    """``robot_latency.json`` next to the hardware.yaml the config was loaded from (else the working directory)."""
    source = getattr(config, "source_path", None)
    return (Path(source).parent if source else Path.cwd()) / LATENCY_FILE


def summary(values_s) -> dict[str, float | int]:
    values = np.asarray([v for v in values_s if math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return {"samples": 0}
    return {"median": float(np.median(values)), "p90": float(np.quantile(values, 0.9)), "min": float(values.min()),
            "max": float(values.max()), "samples": int(values.size)}


# -- measuring -------------------------------------------------------------------------------------------------------
def measure_arm(arm, clock, trials: int = 10, poll_s: float = 0.002, settle_s: float = 0.3) -> dict[str, Any]:
    """Round trip from a commanded step to the first measured motion, ``trials`` times (alternating direction).

    Runs in servo mode from the current pose; the last joint steps by ``STEP_DEG`` and back. On a simulated
    clock ``poll_s`` is one controller cycle at least (time moves in 8 ms cycles there).
    """
    poll_s = max(poll_s, getattr(clock, "cycle_s", 0.0))
    threshold = math.radians(MOTION_THRESHOLD_DEG)
    arm.start_servo()
    samples: list[float] = []
    try:
        rest = arm.state().joints_rad
        for trial in range(trials):
            clock.sleep(settle_s)
            start = arm.state().joints_rad
            target = rest.copy()
            target[-1] += math.radians(STEP_DEG) * (1 if trial % 2 == 0 else 0)
            sent_s = clock.now_s()
            arm.servo_joints(target, reach_in_s=0.0)
            samples.append(_first_motion_s(arm, clock, start, threshold, poll_s) - sent_s)
    finally:
        arm.hold()
        arm.stop_servo()
    capabilities = getattr(arm, "capabilities", None)
    measured = capabilities.measured_is_actual if capabilities is not None else True
    result = {"command_to_motion_s": summary(samples), "step_deg": STEP_DEG, "threshold_deg": MOTION_THRESHOLD_DEG,
              "measured_state": "actual" if measured else "possibly the command"}
    if not measured:
        result["warning"] = ("this SDK has no get_actual_joint_position: the 'motion' seen may be the command echoed "
                             "back, so the round trip is a lower bound")
    return result


def _first_motion_s(arm, clock, start: np.ndarray, threshold: float, poll_s: float) -> float:
    deadline = clock.now_s() + RESPONSE_TIMEOUT_S
    while clock.now_s() < deadline:
        clock.sleep(poll_s)
        if np.max(np.abs(arm.state().joints_rad - start)) > threshold:
            return clock.now_s()
    return math.nan  # no motion within a second: reported as a missing sample


def measure_camera(camera, clock, fps: float, frames: int = 60) -> dict[str, Any]:
    """Capture-to-host delay of ``frames`` distinct frames, sampled once per frame period (needs ``global_time``)."""
    delays: list[float] = []
    domains: set[str] = set()
    seen: set[int] = set()
    for _ in range(4 * frames):
        if len(seen) >= frames:
            break
        clock.sleep(1.0 / fps)
        frame = camera.latest()
        if frame.frame_number in seen:
            continue
        seen.add(frame.frame_number)
        domains.add(str(frame.metadata.get("timestamp_domain", "unknown")))
        if "capture_to_host_s" in frame.metadata:
            delays.append(float(frame.metadata["capture_to_host_s"]))
    result: dict[str, Any] = {"capture_to_host_s": summary(delays), "timestamp_domains": sorted(domains),
                              "frames": len(seen)}
    if not delays:
        result["warning"] = (f"frames are stamped in {sorted(domains)}, not global_time: the capture-to-host delay "
                             "cannot be measured; enable global time on the camera (rs.option.global_time_enabled)")
    return result


def measure(robot, trials: int = 10, frames: int = 60) -> dict[str, Any]:
    """Both measurements on an open ``robot.factory.Robot`` (camera first: the arm test moves the wrist)."""
    camera = measure_camera(robot.camera, robot.clock, robot.config.camera.color.fps, frames)
    arm = measure_arm(robot.arm, robot.clock, trials)
    return {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "backend": robot.backend,
            "clock": "simulated" if robot.clock.is_simulated else "wall", "arm": arm, "camera": camera,
            "sdk": _sdk_info(robot.arm)}


def _sdk_info(arm) -> dict[str, Any] | None:
    try:
        return arm.sdk_info()
    except Exception:  # an arm without SDK information (or not connected): nothing to add
        return None


# -- storing ---------------------------------------------------------------------------------------------------------
def save(path: str | os.PathLike[str], result: Mapping[str, Any]) -> Path:
    """Write ``result`` under its backend into the latency file (other backends' entries are kept)."""
    path = Path(path)
    data = _read(path) if path.exists() else {"format": FORMAT_VERSION, "backends": {}}
    data["backends"][result["backend"]] = dict(result)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temp, path)  # never a half-written file next to hardware.yaml
    return path


def load(config, backend: str) -> dict[str, Any] | None:
    """The figures measured for ``backend`` next to hardware.yaml, or None when never measured."""
    path = latency_path(config)
    if not path.exists():
        return None
    try:
        return _read(path)["backends"].get(backend)
    except ValueError as error:
        log.warning("ignoring %s: %s", path, error)
        return None


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable latency file ({error}); re-run `fanvla robot latency`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or not isinstance(data.get("backends"), dict):
        raise ValueError(f"{path} is not a fanvla latency file of format {FORMAT_VERSION}; re-run "
                         "`fanvla robot latency`")
    return data


def format_result(result: Mapping[str, Any]) -> str:
    def figure(stats: Mapping[str, Any]) -> str:
        if not stats.get("samples"):
            return "not measured"
        return (f"median {stats['median'] * 1e3:.1f} ms, p90 {stats['p90'] * 1e3:.1f} ms, max {stats['max'] * 1e3:.1f} "
                f"ms over {stats['samples']}")

    arm, camera = result["arm"], result["camera"]
    lines = [f"backend {result['backend']} ({result['clock']} time)",
             f"arm: command -> first measured motion: {figure(arm['command_to_motion_s'])} "
             f"({arm['step_deg']} deg wrist steps, motion > {arm['threshold_deg']} deg; state {arm['measured_state']})",
             f"camera: capture -> host: {figure(camera['capture_to_host_s'])} (timestamps "
             f"{', '.join(camera['timestamp_domains']) or 'none'})"]
    lines += [f"WARNING: {part['warning']}" for part in (arm, camera) if "warning" in part]
    return "\n".join(lines)


# -- per step --------------------------------------------------------------------------------------------------------
def calibrated(latency: Mapping[str, Any] | None, device: str, key: str) -> float:
    """The median of a measured delay (``device`` arm/camera), NaN when not measured."""
    try:
        value = latency[device][key]["median"]
    except (KeyError, TypeError):
        return math.nan
    return float(value)


def step_timing(frame: CameraFrame, observed_s: float, sent_s: float,
                latency: Mapping[str, Any] | None) -> dict[str, float]:
    """The delays of one control step, in seconds (NaN where unknown: no command sent, nothing calibrated).

    ``capture_to_observation_s``: from the frame's capture (its ``capture_to_host_s``, else the calibrated camera
    delay) to the end of the observation; ``observation_to_command_s``: the agent and the safety layer;
    ``command_to_motion_s``: the arm's calibrated round trip (``fanvla robot latency``).
    """
    to_host = frame.metadata.get("capture_to_host_s", calibrated(latency, "camera", "capture_to_host_s"))
    capture_s = frame.received_s - float(to_host)
    motion = calibrated(latency, "arm", "command_to_motion_s") if math.isfinite(sent_s) else math.nan
    return {"capture_to_observation_s": observed_s - capture_s, "observation_to_command_s": sent_s - observed_s,
            "command_to_motion_s": motion}
