"""Table calibration: exact in the twin (checked against rendered pixels), PnP from table points, storage."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from eval_protocols.calibration import (
    CalibrationError,
    TableCalibration,
    draw_placement,
    footprint_mm,
    read_points_file,
)
from robot.scene import OBJECTS, SceneSampler
from robot.sim.twin import Twin

TABLE_POINTS_MM = np.array([[180.0, -220.0], [400.0, -220.0], [400.0, 220.0], [180.0, 220.0], [300.0, 0.0],
                            [250.0, -100.0]])


@pytest.fixture(scope="module")
def twin(hardware_config):
    with Twin(hardware_config) as twin:
        yield twin


def _mask(image: np.ndarray, colour: str) -> np.ndarray:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    # chroma, not brightness: the faces turned away from the light are dark but still clearly red / green
    return {"red": (r > 40) & (r > 2 * g) & (r > 2 * b), "green": (g > 40) & (g > 2 * r) & (g > 1.5 * b)}[colour]


def _object_hull_mask(calibration, spec, shape) -> np.ndarray:
    """Pixels covered by the object's projected 3-D outline (footprint on the table and at its top face)."""
    base = footprint_mm(spec)
    top = base.copy()
    top[:, 2] = OBJECTS[spec.object_name].height_mm
    pixels = calibration.project(np.vstack([base, top])).astype(np.float32)
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(pixels).round().astype(np.int32), 1)
    return mask.astype(bool)


@pytest.mark.parametrize(("seed", "name", "colour"), [(3, "red_cube", "red"), (8, "green_cylinder", "green")])
def test_twin_calibration_projects_onto_the_rendered_object(twin, hardware_config, seed, name, colour):
    spec = twin.reset_scene(SceneSampler(hardware_config).sample(seed, name))
    calibration = TableCalibration.from_twin(twin)
    assert (calibration.intrinsics.width, calibration.intrinsics.height) == (640, 480)
    image = twin.render_color()
    rendered = _mask(image, colour)
    projected = _object_hull_mask(calibration, spec, image.shape)
    iou = (rendered & projected).sum() / (rendered | projected).sum()
    assert rendered.sum() > 300 and iou > 0.8, f"IoU {iou:.2f}"
    # moving the object 30 mm moves its projection off the rendered pixels
    shifted = type(spec)(spec.object_name, (spec.object_xy_mm[0] + 30, spec.object_xy_mm[1]), spec.object_yaw_rad,
                         spec.box_xy_mm, spec.start_joints_rad)
    moved = _object_hull_mask(calibration, shifted, image.shape)
    assert (rendered & moved).sum() / (rendered | moved).sum() < 0.5


def test_placement_marker_is_drawn_around_the_object(twin, hardware_config):
    spec = twin.reset_scene(SceneSampler(hardware_config).sample(3, "red_cube"))
    calibration = TableCalibration.from_twin(twin)
    image = twin.render_color()
    drawn = draw_placement(image, calibration, spec)
    changed = np.any(drawn != image, axis=2)
    centre = calibration.project([[*spec.object_xy_mm, 0.0]])[0]
    box_centre = calibration.project([[*spec.box_xy_mm, 0.0]])[0]
    near = lambda c, r: np.hypot(*(np.indices(changed.shape)[::-1] - c.reshape(2, 1, 1))) < r  # noqa: E731
    assert changed[near(centre, 30)].sum() > 50 and changed[near(box_centre, 130)].sum() > 300
    assert changed.mean() < 0.05  # markers, not a repaint
    assert np.array_equal(draw_placement(image[::2, ::2], calibration, spec).shape, image[::2, ::2].shape)


def test_table_points_recover_the_camera_pose(twin):
    exact = TableCalibration.from_twin(twin)
    pixels = exact.project(np.hstack([TABLE_POINTS_MM, np.zeros((6, 1))]))
    noisy = pixels + np.random.default_rng(0).normal(0.0, 0.5, pixels.shape)
    solved = TableCalibration.from_table_points(TABLE_POINTS_MM, noisy, exact.intrinsics)
    assert solved.method == "table-points-pnp" and solved.reprojection_rms_px < 1.0
    probe = np.array([[300.0, -120.0, 0.0], [300.0, 140.0, 50.0], [220.0, 0.0, 0.0]])
    assert np.abs(solved.project(probe) - exact.project(probe)).max() < 2.0


def test_bad_table_points_are_refused(twin):
    exact = TableCalibration.from_twin(twin)
    pixels = exact.project(np.hstack([TABLE_POINTS_MM, np.zeros((6, 1))]))
    wrong = pixels.copy()
    wrong[2] += [40.0, -25.0]  # one pixel read from the wrong place
    with pytest.raises(CalibrationError, match=r"reprojection error .* point 3 is off"):
        TableCalibration.from_table_points(TABLE_POINTS_MM, wrong, exact.intrinsics)
    line = np.stack([np.linspace(200, 400, 5), np.linspace(-100, 100, 5)], axis=1)
    with pytest.raises(CalibrationError, match="lie on one line"):
        TableCalibration.from_table_points(line, np.zeros((5, 2)), exact.intrinsics)
    with pytest.raises(CalibrationError, match="at least 4 points"):
        TableCalibration.from_table_points(TABLE_POINTS_MM[:3], pixels[:3], exact.intrinsics)


def test_calibration_file_round_trip_and_damage(twin, tmp_path):
    exact = TableCalibration.from_twin(twin)
    path = tmp_path / "table_calibration.json"
    exact.save(path)
    loaded = TableCalibration.load(path)
    probe = np.array([[300.0, -120.0, 0.0]])
    assert np.allclose(loaded.project(probe), exact.project(probe)) and loaded.method == "twin-exact"
    path.write_text('{"format": "fanvla-table-calibration", "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]], '
                    '"translation_mm": [0, 0, 0], "intrinsics": {"width": 640, "height": 480, "fx": 1, "fy": 1, '
                    '"ppx": 0, "ppy": 0}}')
    with pytest.raises(CalibrationError, match="not a rotation matrix"):
        TableCalibration.load(path)
    with pytest.raises(CalibrationError, match="make one with 'fanvla eval calibrate'"):
        TableCalibration.load(tmp_path / "missing.json")


def test_points_file(tmp_path):
    path = tmp_path / "points.yaml"
    path.write_text("points:\n  - {x_mm: 200, y_mm: -100, u_px: 10.5, v_px: 20}\n  - {x_mm: 1, y_mm: 2, u_px: 3}\n")
    with pytest.raises(CalibrationError, match=r"point 2 .* needs numbers x_mm, y_mm, u_px, v_px"):
        read_points_file(path)
    path.write_text("points:\n  - {x_mm: 200, y_mm: -100, u_px: 10.5, v_px: 20}\n"
                    "intrinsics: {width: 640, height: 480, fx: 385, fy: 385, ppx: 319.5, ppy: 239.5}\n")
    table, pixels, intrinsics = read_points_file(path)
    assert table.tolist() == [[200.0, -100.0]] and pixels.tolist() == [[10.5, 20.0]]
    assert intrinsics.fx == 385 and math.isclose(intrinsics.ppy, 239.5)
