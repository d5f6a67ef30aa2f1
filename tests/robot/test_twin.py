"""The twin as a plant: scene placement, holding and tracking, collisions, success check, camera."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from robot.clock import RealClock
from robot.scene import SceneSpec
from robot.sim.twin import Twin


@pytest.fixture(scope="module")
def twin(hardware_config):
    with Twin(hardware_config, realtime=False) as twin:
        yield twin


def _spec(config, name="red_cube", yaw=0.3, obj=(300.0, -120.0), box=(300.0, 140.0)) -> SceneSpec:
    return SceneSpec(name, obj, yaw, box, tuple(config.robot.home_joints_rad))


def test_reset_places_object_box_and_arm(twin, hardware_config):
    spec = twin.reset_scene(_spec(hardware_config, "blue_prism", yaw=0.4, obj=(290.0, -100.0), box=(310.0, 150.0)))
    obj = twin.object_pose()
    np.testing.assert_allclose(obj[:2], [290.0, -100.0], atol=0.5)
    assert obj[2] == pytest.approx(21.0, abs=1.0) and obj[5] == pytest.approx(0.4, abs=0.01)
    np.testing.assert_allclose(twin.box_pose()[:3], [310.0, 150.0, 0.0])
    np.testing.assert_allclose(twin.joint_positions(), spec.start_joints_rad, atol=1e-4)
    assert twin.gripper_opening() == pytest.approx(1.0, abs=0.02)
    for other in ("red_cube", "green_cylinder"):  # parked far behind the camera
        assert twin.object_pose(other)[0] > 2000


def test_arm_holds_still_and_tracks_a_moving_target(twin, hardware_config):
    twin.reset_scene(_spec(hardware_config))
    start = twin.joint_positions()
    twin.clock.sleep(0.5)
    assert np.max(np.abs(twin.joint_positions() - start)) < math.radians(0.01)
    # a ramp at the configured joint speed limit, one target per servo cycle, like servo_j
    speed = hardware_config.safety.max_joint_speed_rad_s
    worst = 0.0
    for k in range(1, 40):  # every joint moves 28 deg, the arm rising away from the table
        twin.set_joint_target(start + np.array([1, 1, 1, 1, 1, 1]) * speed * twin.cycle_s * k)
        twin.clock.advance_cycles(1)
        worst = max(worst, float(np.max(np.abs(twin.joint_positions() - twin.joint_target()))))
    assert twin.collision is None
    assert worst < math.radians(0.5)


def test_pressing_into_the_table_latches_a_collision(twin, hardware_config):
    twin.reset_scene(_spec(hardware_config))
    kin = twin.kinematics
    pose = twin.tcp_pose()
    low = kin.inverse([pose[0], pose[1], -20.0, *pose[3:]], twin.joint_positions())
    twin.set_joint_target(low)
    twin.clock.sleep(1.0)
    event = twin.collision
    assert event is not None and event.env_geom == "table" and event.robot_geom.startswith("finger")
    assert event.force_n > 50.0  # collision level 2
    held = twin.joint_positions()
    twin.set_joint_target(twin.joint_target() + 0.1)  # ignored while latched
    twin.clock.sleep(0.2)
    assert np.max(np.abs(twin.joint_positions() - held)) < math.radians(0.2)
    twin.clear_collision()
    assert twin.collision is None


def test_success_needs_the_object_in_the_box(twin, hardware_config):
    twin.reset_scene(_spec(hardware_config))
    report = twin.task_success()
    assert not report and not report.inside_footprint and report.at_rest and report.gripper_open
    assert "not inside footprint" in report.reason


def test_render_sizes_and_types(twin, hardware_config):
    color, depth = twin.render(depth=True)
    h, w = hardware_config.camera.color.height, hardware_config.camera.color.width
    assert color.shape == (h, w, 3) and color.dtype == np.uint8
    assert depth.shape == (h, w) and depth.dtype == np.uint16
    small = twin.render_color(224, 224)
    assert small.shape == (224, 224, 3)
    intr = twin.intrinsics(224, 224)
    full = twin.intrinsics()
    assert full.fx == pytest.approx((w / 2) / math.tan(math.radians(hardware_config.sim.camera_hfov_deg) / 2))
    assert intr.fy == pytest.approx(full.fy * 224 / h)
    assert (intr.ppx, intr.ppy) == (111.5, 111.5)
    with pytest.raises(ValueError, match="offscreen buffer"):
        twin.render_color(5000, 100)


def test_camera_frames_follow_the_colour_and_depth_profiles(hardware_config):
    config = hardware_config.with_overrides({"camera.depth": {"enabled": True, "width": 320, "height": 240, "fps": 30}})
    with Twin(config, realtime=False) as twin:
        color, depth = twin.camera_frames()
        assert color.shape == (480, 640, 3) and depth.shape == (240, 320) and depth.dtype == np.uint16
        assert twin.depth_intrinsics().fy == pytest.approx(twin.intrinsics().fy / 2)
        full = twin.render_depth_mm()
        assert abs(int(depth[200, 160]) - int(full[400, 320])) <= 3  # same camera, half the resolution
    off = hardware_config.with_overrides({"camera.depth.enabled": False})
    with Twin(off, realtime=False) as twin:
        assert twin.camera_frames()[1] is None


def _camera_axes(config):
    pos = np.asarray(config.sim.camera_pos_mm, float)
    forward = np.asarray(config.sim.camera_lookat_mm, float) - pos
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    return pos, forward, right, np.cross(right, forward)


def test_depth_is_z16_distance_along_the_optical_axis(twin, hardware_config):
    twin.reset_scene(_spec(hardware_config))
    depth = twin.render_depth_mm()
    intr = twin.intrinsics()
    pos, forward, right, up = _camera_axes(hardware_config)
    checked = 0
    for v in range(intr.height - 60, intr.height, 13):  # the near table: no props there
        for u in range(0, intr.width, 37):
            ray = forward + (u - intr.ppx) / intr.fx * right - (v - intr.ppy) / intr.fy * up
            expected_mm = -pos[2] / ray[2]  # ray's forward component is 1: the parameter is z-depth
            assert abs(float(depth[v, u]) - expected_mm) <= 1.5, (u, v)
            checked += 1
    assert checked > 50
    assert depth[0].max() > 0  # the far floor is within the z16 range


def test_intrinsics_project_the_cube_onto_red_pixels(twin, hardware_config):
    twin.reset_scene(_spec(hardware_config, yaw=0.0))
    color = twin.render_color()
    intr = twin.intrinsics()
    pos, forward, right, up = _camera_axes(hardware_config)
    top_centre = twin.object_pose()[:3] + np.array([0.0, 0.0, 19.0])
    rel = top_centre - pos
    z = rel @ forward
    u, v = intr.ppx + intr.fx * (rel @ right) / z, intr.ppy - intr.fy * (rel @ up) / z
    r, g, b = color[round(v), round(u)].astype(int)
    assert r > 120 and g < 60 and b < 60


def test_realtime_twin_steps_on_wall_time(hardware_config):
    with Twin(hardware_config, realtime=True) as twin:
        assert isinstance(twin.clock, RealClock)
        start_sim, start_wall = twin.data.time, time.monotonic()
        target = twin.joint_positions() + np.radians([5, 0, 0, 0, 0, 0])
        twin.set_joint_target(target)
        time.sleep(0.4)
        elapsed_sim, elapsed_wall = twin.data.time - start_sim, time.monotonic() - start_wall
        color = twin.render_color(64, 48)  # renders while the physics thread runs
        assert color.shape == (48, 64, 3)
        assert 0.5 * elapsed_wall < elapsed_sim < 1.2 * elapsed_wall
        np.testing.assert_allclose(twin.joint_positions(), target, atol=math.radians(0.05))
    stopped_at = twin.data.time
    time.sleep(0.05)
    assert twin.data.time == stopped_at
