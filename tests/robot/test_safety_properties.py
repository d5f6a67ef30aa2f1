"""Property tests: whatever a teleop device or a policy sends, what reaches the arm is within every limit.

For any command (NaN, inf, huge values, random poses or joints, small or large steps) and any
measured state inside the joint limits, ``SafetyLayer.filter`` either holds (rejected, the arm
stays where it is) or returns joints that are finite, inside the joint limits, within the
per-command joint change, whose TCP lies inside the workspace (or no further out than the
measured TCP) and moved no more than the per-step translation and rotation limits.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fanvla.config import load_hardware_config
from robot.frames import apply_pose_delta, pose_delta
from robot.interfaces import ArmState
from robot.kinematics import MiniCoboKinematics
from robot.safety import Command, SafetyLayer
from tests.conftest import REPO_ROOT

CONFIG = load_hardware_config(REPO_ROOT / "hardware.yaml")
SAFETY = CONFIG.safety
LIMITS = np.array(CONFIG.robot.joint_limits_rad)
KINEMATICS = MiniCoboKinematics.from_config(CONFIG)
# The per-step limits hold to within a micron and a microradian (the layer's round-off allowance).
STEP_TOLERANCE_MM, STEP_TOLERANCE_RAD = 1e-3, 1e-6

PROPERTY_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

any_float = st.floats(allow_nan=True, allow_infinity=True)
huge_or_odd = st.one_of(any_float, st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-308, 0.0]))


def _work_joints() -> np.ndarray:
    """Joints of a TCP at the workspace centre, tool down: the middle of where the arm works."""
    box = SAFETY.workspace_mm
    centre = [sum(box.x) / 2, sum(box.y) / 2, sum(box.z) / 2, math.pi, 0.0, 0.0]
    return KINEMATICS.inverse(centre, np.array(CONFIG.robot.home_joints_rad))


WORK_JOINTS = _work_joints()


@st.composite
def measured_states(draw) -> ArmState:
    """Anywhere inside the joint limits, near the work pose (so that many commands are feasible), or
    near the work pose with one joint just inside one of its limits."""
    where = draw(st.sampled_from(["anywhere", "near work pose", "at a joint limit"]))
    if where == "anywhere":
        joints = np.array([draw(st.floats(lo, hi)) for lo, hi in LIMITS])
    else:
        offsets = np.array(draw(st.lists(st.floats(-0.6, 0.6), min_size=6, max_size=6)))
        joints = np.clip(WORK_JOINTS + offsets, LIMITS[:, 0], LIMITS[:, 1])
        if where == "at a joint limit":
            joint, side = draw(st.integers(0, 5)), draw(st.sampled_from([0, 1]))
            inside_rad = draw(st.floats(0.0, 0.1))
            joints[joint] = LIMITS[joint, side] + (inside_rad if side == 0 else -inside_rad)
    return ArmState(joints_rad=joints, tcp_pose=KINEMATICS.forward(joints), timestamp_s=0.0)


@st.composite
def commands(draw, state: ArmState) -> Command:
    gripper = draw(st.one_of(st.floats(0.0, 1.0), st.floats(-5.0, 5.0), huge_or_odd))
    kind = draw(st.sampled_from(["wild pose", "near pose", "wild joints", "near joints"]))
    if kind == "wild pose":
        return Command.to_pose(draw(st.lists(huge_or_odd, min_size=6, max_size=6)), gripper)
    if kind == "wild joints":
        return Command.to_joints(draw(st.lists(huge_or_odd, min_size=6, max_size=6)), gripper)
    if kind == "near pose":
        delta = draw(st.lists(st.floats(-150.0, 150.0), min_size=3, max_size=3))
        rotvec = draw(st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3))
        return Command.to_pose(apply_pose_delta(state.tcp_pose, [*delta, *rotvec]), gripper)
    offsets = np.array(draw(st.lists(st.floats(-0.8, 0.8), min_size=6, max_size=6)))
    return Command.to_joints(state.joints_rad + offsets, gripper)


def fresh_layer() -> SafetyLayer:
    # IK from the measured joints only (no random restarts): a servo step never jumps to another arm configuration.
    return SafetyLayer(SAFETY, CONFIG.robot.joint_limits_rad, KINEMATICS.forward,
                       functools.partial(KINEMATICS.inverse, restarts=0))


def assert_within_every_limit(sent, state: ArmState, period_s: float) -> None:
    measured = state.joints_rad
    if sent.rejected:
        np.testing.assert_array_equal(sent.joints_rad, measured)  # hold: nothing moves
        return
    joints = sent.joints_rad
    assert np.all(np.isfinite(joints)) and np.all(np.isfinite(sent.tcp_pose))
    assert np.all(joints >= LIMITS[:, 0]) and np.all(joints <= LIMITS[:, 1]), "joint limits"
    assert np.max(np.abs(joints - measured)) <= SAFETY.max_joint_speed_rad_s * period_s + 1e-12, "joint speed"
    pose = KINEMATICS.forward(joints)
    np.testing.assert_allclose(sent.tcp_pose, pose, atol=1e-9)  # the pose reported is the pose of the joints
    measured_pose = KINEMATICS.forward(measured)
    box = SAFETY.workspace_mm
    lower = np.minimum([box.x[0], box.y[0], box.z[0]], measured_pose[:3])
    upper = np.maximum([box.x[1], box.y[1], box.z[1]], measured_pose[:3])
    assert np.all(pose[:3] >= lower) and np.all(pose[:3] <= upper), "workspace"
    step = pose_delta(measured_pose, pose)
    assert np.linalg.norm(step[:3]) <= SAFETY.max_step_tcp_mm + STEP_TOLERANCE_MM, "TCP translation step"
    assert np.linalg.norm(step[3:]) <= SAFETY.max_step_rot_rad + STEP_TOLERANCE_RAD, "TCP rotation step"
    assert sent.gripper is not None and 0.0 <= sent.gripper <= 1.0


@PROPERTY_SETTINGS
@given(data=st.data(), period_s=st.sampled_from([0.008, 0.05, 0.1, 0.25]))
def test_what_reaches_the_arm_is_always_within_the_limits(data, period_s):
    state = data.draw(measured_states())
    command = data.draw(commands(state))
    sent = fresh_layer().filter(command, state, period_s)
    assert_within_every_limit(sent, state, period_s)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_sequence_of_commands_stays_within_the_limits(data):
    """Closed loop: each command is applied (the arm reaches it) and the next one starts from there."""
    layer = fresh_layer()
    joints = np.clip(WORK_JOINTS + np.array(data.draw(st.lists(st.floats(-0.3, 0.3), min_size=6, max_size=6))),
                     LIMITS[:, 0], LIMITS[:, 1])
    for _ in range(5):
        state = ArmState(joints_rad=joints, tcp_pose=KINEMATICS.forward(joints), timestamp_s=0.0)
        sent = layer.filter(data.draw(commands(state)), state, 0.1)
        assert_within_every_limit(sent, state, 0.1)
        joints = sent.joints_rad


@settings(max_examples=100, deadline=None)
@given(state=measured_states(), index=st.integers(0, 6), bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       as_pose=st.booleans())
def test_any_non_finite_value_is_rejected(state, index, bad, as_pose):
    values = [*(state.tcp_pose if as_pose else state.joints_rad), 0.5]
    values[index] = bad
    command = Command(**{"tcp_pose" if as_pose else "joints_rad": values[:6]}, gripper=values[6])
    sent = fresh_layer().filter(command, state, 0.1)
    assert sent.rejected and sent.reasons == ("command contains NaN or inf",)


@settings(max_examples=50, deadline=None)
@given(state=measured_states(), data=st.data())
def test_a_latched_estop_rejects_everything(state, data):
    layer = fresh_layer()
    layer.estop("test")
    sent = layer.filter(data.draw(commands(state)), state, 0.1)
    assert sent.rejected and sent.reasons == ("software e-stop latched: test",)


def test_work_pose_is_inside_the_workspace():
    """The property tests' 'near' states start from here; it must be a real working pose."""
    pose = KINEMATICS.forward(WORK_JOINTS)
    box = SAFETY.workspace_mm
    assert box.x[0] < pose[0] < box.x[1] and box.y[0] < pose[1] < box.y[1] and box.z[0] < pose[2] < box.z[1]
    assert pytest.approx(abs(pose[3])) == math.pi
