"""Where the table is in the camera image: the calibration behind the operator's placement markers.

A ``TableCalibration`` is the colour camera's pinhole model (``robot.interfaces.Intrinsics``) plus its pose in
the robot base frame (OpenCV convention: x right, y down, z forward; mm). It projects any base-frame point, so
the marker of an object can be drawn where the object's footprint lies on the table.

- In the twin it is exact: read from the MuJoCo camera (``from_twin``).
- At the robot, ``from_table_points``: four or more table points (base frame, mm; e.g. where the TCP touched
  the table) and the pixels where they appear, solved with OpenCV's PnP using the camera's intrinsics; refused
  when the points do not agree with one camera pose (reprojection error above ``max_rms_px``).

``fanvla eval calibrate`` stores it as JSON; ``fanvla eval run --backend real`` draws the markers with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from collect.layout import utc_now_iso
from eval_protocols.results import read_json_document
from robot.interfaces import Intrinsics
from robot.scene import BOX, SceneSpec, object_geometry

CALIBRATION_FORMAT = "fanvla-table-calibration"
DEFAULT_MAX_RMS_PX = 4.0
MIN_POINTS = 4
# Marker colours (RGB): the object's footprint, the box's outer and inner outline.
OBJECT_COLOUR, BOX_COLOUR = (255, 220, 0), (0, 230, 255)


class CalibrationError(ValueError):
    """A calibration that cannot be made or read; the message says what to fix."""


@dataclass(frozen=True)
class TableCalibration:
    intrinsics: Intrinsics
    rotation: np.ndarray  # (3, 3) camera-from-base
    translation_mm: np.ndarray  # (3,) camera-from-base
    method: str
    reprojection_rms_px: float | None = None
    created_at: str = ""

    def project(self, points_mm: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Pixels (N, 2) of base-frame points (N, 3) in the calibrated image size (distortion ignored: the
        D455's colour stream and the twin report none)."""
        points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
        camera = points @ self.rotation.T + self.translation_mm
        if np.any(camera[:, 2] <= 1.0):
            raise CalibrationError("a point to draw lies behind the camera; is the calibration for this camera?")
        k = self.intrinsics
        return np.stack([k.fx * camera[:, 0] / camera[:, 2] + k.ppx, k.fy * camera[:, 1] / camera[:, 2] + k.ppy],
                        axis=1)

    def project_to(self, points_mm: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
        """Like ``project``, scaled to an image of another size (e.g. a downscaled live view)."""
        scale = np.array([image_shape[1] / self.intrinsics.width, image_shape[0] / self.intrinsics.height])
        return self.project(points_mm) * scale

    # -- storage ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "method": self.method, "created_at": self.created_at,
                "intrinsics": self.intrinsics.to_dict(), "rotation": self.rotation.tolist(),
                "translation_mm": self.translation_mm.tolist(), "reprojection_rms_px": self.reprojection_rms_px}

    def save(self, path: str | Path) -> None:
        from eval_protocols.results import write_json_atomic

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TableCalibration:
        path = Path(path)
        data = read_json_document(path, CALIBRATION_FORMAT, "a table calibration", CalibrationError,
                                  f"no table calibration at {path}; make one with 'fanvla eval calibrate'")
        try:
            k = data["intrinsics"]
            intrinsics = Intrinsics(int(k["width"]), int(k["height"]), float(k["fx"]), float(k["fy"]),
                                    float(k["ppx"]), float(k["ppy"]), str(k.get("distortion_model", "none")),
                                    tuple(float(c) for c in k.get("coeffs", ())))
            rotation = np.asarray(data["rotation"], dtype=np.float64).reshape(3, 3)
            translation = np.asarray(data["translation_mm"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as error:
            raise CalibrationError(f"{path} is damaged ({error}); make a new one with 'fanvla eval calibrate'") \
                from None
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6):
            raise CalibrationError(f"{path}: 'rotation' is not a rotation matrix")
        return cls(intrinsics, rotation, translation, str(data.get("method", "")), data.get("reprojection_rms_px"),
                   str(data.get("created_at", "")))

    # -- making one -------------------------------------------------------------------------------------
    @classmethod
    def from_twin(cls, twin) -> TableCalibration:
        """Exact calibration of the twin's camera (pose from MuJoCo, intrinsics of the colour profile)."""
        from robot.sim import model as sim_model

        camera_id = twin.model.camera(sim_model.CAMERA).id
        with twin.lock:
            position_mm = twin.data.cam_xpos[camera_id] * 1000.0
            world_from_mujoco = twin.data.cam_xmat[camera_id].reshape(3, 3).copy()
        world_from_camera = world_from_mujoco @ np.diag([1.0, -1.0, -1.0])  # MuJoCo looks along -z, y up
        rotation = world_from_camera.T
        return cls(twin.intrinsics(), rotation, -rotation @ position_mm, "twin-exact", 0.0, utc_now_iso())

    @classmethod
    def from_table_points(cls, table_xy_mm: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics,
                          max_rms_px: float = DEFAULT_MAX_RMS_PX) -> TableCalibration:
        """Camera pose from table points (z = 0) and their pixels (PnP), checked by its reprojection error."""
        table_xy_mm = np.asarray(table_xy_mm, dtype=np.float64).reshape(-1, 2)
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        if len(table_xy_mm) != len(pixels):
            raise CalibrationError(f"{len(table_xy_mm)} table points but {len(pixels)} pixels")
        if len(table_xy_mm) < MIN_POINTS:
            raise CalibrationError(f"need at least {MIN_POINTS} points, got {len(table_xy_mm)}")
        if not np.all(np.isfinite(table_xy_mm)) or not np.all(np.isfinite(pixels)):
            raise CalibrationError("every point needs finite x_mm, y_mm, u_px, v_px")
        centred = table_xy_mm - table_xy_mm.mean(axis=0)
        if np.linalg.svd(centred, compute_uv=False)[-1] < 1e-3 * max(1.0, np.abs(centred).max()) * len(centred) ** 0.5:
            raise CalibrationError("the table points lie on one line; spread them over the table (a rectangle's "
                                   "corners work best)")
        calibration = _solve_pnp(table_xy_mm, pixels, intrinsics)
        object_points = np.hstack([table_xy_mm, np.zeros((len(table_xy_mm), 1))])
        errors = np.linalg.norm(calibration.project(object_points) - pixels, axis=1)
        rms = float(math.sqrt(np.mean(errors ** 2)))
        if rms > max_rms_px:
            worst, off_px = _suspect_point(table_xy_mm, pixels, intrinsics, errors)
            raise CalibrationError(f"the points do not fit one camera pose: reprojection error {rms:.1f} px RMS "
                                   f"(allowed {max_rms_px:g}); point {worst + 1} is off by {off_px:.1f} px from "
                                   f"where the others put it. Check its coordinates and pixel, or that the camera did "
                                   f"not move")
        return cls(intrinsics, calibration.rotation, calibration.translation_mm, "table-points-pnp", rms,
                   calibration.created_at)


def _solve_pnp(table_xy_mm: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics) -> TableCalibration:
    import cv2

    k = intrinsics
    camera_matrix = np.array([[k.fx, 0.0, k.ppx], [0.0, k.fy, k.ppy], [0.0, 0.0, 1.0]])
    object_points = np.hstack([table_xy_mm, np.zeros((len(table_xy_mm), 1))])
    # OpenCV refuses strided views (a column slice of the points file): hand it contiguous copies
    ok, rvec, tvec = cv2.solvePnP(np.ascontiguousarray(object_points), np.ascontiguousarray(pixels), camera_matrix,
                                  None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:
        raise CalibrationError("OpenCV could not find a camera pose for these points")
    return TableCalibration(intrinsics, cv2.Rodrigues(rvec)[0], tvec.reshape(3), "table-points-pnp", None,
                            utc_now_iso())


def _suspect_point(table_xy_mm: np.ndarray, pixels: np.ndarray, intrinsics: Intrinsics,
                   residuals_px: np.ndarray) -> tuple[int, float]:
    """The point that disagrees most with the pose the other points give (least squares spreads one bad point's
    error over all residuals, so the largest residual alone can blame a good point)."""
    if len(table_xy_mm) <= MIN_POINTS:
        worst = int(np.argmax(residuals_px))
        return worst, float(residuals_px[worst])
    misses = []
    for index in range(len(table_xy_mm)):
        keep = np.arange(len(table_xy_mm)) != index
        try:
            others = _solve_pnp(table_xy_mm[keep], pixels[keep], intrinsics)
            predicted = others.project([[*table_xy_mm[index], 0.0]])[0]
            misses.append(float(np.linalg.norm(predicted - pixels[index])))
        except CalibrationError:
            misses.append(0.0)
    worst = int(np.argmax(misses))
    return worst, misses[worst]


def read_points_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, Intrinsics | None]:
    """A YAML file of ``points: [{x_mm, y_mm, u_px, v_px}, ...]`` and optional ``intrinsics: {width, ...}``."""
    from fanvla.yaml_loader import YamlError, excerpt, load_yaml

    path = Path(path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))  # strict: duplicate keys, alias bombs
    except FileNotFoundError:
        raise CalibrationError(f"points file not found: {path}") from None
    except (OSError, YamlError) as error:
        raise CalibrationError(f"cannot read {path}: {error}") from None
    points = data.get("points") if isinstance(data, dict) else None
    if not isinstance(points, list):
        raise CalibrationError(f"{path}: expected 'points: [{{x_mm: .., y_mm: .., u_px: .., v_px: ..}}, ...]'")
    rows = []
    for number, point in enumerate(points, start=1):
        try:
            rows.append([_number(point[key]) for key in ("x_mm", "y_mm", "u_px", "v_px")])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{path}: point {number} = {excerpt(point)} needs numbers x_mm, y_mm, u_px, "
                                   f"v_px") from None
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    intrinsics = None
    if isinstance(data.get("intrinsics"), dict):
        k = data["intrinsics"]
        try:
            intrinsics = Intrinsics(int(_number(k["width"])), int(_number(k["height"])), _number(k["fx"]),
                                    _number(k["fy"]), _number(k["ppx"]), _number(k["ppy"]))
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{path}: intrinsics need numbers width, height, fx, fy, ppx, ppy") from None
    return table[:, :2], table[:, 2:], intrinsics


def _number(value: Any) -> float:
    """A YAML number; a boolean (true, yes, on) is not one, although Python would read it as 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r:.40}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# Markers on the live image
# ----------------------------------------------------------------------------------------------------------


def footprint_mm(scene: SceneSpec, segments: int = 24) -> np.ndarray:
    """The object's outline on the table (N, 3) in the base frame, at its start pose."""
    geometry = object_geometry(scene.object_name)
    yaw = scene.object_yaw_rad
    if geometry.shape == "box":
        hx, hy = geometry.size_mm[0] / 2, geometry.size_mm[1] / 2
        local = np.array([[hx, hy], [-hx, hy], [-hx, -hy], [hx, -hy]])
    else:
        count = 6 if geometry.shape == "hex_prism" else segments
        radius = geometry.footprint_radius_mm
        angles = np.arange(count) * 2 * math.pi / count
        local = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    xy = local @ rotation.T + np.asarray(scene.object_xy_mm)
    return np.hstack([xy, np.zeros((len(xy), 1))])


def box_outlines_mm(scene: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """The box's outer outline on the table and its inner outline at the wall top (base frame)."""
    def square(half: float, z: float) -> np.ndarray:
        corners = np.array([[half, half], [-half, half], [-half, -half], [half, -half]]) + np.asarray(scene.box_xy_mm)
        return np.hstack([corners, np.full((4, 1), z)])

    return square(BOX.outer_mm / 2, 0.0), square(BOX.inner_mm / 2, BOX.wall_height_mm)


def draw_placement(image: np.ndarray, calibration: TableCalibration, scene: SceneSpec) -> np.ndarray:
    """A copy of ``image`` (RGB) with the object's footprint and the box outline where they must be placed."""
    import cv2

    out = np.ascontiguousarray(image.copy())
    shape = out.shape

    def polyline(points_mm: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> np.ndarray:
        pixels = calibration.project_to(points_mm, shape)
        cv2.polylines(out, [np.round(pixels).astype(np.int32)], True, colour, thickness, cv2.LINE_AA)
        return pixels

    outer, inner = box_outlines_mm(scene)
    polyline(outer, BOX_COLOUR)
    polyline(inner, BOX_COLOUR, 1)
    outline = polyline(footprint_mm(scene), OBJECT_COLOUR)
    centre = calibration.project_to(np.array([[*scene.object_xy_mm, 0.0]]), shape)[0]
    cv2.drawMarker(out, tuple(round(float(v)) for v in centre), OBJECT_COLOUR, cv2.MARKER_CROSS, 12, 2)
    box_label = calibration.project_to(outer[:1], shape)[0]
    _label(out, "box", box_label)
    _label(out, scene.object_name, outline.max(axis=0) * [1, 0] + outline.min(axis=0) * [0, 1])
    return out


def _label(image: np.ndarray, text: str, at_px: np.ndarray) -> None:
    import cv2

    origin = (round(float(at_px[0])) + 4, max(12, round(float(at_px[1])) - 4))
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
