"""RealSenseCamera on the real pyrealsense2 pipeline, fed by a software D455 (no camera needed)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pytest

from robot.clock import RealClock
from robot.errors import CameraError, CameraTimeoutError
from robot.interfaces import Intrinsics
from robot.realsense import RealSenseCamera
from robot.sim.clock import SimClock
from robot.sim.software_realsense import DEFAULT_SERIAL, SoftwareRealSense, software_context

WIDTH, HEIGHT = 320, 240
INTRINSICS = Intrinsics(WIDTH, HEIGHT, fx=192.5, fy=193.0, ppx=161.0, ppy=119.5)


@pytest.fixture
def camera_config(hardware_config):
    return hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT,
        "camera.depth.width": WIDTH, "camera.depth.height": HEIGHT,
        "camera.frame_timeout_s": 0.3, "camera.retries": 1,
    }).camera


def numbered_color(n: int) -> np.ndarray:
    """A colour image whose pixels encode the frame number and their own position."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xs % 256, ys % 256, np.full_like(xs, n % 256)], axis=-1).astype(np.uint8)


def numbered_depth(n: int) -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return (400 + xs + 2 * ys + n).astype(np.uint16)


class Counter:
    """A frame source: frame k (1-based) is numbered_color(k), numbered_depth(k)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        self.count += 1
        return numbered_color(self.count), numbered_depth(self.count)


@pytest.fixture
def device(camera_config):
    return SoftwareRealSense(camera_config, INTRINSICS, Counter())


@pytest.fixture
def camera(camera_config, device):
    cam = RealSenseCamera(camera_config, RealClock(), context=device.context, warmup_frames=0)
    cam.connect()
    yield cam
    cam.disconnect()


def test_frames_carry_the_injected_pixels(camera, device):
    for _ in range(3):
        number = device.render_and_inject()
        frame = camera.wait_for_frame_number(number, timeout_s=2.0)
        assert frame.frame_number == number
        assert frame.color.shape == (HEIGHT, WIDTH, 3) and frame.color.dtype == np.uint8
        np.testing.assert_array_equal(frame.color, numbered_color(number))
        assert frame.depth_mm is not None and frame.depth_mm.dtype == np.uint16
        # Same intrinsics and identity extrinsics: alignment maps depth pixels onto themselves, up to the
        # holes (0) and one-pixel shifts its corner rounding causes on a sloped surface (1 mm/px in x, 2 in y).
        filled = frame.depth_mm > 0
        assert filled.mean() > 0.9
        error = np.abs(frame.depth_mm[filled].astype(int) - numbered_depth(number)[filled])
        assert error.max() <= 3 and (error == 0).mean() > 0.99
        assert frame.metadata["depth_frame_number"] == number


def test_frames_are_copies_that_outlive_the_sdk_buffers(camera, device):
    first = camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
    for _ in range(5):
        camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
    np.testing.assert_array_equal(first.color, numbered_color(first.frame_number))


def test_depth_is_aligned_to_colour(hardware_config):
    """Depth at half the colour resolution (same field of view): alignment resamples it onto colour pixels."""
    config = hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT,
        "camera.depth.width": WIDTH // 2, "camera.depth.height": HEIGHT // 2,
    }).camera
    color_intr = Intrinsics(WIDTH, HEIGHT, fx=200.0, fy=200.0, ppx=WIDTH / 2, ppy=HEIGHT / 2)
    depth_intr = Intrinsics(WIDTH // 2, HEIGHT // 2, fx=100.0, fy=100.0, ppx=WIDTH / 4, ppy=HEIGHT / 4)
    depth = np.full((HEIGHT // 2, WIDTH // 2), 2000, np.uint16)
    depth[30:70, 40:80] = 800  # a near square in front of a far wall
    color = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    sw = SoftwareRealSense(config, color_intr, lambda: (color, depth), depth_intrinsics=depth_intr)
    with RealSenseCamera(config, context=sw.context, warmup_frames=0) as cam:
        frame = cam.wait_for_frame_number(sw.render_and_inject(), timeout_s=2.0)
        assert cam.depth_intrinsics == cam.intrinsics
    aligned = frame.depth_mm
    assert aligned.shape == (HEIGHT, WIDTH)
    # Depth pixel (u, v) covers colour pixels (2u, 2v)..(2u+1, 2v+1): the square lands at x 80..159, y 60..139.
    np.testing.assert_array_equal(aligned[62:138, 82:158], 800)
    far = np.ones_like(aligned, dtype=bool)
    far[58:142, 78:162] = False
    assert np.all(aligned[far] == 2000)


def test_depth_without_alignment_keeps_the_depth_stream(hardware_config):
    config = hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT, "camera.align_depth_to_color": False,
        "camera.depth.width": WIDTH // 2, "camera.depth.height": HEIGHT // 2,
    }).camera
    depth_intr = Intrinsics(WIDTH // 2, HEIGHT // 2, fx=100.0, fy=100.0, ppx=WIDTH / 4, ppy=HEIGHT / 4)
    depth = np.arange((HEIGHT // 2) * (WIDTH // 2), dtype=np.uint16).reshape(HEIGHT // 2, WIDTH // 2)
    sw = SoftwareRealSense(config, INTRINSICS, lambda: (numbered_color(1), depth), depth_intrinsics=depth_intr)
    with RealSenseCamera(config, context=sw.context, warmup_frames=0) as cam:
        frame = cam.wait_for_frame_number(sw.render_and_inject(), timeout_s=2.0)
        assert cam.depth_intrinsics == depth_intr
    np.testing.assert_array_equal(frame.depth_mm, depth)


def test_colour_only_when_depth_is_disabled(hardware_config):
    config = hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT, "camera.depth.enabled": False}).camera
    sw = SoftwareRealSense(config, INTRINSICS, lambda: (numbered_color(9), None))
    with RealSenseCamera(config, context=sw.context, warmup_frames=0) as cam:
        frame = cam.wait_for_frame_number(sw.render_and_inject(), timeout_s=2.0)
    assert frame.depth_mm is None and cam.depth_intrinsics is None
    np.testing.assert_array_equal(frame.color, numbered_color(9))


def test_intrinsics_come_from_the_stream_profile(camera, device):
    assert camera.intrinsics == INTRINSICS
    assert camera.serial == DEFAULT_SERIAL and camera.device_name == "Intel RealSense D455"


def test_streaming_on_a_clock_gives_monotonic_numbers_and_timestamps(camera, device):
    clock = RealClock()
    device.start(clock)
    try:
        seen = []
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            frame = camera.latest(timeout_s=1.0)
            if not seen or frame.frame_number != seen[-1].frame_number:
                seen.append(frame)
            clock.sleep(0.01)
    finally:
        device.stop()
    assert len(seen) >= 8  # 30 fps for 0.6 s
    numbers = [f.frame_number for f in seen]
    assert numbers == sorted(set(numbers))
    stamps = [f.timestamp_s for f in seen]
    received = [f.received_s for f in seen]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert all(b > a for a, b in itertools.pairwise(received))
    # The device stamps frames with the injecting clock's time; the host receives them just after.
    assert all(0.0 <= r - t < 0.5 for r, t in zip(received, stamps, strict=True))
    for frame in seen:
        np.testing.assert_array_equal(frame.color, numbered_color(frame.frame_number))


def wait_until(condition, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_warmup_frames_are_dropped(camera_config, device):
    patient = camera_config.model_copy(update={"frame_timeout_s": 5.0})  # no stall handling during the pause
    with RealSenseCamera(patient, context=device.context, warmup_frames=3) as cam:
        for count in range(1, 4):
            device.render_and_inject()
            wait_until(lambda count=count: cam.frames_received == count)  # one at a time: a burst may be dropped
        with pytest.raises(CameraTimeoutError):
            cam.latest(timeout_s=0.1)
        fourth = device.render_and_inject()
        assert cam.wait_for_frame_number(fourth, timeout_s=2.0).frame_number == fourth == 4
        assert cam.frames_received == 4


def test_stalled_stream_raises_a_helpful_timeout_without_hanging(camera, device, camera_config):
    camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
    start = time.monotonic()
    time.sleep(camera_config.frame_timeout_s * 1.5)
    with pytest.raises(CameraTimeoutError) as caught:
        camera.latest(timeout_s=10.0)  # a stalled stream never hands out the stale frame
    elapsed = time.monotonic() - start
    # (retries + 1) frame time-outs, a pipeline restart in between, plus scheduling slack.
    assert elapsed < camera_config.frame_timeout_s * (camera_config.retries + 1) + 2.0
    message = str(caught.value)
    for hint in ("USB3", "cable", "camera.serial", "Frame didn't arrive within", DEFAULT_SERIAL):
        assert hint in message
    assert camera.restarts == camera_config.retries
    began = time.monotonic()
    camera.disconnect()
    assert time.monotonic() - began < 1.0


def test_no_first_frame_times_out_within_the_given_time(camera):
    start = time.monotonic()
    with pytest.raises(CameraTimeoutError, match="no frame from RealSense"):
        camera.latest(timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 1.0


def test_stream_recovers_when_frames_resume_after_a_restart(camera, device, camera_config):
    camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
    deadline = time.monotonic() + 3.0
    while camera.restarts == 0 and time.monotonic() < deadline:  # stall until the reader restarts the pipeline
        time.sleep(0.02)
    assert camera.restarts == 1
    number = device.render_and_inject()
    assert camera.latest(timeout_s=2.0).frame_number == number


def test_no_device_lists_what_to_check(camera_config):
    camera = RealSenseCamera(camera_config, context=software_context())
    with pytest.raises(CameraError, match=r"no RealSense camera is connected.*rs-enumerate-devices"):
        camera.connect()


def test_wrong_serial_lists_the_connected_serials(hardware_config, device):
    config = hardware_config.with_overrides({"camera.serial": "123456789012"}).camera
    camera = RealSenseCamera(config, context=device.context)
    start = time.monotonic()
    with pytest.raises(CameraError) as caught:
        camera.connect()
    assert time.monotonic() - start < 2.0  # resolved from the device list, not by waiting for the pipeline
    assert "123456789012" in str(caught.value) and DEFAULT_SERIAL in str(caught.value)


def test_serial_from_config_selects_the_device(hardware_config):
    config = hardware_config.with_overrides({"camera.serial": "987654321098", "camera.color.width": WIDTH,
                                             "camera.color.height": HEIGHT, "camera.depth.enabled": False}).camera
    sw = SoftwareRealSense(config, INTRINSICS, lambda: (numbered_color(1), None))
    with RealSenseCamera(config, context=sw.context, warmup_frames=0) as cam:
        assert cam.serial == "987654321098"
        assert cam.wait_for_frame_number(sw.render_and_inject(), timeout_s=2.0).frame_number == 1


def test_unsupported_mode_names_the_offered_modes(hardware_config, device, camera_config):
    config = hardware_config.with_overrides({"camera.color.width": 1280, "camera.color.height": 720,
                                             "camera.depth.width": WIDTH, "camera.depth.height": HEIGHT}).camera
    with pytest.raises(CameraError) as caught:
        RealSenseCamera(config, context=device.context).connect()
    message = str(caught.value)
    assert "colour 1280x720 rgb8 @ 30" in message and f"color {WIDTH}x{HEIGHT} rgb8 @ 30" in message
    assert "USB3" in message


def test_disconnect_stops_the_thread_and_releases_the_device(camera_config, device):
    before = {t.name for t in threading.enumerate() if t.name == "fanvla-realsense"}
    assert not before
    camera = RealSenseCamera(camera_config, context=device.context, warmup_frames=0)
    camera.connect()
    camera.wait_for_frame_number(device.render_and_inject(), timeout_s=2.0)
    camera.disconnect()
    camera.disconnect()  # idempotent
    assert not [t for t in threading.enumerate() if t.name == "fanvla-realsense"]
    with pytest.raises(CameraError, match="not connected"):
        camera.latest(timeout_s=0.1)
    # The sensors were released: a second camera can stream from the same device.
    with RealSenseCamera(camera_config, context=device.context, warmup_frames=0) as again:
        number = device.render_and_inject()
        assert again.wait_for_frame_number(number, timeout_s=2.0).frame_number == number


def test_intrinsics_before_connect_is_an_error(camera_config, device):
    with pytest.raises(CameraError, match="connect"):
        _ = RealSenseCamera(camera_config, context=device.context).intrinsics


def test_inject_checks_shapes_and_dtypes(device):
    with pytest.raises(ValueError, match=r"color must be uint8 with shape \(240, 320, 3\)"):
        device.inject(np.zeros((240, 320, 3), np.float32), numbered_depth(1))
    with pytest.raises(ValueError, match="depth_mm must be uint16"):
        device.inject(numbered_color(1), np.zeros((240, 320), np.float32))
    with pytest.raises(ValueError, match="needs depth_mm"):
        device.inject(numbered_color(1), None)


def test_intrinsics_must_match_the_configured_stream(camera_config):
    with pytest.raises(ValueError, match=r"camera\.color is 320x240"):
        SoftwareRealSense(camera_config, Intrinsics(640, 480, 385.0, 385.0, 320.0, 240.0), Counter())


def test_lock_step_on_a_sim_clock_delivers_every_frame_at_its_simulated_time(camera_config, device):
    clock = SimClock(lambda: None, cycle_s=0.008)  # no physics: time and the camera task are what is tested
    with device.camera(clock) as camera:
        task = device.start(clock, camera)
        first = camera.latest(timeout_s=2.0)  # start() injected the first frame at t = 0
        assert first.frame_number == 1 and first.received_s == 0.0
        observed = []
        for tick in range(1, 16):  # a 10 Hz control loop observing a 30 fps camera for 1.5 s
            clock.sleep_until(tick * 0.1)
            observed.append(camera.latest(timeout_s=2.0))
        device.stop()
        assert not task.running
    # Every injection was waited for, so the newest frame is always the last one injected before now.
    assert observed[-1].frame_number == device.frames_injected
    for frame in observed:
        # Frames are stamped with simulated time and received at that same simulated instant.
        assert frame.received_s == pytest.approx(frame.timestamp_s, abs=1e-9)
        np.testing.assert_array_equal(frame.color, numbered_color(frame.frame_number))
    ages = [tick * 0.1 - f.received_s for tick, f in enumerate(observed, start=1)]
    assert min(ages) >= 0.0  # never a frame from the future
    assert max(ages) < 1 / camera_config.color.fps + 0.008 + 1e-9  # at most one frame period plus a cycle


def test_lock_step_is_deterministic(camera_config):
    def run() -> list[tuple[int, float]]:
        sw = SoftwareRealSense(camera_config, INTRINSICS, Counter())
        clock = SimClock(lambda: None, cycle_s=0.008)
        with sw.camera(clock) as camera:
            sw.start(clock, camera)
            seen = []
            for tick in range(1, 9):
                clock.sleep_until(tick * 0.05)
                frame = camera.latest(timeout_s=2.0)
                seen.append((frame.frame_number, frame.received_s))
            sw.stop()
        return seen

    assert run() == run()


def test_lock_step_reports_a_dead_frame_source(camera_config):
    clock = SimClock(lambda: None, cycle_s=0.008)
    frames = Counter()
    sw = SoftwareRealSense(camera_config, INTRINSICS, lambda: frames() if frames.count < 3 else 1 / 0)
    with sw.camera(clock) as camera:
        sw.start(clock, camera)
        clock.sleep_until(camera_config.frame_timeout_s + 0.2)  # the source fails at its fourth frame
        with pytest.raises(CameraTimeoutError, match="simulated time"):
            camera.latest(timeout_s=0.5)
        with pytest.raises(ZeroDivisionError):
            sw.stop()


def test_a_simulated_clock_needs_the_camera_to_wait_for(device):
    with pytest.raises(ValueError, match="needs the camera"):
        device.start(SimClock(lambda: None, cycle_s=0.008))
