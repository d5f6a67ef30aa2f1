"""Batched twin evaluation: K trials in lock-step, one batched policy forward per tick.

A policy forward on a batch of 8 costs about a third per sample of 8 single forwards (docs/benchmarks.md,
policy_predict), and an evaluation spends much of its time in forwards. ``BatchedEvaluation`` runs K *lanes*, each
with its own twin (robot bundle), judge and step-log/video per trial, on threads of one process. Each lane runs
``Evaluation.run_trial`` unchanged: the same trial situations (scene, seed, instruction), the same control loop,
step log, video, settle-and-score and result record as the sequential runner; only the policy is shared. A lane's
``PolicyAgent`` asks a ``LanePolicy``, which hands the observation to the coordinator and blocks.

The coordinator (the calling thread) waits until *every* lane is blocked: on the policy, or on asking for its next
trial. Then it gives waiting lanes their next trials (lowest lane first) and waits again, or, when all live lanes
wait on the policy, runs one forward over their observations in lane order (a checkpoint: one
``InferenceEngine.predict`` over the batch; a server: one batched request, split at its ``max_batch``) and hands
each lane its row. Because nothing advances until all lanes are blocked, which trials share a batch depends only
on the trials' own simulated progress, never on thread timing: a batched run is reproducible, and every execution
mode works (a lane whose execution does not ask the policy at some tick simply keeps stepping until it does).

What may differ from the sequential runner: a batch's floating-point rounding (a row's logits move by ~1e-9, so a
near-tie between two action tokens can flip) and the twin's float state, which carries ~1e-10 mm differences from
the trials a twin ran before (true of a resumed sequential run as well). ``bench/eval_batched.py`` counts the
trial outcomes that differ. The results store, resume and the report are those of the sequential runner: a lane
appends its trial's record when it is scored, and an interrupted batched run resumes with the unscored trials.

Lanes need the lock-step twin (simulated clocks: no robot time passes while a batch is computed) and a policy (a
checkpoint or a server); the robot, the real-time twin, an operator console and the baselines run one trial at a
time (``Evaluation``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from eval_protocols.evaluation import Evaluation, TrialReport
from eval_protocols.policies import CheckpointUnderTest
from eval_protocols.results import RunStore
from eval_protocols.task_spec import TaskSpec
from policy.agent import PolicyOutput, PolicySpec

log = logging.getLogger(__name__)

POLL_S = 0.5  # the coordinator re-checks for Ctrl-C this often while lanes run
# Lanes are split into this many groups, each with its own coordinator: while one group's batch is computed, the
# other group's twins step, so the policy and the twins use the two cores at once (one group leaves one idle).
GROUPS = 2
MIN_GROUP_LANES = 2  # fewer lanes than GROUPS * this: one group


class EvaluationCancelled(BaseException):  # a BaseException, like KeyboardInterrupt: no "except Exception" stops it
    """Raised in a lane blocked on the coordinator when the run stops (another lane failed, Ctrl-C): its trial ends
    unscored, with its partial step log saved as aborted, like a sequential trial interrupted by Ctrl-C."""


class _State(Enum):
    RUNNING = "running"
    POLICY = "waiting for the policy"
    TRIAL = "waiting for a trial"
    DONE = "done"


@dataclass
class _Lane:
    index: int
    evaluation: Evaluation | None = None
    state: _State = _State.RUNNING
    request: tuple[np.ndarray, str, np.ndarray | None, float | None] | None = None
    reply: PolicyOutput | BaseException | None = None
    job: tuple[TaskSpec, int] | None = None
    thread: threading.Thread | None = field(default=None, repr=False)


class LanePolicy:
    """``policy.agent.Policy`` for one lane: every call goes through the coordinator."""

    def __init__(self, coordinator: _Coordinator, lane: _Lane) -> None:
        self.coordinator, self.lane = coordinator, lane

    def describe(self) -> PolicySpec:
        return self.coordinator.describe()

    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                states: Sequence[np.ndarray] | None = None, timeout_s: float | None = None) -> PolicyOutput:
        if len(images) != 1 or len(instructions) != 1:
            raise ValueError(f"a lane asks about one observation at a time, got {len(images)}")
        return self.coordinator.predict(self.lane, images[0], instructions[0],
                                        None if states is None else states[0], timeout_s)

    def close(self) -> None:
        pass


class _LockedStore:
    """The run's ``RunStore`` shared by the lanes: each call under one lock (a lane appends while another reads)."""

    def __init__(self, store: RunStore) -> None:
        self._store, self._lock = store, threading.Lock()
        self.run_dir, self.manifest = store.run_dir, store.manifest

    def is_scored(self, task: str, trial: int) -> bool:
        with self._lock:
            return self._store.is_scored(task, trial)

    def records(self, task: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self._store.records(task)

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._store.append(record)


class _Coordinator:
    def __init__(self, policy: CheckpointUnderTest, lanes: list[int], policy_lock: threading.Lock) -> None:
        self.base = policy.policy
        self.lanes = [_Lane(i) for i in lanes]
        self.policy_lock = policy_lock  # shared by the groups: one request (one client, one model) at a time
        self.max_batch = _max_batch(self.base)
        self.changed = threading.Condition()
        self.pending: deque[tuple[TaskSpec, int]] = deque()
        self.error: BaseException | None = None
        self.cancelled = False
        self.forwards = 0
        self.batch_sizes: dict[int, int] = {}  # batch size -> forwards of that size

    # -- called from lane threads ---------------------------------------------------------------------
    def describe(self) -> PolicySpec:
        with self.policy_lock:
            return self.base.describe()

    def predict(self, lane: _Lane, image: np.ndarray, instruction: str, state: np.ndarray | None,
                timeout_s: float | None) -> PolicyOutput:
        reply = self._block(lane, _State.POLICY, (image, instruction, state, timeout_s))
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def next_trial(self, lane: _Lane) -> tuple[TaskSpec, int] | None:
        self._block(lane, _State.TRIAL, None)
        job, lane.job = lane.job, None
        return job

    def lane_failed(self, lane: _Lane, error: BaseException) -> None:
        with self.changed:
            if self.error is None:
                self.error = error
            self.changed.notify_all()

    def lane_done(self, lane: _Lane) -> None:
        with self.changed:
            lane.state = _State.DONE
            self.changed.notify_all()

    def _block(self, lane: _Lane, state: _State, request) -> Any:
        with self.changed:
            if self.cancelled:
                raise EvaluationCancelled()
            lane.state, lane.request, lane.reply = state, request, None
            self.changed.notify_all()
            while lane.state is state:
                if self.cancelled:
                    raise EvaluationCancelled()
                self.changed.wait()
            return lane.reply

    # -- the coordinator's own thread -----------------------------------------------------------------
    def drive(self) -> None:
        """Until every lane is done: when all are blocked, hand out trials, else run the batched forward."""
        with self.changed:
            while True:
                while any(lane.state is _State.RUNNING for lane in self.lanes) and self.error is None:
                    self.changed.wait(POLL_S)
                if self.error is not None:
                    return
                waiting = [lane for lane in self.lanes if lane.state is _State.TRIAL]
                asking = [lane for lane in self.lanes if lane.state is _State.POLICY]
                if waiting:
                    for lane in waiting:
                        lane.job = self.pending.popleft() if self.pending else None
                        lane.state = _State.RUNNING
                elif asking:
                    self._forward(asking)
                else:
                    return  # every lane is done
                self.changed.notify_all()

    def cancel(self) -> None:
        with self.changed:
            self.cancelled = True
            self.changed.notify_all()

    def _forward(self, lanes: list[_Lane]) -> None:
        for start in range(0, len(lanes), self.max_batch):
            chunk = lanes[start:start + self.max_batch]
            try:
                outputs = self._predict_chunk(chunk)
            except Exception as error:  # each lane's agent decides (a transient one holds the arm, others end it)
                outputs = [error, *(copy.copy(error) for _ in chunk[1:])]
            for lane, output in zip(chunk, outputs, strict=True):
                lane.reply, lane.state = output, _State.RUNNING

    def _predict_chunk(self, lanes: list[_Lane]) -> list[PolicyOutput]:
        images = [lane.request[0] for lane in lanes]
        instructions = [lane.request[1] for lane in lanes]
        states = [lane.request[2] for lane in lanes]
        timeouts = [lane.request[3] for lane in lanes if lane.request[3] is not None]
        if any(s is None for s in states) != all(s is None for s in states):
            raise ValueError("some lanes send the robot state and others do not")
        with self.policy_lock:
            output = self.base.predict(images, instructions, None if states[0] is None else states,
                                       timeout_s=max(timeouts) if timeouts else None)
        self.forwards += 1
        self.batch_sizes[len(lanes)] = self.batch_sizes.get(len(lanes), 0) + 1
        actions = np.asarray(output.actions)
        if actions.shape[0] != len(lanes):
            raise ValueError(f"the policy answered {actions.shape[0]} actions for a batch of {len(lanes)}")
        probs = output.bin_probs
        return [PolicyOutput(actions[i:i + 1], output.checkpoint_id, dict(output.server_timing),
                             None if probs is None else probs[i:i + 1]) for i in range(len(lanes))]


def _max_batch(policy) -> int:
    """A server's largest batch (its /metadata limits); in-process: no limit."""
    client = getattr(policy, "client", None)
    if client is None:
        return 1 << 30
    limits = client.metadata().get("limits") or {}
    return max(1, int(limits.get("max_batch", 1)))


class BatchedEvaluation:
    """``Evaluation.run`` with ``len(robots)`` trials in lock-step (see the module docstring).

    The lanes form ``GROUPS`` groups (with at least ``MIN_GROUP_LANES`` lanes each), each driven by its own
    coordinator on its own thread, and the trials to run are dealt to the groups in turn (trial k of the pending
    list to group k mod groups). Within a group everything is as described above, so which trials share a batch
    still depends only on the trials' simulated progress; the groups only overlap in time."""

    def __init__(self, robots: Sequence[Any], policy: CheckpointUnderTest, make_judge: Callable[[Any], Any],
                 store: RunStore, tasks: list[TaskSpec], trials: int, seed: int,
                 on_trial: Callable[[TrialReport], None] | None = None) -> None:
        if not robots:
            raise ValueError("a batched evaluation needs at least one lane")
        for robot in robots:
            if getattr(robot, "twin", None) is None or not robot.clock.is_simulated:
                raise ValueError("batched evaluation runs on the lock-step twin only (--backend sim without "
                                 "sim.realtime): at the robot or in real time, trials run one at a time")
        if not isinstance(policy, CheckpointUnderTest):
            raise ValueError("batched evaluation batches a policy's forwards: give a checkpoint or a server "
                             "(baselines run one trial at a time)")
        self.policy, self.store, self.tasks, self.trials, self.seed = policy, store, tasks, trials, seed
        self.on_trial = on_trial
        groups = max(1, min(GROUPS, len(robots) // MIN_GROUP_LANES))
        policy_lock = threading.Lock()
        self.coordinators = [_Coordinator(policy, list(range(len(robots)))[g::groups], policy_lock)
                             for g in range(groups)]
        shared = _LockedStore(store)
        for coordinator in self.coordinators:
            for lane in coordinator.lanes:
                robot = robots[lane.index]
                lane_policy = CheckpointUnderTest(LanePolicy(coordinator, lane), policy.identity, policy.execution)
                lane.evaluation = Evaluation(robot, lane_policy, make_judge(robot), shared, tasks, trials, seed)
        self._first = self.coordinators[0].lanes[0].evaluation
        self._report_lock = threading.Lock()

    def pending(self) -> list[tuple[TaskSpec, int]]:
        return self._first.pending()

    def progress(self) -> dict[str, dict[str, int]]:
        return self._first.progress()

    def run(self) -> dict[str, dict[str, int]]:
        pending = self.pending()
        self._total = len(self.tasks) * self.trials
        if len(pending) < self._total:
            log.info("resuming: %d of %d trials already scored", self._total - len(pending), self._total)
        for index, job in enumerate(pending):
            self.coordinators[index % len(self.coordinators)].pending.append(job)
        lanes = [lane for coordinator in self.coordinators for lane in coordinator.lanes]
        log.info("batched evaluation: %d lanes in %d groups, %d trials to run", len(lanes), len(self.coordinators),
                 len(pending))
        for coordinator in self.coordinators:
            for lane in coordinator.lanes:
                lane.thread = threading.Thread(target=self._lane_main, args=(coordinator, lane),
                                               name=f"eval-lane-{lane.index}", daemon=True)
                lane.thread.start()
        drivers = [threading.Thread(target=self._drive_in_thread, args=(coordinator,), name=f"eval-group-{g}",
                                    daemon=True) for g, coordinator in enumerate(self.coordinators[1:], 1)]
        for driver in drivers:
            driver.start()
        try:
            self._drive(self.coordinators[0])
        except BaseException:
            self._cancel_all()
            raise
        finally:
            for driver in drivers:
                driver.join()
            if any(c.error is not None for c in self.coordinators):
                self._cancel_all()
            for lane in lanes:
                lane.thread.join()
        for coordinator in self.coordinators:
            if coordinator.error is not None:
                raise coordinator.error
        for g, coordinator in enumerate(self.coordinators):
            log.info("batched evaluation, group %d: %d forwards, batch sizes %s", g, coordinator.forwards,
                     dict(sorted(coordinator.batch_sizes.items())))
        return self.progress()

    def _drive(self, coordinator: _Coordinator) -> None:
        """One group's coordinator; a failure in any group stops them all."""
        try:
            coordinator.drive()
        except BaseException as error:
            if coordinator.error is None:
                coordinator.error = error
            raise
        finally:
            if coordinator.error is not None:
                self._cancel_all()

    def _drive_in_thread(self, coordinator: _Coordinator) -> None:
        with contextlib.suppress(BaseException):  # kept in coordinator.error; run() raises it
            self._drive(coordinator)

    def _cancel_all(self) -> None:
        for coordinator in self.coordinators:
            coordinator.cancel()

    def _lane_main(self, coordinator: _Coordinator, lane: _Lane) -> None:
        evaluation = lane.evaluation
        try:
            while (job := coordinator.next_trial(lane)) is not None:
                task, index = job
                record = evaluation.run_trial(task, task.trial(evaluation.sampler, self.seed, index))
                if self.on_trial is not None:
                    with self._report_lock:
                        self.on_trial(TrialReport(record, self._total - len(self.pending()), self._total))
        except EvaluationCancelled:
            pass
        except BaseException as error:
            log.error("lane %d stopped: %s: %s", lane.index, type(error).__name__, error)
            coordinator.lane_failed(lane, error)
        finally:
            coordinator.lane_done(lane)
