"""A scripted expert for the twin: pick-and-place into the box by state feedback from the privileged scene.

``ScriptedExpert`` is a runtime ``Agent`` (robot/runtime.py). Every tick it reads the measured TCP and, from
the twin's privileged state (not the camera), where the object and the box are, and commands one step of a
*vector field* towards its current goal:

- reach: towards the grasp pose down a funnel above the object: the allowed height above the grasp shrinks
  with the horizontal distance to it (``FUNNEL_SLOPE``), so the gripper descends while it centres and only
  reaches the grasp height once it is over the object; there it closes;
- grip: rises at a crawl while the fingers close; if they hold the object it carries, else it reopens, rises
  and reaches again (at most ``max_grasp_attempts``);
- carry: straight up to the release height (above the box walls), then level to the release pose over the box;
  there it opens;
- release: rises at a crawl while the fingers open, then retreats up and back and raises ``Event.DONE``.

Why a field and not timed waypoints: a single-frame policy imitates what it can see. Here every decision
(where to move, how fast, when to close, lift, open) is a function of the picture: the gripper relative to
the object or the box, and whether the fingers are closed on the object. There are no hidden aim points or
timers that make one picture mean different actions (the README's demo section lists what those cost),
and no decision is followed by a move back to where the opposite decision was shown: the gripper closes
on the way up (a closed gripper beside the object only ever rises) and opens on the way up from a level
carry (nothing was carried above the release height). Speeds fall with the remaining distance (gain,
floor and cruise speed), with an acceleration limit from rest. Short holds give real no-op steps: the
operator's reaction time at the start, and the end.

It is independent of the recorder: the evaluation uses it as the "scripted expert policy" baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from robot.errors import IKFailedError
from robot.frames import apply_pose_delta, pose_delta
from robot.runtime import AgentOutput, Event, Observation
from robot.safety import Command
from robot.scene import SceneSpec, grasp_tcp_pose, release_tcp_pose

GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, 0.0
# Speed towards the goal = FEEDBACK_GAIN_PER_S x remaining distance, between a floor (so moves end in
# finite time) and the cruise speed; the same law for rotation.
FEEDBACK_GAIN_PER_S = 3.5
MIN_SPEED_MM_S = 10.0
PEAK_ROTATION_DEG_S = 60.0  # keeps each 10 Hz step well inside safety.max_step_rot_deg
MIN_ROTATION_DEG_S = 5.0
ACCELERATION_MM_S2 = 600.0  # a move from rest reaches 120 mm/s in two 10 Hz ticks
ARRIVED_MM, ARRIVED_DEG = 0.5, 0.5
# Funnels: the allowed height above the grasp (release) pose is FUNNEL_SLOPE x the horizontal distance to it.
# At 2, the open fingers (40 mm either side of the TCP) stay clear of a 40 mm object's top until the object is
# between them.
FUNNEL_SLOPE = 2.0
# The gripper closes (opens) once the TCP is this close to the grasp (release) pose.
AT_GOAL_XY_MM, AT_GOAL_Z_MM, AT_GOAL_DEG = 2.0, 2.5, 3.0
# While the fingers close (open), the TCP rises at this crawl: the steps are real motion (no no-ops) and a
# closed gripper is never seen moving down.
GRIP_CRAWL_MM_S = 15.0
# Carrying: horizontal travel starts once the TCP is within this of the carry height.
CARRY_CLEARANCE_MM = 10.0
STALLED_TICKS = 5  # a goal the arm cannot get closer to (a clamp) counts as reached after this ...
STALLED_NEAR_MM = 5.0  # ... if the grasp or release pose is at most this far away horizontally


class PrivilegedScene(Protocol):
    """What the expert reads from the simulator (robot.sim.twin.Twin provides it)."""

    spec: SceneSpec | None

    def object_pose(self) -> np.ndarray: ...

    def box_pose(self) -> np.ndarray: ...

    def object_in_gripper(self) -> bool: ...


class Reach(Protocol):
    """Inverse kinematics used to keep goals reachable (robot.kinematics.MiniCoboKinematics)."""

    def inverse(self, tcp_pose, seed_joints_rad) -> np.ndarray: ...


Range = tuple[float, float]


@dataclass(frozen=True)
class StyleRanges:
    """Uniform ranges from which each episode's demonstration style is drawn.

    The defaults are narrow on purpose: a small policy trained on 150 demonstrations imitates one consistent
    way of doing the task far better than a spread of speeds, heights and offsets (docs/recording.md).
    """

    peak_speed_mm_s: Range = (110.0, 110.0)  # cruise speed (safety allows 150 mm/s)
    approach_height_mm: Range = (60.0, 60.0)  # top of the funnel above the grasp pose
    retreat_mm: Range = (60.0, 60.0)
    reaction_s: Range = (0.2, 0.6)  # a hold before the first move (no-op steps)
    grasp_offset_mm: float = 0.0  # +/- on x and y of the grasp point
    grasp_yaw_offset_deg: float = 0.0
    release_offset_mm: float = 0.0  # +/- on x and y of the release point above the box centre


@dataclass(frozen=True)
class Style:
    """One episode's demonstration style (see :class:`StyleRanges`)."""

    peak_speed_mm_s: float
    approach_height_mm: float
    retreat_mm: float
    reaction_s: float
    grasp_offset_mm: tuple[float, float]
    grasp_yaw_offset_rad: float
    release_offset_mm: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, ranges: StyleRanges) -> Style:
        g, r = ranges.grasp_offset_mm, ranges.release_offset_mm
        return cls(float(rng.uniform(*ranges.peak_speed_mm_s)), float(rng.uniform(*ranges.approach_height_mm)),
                   float(rng.uniform(*ranges.retreat_mm)),
                   float(rng.uniform(*ranges.reaction_s)), (float(rng.uniform(-g, g)), float(rng.uniform(-g, g))),
                   math.radians(float(rng.uniform(-ranges.grasp_yaw_offset_deg, ranges.grasp_yaw_offset_deg))),
                   (float(rng.uniform(-r, r)), float(rng.uniform(-r, r))))

    def to_dict(self) -> dict:
        return {"peak_speed_mm_s": round(self.peak_speed_mm_s, 2),
                "approach_height_mm": round(self.approach_height_mm, 2),
                "retreat_mm": round(self.retreat_mm, 2)}


def step_towards(measured: np.ndarray, target: np.ndarray, max_speed_mm_s: float, previous_speed_mm_s: float,
                 period_s: float) -> tuple[np.ndarray, float]:
    """(next TCP command, its speed in mm/s): one feedback step from ``measured`` towards ``target``."""
    delta = pose_delta(measured, target)
    distance_mm, angle_rad = float(np.linalg.norm(delta[:3])), float(np.linalg.norm(delta[3:]))
    speed = min(max_speed_mm_s, max(MIN_SPEED_MM_S, FEEDBACK_GAIN_PER_S * distance_mm),
                previous_speed_mm_s + ACCELERATION_MM_S2 * period_s)
    turn = min(math.radians(PEAK_ROTATION_DEG_S),
               max(math.radians(MIN_ROTATION_DEG_S), FEEDBACK_GAIN_PER_S * angle_rad))
    move_fraction = 1.0 if distance_mm <= speed * period_s else speed * period_s / distance_mm
    turn_fraction = 1.0 if angle_rad <= turn * period_s else turn * period_s / angle_rad
    # One fraction for both: translation and rotation progress together along the straight-line path, so
    # the arm never combines the start's tool tilt with a far position (out of reach near the workspace edge).
    fraction = min(move_fraction, turn_fraction)
    return apply_pose_delta(measured, delta * fraction), distance_mm * fraction / period_s


def funnel_target(measured: np.ndarray, goal: np.ndarray, top_mm: float, slope: float = FUNNEL_SLOPE) -> np.ndarray:
    """The point to steer at now: over ``goal`` at the height the funnel allows at the TCP's horizontal distance
    from it (``slope`` x distance, at most ``top_mm`` above the goal). Below the funnel wall this lies above
    the TCP, so a gripper that came too low beside its goal rises while it centres."""
    distance_mm = float(np.linalg.norm(np.asarray(measured[:2]) - goal[:2]))
    target = goal.copy()
    target[2] += min(top_mm, slope * distance_mm)
    return target


def reachable_towards(reach: Reach | None, anchor: np.ndarray, target: np.ndarray, seed_joints_rad: np.ndarray,
                      fractions: Sequence[float] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)) -> np.ndarray:
    """``target``, or the point nearest to it on the way from ``anchor`` that the arm can reach.

    Used for the free goals (funnel tops, carry height, retreat): near the edge of the workspace a high point
    can lie beyond the wrist's reach while a lower one does not.
    """
    if reach is None:
        return target
    delta = pose_delta(anchor, target)
    for fraction in fractions:
        candidate = apply_pose_delta(anchor, delta * fraction)
        try:
            reach.inverse(candidate, seed_joints_rad)
        except IKFailedError:
            continue
        return candidate
    return anchor


@dataclass
class Goals:
    """Where one grasp attempt steers: planned from the scene when the attempt starts."""

    grasp: np.ndarray
    approach_top_mm: float  # funnel height above the grasp that the arm reaches
    release: np.ndarray
    carry_z_mm: float
    retreat: np.ndarray


class ScriptedExpert:
    """Pick-and-place into the box from the privileged scene; an ``Agent`` for the runtime's ControlLoop."""

    def __init__(self, scene: PrivilegedScene, period_s: float, rng: np.random.Generator | None = None, *,
                 gripper_settle_s: float = 0.4, style_ranges: StyleRanges | None = None,
                 max_grasp_attempts: int = 3, reach: Reach | None = None) -> None:
        """``reach``: IK that keeps free goals reachable; default: the scene's ``kinematics`` if it has one."""
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.scene = scene
        self.period_s = period_s
        self.rng = rng if rng is not None else np.random.default_rng()
        self.gripper_settle_s = gripper_settle_s
        self.ranges = style_ranges or StyleRanges()
        self.max_grasp_attempts = max_grasp_attempts
        self.reach = reach if reach is not None else getattr(scene, "kinematics", None)
        self.style: Style | None = None
        self.attempts = 0
        self._reset_episode()

    def _reset_episode(self) -> None:
        self._goals: Goals | None = None
        self._phase = "start"
        self._phase_s = 0.0  # time spent in the current phase
        self._speed_mm_s = 0.0  # speed of the previous command (acceleration limit)
        self._best_mm, self._stalled = math.inf, 0
        self._start_pose = np.zeros(6)
        self._joints = np.zeros(6)

    # -- the Agent protocol ------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        self.instruction = instruction
        self.style = Style.draw(self.rng, self.ranges)
        self.attempts = 0
        self._reset_episode()

    def act(self, observation: Observation) -> AgentOutput:
        measured = np.asarray(observation.arm.tcp_pose, dtype=np.float64)
        self._joints = np.asarray(observation.arm.joints_rad, dtype=np.float64)
        if self._goals is None:
            self._start_pose = measured.copy()
            self._plan_attempt()
        pose, gripper, done = getattr(self, f"_{self._phase}")(measured)
        self._phase_s += self.period_s
        info = {"expert_phase": self._phase, "grasp_attempt": self.attempts}
        return AgentOutput(Command.to_pose(pose, gripper), frozenset({Event.DONE}) if done else frozenset(), info)

    # -- phases: each returns (TCP command, gripper, done) for this tick ----------------------------
    def _start(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """The operator's reaction time: hold still (no-op steps)."""
        if self._phase_s < self.style.reaction_s - 1e-9:
            return measured, GRIPPER_OPEN, False
        return self._enter("reach", measured)

    def _reach(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        goals = self._goals
        if self._at(measured, goals.grasp):
            return self._enter("grip", measured)
        target = funnel_target(measured, goals.grasp, goals.approach_top_mm)
        return self._move(measured, target), GRIPPER_OPEN, False

    def _grip(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Close while rising at a crawl; once settled, carry the object or, without it, try again."""
        if self._phase_s < self.gripper_settle_s - 1e-9:
            return self._crawl_up(measured), GRIPPER_CLOSED, False
        if self.scene.object_in_gripper() or self.attempts >= self.max_grasp_attempts:
            return self._enter("carry", measured)
        return self._enter("reopen", measured)

    def _reopen(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """A missed grasp: open and rise to the funnel's top, then reach for the object where it now lies."""
        if self._phase_s < self.gripper_settle_s - 1e-9:
            return self._crawl_up(measured), GRIPPER_OPEN, False
        top = measured.copy()
        top[2] = self._goals.grasp[2] + self._goals.approach_top_mm
        if measured[2] >= top[2] - ARRIVED_MM or self._stalled_at(measured, top):
            self._plan_attempt()
            return self._enter("reach", measured)
        return self._move(measured, top), GRIPPER_OPEN, False

    def _carry(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        goals = self._goals
        if self._at(measured, goals.release):
            return self._enter("release", measured)
        far = float(np.linalg.norm(measured[:2] - goals.release[:2])) > CARRY_CLEARANCE_MM
        if far and measured[2] < goals.carry_z_mm - CARRY_CLEARANCE_MM:
            target = measured.copy()  # straight up first: the object clears the table and the box walls
            target[2] = goals.carry_z_mm
            target[3:] = goals.release[3:]
        else:  # then level, at the release height, to above the box
            target = goals.release
        return self._move(measured, target), GRIPPER_CLOSED, False

    def _release(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Open while rising at a crawl: above the release height nothing was ever carried, so every picture up
        there means "open" (the carry arrives level, at that height)."""
        if self._phase_s < self.gripper_settle_s - 1e-9:
            return self._crawl_up(measured), GRIPPER_OPEN, False
        return self._enter("retreat", measured)

    def _retreat(self, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        retreat = self._goals.retreat
        if self._stalled_at(measured, retreat) or float(np.linalg.norm(pose_delta(measured, retreat)[:3])) <= 1.0:
            return measured, GRIPPER_OPEN, True
        return self._move(measured, retreat), GRIPPER_OPEN, False

    # -- helpers -----------------------------------------------------------------------------------
    def _enter(self, phase: str, measured: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """Switch phases and act in the new one this same tick (no idle tick between phases)."""
        self._phase, self._phase_s = phase, 0.0
        self._best_mm, self._stalled = math.inf, 0
        if phase in ("grip", "release"):
            self._speed_mm_s = 0.0
        return getattr(self, f"_{phase}")(measured)

    def _move(self, measured: np.ndarray, target: np.ndarray) -> np.ndarray:
        command, self._speed_mm_s = step_towards(measured, target, self.style.peak_speed_mm_s, self._speed_mm_s,
                                                 self.period_s)
        return command

    def _crawl_up(self, measured: np.ndarray) -> np.ndarray:
        command = measured.copy()
        command[2] += GRIP_CRAWL_MM_S * self.period_s
        self._speed_mm_s = GRIP_CRAWL_MM_S
        return command

    def _at(self, measured: np.ndarray, goal: np.ndarray) -> bool:
        """At a grasp or release pose: centred, low enough and turned, or stuck just above it (a clamp)."""
        delta = pose_delta(measured, goal)
        off_mm = float(np.linalg.norm(delta[:2]))
        turned = math.degrees(float(np.linalg.norm(delta[3:]))) <= AT_GOAL_DEG
        stalled = self._stalled_at(measured, goal) and off_mm <= STALLED_NEAR_MM
        return (off_mm <= AT_GOAL_XY_MM and turned and -delta[2] <= AT_GOAL_Z_MM) or stalled

    def _stalled_at(self, measured: np.ndarray, goal: np.ndarray) -> bool:
        """The arm has stopped getting closer to ``goal`` for STALLED_TICKS ticks (held by a limit)."""
        distance_mm = float(np.linalg.norm(pose_delta(measured, goal)[:3]))
        if distance_mm < self._best_mm - 0.05:
            self._best_mm, self._stalled = distance_mm, 0
        else:
            self._stalled += 1
        return self._stalled >= STALLED_TICKS

    def _scene_spec(self) -> SceneSpec:
        """The scene as it is now: object and box where the simulator says they are."""
        spec = self.scene.spec
        if spec is None:
            raise RuntimeError("the scripted expert needs a scene: reset the twin's scene before the episode")
        obj, box = self.scene.object_pose(), self.scene.box_pose()
        return replace(spec, object_xy_mm=(float(obj[0]), float(obj[1])), object_yaw_rad=float(obj[5]),
                       box_xy_mm=(float(box[0]), float(box[1])))

    def _plan_attempt(self) -> None:
        """Goals of the next grasp attempt from where the object and the box are now."""
        style, spec = self.style, self._scene_spec()
        self.attempts += 1
        grasp = grasp_tcp_pose(spec)
        grasp[:2] += style.grasp_offset_mm
        grasp[5] += style.grasp_yaw_offset_rad
        above = grasp.copy()
        above[2] += style.approach_height_mm
        approach_top = float(reachable_towards(self.reach, grasp, above, self._joints)[2] - grasp[2])
        # The release keeps the grasp yaw (the object is not spun), shifted by the style's offset as far as reachable.
        centre = release_tcp_pose(spec, yaw_rad=float(grasp[5]))
        shifted = centre.copy()
        shifted[:2] += style.release_offset_mm
        release = reachable_towards(self.reach, centre, shifted, self._joints)
        # The carry goes level at the release height, if the arm reaches that high above the grasp (far placements
        # are near the wrist's reach).
        lift = grasp.copy()
        lift[2] = release[2]
        carry_z = float(reachable_towards(self.reach, grasp, lift, self._joints)[2])
        retreat = release.copy()
        retreat[:2] += 0.3 * (self._start_pose[:2] - release[:2])  # up and back towards where the arm came from
        retreat[2] += style.retreat_mm
        retreat = reachable_towards(self.reach, release, retreat, self._joints)
        self._goals = Goals(grasp, approach_top, release, carry_z, retreat)
