"""Each trial's video: the colour frames the policy saw, small H.264 MP4s that browsers play.

``TrialVideo`` is a control-loop subscriber: every step's colour frame (the frame logged in the step log) is
downscaled, stamped with task, trial and time, and piped to ffmpeg (imageio-ffmpeg) while the episode runs, so
no frame is decoded again afterwards and ffmpeg encodes on another core. The file appears under its final name
only when the episode ended (os.replace of a temporary file): a video in RUN_DIR is always complete.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from robot.runtime import EpisodeResult, Step

log = logging.getLogger(__name__)

DEFAULT_WIDTH_PX = 320
# Small and fast: these videos are for looking at trials, not for training.
ENCODER_OPTIONS = ["-preset", "veryfast", "-crf", "28", "-movflags", "+faststart"]


class TrialVideo:
    """Writes ``path`` from the steps of one episode at ``fps`` (the control rate)."""

    def __init__(self, path: str | os.PathLike[str], fps: float, label: str, width_px: int = DEFAULT_WIDTH_PX) -> None:
        self.path, self.fps, self.label, self.width_px = Path(path), float(fps), label, int(width_px)
        self._temp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer = None
        self._size: tuple[int, int] | None = None
        self._start_s = 0.0
        self.frames = 0

    def on_episode_start(self, instruction: str) -> None:
        self.abandon()
        self.frames = 0

    def on_step(self, step: Step) -> None:
        if self._writer is None:
            self._start_s = step.observation.time_s
        frame = self._frame(step.observation.frame.color, step.observation.time_s)
        if self._writer is None:
            self._open(frame.shape[1], frame.shape[0])
        self._writer.send(np.ascontiguousarray(frame).tobytes())
        self.frames += 1

    def on_episode_end(self, result: EpisodeResult) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        os.replace(self._temp, self.path)

    def abandon(self) -> None:
        """Drop an unfinished video (the episode ended by an exception); the final path is left untouched."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except (OSError, RuntimeError) as error:  # ffmpeg may already be gone with the crash
                log.debug("closing an abandoned video: %s", error)
        self._temp.unlink(missing_ok=True)

    def _open(self, width: int, height: int) -> None:
        import imageio_ffmpeg

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = imageio_ffmpeg.write_frames(
            str(self._temp), (width, height), fps=self.fps, codec="libx264", pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p", quality=None, output_params=ENCODER_OPTIONS, macro_block_size=2,
            ffmpeg_log_level="error")
        self._writer.send(None)  # start ffmpeg

    def _frame(self, color: np.ndarray, time_s: float) -> np.ndarray:
        import cv2

        height, width = color.shape[:2]
        scale = min(1.0, self.width_px / width)
        size = (max(2, round(width * scale) // 2 * 2), max(2, round(height * scale) // 2 * 2))
        small = cv2.resize(color, size, interpolation=cv2.INTER_AREA) if size != (width, height) else color.copy()
        text = f"{self.label}  t={time_s - self._start_s:5.1f}s"
        cv2.putText(small, text, (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(small, text, (5, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        return small
