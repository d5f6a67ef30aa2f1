"""Who sets up a trial and who scores it: the twin (automatic) or the operator (console).

A ``Judge`` prepares the scene before the episode, may end it early, and scores it afterwards:

- ``TwinJudge`` (``--backend sim``): the twin places object, box and arm; the episode ends when the twin sees
  success; after it ends the arm holds and the scene settles for ``settle_s`` of simulated time, then
  ``Twin.task_success()`` (object at rest inside the box, released, gripper open) is the score.
- ``OperatorJudge`` (``--backend real``; with ``--console`` also in the twin, to rehearse): the arm moves to the
  trial's start pose, the console shows where object and box go, the operator starts, may stop, and scores. In
  the twin the scene is placed by the twin and its own verdict is stored beside the operator's, for checking.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from eval_protocols.console_session import ConsoleSession, StopButtonWatch
from eval_protocols.task_spec import TaskSpec, Trial
from robot.runtime import EpisodeResult, Subscriber

log = logging.getLogger(__name__)

SETTLE_S = 1.0  # simulated time for a released object to come to rest before it is scored
FRESH_FRAME_S = 0.25  # after a twin reset: long enough for the camera to deliver a frame of the new scene


@dataclass(frozen=True)
class Verdict:
    success: bool
    scored_by: str  # "twin" | "operator"
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Judge(Protocol):
    def prepare(self, task: TaskSpec, trial: Trial, progress: dict[str, Any]) -> None: ...

    def is_success(self):  # a callable for ControlLoop (end the episode early), or None
        ...

    def subscribers(self) -> list[Subscriber]: ...

    def score(self, trial: Trial, result: EpisodeResult) -> Verdict: ...


def place_in_twin(robot, trial: Trial) -> None:
    """Teleport object, box and arm to the trial's scene, open the gripper, and let the camera catch up.

    In lock-step the scene is placed at an instant where the camera's (and any other periodic task's) schedule
    stands as it did when it started (``SimClock.align``): the trial then runs the same, cycle for cycle, whatever
    trials the twin ran before (a resumed run, a lane of a batched run, the sequential runner)."""
    if robot.clock.is_simulated:
        robot.clock.align()
    robot.twin.reset_scene(trial.scene)
    robot.gripper.open()
    robot.clock.sleep(FRESH_FRAME_S)


def twin_report(robot) -> dict[str, Any]:
    report = robot.twin.task_success()
    details = asdict(report)
    details["reason"] = report.reason
    details["collision"] = None if robot.twin.collision is None else asdict(robot.twin.collision)
    return details


class TwinJudge:
    def __init__(self, robot, settle_s: float = SETTLE_S) -> None:
        if robot.twin is None:
            raise ValueError("TwinJudge needs the sim backend")
        self.robot, self.settle_s = robot, settle_s

    def prepare(self, task: TaskSpec, trial: Trial, progress: dict[str, Any]) -> None:
        place_in_twin(self.robot, trial)

    def is_success(self):
        return self.robot.twin.task_success

    def subscribers(self) -> list[Subscriber]:
        return []

    def score(self, trial: Trial, result: EpisodeResult) -> Verdict:
        self.robot.clock.sleep(self.settle_s)  # out of servo mode: the arm holds, the object settles
        details = twin_report(self.robot)
        return Verdict(bool(details["success"]), "twin", details["reason"], details)


class OperatorJudge:
    def __init__(self, robot, session: ConsoleSession) -> None:
        self.robot, self.session = robot, session
        self.policy_label = ""  # an A/B run's blinded "policy 1" / "policy 2" (eval_protocols/ab.py)

    def prepare(self, task: TaskSpec, trial: Trial, progress: dict[str, Any]) -> None:
        scene = trial.scene
        self.session.show_trial(task.name, task.title, trial.index, progress[task.name]["trials"], trial.instruction,
                                scene.operator_text(), scene.to_dict(), progress, self.policy_label)
        if self.robot.twin is not None:
            place_in_twin(self.robot, trial)
        else:
            self.robot.move_to_start(np.asarray(scene.start_joints_rad))
            self.robot.gripper.open()
        self.session.wait_for_start()
        self.session.running()

    def is_success(self):
        return None  # the operator ends the trial (stop) or the time limit does

    def subscribers(self) -> list[Subscriber]:
        return [StopButtonWatch(self.session)]

    def score(self, trial: Trial, result: EpisodeResult) -> Verdict:
        success, note = self.session.wait_for_score(result)
        details = {"twin": twin_report(self.robot)} if self.robot.twin is not None else {}
        return Verdict(success, "operator", note, details)
