"""A scripted expert for the twin: pick-and-place into the box, planned from the privileged scene.

``ScriptedExpert`` is a runtime ``Agent`` (robot/runtime.py). At the first tick of an episode it reads
where the object and the box really are (the twin's privileged state, not the camera) and plans TCP
waypoints: approach above the object, descend, close the gripper, lift, carry above the box, open,
retreat. Each segment speeds up and slows down along a quintic smoothstep (continuous acceleration),
so velocity and acceleration are zero at every waypoint and the 10 Hz commands change smoothly; short
pauses around the gripper actions give real no-op steps, as a human demonstrator's do. Each episode
draws its own style (cruise speed, approach height, pauses, small grasp offsets) from a seeded
``numpy`` Generator, so demonstrations vary.

The expert tracks the arm: plan time only advances while the measured TCP keeps up with the plan, so a
clamped or slowed arm is waited for instead of being handed ever larger steps. If the object is not
between the fingers after the lift, it re-plans the grasp from where the object now lies (at most
``max_grasp_attempts``). It raises ``Event.DONE`` when the plan is finished.

It is independent of the recorder: the evaluation uses it as the "scripted expert policy" baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from robot.errors import IKFailedError
from robot.frames import apply_pose_delta, pose_delta
from robot.runtime import AgentOutput, Event, Observation
from robot.safety import Command
from robot.scene import SceneSpec, grasp_tcp_pose, release_tcp_pose

GRIPPER_OPEN, GRIPPER_CLOSED = 1.0, 0.0
# The plan waits for the arm when the measured TCP trails the planned one by more than this.
TRACKING_TOLERANCE_MM = 12.0
# Peak rotation speed of a segment (keeps each 10 Hz step well inside safety.max_step_rot_deg).
PEAK_ROTATION_DEG_S = 60.0
MIN_SEGMENT_S = 0.3


class PrivilegedScene(Protocol):
    """What the expert reads from the simulator (robot.sim.twin.Twin provides it)."""

    spec: SceneSpec | None

    def object_pose(self) -> np.ndarray: ...

    def box_pose(self) -> np.ndarray: ...

    def object_in_gripper(self) -> bool: ...


class Reach(Protocol):
    """Inverse kinematics used to keep waypoints reachable (robot.kinematics.MiniCoboKinematics)."""

    def inverse(self, tcp_pose, seed_joints_rad) -> np.ndarray: ...


Range = tuple[float, float]


@dataclass(frozen=True)
class StyleRanges:
    """Uniform ranges from which each episode's demonstration style is drawn."""

    peak_speed_mm_s: Range = (80.0, 130.0)  # cruise speed of the long moves (safety allows 150 mm/s)
    ramp_s: Range = (0.2, 0.4)  # time to speed up to (and slow down from) the cruise speed
    approach_height_mm: Range = (45.0, 85.0)  # pre-grasp height above the grasp pose
    final_approach_speed_factor: Range = (0.5, 0.7)  # of the peak speed, for the last cm to the grasp
    segment_speed_jitter: Range = (0.85, 1.1)  # per segment, times the episode's peak speed
    pause_s: Range = (0.1, 0.4)  # short hesitations before and after gripper actions
    lift_margin_mm: Range = (5.0, 30.0)  # carry height above the release height
    retreat_mm: Range = (40.0, 80.0)
    grasp_offset_mm: float = 2.0  # +/- on x and y of the grasp point
    grasp_yaw_offset_deg: float = 3.0
    release_offset_mm: float = 10.0  # +/- on x and y of the release point above the box centre


@dataclass(frozen=True)
class Style:
    """One episode's demonstration style (see :class:`StyleRanges`)."""

    peak_speed_mm_s: float
    ramp_s: float
    approach_height_mm: float
    final_approach_speed_factor: float
    lift_margin_mm: float
    retreat_mm: float
    grasp_offset_mm: tuple[float, float]
    grasp_yaw_offset_rad: float
    release_offset_mm: tuple[float, float]

    @classmethod
    def draw(cls, rng: np.random.Generator, ranges: StyleRanges) -> Style:
        g, r = ranges.grasp_offset_mm, ranges.release_offset_mm
        return cls(float(rng.uniform(*ranges.peak_speed_mm_s)), float(rng.uniform(*ranges.ramp_s)),
                   float(rng.uniform(*ranges.approach_height_mm)),
                   float(rng.uniform(*ranges.final_approach_speed_factor)), float(rng.uniform(*ranges.lift_margin_mm)),
                   float(rng.uniform(*ranges.retreat_mm)), (float(rng.uniform(-g, g)), float(rng.uniform(-g, g))),
                   math.radians(float(rng.uniform(-ranges.grasp_yaw_offset_deg, ranges.grasp_yaw_offset_deg))),
                   (float(rng.uniform(-r, r)), float(rng.uniform(-r, r))))

    def to_dict(self) -> dict:
        return {"peak_speed_mm_s": round(self.peak_speed_mm_s, 2), "ramp_s": round(self.ramp_s, 3),
                "approach_height_mm": round(self.approach_height_mm, 2),
                "lift_margin_mm": round(self.lift_margin_mm, 2), "retreat_mm": round(self.retreat_mm, 2)}


def _ramp_distance(u: float) -> float:
    """Distance covered while the speed rises from 0 to 1 along the quintic smoothstep, over a unit time.

    The speed ``u^3 (10 - 15u + 6u^2)`` starts and ends with zero acceleration, so the jerk stays finite;
    its integral is ``u^4 (2.5 - 3u + u^2)`` (0.5 at u = 1).
    """
    u = min(max(u, 0.0), 1.0)
    return u ** 4 * (2.5 - 3.0 * u + u * u)


def cruise_fraction(t_s: float, duration_s: float, ramp_s: float) -> float:
    """Fraction 0..1 of a move done at ``t_s``: smooth speed-up over ``ramp_s``, cruise, smooth slow-down."""
    if duration_s <= 0 or t_s >= duration_s:
        return 1.0
    if t_s <= 0:
        return 0.0
    ramp = min(ramp_s, duration_s / 2)
    speed = 1.0 / (duration_s - ramp)  # distance 1 = speed * (duration - ramp)
    if t_s < ramp:
        return speed * ramp * _ramp_distance(t_s / ramp)
    if t_s > duration_s - ramp:
        return 1.0 - speed * ramp * _ramp_distance((duration_s - t_s) / ramp)
    return speed * (ramp / 2 + t_s - ramp)


def move_duration_s(amount: float, peak_rate: float, ramp_s: float) -> float:
    """Time to cover ``amount`` at ``peak_rate`` with smooth ramps (a shorter move never reaches cruise)."""
    if amount <= 0:
        return 0.0
    cruise_s = amount / peak_rate
    return cruise_s + min(ramp_s, cruise_s)


@dataclass(frozen=True)
class Segment:
    """A straight TCP move (or a pause, when start == end) of ``duration_s`` with one gripper command."""

    start: np.ndarray
    end: np.ndarray
    duration_s: float
    gripper: float
    label: str
    ramp_s: float = 0.5

    def pose_at(self, t_s: float) -> np.ndarray:
        if self.duration_s <= 0 or np.array_equal(self.start, self.end):
            return self.end
        delta = pose_delta(self.start, self.end)
        return apply_pose_delta(self.start, delta * cruise_fraction(t_s, self.duration_s, self.ramp_s))


@dataclass
class Plan:
    """Segments played one after another; ``t_s`` is time within the whole plan."""

    segments: list[Segment] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @property
    def end_pose(self) -> np.ndarray:
        return self.segments[-1].end

    def at(self, t_s: float) -> tuple[np.ndarray, float, str]:
        """(pose, gripper, label) at plan time ``t_s`` (held at the end after the last segment)."""
        for segment in self.segments:
            if t_s < segment.duration_s:
                return segment.pose_at(t_s), segment.gripper, segment.label
            t_s -= segment.duration_s
        last = self.segments[-1]
        return last.end, last.gripper, last.label


class _Planner:
    """Builds segments for one episode's style; durations from the distance, the speed and the rotation."""

    def __init__(self, style: Style, rng: np.random.Generator, ranges: StyleRanges) -> None:
        self.style, self.rng, self.ranges = style, rng, ranges

    def move(self, plan: Plan, to: np.ndarray, gripper: float, label: str, speed_factor: float = 1.0) -> None:
        start = plan.end_pose
        delta = pose_delta(start, to)
        speed = self.style.peak_speed_mm_s * speed_factor * self.rng.uniform(*self.ranges.segment_speed_jitter)
        ramp = self.style.ramp_s
        duration = max(move_duration_s(float(np.linalg.norm(delta[:3])), speed, ramp),
                       move_duration_s(float(np.linalg.norm(delta[3:])), math.radians(PEAK_ROTATION_DEG_S), ramp),
                       MIN_SEGMENT_S)
        plan.segments.append(Segment(start, np.asarray(to, dtype=np.float64), duration, gripper, label, ramp))

    def pause(self, plan: Plan, gripper: float, label: str, duration_s: float | None = None) -> None:
        end = plan.end_pose
        duration = float(self.rng.uniform(*self.ranges.pause_s)) if duration_s is None else duration_s
        plan.segments.append(Segment(end, end, duration, gripper, label))


def reachable_towards(reach: Reach | None, anchor: np.ndarray, target: np.ndarray, seed_joints_rad: np.ndarray,
                      fractions: Sequence[float] = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)) -> np.ndarray:
    """``target``, or the point nearest to it on the way from ``anchor`` that the arm can reach.

    Used for the free waypoints (approach height, retreat): near the edge of the workspace a high
    waypoint can lie beyond the wrist's reach while a lower one does not.
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


class ScriptedExpert:
    """Pick-and-place into the box from the privileged scene; an ``Agent`` for the runtime's ControlLoop."""

    def __init__(self, scene: PrivilegedScene, period_s: float, rng: np.random.Generator | None = None, *,
                 gripper_settle_s: float = 0.4, style_ranges: StyleRanges | None = None,
                 max_grasp_attempts: int = 3, reach: Reach | None = None) -> None:
        """``reach``: IK that keeps free waypoints reachable; default: the scene's ``kinematics`` if it has one."""
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
        self._plan: Plan | None = None
        self._phase = ""
        self._plan_time_s = 0.0
        self._start_pose = np.zeros(6)
        self._joints = np.zeros(6)
        self._place_waypoints: tuple[np.ndarray, np.ndarray] = (np.zeros(6), np.zeros(6))
        self.attempts = 0

    # -- the Agent protocol ------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        self.instruction = instruction
        self.style = Style.draw(self.rng, self.ranges)
        self._plan, self._phase, self._plan_time_s, self.attempts = None, "", 0.0, 0

    def act(self, observation: Observation) -> AgentOutput:
        measured = np.asarray(observation.arm.tcp_pose, dtype=np.float64)
        self._joints = np.asarray(observation.arm.joints_rad, dtype=np.float64)
        if self._plan is None:
            self._start_pose = measured.copy()
            self._start_pick(measured, GRIPPER_OPEN)
        planned, _, _ = self._plan.at(self._plan_time_s)
        # Wait for the arm when it trails the plan (a clamp or a slow servo): never run away from it.
        if np.linalg.norm(planned[:3] - measured[:3]) <= TRACKING_TOLERANCE_MM:
            self._plan_time_s += self.period_s
        if self._plan_time_s >= self._plan.duration_s and not self._next_phase(measured):
            pose, gripper, label = self._plan.at(self._plan.duration_s)
            return AgentOutput(Command.to_pose(pose, gripper), frozenset({Event.DONE}), self._info(label))
        pose, gripper, label = self._plan.at(self._plan_time_s)
        return AgentOutput(Command.to_pose(pose, gripper), info=self._info(label))

    def _info(self, label: str) -> dict:
        return {"expert_phase": f"{self._phase}:{label}", "grasp_attempt": self.attempts}

    # -- phases ------------------------------------------------------------------------------------
    def _next_phase(self, measured: np.ndarray) -> bool:
        """Start the next phase when one is due; False when the task is finished."""
        if self._phase == "pick":
            if self.scene.object_in_gripper() or self.attempts >= self.max_grasp_attempts:
                self._start_place()
            else:
                self._start_pick(measured, GRIPPER_CLOSED)  # missed: open, back up, grasp again
            return True
        return False

    def _begin(self, phase: str, plan: Plan) -> None:
        self._phase, self._plan, self._plan_time_s = phase, plan, 0.0

    def _scene_spec(self) -> SceneSpec:
        """The scene as it is now: object and box where the simulator says they are."""
        spec = self.scene.spec
        if spec is None:
            raise RuntimeError("the scripted expert needs a scene: reset the twin's scene before the episode")
        obj, box = self.scene.object_pose(), self.scene.box_pose()
        return replace(spec, object_xy_mm=(float(obj[0]), float(obj[1])), object_yaw_rad=float(obj[5]),
                       box_xy_mm=(float(box[0]), float(box[1])))

    def _release_pose(self, spec: SceneSpec, yaw_rad: float) -> np.ndarray:
        """Above the box centre, shifted by the episode's release offset as far as the arm reaches."""
        centre = release_tcp_pose(spec, yaw_rad=yaw_rad)
        shifted = centre.copy()
        shifted[:2] += self.style.release_offset_mm
        return reachable_towards(self.reach, centre, shifted, self._joints)

    def _start_pick(self, measured: np.ndarray, gripper_now: float) -> None:
        style, spec = self.style, self._scene_spec()
        self.attempts += 1
        planner = _Planner(style, self.rng, self.ranges)
        grasp = grasp_tcp_pose(spec)
        grasp[:2] += style.grasp_offset_mm
        grasp[5] += style.grasp_yaw_offset_rad
        above = grasp.copy()
        above[2] += style.approach_height_mm
        above = reachable_towards(self.reach, grasp, above, self._joints)
        near = grasp.copy()
        near[2] += min(15.0, style.approach_height_mm / 3)
        # The carry height must be reachable above the box too (far placements are near the wrist's reach).
        release = self._release_pose(spec, float(grasp[5]))  # keep the grasp yaw: do not spin the object
        carry = release.copy()
        carry[2] += style.lift_margin_mm
        carry_z = float(reachable_towards(self.reach, release, carry, self._joints)[2])
        retreat = release.copy()
        retreat[:2] += 0.3 * (self._start_pose[:2] - release[:2])  # up and back towards where the arm came from
        retreat[2] += style.retreat_mm
        self._place_waypoints = (release, reachable_towards(self.reach, release, retreat, self._joints))
        lift = grasp.copy()
        lift[2] = carry_z
        lift = reachable_towards(self.reach, grasp, lift, self._joints)

        plan = Plan([Segment(measured, measured, 0.0, gripper_now, "start")])
        if gripper_now == GRIPPER_CLOSED:  # a missed grasp: open and rise before trying again
            planner.pause(plan, GRIPPER_OPEN, "reopen", self.gripper_settle_s + 0.1)
            rise = measured.copy()
            rise[2] = max(rise[2], carry_z)
            planner.move(plan, rise, GRIPPER_OPEN, "rise")
        planner.move(plan, above, GRIPPER_OPEN, "approach")
        planner.pause(plan, GRIPPER_OPEN, "align")
        planner.move(plan, near, GRIPPER_OPEN, "descend", speed_factor=0.8)
        planner.move(plan, grasp, GRIPPER_OPEN, "final-approach", speed_factor=style.final_approach_speed_factor)
        planner.pause(plan, GRIPPER_OPEN, "settle")
        planner.pause(plan, GRIPPER_CLOSED, "close", self.gripper_settle_s + float(self.rng.uniform(0.1, 0.3)))
        planner.move(plan, lift, GRIPPER_CLOSED, "lift", speed_factor=0.8)
        self._begin("pick", plan)

    def _start_place(self) -> None:
        """Carry above the box, release, retreat: waypoints planned with the grasp (no IK search mid-episode)."""
        planner = _Planner(self.style, self.rng, self.ranges)
        start = self._plan.end_pose
        release, retreat = self._place_waypoints
        carry = release.copy()
        carry[2] = start[2]

        plan = Plan([Segment(start, start, 0.0, GRIPPER_CLOSED, "start")])
        planner.move(plan, carry, GRIPPER_CLOSED, "carry")
        if carry[2] - release[2] > 1.0:
            planner.move(plan, release, GRIPPER_CLOSED, "lower", speed_factor=0.7)
        planner.pause(plan, GRIPPER_CLOSED, "steady")
        planner.pause(plan, GRIPPER_OPEN, "release", self.gripper_settle_s + float(self.rng.uniform(0.1, 0.3)))
        planner.move(plan, retreat, GRIPPER_OPEN, "retreat", speed_factor=0.8)
        planner.pause(plan, GRIPPER_OPEN, "done")
        self._begin("place", plan)
