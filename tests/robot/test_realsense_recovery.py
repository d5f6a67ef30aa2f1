"""RealSenseCamera recovery (restarts with backoff, failed restarts counted, a clear final error) and the
global_time domain with its capture-to-host delay, on the software D455 through the real pyrealsense2 SDK.

A USB device that leaves the bus cannot exist here: where a test needs one, it replaces librealsense's
device listing or pipeline start at the SDK boundary, and says so."""

from __future__ import annotations

import threading
import time

import numpy as np
import pyrealsense2 as rs
import pytest

import robot.realsense as realsense_module
from robot import realsense_recovery
from robot.clock import RealClock
from robot.errors import CameraTimeoutError
from robot.interfaces import Intrinsics
from robot.realsense import RealSenseCamera
from robot.realsense_recovery import backoff_s, reset_and_wait_until_gone
from robot.sim.clock import SimClock
from robot.sim.software_realsense import SoftwareRealSense

WIDTH, HEIGHT = 160, 120
INTRINSICS = Intrinsics(WIDTH, HEIGHT, fx=96.0, fy=96.5, ppx=80.5, ppy=59.5)


def camera_config(hardware_config, retries: int):
    return hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT, "camera.depth.width": WIDTH,
        "camera.depth.height": HEIGHT, "camera.frame_timeout_s": 0.3, "camera.retries": retries,
    }).camera


def frames(n: int = 1):
    return np.full((HEIGHT, WIDTH, 3), n % 256, np.uint8), np.full((HEIGHT, WIDTH), 500 + n, np.uint16)


def reader_alive() -> bool:
    return any(t.name == "fanvla-realsense" and t.is_alive() for t in threading.enumerate())


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def device(hardware_config):
    return SoftwareRealSense(camera_config(hardware_config, 3), INTRINSICS, frames)


def test_backoff_grows_and_is_capped():
    assert [backoff_s(k) for k in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_device_that_comes_back_late_is_retried_until_it_streams(hardware_config, device, monkeypatch):
    config = camera_config(hardware_config, 3)
    listed = iter([False, True])  # not re-enumerated at the first attempt (stands in for USB), back at the second
    monkeypatch.setattr(realsense_module, "wait_until_listed", lambda *args, **kwargs: next(listed, True))
    with RealSenseCamera(config, context=device.context, warmup_frames=0) as camera:
        camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
        wait_until(lambda: camera.restarts == 1, timeout_s=config.frame_timeout_s + backoff_s(1) + backoff_s(2) + 2)
        assert camera.failed_restarts == 1 and reader_alive()
        number = device.render_and_inject()
        assert camera.latest(timeout_s=2.0).frame_number == number


def test_a_restart_that_fails_to_start_counts_as_an_attempt_and_does_not_end_the_reader(hardware_config, device,
                                                                                        monkeypatch):
    config = camera_config(hardware_config, 3)
    real_pipeline, failures = rs.pipeline, [1]  # the device is listed but refuses to start once (stands in for USB)

    class FlakyPipeline:
        def __init__(self, context):
            self._inner = real_pipeline(context)

        def start(self, config):
            if failures[0] and armed.is_set():
                failures[0] -= 1
                raise RuntimeError("failed to set power state")
            return self._inner.start(config)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    armed = threading.Event()
    monkeypatch.setattr(realsense_module.rs, "pipeline", FlakyPipeline)
    with RealSenseCamera(config, context=device.context, warmup_frames=0) as camera:
        camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
        armed.set()
        wait_until(lambda: camera.restarts == 1, timeout_s=config.frame_timeout_s + backoff_s(1) + backoff_s(2) + 2)
        assert camera.failed_restarts == 1 and reader_alive()
        number = device.render_and_inject()
        assert camera.latest(timeout_s=2.0).frame_number == number


def test_a_device_that_never_comes_back_ends_with_a_clear_error(hardware_config, device, monkeypatch):
    config = camera_config(hardware_config, 2)
    monkeypatch.setattr(realsense_module, "wait_until_listed", lambda *args, **kwargs: False)
    with RealSenseCamera(config, context=device.context, warmup_frames=0) as camera:
        camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
        start = time.monotonic()
        wait_until(lambda: camera.failed_restarts > 0, timeout_s=config.frame_timeout_s + backoff_s(1) + 2.0)
        with pytest.raises(CameraTimeoutError) as caught:
            camera.latest(timeout_s=10.0)
        elapsed = time.monotonic() - start
        message = str(caught.value)
        assert "stopped delivering frames and 2 restart(s) did not bring them back" in message
        assert "camera.retries 2" in message and "did not come back" in message and "USB3" in message
        assert camera.failed_restarts == 2 and camera.restarts == 0
        assert elapsed < config.frame_timeout_s + backoff_s(1) + backoff_s(2) + 2.0  # never hangs
        wait_until(lambda: not reader_alive(), timeout_s=2.0)


class _ResettableDevice:
    def __init__(self, supported: bool) -> None:
        self.supported, self.resets = supported, 0

    def hardware_reset(self) -> None:
        if not self.supported:
            raise RuntimeError("hardware_reset is not supported by this device")
        self.resets += 1


def test_after_a_hardware_reset_the_device_is_waited_for_until_it_has_left(monkeypatch):
    answers = iter([True, True, False])  # librealsense's device hub: still there, still there, gone

    class Hub:
        def __init__(self, context) -> None:
            pass

        def is_connected(self, device) -> bool:
            return next(answers)

    monkeypatch.setattr(realsense_recovery.rs, "device_hub", Hub)
    device = _ResettableDevice(supported=True)
    assert reset_and_wait_until_gone(device, None, threading.Event()) and device.resets == 1
    assert next(answers, "drained") == "drained"
    assert not reset_and_wait_until_gone(_ResettableDevice(supported=False), None, threading.Event())


def test_live_frames_are_in_the_global_time_domain_with_their_capture_to_host_delay(hardware_config):
    config = camera_config(hardware_config, 1)
    sw = SoftwareRealSense(config, INTRINSICS, frames)
    clock = RealClock()
    with sw.camera(clock) as camera:
        sw.start(clock)
        try:
            frame = camera.wait_for_frame_number(3, timeout_s=2.0)
        finally:
            sw.stop()
    assert frame.metadata["timestamp_domain"] == "global_time"
    delay = frame.metadata["capture_to_host_s"]
    assert 0.0 <= delay < 0.5 and delay == pytest.approx(frame.received_s - frame.timestamp_s, abs=0.05)


def test_in_lock_step_the_capture_to_host_delay_is_zero(hardware_config):
    config = camera_config(hardware_config, 1)
    sw = SoftwareRealSense(config, INTRINSICS, frames)
    clock = SimClock(lambda: None, cycle_s=0.008)
    with sw.camera(clock) as camera:
        sw.start(clock, camera)
        clock.sleep_until(0.2)
        frame = camera.latest(timeout_s=2.0)
        sw.stop()
    assert frame.metadata["timestamp_domain"] == "global_time" and frame.metadata["capture_to_host_s"] == 0.0
