"""A software RealSense D455: frames rendered by the twin (or any source) fed into the real SDK.

``SoftwareRealSense`` builds an ``rs.software_device`` with a depth (z16) and a colour (rgb8)
sensor carrying the simulated camera's intrinsics, registers it in its own ``rs.context`` and
injects frames into it. ``device.camera(clock)``, i.e. ``RealSenseCamera(config, clock,
context=device.context, warmup_frames=0)``, then runs the ordinary pipeline (+ ``rs.align``) on them:
the driver code under test is the code used at the robot. Frames injected while no camera streams
are dropped, as a real camera's are.

``start(clock, camera)`` renders and injects at the configured fps on the clock; on a simulated
clock it also waits until the camera has received each frame, so a lock-step episode always sees
the frame it should. Frames are stamped in the ``global_time`` domain, as a real D455 stamps them by
default (librealsense maps its clock onto the host's), with the injecting clock as the host clock.
``record(path, frame_count)`` writes a recording with ``rs.recorder`` (a rosbag2 ``.db3`` in SDK 2.59)
that ``RealSenseCamera(config, playback_path=path)`` plays back.
"""

from __future__ import annotations

import gc
import json
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import pyrealsense2 as rs

from fanvla.config import CameraConfig
from robot.clock import Clock, PeriodicTask, RealClock
from robot.interfaces import CameraFrame, Intrinsics
from robot.realsense import RealSenseCamera

FrameSource = Callable[[], tuple[np.ndarray, np.ndarray | None]]  # () -> (color HxWx3 uint8 RGB, depth_mm HxW uint16)

DEFAULT_SERIAL = "SW0000000455"
DEVICE_NAME = "Intel RealSense D455"
DEPTH_UNITS_M = 0.001  # z16 values are millimetres, as on a D455 with default settings
# A D455 reports global_time unless global time is switched off (rs.option.global_time_enabled).
TIMESTAMP_DOMAIN = rs.timestamp_domain.global_time
# The SDK (2.59) copies injected pixels, but older bindings kept a pointer to them: keep the last
# few buffers alive so that either behaviour is safe.
_KEEP_ALIVE_FRAMES = 8
_FRAME_WAIT_TIMEOUT_S = 5.0


class FrameWaiter(Protocol):
    def wait_for_frame_number(self, frame_number: int, timeout_s: float | None = None) -> CameraFrame: ...


def software_context() -> rs.context:
    """An ``rs.context`` that sees software devices only: no USB scan, no network (DDS) devices."""
    return rs.context(json.dumps({"device-mask": int(rs.product_line.sw_only), "dds": False, "inherit": False}))


def _rs_intrinsics(intrinsics: Intrinsics) -> rs.intrinsics:
    out = rs.intrinsics()
    out.width, out.height = intrinsics.width, intrinsics.height
    out.fx, out.fy, out.ppx, out.ppy = intrinsics.fx, intrinsics.fy, intrinsics.ppx, intrinsics.ppy
    out.model = getattr(rs.distortion, intrinsics.distortion_model)
    out.coeffs = list(intrinsics.coeffs)
    return out


def _video_stream(stream: rs.stream, uid: int, fmt: rs.format, bpp: int, fps: int,
                  intrinsics: Intrinsics) -> rs.video_stream:
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = stream, 0, uid
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = intrinsics.width, intrinsics.height, fps, bpp, fmt
    vs.intrinsics = _rs_intrinsics(intrinsics)
    return vs


class SoftwareRealSense:
    """A software D455 in its own ``rs.context``; ``inject`` feeds it, ``start`` runs it on a clock."""

    def __init__(self, camera_config: CameraConfig, intrinsics: Intrinsics, frame_source: FrameSource, *,
                 depth_intrinsics: Intrinsics | None = None, serial: str | None = None) -> None:
        """``intrinsics``: of the colour stream (its size must be camera.color's); ``depth_intrinsics``:
        of the depth stream, default the colour ones (the twin renders both from one camera);
        ``serial``: default camera.serial, else DEFAULT_SERIAL.
        """
        color = camera_config.color
        if (intrinsics.width, intrinsics.height) != (color.width, color.height):
            raise ValueError(f"colour intrinsics are {intrinsics.width}x{intrinsics.height} but camera.color is "
                             f"{color.width}x{color.height} in hardware.yaml")
        self.config = camera_config
        self.depth_enabled = camera_config.depth.enabled
        self.color_intrinsics = intrinsics
        self.depth_intrinsics = depth_intrinsics or intrinsics
        depth = camera_config.depth
        if self.depth_enabled and (self.depth_intrinsics.width, self.depth_intrinsics.height) != (depth.width,
                                                                                                    depth.height):
            raise ValueError(f"depth intrinsics are {self.depth_intrinsics.width}x{self.depth_intrinsics.height} but "
                             f"camera.depth is {depth.width}x{depth.height} in hardware.yaml; pass depth_intrinsics "
                             f"matching the depth stream")
        self.serial = serial or camera_config.serial or DEFAULT_SERIAL
        self.frame_source = frame_source
        self.frames_injected = 0
        self._next_frame_number = 1
        self._lock = threading.Lock()
        self._keep_alive: deque[tuple[np.ndarray, np.ndarray | None]] = deque(maxlen=_KEEP_ALIVE_FRAMES)
        self._task: PeriodicTask | None = None
        self._build_device()
        self.context = software_context()
        # The context holds the device only weakly: the device list handed to the devices-changed
        # callback owns it, and keeping that list alive is what lets queries and pipelines see it.
        self._device_lists: list[rs.device_list] = []
        self.context.set_devices_changed_callback(lambda event: self._device_lists.append(event.get_new_devices()))
        self._device.add_to(self.context)

    def _build_device(self) -> None:
        device = rs.software_device()
        for key, value in ((rs.camera_info.name, DEVICE_NAME), (rs.camera_info.serial_number, self.serial),
                           (rs.camera_info.product_line, "D400"), (rs.camera_info.firmware_version, "5.16.0.1"),
                           (rs.camera_info.usb_type_descriptor, "3.2")):
            device.register_info(key, value)
        fps_color, fps_depth = self.config.color.fps, self.config.depth.fps
        self._color_sensor = device.add_sensor("RGB Camera")
        self._color_profile = self._color_sensor.add_video_stream(
            _video_stream(rs.stream.color, 1, rs.format.rgb8, 3, fps_color, self.color_intrinsics), True
        ).as_video_stream_profile()
        self._depth_sensor = self._depth_profile = None
        if self.depth_enabled:
            self._depth_sensor = device.add_sensor("Stereo Module")
            self._depth_profile = self._depth_sensor.add_video_stream(
                _video_stream(rs.stream.depth, 0, rs.format.z16, 2, fps_depth, self.depth_intrinsics), True
            ).as_video_stream_profile()
            # DEPTH_UNITS makes the sensor a depth sensor to the SDK; align and depth frames read it.
            self._depth_sensor.add_read_only_option(rs.option.depth_units, DEPTH_UNITS_M)
            identity = rs.extrinsics()
            identity.rotation, identity.translation = [1, 0, 0, 0, 1, 0, 0, 0, 1], [0, 0, 0]
            self._depth_profile.register_extrinsics_to(self._color_profile, identity)  # one camera renders both
        self._device = device

    # -- injection ---------------------------------------------------------------------------------
    def inject(self, color: np.ndarray, depth_mm: np.ndarray | None = None, timestamp_ms: float | None = None,
               frame_number: int | None = None) -> int:
        """Feed one frame set; returns its frame number (default: one more than the last).

        ``timestamp_ms`` is the capture time in the device's clock domain (default: frame_number / fps).
        """
        color = self._checked(color, (self.color_intrinsics.height, self.color_intrinsics.width, 3), np.uint8, "color")
        if self.depth_enabled:
            if depth_mm is None:
                raise ValueError("camera.depth is enabled: inject() needs depth_mm (HxW uint16 millimetres)")
            depth_mm = self._checked(depth_mm, (self.depth_intrinsics.height, self.depth_intrinsics.width),
                                     np.uint16, "depth_mm")
        with self._lock:
            number = self._next_frame_number if frame_number is None else int(frame_number)
            stamp = number * 1000.0 / self.config.color.fps if timestamp_ms is None else float(timestamp_ms)
            self._keep_alive.append((color, depth_mm))
            # Depth first: the pipeline's syncer emits the set as soon as the colour frame completes it.
            if self.depth_enabled:
                self._depth_sensor.on_video_frame(self._frame(depth_mm, 2, stamp, number, self._depth_profile))
            self._color_sensor.on_video_frame(self._frame(color, 3, stamp, number, self._color_profile))
            self._next_frame_number = number + 1
            self.frames_injected += 1
        return number

    @staticmethod
    def _checked(image: np.ndarray, shape: tuple[int, ...], dtype: type, name: str) -> np.ndarray:
        array = np.asarray(image)
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(f"{name} must be {np.dtype(dtype).name} with shape {shape}, got {array.dtype.name} "
                             f"{array.shape}")
        return np.ascontiguousarray(array)

    @staticmethod
    def _frame(pixels: np.ndarray, bpp: int, timestamp_ms: float, number: int,
               profile: rs.video_stream_profile) -> rs.software_video_frame:
        frame = rs.software_video_frame()  # a fresh object every time: the SDK takes ownership of its contents
        frame.pixels, frame.bpp, frame.stride = pixels, bpp, pixels.shape[1] * bpp
        frame.timestamp, frame.domain, frame.frame_number = timestamp_ms, TIMESTAMP_DOMAIN, number
        frame.profile = profile
        if bpp == 2:
            frame.depth_units = DEPTH_UNITS_M
        return frame

    def render_and_inject(self, timestamp_ms: float | None = None) -> int:
        color, depth_mm = self.frame_source()
        return self.inject(color, depth_mm, timestamp_ms)

    def camera(self, clock: Clock | None = None) -> RealSenseCamera:
        """A RealSenseCamera (not yet connected) streaming from this device through the ordinary pipeline.

        It drops no warm-up frames: rendered frames need no auto-exposure to settle, and in lock-step
        every injected frame must reach the camera. Its host clock is ``clock``, the one ``start`` stamps with.
        """
        clock = clock or RealClock()
        return RealSenseCamera(self.config, clock, context=self.context, warmup_frames=0, host_time_s=clock.now_s)

    # -- running on a clock ---------------------------------------------------------------------------
    def start(self, clock: Clock, camera: FrameWaiter | None = None) -> PeriodicTask:
        """Render and inject at camera.color.fps on ``clock``, starting now.

        On a simulated clock ``camera`` is required: each tick waits until it has received the frame,
        so what a lock-step episode sees does not depend on thread scheduling.
        """
        if self._task is not None:
            raise RuntimeError("SoftwareRealSense is already running; stop() it first")
        if clock.is_simulated and camera is None:
            raise ValueError("on a simulated clock start() needs the camera, to wait until each frame has arrived")
        wait = camera.wait_for_frame_number if clock.is_simulated else None
        last_tick_s: list[float] = []

        def tick() -> None:
            now_s = clock.now_s()
            if last_tick_s and now_s <= last_tick_s[0]:
                return  # this instant's frame was injected by start() already
            last_tick_s[:] = [now_s]
            number = self.render_and_inject(now_s * 1000.0)
            if wait is not None:
                wait(number, _FRAME_WAIT_TIMEOUT_S)

        if clock.is_simulated:
            tick()  # the first frame exists before the first observation, as on a streaming camera
        self._task = clock.every(1.0 / self.config.color.fps, tick, name="software-realsense")
        return self._task

    def stop(self) -> None:
        """Stop the periodic injection; re-raises an error that stopped it."""
        task, self._task = self._task, None
        if task is not None:
            task.stop()

    # -- recordings --------------------------------------------------------------------------------
    def record(self, path: str | Path, frame_count: int) -> Path:
        """Write ``frame_count`` frames from frame_source to a recording with ``rs.recorder``.

        Needs the device idle (no camera streaming from it). The recorder stamps each message with
        the host's wall time and playback follows those stamps (non-real-time playback too: a burst
        of messages with one stamp plays back as one frame), so frames are injected at camera.color.fps
        in wall time: this takes frame_count / fps seconds. Device timestamps are frame_number / fps.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        clock, period_s = RealClock(), 1.0 / self.config.color.fps
        recorder = rs.recorder(str(path), self._device)
        sensors = recorder.query_sensors()
        try:
            for recording_sensor in sensors:
                recording_sensor.open(recording_sensor.get_stream_profiles()[0])
                recording_sensor.start(lambda frame: None)  # the recorder writes every frame passing its sensors
            start_s = clock.now_s()
            for index in range(frame_count):
                clock.sleep_until(start_s + index * period_s)
                self.render_and_inject()
        finally:
            for recording_sensor in sensors:
                recording_sensor.stop()
                recording_sensor.close()
            del sensors, recorder
            gc.collect()  # the recorder finalises the file when its last reference goes
        return path
