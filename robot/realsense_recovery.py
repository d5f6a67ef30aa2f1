"""Bringing a stalled RealSense stream back: reset the device, wait for it to leave and return, restart with backoff.

librealsense's own advice for a device that stopped streaming is ``hardware_reset()`` and then waiting for the
device to re-enumerate before using it again (``rs2::device_hub``: ``is_connected`` / ``wait_for_device``; the
SDK's examples and issue threads report crashes from using a device that has not come back yet). So a restart
waits until the old device has left the bus (``device_hub.is_connected`` turns false), then until a device
with the same serial is listed again, before a fresh pipeline is started. Attempts are spaced by a growing
backoff; RealSenseCamera (robot/realsense.py) counts them against ``camera.retries``.
"""

from __future__ import annotations

import logging
import threading
import time

import pyrealsense2 as rs

log = logging.getLogger(__name__)

RESET_GONE_TIMEOUT_S = 5.0  # a D455 drops off the bus within about a second of hardware_reset
REENUMERATE_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 4.0
_POLL_S = 0.05


def backoff_s(attempt: int) -> float:
    """Wait before restart ``attempt`` (1-based): 0.5, 1, 2, 4, 4, ... s."""
    return min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S)


def total_backoff_s(retries: int) -> float:
    return sum(backoff_s(attempt) for attempt in range(1, retries + 1))


def listed_serials(context: rs.context) -> set[str]:
    serials = set()
    for device in context.query_devices():
        if device.supports(rs.camera_info.serial_number):
            serials.add(device.get_info(rs.camera_info.serial_number))
    return serials


def reset_and_wait_until_gone(device: rs.device, context: rs.context, stop: threading.Event) -> bool:
    """``hardware_reset`` the device and wait until it has left the bus; False when it cannot be reset
    (software and playback devices) or did not leave in time (then the restart proceeds anyway)."""
    try:
        device.hardware_reset()
    except RuntimeError as error:
        log.info("hardware_reset is not available on this device (%s): restarting the pipeline only", error)
        return False
    hub = rs.device_hub(context)
    deadline = time.monotonic() + RESET_GONE_TIMEOUT_S
    while hub.is_connected(device):
        if stop.wait(_POLL_S):
            return False
        if time.monotonic() > deadline:
            log.warning("the RealSense was still connected %.0f s after hardware_reset", RESET_GONE_TIMEOUT_S)
            return False
    return True


def wait_until_listed(context: rs.context, serial: str | None, stop: threading.Event,
                      timeout_s: float = REENUMERATE_TIMEOUT_S) -> bool:
    """True once a device with ``serial`` is listed (any device when None); False on time-out or stop."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        serials = listed_serials(context)
        if (serial in serials) if serial is not None else bool(serials):
            return True
        if time.monotonic() > deadline:
            return False
        stop.wait(_POLL_S * 4)
    return False
