"""Intel RealSense camera driver over ``pyrealsense2``: one code path for three sources.

- a real device (D455) on the default ``rs.context()``, chosen by serial number;
- a software device (robot/sim/software_realsense.py) registered in its own ``rs.context``: the
  same pipeline code then runs on frames rendered by the twin;
- a recording (``.db3``/``.bag``) played back through the same pipeline, not in real time.

A background thread drains the pipeline and keeps the newest frame set, so a slow control loop
never lets the SDK's queue overflow (the classic "Frame didn't arrive within 5000"). Every wait
has a time-out. When frames stop, the thread restarts the pipeline (a real device is hardware-reset
and waited for until it has left the bus and come back: robot/realsense_recovery.py) up to
``camera.retries`` times with a growing backoff, a failed restart counting as one of them, then fails
with a message saying what to check.

Timestamps: a D455 stamps frames in the ``global_time`` domain by default (librealsense maps the device
clock onto the host's system clock), so ``capture_to_host_s`` (host receipt minus capture) is known per
frame and kept in ``CameraFrame.metadata``; the domain is kept too, and a recording keeps it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyrealsense2 as rs

from fanvla.config import CameraConfig
from robot.clock import Clock, RealClock
from robot.errors import CameraError, CameraTimeoutError
from robot.interfaces import Camera, CameraFrame, Intrinsics
from robot.realsense_recovery import (
    REENUMERATE_TIMEOUT_S,
    backoff_s,
    reset_and_wait_until_gone,
    total_backoff_s,
    wait_until_listed,
)
from robot.realsense_source import TROUBLESHOOTING, Source, connected_devices, device_info, intrinsics_from_profile

log = logging.getLogger(__name__)

# The reader polls the pipeline this often, so that disconnect() is never kept waiting longer.
_POLL_MS = 50
_JOIN_TIMEOUT_S = 5.0
_MM_PER_M = 1000.0

class RealSenseCamera(Camera):
    """``latest()`` returns the newest colour (+ aligned depth) frame set from a background reader."""

    def __init__(self, config: CameraConfig, clock: Clock | None = None, *, context: rs.context | None = None,
                 playback_path: str | os.PathLike[str] | None = None, warmup_frames: int | None = None,
                 host_time_s: Callable[[], float] | None = None) -> None:
        """``context``: where to look for the device (default: a fresh ``rs.context()``, i.e. USB);
        ``playback_path``: play a recording instead; ``warmup_frames``: overrides config.warmup_frames
        (frames dropped after start so auto-exposure settles; never dropped from a recording);
        ``host_time_s``: the host clock ``global_time`` stamps are in (default: the system clock,
        ``time.time``, as librealsense's global time; none for a recording).
        """
        if context is not None and playback_path is not None:
            raise ValueError("give either a context (live device) or a playback_path (recording), not both")
        self.config = config
        self.clock = clock or RealClock()
        self._context_arg = context
        self._playback_path = Path(playback_path) if playback_path is not None else None
        self._warmup_frames = config.warmup_frames if warmup_frames is None else warmup_frames
        self._host_time_s = host_time_s or (None if playback_path is not None else time.time)
        self._depth_enabled = config.depth.enabled
        self._align = rs.align(rs.stream.color) if config.depth.enabled and config.align_depth_to_color else None
        self._source: Source | None = None
        self._pipeline: rs.pipeline | None = None
        self._profile: rs.pipeline_profile | None = None
        self.serial: str | None = None
        self.device_name: str | None = None
        self._intrinsics: Intrinsics | None = None
        self._depth_intrinsics: Intrinsics | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._frame: CameraFrame | None = None
        self._stalled = False
        self._failure: CameraError | None = None
        self._playback_ended = False
        self.frames_received = 0  # complete frame sets read from the pipeline, warm-up frames included
        self.incomplete_framesets = 0
        self.restarts = 0  # pipeline restarts that succeeded
        self.failed_restarts = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def connect(self) -> None:
        """Start streaming and the reader thread; returns without waiting for a frame (see latest())."""
        if self._thread is not None:
            return
        if self._playback_path is not None and not self._playback_path.is_file():
            raise CameraError(f"recording not found: {self._playback_path}")
        self._source = Source(self._context_arg or rs.context(), self._playback_path)
        if not self._source.is_playback:
            self.serial, self.device_name = self._resolve_device()
        self._start_pipeline()
        self._stop.clear()
        self._failure, self._frame, self._stalled, self._playback_ended = None, None, False, False
        self._thread = threading.Thread(target=self._read_loop, name="fanvla-realsense", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        """Stop the reader thread and the pipeline; safe to call twice and after failures."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("RealSense reader thread did not stop within %.0f s", _JOIN_TIMEOUT_S)
        self._stop_pipeline()
        with self._cond:
            self._cond.notify_all()

    @property
    def is_connected(self) -> bool:
        return self._thread is not None

    # -- frames ------------------------------------------------------------------------------------
    @property
    def default_timeout_s(self) -> float:
        """How long latest() waits by default: every retry's frame time-out and backoff."""
        return self.config.frame_timeout_s * (self.config.retries + 1) + total_backoff_s(self.config.retries)

    def latest(self, timeout_s: float | None = None) -> CameraFrame:
        """The newest frame set. Waits for the first one, and for a fresh one while the stream is stalled.

        On a simulated clock a frame older than frame_timeout_s of simulated time means the frame
        injection has stopped (waiting cannot help: simulated time stands still while we wait).
        """
        frame = self._wait(lambda frame: not self._stalled, timeout_s, "frame")
        if self.clock.is_simulated:
            age_s = self.clock.now_s() - frame.received_s
            if age_s > self.config.frame_timeout_s:
                raise CameraTimeoutError(
                    f"the newest frame from {self._describe()} is {age_s:.2f} s old in simulated time (frame_timeout_s "
                    f"{self.config.frame_timeout_s:g}): the frame injection stopped; check the SoftwareRealSense task "
                    f"(SoftwareRealSense.stop() re-raises its error)")
        return frame

    def wait_for_frame_number(self, frame_number: int, timeout_s: float | None = None) -> CameraFrame:
        """Wait until latest() returns frame ``frame_number`` or a later one (lock-step simulation hook)."""
        return self._wait(lambda frame: frame.frame_number >= frame_number, timeout_s, f"frame {frame_number}")

    @property
    def timestamp_domain(self) -> str | None:
        """The domain of the newest frame's timestamps (``global_time`` on a D455 by default); None before one."""
        frame = self._frame
        return None if frame is None else frame.metadata.get("timestamp_domain")

    @property
    def playback_ended(self) -> bool:
        """True once a recording has delivered its last frame."""
        return self._playback_ended

    @property
    def intrinsics(self) -> Intrinsics:
        if self._intrinsics is None:
            raise CameraError("camera intrinsics are known once the camera is connected (call connect() first)")
        return self._intrinsics

    @property
    def depth_intrinsics(self) -> Intrinsics | None:
        """Intrinsics of depth_mm: the colour ones when depth is aligned to colour; None without depth."""
        return self._depth_intrinsics

    def _wait(self, ready, timeout_s: float | None, what: str) -> CameraFrame:
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._failure is not None:
                    raise type(self._failure)(str(self._failure))
                if self._thread is None:
                    raise CameraError("the camera is not connected (call connect() first)")
                if self._frame is not None and ready(self._frame):
                    return self._frame
                if self._playback_ended:
                    raise CameraError(f"{self._describe()} ended after {self.frames_received} frames before {what}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CameraTimeoutError(self._timeout_message(what, timeout))
                self._cond.wait(remaining)

    # -- device and pipeline -------------------------------------------------------------------------
    def _resolve_device(self) -> tuple[str, str]:
        devices = connected_devices(self._source.context)
        listing = ", ".join(f"{serial} ({name})" for serial, name in devices)
        wanted = self.config.serial
        if not devices:
            raise CameraError("no RealSense camera is connected. Check that it shows up in `rs-enumerate-devices`, "
                              "the USB3 cable and port, and (without root) librealsense's udev rules.")
        if wanted is None:
            if len(devices) > 1:
                raise CameraError(f"{len(devices)} RealSense cameras are connected ({listing}); set camera.serial "
                                  f"in hardware.yaml to choose one")
            return devices[0]
        for serial, name in devices:
            if serial == wanted:
                return serial, name
        raise CameraError(f"no RealSense with serial {wanted!r} (hardware.yaml camera.serial); connected: {listing}")

    def _stream_config(self) -> rs.config:
        # A fresh rs.config every start: a config caches the device it resolved, which is stale after a reset.
        config = rs.config()
        self._source.select(config, self.serial)
        color = self.config.color
        config.enable_stream(rs.stream.color, color.width, color.height, rs.format.rgb8, color.fps)
        if self._depth_enabled:
            depth = self.config.depth
            config.enable_stream(rs.stream.depth, depth.width, depth.height, rs.format.z16, depth.fps)
        return config

    def _start_pipeline(self) -> None:
        pipeline = rs.pipeline(self._source.context)
        config = self._stream_config()
        try:
            playback = self._paused_playback(pipeline, config) if self._source.is_playback else None
            profile = pipeline.start(config)
            if playback is not None:
                playback.resume()
        except RuntimeError as error:
            raise CameraError(self._start_failure_message(error)) from None
        self._pipeline, self._profile = pipeline, profile
        device = profile.get_device()
        if self._source.is_playback:
            self.serial = device_info(device, rs.camera_info.serial_number)
            self.device_name = device_info(device, rs.camera_info.name)
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        self._intrinsics = intrinsics_from_profile(color)
        if self._depth_enabled:
            depth = profile.get_stream(rs.stream.depth).as_video_stream_profile()
            self._depth_intrinsics = self._intrinsics if self._align else intrinsics_from_profile(depth)

    @staticmethod
    def _paused_playback(pipeline: rs.pipeline, config: rs.config) -> rs.playback:
        """The recording's playback device, not real time and paused until the pipeline has started.

        Not real time: frames are handed over as fast as they are read, and the reader blocks while the
        consumer is busy instead of dropping (playback_sensor.h: a blocking dispatch when not real time).
        Paused: the playback reads from the first sensor's start on, so a second sensor started a moment
        later would lose the first frames (measured: 8 of 12 frames under CPU load); the pipeline's start
        uses the device the config resolved, so pausing it here holds every stream until resume().
        """
        playback = config.resolve(rs.pipeline_wrapper(pipeline)).get_device().as_playback()
        playback.set_real_time(False)
        playback.pause()
        return playback

    def _stop_pipeline(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            try:
                pipeline.stop()
            except RuntimeError as error:  # already stopped (e.g. a failed restart): nothing left to release
                log.debug("pipeline.stop(): %s", error)

    def _start_failure_message(self, error: RuntimeError) -> str:
        color, depth = self.config.color, self.config.depth
        wanted = f"colour {color.width}x{color.height} rgb8 @ {color.fps}"
        if self._depth_enabled:
            wanted += f" and depth {depth.width}x{depth.height} z16 @ {depth.fps}"
        offered = self._source.available_modes(self.serial) or "nothing readable"
        if self._source.is_playback:
            advice = f"The recording holds: {offered}; set hardware.yaml camera to match it."
        else:
            advice = (f"It offers: {offered}. On a USB2 link the D455 offers fewer modes; check the USB3 port "
                      f"and cable, or choose a listed mode.")
        return f"cannot start {self._describe()} with {wanted} (hardware.yaml camera): {error}. {advice}"

    def _describe(self) -> str:
        name = f" ({self.device_name})" if self.device_name else ""
        return self._source.describe(self.serial) + name if self._source else "RealSense camera"

    def _timeout_message(self, what: str, timeout_s: float) -> str:
        return (f"no {what} from {self._describe()} within {timeout_s:.2f} s (frame_timeout_s "
                f"{self.config.frame_timeout_s:g}, {self.config.retries} retries, {self.restarts} restarts and "
                f"{self.failed_restarts} failed restarts so far). " + TROUBLESHOOTING)

    # -- the reader thread ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        # In lock-step simulation frames arrive only when simulated time advances, so wall-clock gaps
        # say nothing about the device; a recording simply ends.
        watch_stalls = not (self.clock.is_simulated or self._source.is_playback)
        last_frame_s = time.monotonic()
        warmup_left = 0 if self._source.is_playback else self._warmup_frames
        failed_attempts = 0
        try:
            while not self._stop.is_set():
                ok, frames = self._pipeline.try_wait_for_frames(_POLL_MS) if self._pipeline else (False, None)
                if ok:
                    frame = self._convert(frames)
                    if frame is None:
                        continue
                    last_frame_s, failed_attempts = time.monotonic(), 0
                    self.frames_received += 1
                    if warmup_left > 0:
                        warmup_left -= 1
                        continue
                    self._publish(frame)
                elif self._source.is_playback:
                    self._check_playback_end()
                elif watch_stalls and time.monotonic() - last_frame_s > self.config.frame_timeout_s:
                    failed_attempts = self._restart_after_stall(failed_attempts)
                    if failed_attempts < 0:
                        return
                    last_frame_s = time.monotonic()
        except CameraError as error:
            self._fail(error)
        except RuntimeError as error:  # the SDK failed underneath us: report it, never die silently
            self._fail(CameraError(f"{self._describe()} failed while streaming: {error}. " + TROUBLESHOOTING))

    def _restart_after_stall(self, failed_attempts: int) -> int:
        """Restart until one succeeds; the attempts made so far (-1 after failing for good, or on stop).

        An attempt whose restart fails counts against ``camera.retries`` like one that brought no frame.
        """
        last_problem = "no frame after the restart"
        while not self._stop.is_set():
            if failed_attempts >= self.config.retries:
                self._fail(CameraTimeoutError(
                    f"{self._describe()} stopped delivering frames and {failed_attempts} restart(s) did not bring "
                    f"them back (camera.retries {self.config.retries}; last: {last_problem}). "
                    + self._timeout_message("frame", self.config.frame_timeout_s * (failed_attempts + 1))))
                return -1
            failed_attempts += 1
            try:
                self._recover(failed_attempts)
                return failed_attempts
            except (CameraError, RuntimeError) as error:
                self.failed_restarts += 1
                last_problem = str(error)
                log.warning("restart %d of %d of %s failed: %s", failed_attempts, self.config.retries,
                            self._describe(), error)
        return -1

    def _convert(self, frames: rs.composite_frame) -> CameraFrame | None:
        received_s = self.clock.now_s()
        host_s = self._host_time_s() if self._host_time_s is not None else None
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        depth = frames.get_depth_frame() if self._depth_enabled else None
        if not color or (self._depth_enabled and not depth):
            self.incomplete_framesets += 1  # the syncer may emit a lone stream at start-up; wait for a full set
            return None
        domain = color.get_frame_timestamp_domain()
        metadata: dict = {"timestamp_domain": domain.name}
        if host_s is not None and domain == rs.timestamp_domain.global_time:
            metadata["capture_to_host_s"] = host_s - color.get_timestamp() / _MM_PER_M
        depth_mm = None
        if depth:
            depth_mm = _depth_to_mm(np.asanyarray(depth.get_data()), depth.as_depth_frame().get_units())
            metadata["depth_frame_number"] = depth.get_frame_number()
        return CameraFrame(color=np.array(np.asanyarray(color.get_data()), copy=True),
                           timestamp_s=color.get_timestamp() / _MM_PER_M, frame_number=color.get_frame_number(),
                           received_s=received_s, depth_mm=depth_mm, metadata=metadata)

    def _publish(self, frame: CameraFrame) -> None:
        with self._cond:
            self._frame, self._stalled = frame, False
            self._cond.notify_all()

    def _fail(self, error: CameraError) -> None:
        log.error("%s", error)
        with self._cond:
            self._failure = error
            self._cond.notify_all()

    def _check_playback_end(self) -> None:
        if self._profile.get_device().as_playback().current_status() == rs.playback_status.stopped:
            with self._cond:
                self._playback_ended = True
                self._cond.notify_all()
            self._stop.wait(_POLL_MS / _MM_PER_M)

    def _recover(self, attempt: int) -> None:
        """One restart: stop, hardware_reset where supported and wait for the device to leave and come back,
        back off, start a fresh pipeline. Raises CameraError when the device is not back or will not start."""
        log.warning("no frame from %s for %.2f s: restart %d of %d", self._describe(), self.config.frame_timeout_s,
                    attempt, self.config.retries)
        with self._cond:
            self._stalled = True  # latest() must not hand out the stale frame as if it were fresh
        device = self._profile.get_device() if self._profile is not None else None
        self._stop_pipeline()
        if device is not None:
            reset_and_wait_until_gone(device, self._source.context, self._stop)
        if self._stop.wait(backoff_s(attempt)):
            return
        if not wait_until_listed(self._source.context, self.serial, self._stop):
            if self._stop.is_set():
                return
            raise CameraError(f"{self._describe()} did not come back within {REENUMERATE_TIMEOUT_S:.0f} s after a "
                              f"restart (it is not listed by librealsense)")
        self._start_pipeline()
        self.restarts += 1


def _depth_to_mm(raw: np.ndarray, depth_units_m: float) -> np.ndarray:
    """z16 values in the sensor's depth units as uint16 millimetres (the D455 default unit is 1 mm)."""
    scale = depth_units_m * _MM_PER_M
    if abs(scale - 1.0) < 1e-9:
        return np.array(raw, copy=True)
    return np.clip(np.rint(raw.astype(np.float64) * scale), 0, np.iinfo(np.uint16).max).astype(np.uint16)
