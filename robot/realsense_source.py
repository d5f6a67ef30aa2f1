"""Where a RealSenseCamera's frames come from (a device in an ``rs.context``, or a recording), and the
device-level helpers the driver needs: listing devices, intrinsics, the modes a device offers, what to check."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyrealsense2 as rs

from robot.interfaces import Intrinsics

log = logging.getLogger(__name__)

TROUBLESHOOTING = (
    "Check: the camera is on a USB3 port (a USB2 link shrinks the mode table and drops frames) and not "
    "behind an unpowered hub; the cable is a short USB3 data cable, firmly seated at both ends; "
    "camera.serial in hardware.yaml matches the camera (`rs-enumerate-devices -s`); no other program "
    "(realsense-viewer, another fanvla process) holds the camera. This is the classic librealsense "
    "failure \"Frame didn't arrive within N\"."
)


def connected_devices(context: rs.context) -> list[tuple[str, str]]:
    """(serial number, name) of every RealSense the context can see."""
    found = []
    for device in context.query_devices():
        found.append((device_info(device, rs.camera_info.serial_number), device_info(device, rs.camera_info.name)))
    return found


def device_info(device: rs.device, key: rs.camera_info) -> str:
    return device.get_info(key) if device.supports(key) else "?"


def intrinsics_from_profile(profile: rs.video_stream_profile) -> Intrinsics:
    intr = profile.get_intrinsics()
    return Intrinsics(width=intr.width, height=intr.height, fx=intr.fx, fy=intr.fy, ppx=intr.ppx, ppy=intr.ppy,
                      distortion_model=intr.model.name, coeffs=tuple(float(c) for c in intr.coeffs))


@dataclass(frozen=True)
class Source:
    """Where frames come from: a device in ``context`` (real or software) or a recording file.

    The only source-specific code: how the pipeline's config selects the device, whether warm-up
    frames are dropped, and whether a stall can be cured by restarting (recordings simply end).
    """

    context: rs.context
    playback_path: Path | None

    @property
    def is_playback(self) -> bool:
        return self.playback_path is not None

    def select(self, config: rs.config, serial: str | None) -> None:
        if self.playback_path is not None:
            config.enable_device_from_file(str(self.playback_path), repeat_playback=False)
        elif serial is not None:
            config.enable_device(serial)

    def describe(self, serial: str | None) -> str:
        return f"recording {self.playback_path}" if self.is_playback else f"RealSense {serial or '?'}"

    def available_modes(self, serial: str | None) -> str:
        try:
            if self.is_playback:
                # A fresh context: the failed pipeline has already loaded the file into ours.
                device = rs.context().load_device(str(self.playback_path))
            else:
                device = next(d for d in self.context.query_devices()
                              if device_info(d, rs.camera_info.serial_number) == serial)
            modes = sorted({
                f"{p.stream_type().name} {v.width()}x{v.height()} {p.format().name} @ {p.fps()}"
                for sensor in device.query_sensors() for p in sensor.get_stream_profiles()
                if p.stream_type() in (rs.stream.color, rs.stream.depth) and (v := p.as_video_stream_profile())
            })
        except (RuntimeError, StopIteration) as error:
            log.debug("cannot list modes: %s", error)
            return ""
        shown = modes[:20]
        return "; ".join(shown) + (f" (+{len(modes) - len(shown)} more)" if len(modes) > len(shown) else "")
