"""A recording made from the software D455 with rs.recorder, played back through RealSenseCamera."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from robot.errors import CameraError
from robot.interfaces import Intrinsics
from robot.realsense import RealSenseCamera
from robot.sim.software_realsense import SoftwareRealSense

WIDTH, HEIGHT = 160, 120
FRAMES = 12
SERIAL = "555000111222"
INTRINSICS = Intrinsics(WIDTH, HEIGHT, fx=96.0, fy=96.5, ppx=80.5, ppy=59.5)


@pytest.fixture(scope="session")
def config(hardware_config):
    return hardware_config.with_overrides({
        "camera.color.width": WIDTH, "camera.color.height": HEIGHT, "camera.depth.width": WIDTH,
        "camera.depth.height": HEIGHT, "camera.frame_timeout_s": 0.5, "camera.retries": 0,
    }).camera


def frame_content(n: int) -> tuple[np.ndarray, np.ndarray]:
    color = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    color[..., 0] = n * 10
    color[n:n + 20, 2 * n:2 * n + 20, 1] = 255  # a square moving with n
    depth = np.full((HEIGHT, WIDTH), 1000 + n, np.uint16)
    return color, depth


@pytest.fixture(scope="session")
def recording(tmp_path_factory, config):
    """A short rosbag2 recording of the software device (frames 1..FRAMES), made once per test session."""
    counter = iter(range(1, FRAMES + 1))
    device = SoftwareRealSense(config, INTRINSICS, lambda: frame_content(next(counter)), serial=SERIAL)
    path = device.record(tmp_path_factory.mktemp("realsense") / "software_d455.db3", FRAMES)
    assert path.stat().st_size > 0
    return path


def test_playback_delivers_the_recorded_frames(recording, config):
    with RealSenseCamera(config, playback_path=recording) as camera:
        last = camera.wait_for_frame_number(FRAMES, timeout_s=5.0)
        assert last.frame_number == FRAMES
        assert camera.serial == SERIAL and camera.device_name == "Intel RealSense D455"
        assert camera.intrinsics == INTRINSICS
    color, depth = frame_content(FRAMES)
    np.testing.assert_array_equal(last.color, color)
    filled = last.depth_mm > 0
    assert filled.mean() > 0.95 and np.all(last.depth_mm[filled] == depth[filled])
    assert last.timestamp_s == pytest.approx(FRAMES / config.color.fps, abs=1e-4)


def test_playback_frames_are_consistent_and_monotonic(recording, config):
    seen = []
    with RealSenseCamera(config, playback_path=recording) as camera:
        while not seen or seen[-1].frame_number < FRAMES:
            frame = camera.wait_for_frame_number(seen[-1].frame_number + 1 if seen else 1, timeout_s=5.0)
            seen.append(frame)
    numbers = [f.frame_number for f in seen]
    assert numbers == sorted(set(numbers)) and numbers[-1] == FRAMES
    stamps = [f.timestamp_s for f in seen]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    for frame in seen:
        np.testing.assert_array_equal(frame.color, frame_content(frame.frame_number)[0])
        assert frame.metadata["timestamp_domain"] == "global_time"  # the recording keeps the device's domain
    # The driver starts the playback paused and not in real time, so every recorded frame set reaches it, complete,
    # however slowly it runs. (Which frames this loop sees depends on how fast it runs, so the driver's count is
    # what is checked.)
    assert camera.frames_received == FRAMES and camera.incomplete_framesets == 0


def test_playback_reports_its_end(recording, config):
    with RealSenseCamera(config, playback_path=recording) as camera:
        camera.wait_for_frame_number(FRAMES, timeout_s=5.0)
        with pytest.raises(CameraError, match="ended after"):
            camera.wait_for_frame_number(FRAMES + 1, timeout_s=5.0)
        assert camera.playback_ended
        assert camera.latest(timeout_s=0.1).frame_number == FRAMES  # the last frame stays available


def test_playback_of_a_missing_file_is_a_clear_error(tmp_path, config):
    with pytest.raises(CameraError, match="recording not found"):
        RealSenseCamera(config, playback_path=tmp_path / "missing.db3").connect()


def test_playback_with_other_streams_names_what_the_file_holds(recording, hardware_config):
    other = hardware_config.camera  # 640x480: not what was recorded
    with pytest.raises(CameraError) as caught:
        RealSenseCamera(other, playback_path=recording).connect()
    assert f"color {WIDTH}x{HEIGHT} rgb8 @ 30" in str(caught.value)
