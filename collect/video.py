"""``fanvla collect view``: one episode as an MP4 with a state/action overlay, and a PNG plot of the actions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from collect.store import EpisodeStore
from robot.units import rad_to_deg

MIN_VIDEO_WIDTH_PX = 640  # small frames are scaled up so that the overlay text stays readable
GREEN, RED, ORANGE, WHITE = (60, 220, 60), (255, 70, 70), (255, 170, 0), (255, 255, 255)


def _deg(values_rad: np.ndarray) -> str:
    return " ".join(f"{rad_to_deg(float(v)):7.2f}" for v in values_rad)


def overlay_lines(episode: dict[str, np.ndarray], step: int) -> list[tuple[str, tuple[int, int, int]]]:
    """The text drawn on frame ``step``: measured state and the command sent, units in the labels."""
    lines: list[tuple[str, tuple[int, int, int]]] = []

    def add(key: str, label: str, fmt) -> None:
        if key in episode:
            lines.append((f"{label} {fmt(episode[key][step])}", WHITE))

    add("joints_rad", "q     deg", _deg)
    add("command_joints_rad", "q cmd deg", _deg)
    add("tcp_pose", "tcp   mm ", lambda p: " ".join(f"{v:7.1f}" for v in p[:3]))
    add("command_tcp_pose", "tcp cmd mm", lambda p: " ".join(f"{v:7.1f}" for v in p[:3]))
    if "gripper_state" in episode and "command_gripper" in episode:
        lines.append((f"gripper {float(episode['gripper_state'][step]):.2f} cmd "
                      f"{float(episode['command_gripper'][step]):.2f}", WHITE))
    flags = []
    if episode["noop"][step]:
        flags.append(("NO-OP", ORANGE))
    if "command_clamped" in episode and episode["command_clamped"][step]:
        flags.append(("CLAMPED", RED))
    lines += flags
    return lines


def _annotate(frame: np.ndarray, header: str, lines: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    import cv2

    scale = max(1, int(np.ceil(MIN_VIDEO_WIDTH_PX / frame.shape[1])))
    image = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1) if scale > 1 else frame.copy()
    image = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])  # even size for H.264
    rows = [(header, GREEN), *lines]
    band_px = min(image.shape[0], 8 + 17 * len(rows))
    image[:band_px] = (image[:band_px] * 0.4).astype(image.dtype)  # darken behind the text so it stays legible
    for row, (text, colour) in enumerate(rows):
        origin = (8, 18 + 17 * row)
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return image


def _depth_panel(depth_mm: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    valid = depth_mm[depth_mm > 0]
    far_mm = float(np.percentile(valid, 99)) if valid.size else 1.0
    scaled = np.clip(depth_mm.astype(np.float32) / max(far_mm, 1.0) * 255.0, 0, 255).astype(np.uint8)
    coloured = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    coloured[depth_mm == 0] = 0
    return cv2.resize(coloured, (width, height), interpolation=cv2.INTER_NEAREST)


def write_episode_video(store: EpisodeStore, index: int, out_path: str | os.PathLike[str],
                        plot_path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the MP4 (colour, depth beside it when recorded, overlay) and the action plot; returns the paths."""
    import imageio.v2 as imageio

    out_path = Path(out_path)
    plot_path = Path(plot_path) if plot_path is not None else out_path.with_suffix(".png")
    meta = store.episode_meta(index)
    episode = store.read_episode(index, keys=store.schema.low_dim_keys)
    span = store.episode_slice(index)
    color_key = next((k for k in store.schema.image_keys if store.schema.keys[k].dtype == "uint8"), None)
    if color_key is None:
        raise ValueError(f"{store.path} has no colour images to make a video of")
    depth_key = "depth_mm" if "depth_mm" in store.schema.keys else None
    colors, depths = store.array(color_key), store.array(depth_key) if depth_key else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header_base = f"ep {meta['index']} | {meta.get('instruction', '')}"
    with imageio.get_writer(out_path, fps=store.schema.rate_hz, codec="libx264", macro_block_size=2,
                            pixelformat="yuv420p", ffmpeg_log_level="error") as video:
        for step, frame_index in enumerate(range(span.start, span.stop)):
            frame = colors[frame_index]
            if depths is not None:
                frame = np.concatenate([frame, _depth_panel(depths[frame_index], *frame.shape[:2])], axis=1)
            header = f"{header_base} | step {step + 1}/{meta['frames']}"
            video.append_data(_annotate(frame, header, overlay_lines(episode, step)))
    plot_actions(episode, store.schema.rate_hz, f"episode {meta['index']}: {meta.get('instruction', '')}", plot_path)
    return {"video": str(out_path), "plot": str(plot_path), "frames": meta["frames"]}


def plot_actions(episode: dict[str, np.ndarray], rate_hz: float, title: str, path: Path) -> None:
    """Commanded joints (deg), TCP position (mm) and gripper over time; no-op steps shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(episode["noop"])
    time_s = np.arange(steps) / rate_hz
    panels = [key for key in ("command_joints_rad", "command_tcp_pose", "command_gripper") if key in episode]
    figure, axes = plt.subplots(max(len(panels), 1), 1, figsize=(10, 2.6 * max(len(panels), 1)), sharex=True,
                                squeeze=False)
    for axis, key in zip(axes[:, 0], panels, strict=False):
        values = np.asarray(episode[key])
        if key == "command_joints_rad":
            axis.plot(time_s, np.degrees(values), label=[f"J{i + 1}" for i in range(values.shape[1])])
            axis.set_ylabel("joint cmd (deg)")
        elif key == "command_tcp_pose":
            axis.plot(time_s, values[:, :3], label=["x", "y", "z"])
            axis.set_ylabel("TCP cmd (mm)")
        else:
            axis.plot(time_s, values, label="command")
            if "gripper_state" in episode:
                axis.plot(time_s, episode["gripper_state"], "--", label="measured")
            axis.set_ylabel("gripper (0 closed, 1 open)")
        for start in np.flatnonzero(episode["noop"]):
            axis.axvspan(start / rate_hz, (start + 1) / rate_hz, color="orange", alpha=0.15, linewidth=0)
        axis.legend(loc="upper right", fontsize=7, ncol=6)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s); shaded: no-op steps")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
