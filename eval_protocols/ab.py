"""Blinded, interleaved A/B evaluation (``fanvla eval ab``): both policies on every trial situation, back to back.

The paper-style protocol runs 30 trials of one policy and then 30 of the other, so whatever drifts during a session
(lighting, battery, object wear, the operator) is confounded with the policy, and the operator knows which policy
runs. Here every *pair* is one trial situation (task, index: the same scene, seed and instruction as trial
``index`` of ``fanvla eval run`` with the same ``--seed``) run once with each policy, back to back, in an order
drawn at random per pair. The console and the terminal say "policy 1" / "policy 2" only; the operator scores each
trial before the next starts. The report unblinds at the end (``eval_protocols.ab_report``).

Layout of an A/B run folder::

    RUN/ab.json     the design: pairs, run seed, tasks, sequential stopping, and the order seed that decides which
                    policy runs first in each pair (drawn from the OS at creation; recorded, never shown)
    RUN/a/, RUN/b/  one ordinary evaluation run per policy (eval_protocols/results.py: run.json, results.jsonl,
                    trials/...): identity checks, crash safety and ``fanvla eval report RUN/a RUN/b`` as for any run.
                    Each trial record also carries ``"ab": {"pair": i, "slot": 1 | 2}``.

Resuming (re-run the same command) continues pair by pair: a pair with one trial scored runs only its other trial,
in the recorded order. With ``--sequential`` a task stops as soon as ``eval_protocols.sequential``'s design decides
(its error rate holds under a look after every pair); the decision is recomputed from the scored pairs, so a resumed
run stops exactly where an uninterrupted one would. Which way a stopped task went is not printed until the report.
"""

from __future__ import annotations

import logging
import secrets
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval_protocols.evaluation import Evaluation, TrialReport
from eval_protocols.launch import CONSOLE_LINGER_S, RunOptions, evaluation_config, open_judge
from eval_protocols.paired_stats import PairedCounts
from eval_protocols.policies import open_policy
from eval_protocols.results import RunDirError, RunIdentity, RunStore, read_json_document, write_json_atomic
from eval_protocols.sequential import Decision, SequentialDesign
from eval_protocols.stats import DEFAULT_SIGNIFICANCE
from eval_protocols.task_spec import TaskSpec
from fanvla import __version__
from fanvla.config import HardwareConfig, config_snapshot

log = logging.getLogger(__name__)

AB_FILE, AB_FORMAT, AB_FORMAT_VERSION = "ab.json", "fanvla-eval-ab", 1
ARMS = ("a", "b")


@dataclass
class ABOptions:
    """``fanvla eval ab``: ``common`` carries everything but the policy (its ``policy`` field is unused)."""

    policy_a: str
    policy_b: str
    pairs: int
    common: RunOptions
    sequential: bool = False
    alpha: float = DEFAULT_SIGNIFICANCE


def is_ab_run(run_dir) -> bool:
    return (run_dir / AB_FILE).is_file()


def read_design(run_dir) -> dict[str, Any]:
    return read_json_document(run_dir / AB_FILE, AB_FORMAT, "a fanvla A/B run file", RunDirError,
                              f"{run_dir} is not an A/B run: no {AB_FILE} (made by 'fanvla eval ab')")


def first_arm(order_seed: int, task: str, pair: int) -> str:
    """Which policy runs first in ``pair`` of ``task``: a fair coin seeded by (order seed, task, pair)."""
    rng = np.random.default_rng([order_seed, zlib.crc32(task.encode()), pair])
    return "a" if rng.random() < 0.5 else "b"


def pair_order(order_seed: int, task: str, pair: int) -> tuple[str, str]:
    first = first_arm(order_seed, task, pair)
    return (first, "b" if first == "a" else "a")


def sequential_design(design: dict[str, Any]) -> SequentialDesign | None:
    settings = design.get("sequential")
    return SequentialDesign.create(int(design["pairs"]), float(settings["alpha"])) if settings else None


def complete_pairs(records_a: dict[int, dict], records_b: dict[int, dict]) -> list[tuple[int, bool, bool]]:
    """(pair, success a, success b) for the pairs 0, 1, ... scored with both policies, up to the first gap."""
    out = []
    pair = 0
    while pair in records_a and pair in records_b:
        out.append((pair, bool(records_a[pair]["success"]), bool(records_b[pair]["success"])))
        pair += 1
    return out


def sequential_decision(design: SequentialDesign, pairs: list[tuple[int, bool, bool]]) -> Decision | None:
    """The first decision to stop over the scored pairs in order (None: the comparison goes on)."""
    only_a = only_b = 0
    for number, (_, a, b) in enumerate(pairs, 1):
        only_a, only_b = only_a + (a and not b), only_b + (b and not a)
        decision = design.decide(only_a, only_b, number)
        if decision.stop:
            return decision
    return None


def paired_counts(pairs: list[tuple[int, bool, bool]]) -> PairedCounts | None:
    return PairedCounts.from_pairs((a, b) for _, a, b in pairs) if pairs else None


class _BlindedJudge:
    """The run's judge with what the operator sees blinded: "policy 1" / "policy 2" and pairs scored, no
    success counts (``ABEvaluation.blinded_progress``)."""

    def __init__(self, judge, blinded_progress: Callable[[], dict[str, Any]]) -> None:
        self.judge, self.blinded_progress, self.label = judge, blinded_progress, ""

    def prepare(self, task: TaskSpec, trial, progress: dict[str, Any]) -> None:
        if hasattr(self.judge, "policy_label"):
            self.judge.policy_label = self.label
        self.judge.prepare(task, trial, self.blinded_progress())

    def is_success(self):
        return self.judge.is_success()

    def subscribers(self):
        return self.judge.subscribers()

    def score(self, trial, result):
        return self.judge.score(trial, result)


class ABEvaluation:
    """Runs every unscored trial of every pair (see the module docstring); the stores are the two arms' runs."""

    def __init__(self, robot, policies: dict[str, Any], judge, stores: dict[str, RunStore], design: dict[str, Any],
                 tasks: list[TaskSpec], on_trial: Callable[[TrialReport], None] | None = None,
                 on_stop: Callable[[str, Decision], None] | None = None) -> None:
        self.design, self.tasks, self.stores = design, tasks, stores
        self.pairs, self.order_seed = int(design["pairs"]), int(design["order_seed"])
        self.sequential = sequential_design(design)
        self.judge = _BlindedJudge(judge, self.blinded_progress)
        self.arms = {arm: Evaluation(robot, policies[arm], self.judge, stores[arm], tasks, self.pairs,
                                     int(design["seed"])) for arm in ARMS}
        self.on_trial, self.on_stop = on_trial, on_stop

    def records(self, arm: str, task: str) -> dict[int, dict]:
        return {int(r["trial"]): r for r in self.stores[arm].records(task)}

    def decision(self, task: str) -> Decision | None:
        if self.sequential is None:
            return None
        return sequential_decision(self.sequential, complete_pairs(self.records("a", task), self.records("b", task)))

    def blinded_progress(self) -> dict[str, dict[str, Any]]:
        """What the console shows: pairs scored of the pairs planned, and no success counts (a running count per
        slot or per policy would hint at which policy is which)."""
        out = {}
        for task in self.tasks:
            complete = complete_pairs(self.records("a", task.name), self.records("b", task.name))
            out[task.name] = {"trials": self.pairs, "scored": len(complete), "successes": "blinded"}
        return out

    def total(self) -> int:
        return 2 * self.pairs * len(self.tasks)

    def done(self) -> int:
        return sum(len(self.stores[arm].records(task.name)) for arm in ARMS for task in self.tasks)

    def run(self) -> dict[str, Any]:
        for task in self.tasks:
            self._run_task(task)
        return self.summary()

    def _run_task(self, task: TaskSpec) -> None:
        sampler = self.arms["a"].sampler
        for pair in range(self.pairs):
            decision = self.decision(task.name)
            if decision is not None:
                log.info("%s: stopped after %d pairs (%s)", task.name, decision.pairs, "decided")
                if self.on_stop is not None:
                    self.on_stop(task.name, decision)
                return
            for slot, arm in enumerate(pair_order(self.order_seed, task.name, pair), 1):
                if self.stores[arm].is_scored(task.name, pair):
                    continue
                self.judge.label = f"policy {slot}"
                trial = task.trial(sampler, int(self.design["seed"]), pair)
                record = self.arms[arm].run_trial(task, trial, extra={"ab": {"pair": pair, "slot": slot}})
                if self.on_trial is not None:
                    self.on_trial(TrialReport(record, self.done(), self.total()))

    def summary(self) -> dict[str, Any]:
        """Per task: pairs complete, and whether sequential stopping ended it (no direction: still blinded)."""
        out = {}
        for task in self.tasks:
            complete = complete_pairs(self.records("a", task.name), self.records("b", task.name))
            decision = self.decision(task.name)
            out[task.name] = {"pairs": self.pairs, "complete": len(complete),
                              "stopped_early": decision is not None and decision.pairs < self.pairs}
        return out


def create_or_check_design(run_dir, options: ABOptions) -> dict[str, Any]:
    """RUN/ab.json: written on the first run; a re-run must ask for the same design."""
    wanted = {"pairs": options.pairs, "seed": options.common.seed, "backend": options.common.backend,
              "sequential": {"alpha": options.alpha, "method": "exact group-sequential on discordant pairs "
                             "(eval_protocols/sequential.py)"} if options.sequential else None}
    path = run_dir / AB_FILE
    if path.exists():
        design = read_design(run_dir)
        problems = [f"{key}: the run has {design.get(key)!r}, this command asks for {value!r}"
                    for key, value in wanted.items() if design.get(key) != value]
        if problems:
            raise RunDirError(f"{run_dir} holds another A/B design; refusing to mix pairs:\n  " + "\n  ".join(problems)
                              + "\nUse a new --out, or re-run with the run's settings.")
        new_tasks = [t.name for t in options.common.tasks if t.name not in design["tasks"]]
        if new_tasks:
            design["tasks"] = [*design["tasks"], *new_tasks]
            write_json_atomic(path, design)
        return design
    if any(run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not an A/B run (no {AB_FILE}); use a new --out")
    design = {"format": AB_FORMAT, "format_version": AB_FORMAT_VERSION, **wanted,
              "order_seed": secrets.randbits(63), "tasks": [t.name for t in options.common.tasks],
              "software_version": __version__}
    write_json_atomic(path, design)
    return design


def check_ab_options(options: ABOptions) -> None:
    if isinstance(options.pairs, bool) or not isinstance(options.pairs, int) or not 1 <= options.pairs <= 1000:
        raise ValueError(f"--pairs must be an int in 1..1000, got {options.pairs!r}")
    if options.common.batch != 1:
        raise ValueError("an A/B run interleaves the two policies trial by trial; it does not batch (leave --batch "
                         "out)")
    if not 0.0 < options.alpha < 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {options.alpha}")


def run_ab(config: HardwareConfig, options: ABOptions, on_trial: Callable[[TrialReport], None] | None = None,
           on_console: Callable[[str], None] | None = None,
           on_stop: Callable[[str, Decision], None] | None = None) -> dict[str, Any]:
    """Open both policies, the run folder (ab.json, a/, b/), one robot and one judge; run every unscored trial."""
    from robot.factory import open_robot

    check_ab_options(options)
    common = options.common
    config = evaluation_config(config, common.backend, common.overrides)
    common.run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        execution = common.resolved_execution()
        policies, stores = {}, {}
        extra = {"software_version": __version__, "hardware": config_snapshot(config),
                 "hardware_overrides": common.overrides}
        for arm, spec in (("a", options.policy_a), ("b", options.policy_b)):
            policy = open_policy(spec, common.backend, token_file=common.token_file, unnorm_key=common.unnorm_key,
                                 device=common.device, threads=common.threads, dtype=common.dtype,
                                 execution=execution, chunk_steps=common.chunk_steps)
            stack.callback(policy.close)
            policies[arm] = policy
        design = create_or_check_design(common.run_dir, options)
        for arm in ARMS:
            identity = RunIdentity(policies[arm].identity, common.backend, common.seed, options.pairs,
                                   execution.describe(config.safety.watchdog_hold_s))
            stores[arm] = stack.enter_context(RunStore.open_for_run(
                common.run_dir / arm, identity, {t.name: t.describe() for t in common.tasks},
                {**extra, "ab_arm": arm}))
        robot = stack.enter_context(open_robot(config, common.backend, seed=common.seed))
        judge = open_judge(robot, common, stack, on_console)
        evaluation = ABEvaluation(robot, policies, judge, stores, design, common.tasks, on_trial, on_stop)
        summary = evaluation.run()
        if hasattr(judge, "session"):
            judge.session.finish(evaluation.blinded_progress())
            time.sleep(CONSOLE_LINGER_S)
        return summary
