"""A scripted expert for the twin: pick-and-place into the box, planned from the privileged scene.

``ScriptedExpert`` is a runtime ``Agent`` (robot/runtime.py). At the first tick of an episode it reads
where the object and the box really are (the twin's privileged state, not the camera) and plans TCP
waypoints: approach above the object, descend, close the gripper, lift, carry above the box, open,
retreat.

It moves between waypoints by state feedback, not along a timed trajectory: every command is a step
from the *measured* TCP towards the current waypoint, at a speed that falls with the remaining distance
(capped by the episode's cruise speed, and by an acceleration limit at the start of a move). So the
action is a function of what the camera can see (where the gripper is relative to its goal), nearby
states get commands that converge on the goal, and a clamped or slowed arm is simply followed: the
properties a single-frame policy needs to imitate it in closed loop. Short holds around the gripper
actions give real no-op steps, as a human demonstrator's do. Moves go coarse to fine: the approach and
the descent aim within a few mm of their targets and the next move corrects. Each episode draws its own
style (holds, aiming errors; speeds, heights and offsets from ranges that are narrow by default) from a
seeded ``numpy`` Generator.

If the object is not between the fingers after the lift, it re-plans the grasp from where the object
now lies (at most ``max_grasp_attempts``). It raises ``Event.DONE`` when the plan is finished.

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
# Speed towards a waypoint = FEEDBACK_GAIN_PER_S x remaining distance, between a floor (so moves end in
# finite time) and the cruise speed; the same law for rotation.
FEEDBACK_GAIN_PER_S = 3.5
MIN_SPEED_MM_S = 10.0
PEAK_ROTATION_DEG_S = 60.0  # keeps each 10 Hz step well inside safety.max_step_rot_deg
MIN_ROTATION_DEG_S = 5.0
ACCELERATION_MM_S2 = 600.0  # a move from rest reaches 120 mm/s in two 10 Hz ticks
ARRIVED_MM, ARRIVED_DEG = 0.5, 0.5
STALLED_TICKS = 5  # a waypoint the arm cannot get closer to (a clamp) counts as reached after this
# The gripper is closed (opened) during the last millimetres down to the grasp (release) pose, at a crawl:
# the gripper command then changes on several moving steps, which survive the no-op filter, instead of on
# a single step followed by holds (no-ops) that a single-frame policy would almost never see.
GRIP_ON_THE_WAY_MM = 5.0
GRIP_ON_THE_WAY_SPEED_MM_S = 11.0


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
    """Uniform ranges from which each episode's demonstration style is drawn.

    The defaults are narrow on purpose: a small policy trained on 150 demonstrations imitates one consistent
    way of doing the task far better than a spread of speeds, heights and offsets (docs/recording.md).
    """

    peak_speed_mm_s: Range = (110.0, 110.0)  # cruise speed of the long moves (safety allows 150 mm/s)
    approach_height_mm: Range = (60.0, 60.0)  # pre-grasp height above the grasp pose
    final_approach_speed_factor: Range = (0.6, 0.6)  # of the peak speed, for the last cm to the grasp
    segment_speed_jitter: Range = (1.0, 1.0)  # per move, times the episode's peak speed
    pause_s: Range = (0.1, 0.4)  # short holds before and after gripper actions
    lift_margin_mm: Range = (15.0, 15.0)  # carry height above the release height
    retreat_mm: Range = (60.0, 60.0)
    grasp_offset_mm: float = 0.0  # +/- on x and y of the grasp point
    grasp_yaw_offset_deg: float = 0.0
    release_offset_mm: float = 0.0  # +/- on x and y of the release point above the box centre
    # Coarse to fine, as a human demonstrator moves: the approach and the descent each aim at a point drawn
    # uniformly in a horizontal disc of this radius around their target; the next move corrects the error.
    # The demonstrations then show corrections from every nearby state, not one path per scene.
    approach_error_mm: float = 20.0
    descent_error_mm: float = 6.0


@dataclass(frozen=True)
class Style:
    """One episode's demonstration style (see :class:`StyleRanges`)."""

    peak_speed_mm_s: float
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
        return cls(float(rng.uniform(*ranges.peak_speed_mm_s)), float(rng.uniform(*ranges.approach_height_mm)),
                   float(rng.uniform(*ranges.final_approach_speed_factor)), float(rng.uniform(*ranges.lift_margin_mm)),
                   float(rng.uniform(*ranges.retreat_mm)), (float(rng.uniform(-g, g)), float(rng.uniform(-g, g))),
                   math.radians(float(rng.uniform(-ranges.grasp_yaw_offset_deg, ranges.grasp_yaw_offset_deg))),
                   (float(rng.uniform(-r, r)), float(rng.uniform(-r, r))))

    def to_dict(self) -> dict:
        return {"peak_speed_mm_s": round(self.peak_speed_mm_s, 2),
                "approach_height_mm": round(self.approach_height_mm, 2),
                "lift_margin_mm": round(self.lift_margin_mm, 2), "retreat_mm": round(self.retreat_mm, 2)}


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


@dataclass(frozen=True)
class Waypoint:
    """Move to ``pose`` at up to ``speed_mm_s`` commanding ``gripper``, then hold there for ``hold_s``."""

    pose: np.ndarray
    gripper: float
    label: str
    speed_mm_s: float = 0.0  # 0: a hold where the previous waypoint ended
    hold_s: float = 0.0


@dataclass
class Plan:
    """Waypoints followed one after another by feedback from the measured TCP."""

    waypoints: list[Waypoint] = field(default_factory=list)
    index: int = 0
    held_s: float = 0.0
    speed_mm_s: float = 0.0
    best_distance_mm: float = math.inf
    stalled_ticks: int = 0
    hold_pose: np.ndarray | None = None  # where the arm was when the current hold began

    @property
    def end_pose(self) -> np.ndarray:
        return self.waypoints[-1].pose

    @property
    def finished(self) -> bool:
        return self.index >= len(self.waypoints)

    def step(self, measured: np.ndarray, period_s: float) -> tuple[np.ndarray, float, str]:
        """(TCP command, gripper, label) for this tick; advances past reached waypoints and finished holds."""
        while not self.finished:
            waypoint = self.waypoints[self.index]
            if self.held_s == 0.0 and not self._reached(measured, waypoint):
                command, self.speed_mm_s = step_towards(measured, waypoint.pose, waypoint.speed_mm_s,
                                                        self.speed_mm_s, period_s)
                return command, waypoint.gripper, waypoint.label
            if self.held_s < waypoint.hold_s - 1e-9:
                # Hold where the arm is (not where a stalled move aimed): holds are real no-op steps.
                if self.held_s == 0.0:
                    self.hold_pose = measured.copy()
                self.held_s += period_s
                self.speed_mm_s = 0.0
                return self.hold_pose, waypoint.gripper, waypoint.label
            self._advance()
        last = self.waypoints[-1]
        return last.pose, last.gripper, last.label

    def _reached(self, measured: np.ndarray, waypoint: Waypoint) -> bool:
        if waypoint.speed_mm_s <= 0:
            return True
        delta = pose_delta(measured, waypoint.pose)
        distance_mm = float(np.linalg.norm(delta[:3]))
        if distance_mm < self.best_distance_mm - 0.05:
            self.best_distance_mm, self.stalled_ticks = distance_mm, 0
        else:
            self.stalled_ticks += 1
        return ((distance_mm <= ARRIVED_MM and math.degrees(float(np.linalg.norm(delta[3:]))) <= ARRIVED_DEG)
                or self.stalled_ticks >= STALLED_TICKS)

    def _advance(self) -> None:
        self.index += 1
        self.held_s, self.best_distance_mm, self.stalled_ticks, self.hold_pose = 0.0, math.inf, 0, None


class _Planner:
    """Builds waypoints with one episode's style: speeds jittered per move, hold times drawn per hold."""

    def __init__(self, style: Style, rng: np.random.Generator, ranges: StyleRanges, reach: Reach | None = None,
                 seed_joints_rad: np.ndarray | None = None) -> None:
        self.style, self.rng, self.ranges = style, rng, ranges
        self.reach, self.seed_joints_rad = reach, seed_joints_rad

    def move(self, plan: Plan, to: np.ndarray, gripper: float, label: str, speed_factor: float = 1.0) -> None:
        speed = self.style.peak_speed_mm_s * speed_factor * self.rng.uniform(*self.ranges.segment_speed_jitter)
        plan.waypoints.append(Waypoint(np.asarray(to, dtype=np.float64), gripper, label, float(speed)))

    def beside(self, to: np.ndarray, radius_mm: float) -> np.ndarray:
        """A point drawn uniformly in the horizontal disc of ``radius_mm`` around ``to``, kept reachable."""
        target = np.asarray(to, dtype=np.float64)
        if radius_mm <= 0:
            return target
        angle, radius = self.rng.uniform(0.0, 2.0 * math.pi), radius_mm * math.sqrt(self.rng.random())
        point = target.copy()
        point[:2] += radius * np.array([math.cos(angle), math.sin(angle)])
        if self.reach is not None and self.seed_joints_rad is not None:  # near the edge of the workspace
            point = reachable_towards(self.reach, target, point, self.seed_joints_rad)
        return point

    def crawl(self, plan: Plan, to: np.ndarray, gripper: float, label: str) -> None:
        """The last few millimetres at a fixed crawl, with the gripper already acting."""
        plan.waypoints.append(Waypoint(np.asarray(to, dtype=np.float64), gripper, label, GRIP_ON_THE_WAY_SPEED_MM_S))

    def pause(self, plan: Plan, gripper: float, label: str, duration_s: float | None = None) -> None:
        duration = float(self.rng.uniform(*self.ranges.pause_s)) if duration_s is None else duration_s
        plan.waypoints.append(Waypoint(plan.end_pose, gripper, label, hold_s=duration))


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
        self._start_pose = np.zeros(6)
        self._joints = np.zeros(6)
        self._place_waypoints: tuple[np.ndarray, np.ndarray] = (np.zeros(6), np.zeros(6))
        self.attempts = 0

    # -- the Agent protocol ------------------------------------------------------------------------
    def reset(self, instruction: str) -> None:
        self.instruction = instruction
        self.style = Style.draw(self.rng, self.ranges)
        self._plan, self._phase, self.attempts = None, "", 0

    def act(self, observation: Observation) -> AgentOutput:
        measured = np.asarray(observation.arm.tcp_pose, dtype=np.float64)
        self._joints = np.asarray(observation.arm.joints_rad, dtype=np.float64)
        if self._plan is None:
            self._start_pose = measured.copy()
            self._start_pick(measured, GRIPPER_OPEN)
        pose, gripper, label = self._plan.step(measured, self.period_s)
        if self._plan.finished:
            if not self._next_phase(measured):
                return AgentOutput(Command.to_pose(pose, gripper), frozenset({Event.DONE}), self._info(label))
            pose, gripper, label = self._plan.step(measured, self.period_s)
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
        self._phase, self._plan = phase, plan

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
        planner = _Planner(style, self.rng, self.ranges, self.reach, self._joints)
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

        plan = Plan([Waypoint(measured.copy(), gripper_now, "start")])
        if gripper_now == GRIPPER_CLOSED:  # a missed grasp: open and rise before trying again
            planner.pause(plan, GRIPPER_OPEN, "reopen", self.gripper_settle_s + 0.1)
            rise = measured.copy()
            rise[2] = max(rise[2], carry_z)
            planner.move(plan, rise, GRIPPER_OPEN, "rise")
        planner.move(plan, planner.beside(above, self.ranges.approach_error_mm), GRIPPER_OPEN, "approach")
        planner.pause(plan, GRIPPER_OPEN, "align")
        planner.move(plan, planner.beside(near, self.ranges.descent_error_mm), GRIPPER_OPEN, "descend",
                     speed_factor=0.8)
        pre_grasp = grasp.copy()
        pre_grasp[2] += GRIP_ON_THE_WAY_MM
        planner.move(plan, pre_grasp, GRIPPER_OPEN, "final-approach", speed_factor=style.final_approach_speed_factor)
        planner.crawl(plan, grasp, GRIPPER_CLOSED, "close")
        planner.pause(plan, GRIPPER_CLOSED, "grip", self.gripper_settle_s + float(self.rng.uniform(0.1, 0.3)))
        planner.move(plan, lift, GRIPPER_CLOSED, "lift", speed_factor=0.8)
        self._begin("pick", plan)

    def _start_place(self) -> None:
        """Carry above the box, release, retreat: waypoints planned with the grasp (no IK search mid-episode)."""
        planner = _Planner(self.style, self.rng, self.ranges)
        start = self._plan.end_pose
        release, retreat = self._place_waypoints
        carry = release.copy()
        carry[2] = start[2]

        plan = Plan([Waypoint(start, GRIPPER_CLOSED, "start")])
        planner.move(plan, carry, GRIPPER_CLOSED, "carry")
        above_release = release.copy()
        above_release[2] += GRIP_ON_THE_WAY_MM
        if carry[2] - above_release[2] > 1.0:
            planner.move(plan, above_release, GRIPPER_CLOSED, "lower", speed_factor=0.7)
        planner.crawl(plan, release, GRIPPER_OPEN, "release")
        planner.pause(plan, GRIPPER_OPEN, "let-go", self.gripper_settle_s + float(self.rng.uniform(0.1, 0.3)))
        planner.move(plan, retreat, GRIPPER_OPEN, "retreat", speed_factor=0.8)
        planner.pause(plan, GRIPPER_OPEN, "done")
        self._begin("place", plan)
