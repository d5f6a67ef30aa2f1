"""Scene placements: seeded, overlap-free, reachable; perturbation ranges read from task YAML."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robot.kinematics import MiniCoboKinematics
from robot.scene import (
    BOX,
    GRIPPER_CLEARANCE_MM,
    PerturbationRanges,
    SceneSampler,
    SceneSpec,
    grasp_tcp_pose,
    grasp_yaw,
    object_geometry,
    release_tcp_pose,
)

TASK4_LIKE = {"box_dx_mm": [-40, 40], "box_dy_mm": [-30, 30]}


@pytest.fixture(scope="module")
def sampler(hardware_config):
    return SceneSampler(hardware_config)


def test_same_seed_same_scene_and_seeds_differ(sampler):
    first = [sampler.sample(seed) for seed in range(5)]
    again = [sampler.sample(seed) for seed in range(5)]
    assert first == again
    assert len({spec.object_xy_mm for spec in first}) == 5


def test_nominal_samples_stay_within_the_configured_jitter(sampler, hardware_config):
    scene = hardware_config.scene
    home = np.asarray(hardware_config.robot.home_joints_deg)
    for seed in range(20):
        spec = sampler.sample(seed)
        assert spec.object_name in scene.objects
        assert np.all(np.abs(np.subtract(spec.object_xy_mm, scene.object_nominal_mm)) <= scene.object_jitter_mm)
        assert np.all(np.abs(np.subtract(spec.box_xy_mm, scene.box_nominal_mm)) <= scene.box_jitter_mm)
        assert abs(math.degrees(spec.object_yaw_rad)) <= scene.object_yaw_jitter_deg
        offsets = np.rad2deg(spec.start_joints_rad) - home
        assert np.all(np.abs(offsets) <= scene.start_joint_jitter_deg + 1e-9)


def test_perturbed_samples_are_overlap_free_and_reachable(sampler, hardware_config):
    ranges = PerturbationRanges.from_dict({"object_dx_mm": [-60, 60], "object_dy_mm": [-60, 160],
                                           "start_joint_offsets_deg": [-15, 15]})
    kin = MiniCoboKinematics.from_config(hardware_config)
    for seed in range(25):
        spec = sampler.sample(seed, "red_cube", ranges)
        half = BOX.outer_mm / 2 + object_geometry("red_cube").footprint_radius_mm + GRIPPER_CLEARANCE_MM
        dx, dy = (abs(a - b) for a, b in zip(spec.object_xy_mm, spec.box_xy_mm, strict=True))
        assert dx >= half - 1e-9 or dy >= half - 1e-9
        q = np.asarray(spec.start_joints_rad)
        assert kin.within_limits(q)
        kin.inverse(grasp_tcp_pose(spec), q)
        kin.inverse(release_tcp_pose(spec), q)
        assert sampler.problems(spec) == []


def test_overlapping_placement_is_reported(sampler, hardware_config):
    spec = SceneSpec("red_cube", (300.0, 100.0), 0.0, (300.0, 140.0), tuple(hardware_config.robot.home_joints_rad))
    assert any("from the box wall" in problem for problem in sampler.problems(spec))


def test_unreachable_start_pose_is_reported(sampler, hardware_config):
    joints = list(hardware_config.robot.home_joints_rad)
    joints[1] = math.radians(-100)  # leaning far forward: the gripper goes through the table
    spec = SceneSpec("red_cube", (300.0, -120.0), 0.0, (300.0, 140.0), tuple(joints))
    assert any("start TCP z" in problem for problem in sampler.problems(spec))


def test_impossible_ranges_fail_with_advice(sampler):
    ranges = PerturbationRanges(box_dy_mm=(-260, -260))  # the box right on top of the object
    with pytest.raises(ValueError, match="Narrow the perturbation ranges"):
        SceneSampler(sampler.config, max_attempts=5).sample(0, "red_cube", ranges)


def test_perturbation_ranges_from_yaml_validate(hardware_config):
    ranges = PerturbationRanges.from_dict(TASK4_LIKE, origin="task4.yaml")
    assert ranges.box_dx_mm == (-40.0, 40.0) and ranges.object_dx_mm == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"task.yaml: unknown key\(s\) \['box_dz_mm'\]"):
        PerturbationRanges.from_dict({"box_dz_mm": [0, 1]}, origin="task.yaml")
    with pytest.raises(ValueError, match="object_yaw_deg must be finite with low <= high"):
        PerturbationRanges.from_dict({"object_yaw_deg": [30, -30]})
    with pytest.raises(ValueError, match="start_joint_offsets_deg needs 6"):
        PerturbationRanges.from_dict({"start_joint_offsets_deg": [[0, 1], [0, 1]]})
    nominal = PerturbationRanges.nominal(hardware_config.scene)
    assert nominal.object_dx_mm == (-hardware_config.scene.object_jitter_mm, hardware_config.scene.object_jitter_mm)


def test_unknown_object_is_refused(sampler):
    with pytest.raises(ValueError, match="unknown object 'yellow_duck'"):
        sampler.sample(0, "yellow_duck")


def test_spec_round_trips_and_explains_itself(sampler, hardware_config):
    spec = sampler.sample(3, "green_cylinder")
    assert SceneSpec.from_dict(spec.to_dict()) == spec
    assert spec.instruction(hardware_config.scene) == "put the green cylinder into the box"
    text = spec.operator_text()
    assert f"x = {spec.object_xy_mm[0]:.0f} mm" in text and "box centre" in text
    with pytest.raises(ValueError, match="not a scene spec"):
        SceneSpec.from_dict({"object_name": "red_cube"})


def test_grasp_yaw_uses_the_object_symmetry(hardware_config):
    home = tuple(hardware_config.robot.home_joints_rad)
    cube = SceneSpec("red_cube", (300.0, -120.0), math.radians(100), (300.0, 140.0), home)
    yaw = grasp_yaw(cube, near_yaw_rad=0.0)
    assert yaw == pytest.approx(math.radians(10))  # 100 deg is 10 deg for a cube
    prism = SceneSpec("blue_prism", (300.0, -120.0), math.radians(50), (300.0, 140.0), home)
    assert grasp_yaw(prism, near_yaw_rad=0.0) == pytest.approx(math.radians(-10))
    cylinder = SceneSpec("green_cylinder", (300.0, -120.0), 1.0, (300.0, 140.0), home)
    assert grasp_yaw(cylinder, near_yaw_rad=0.3) == pytest.approx(0.3)
