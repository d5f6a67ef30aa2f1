"""Wiring of ``fanvla eval run``: policy, run directory, robot, judge (and console), then the trials.

Cheap checks come first (task files, policy identity against RUN_DIR's run.json) so that a refused command never
moves the arm. Everything opened is closed again, in reverse order, also on errors and Ctrl-C.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_protocols.evaluation import Evaluation, TrialReport, sim_eval_overrides
from eval_protocols.policies import DEFAULT_EXPERT_CHUNK_STEPS, CheckpointUnderTest, open_policy
from eval_protocols.results import RunIdentity, RunStore
from eval_protocols.task_spec import TaskSpec
from fanvla import __version__
from fanvla.config import HardwareConfig, config_snapshot
from robot.execution import ExecutionConfig, ExecutionMode

log = logging.getLogger(__name__)

CONSOLE_LINGER_S = 2.0  # the console stays up this long after the last score, so the page can say "finished"
# The execution mode when --execution is not given. In the twin: sync, which in lock-step is the loop every earlier
# run used. At the robot: the mode that did best at 7B latency in the real-time twin (docs/evaluation.md,
# "Latency"): async keeps a command per answer (one per 200 ms at 200 ms) where sync adds a period of holding to
# every answer; chunk needs a chunk-predicting policy (OpenVLA-OFT). A checkpoint that predicts K-action chunks runs
# in chunk mode, each chunk open loop for its K steps (OpenVLA-OFT's setting), unless --execution says otherwise.
DEFAULT_EXECUTION = {"sim": ExecutionMode.SYNC, "real": ExecutionMode.ASYNC}
MAX_BATCH = 64  # lanes of a batched twin evaluation (each is a twin: ~60 MB)


@dataclass
class RunOptions:
    backend: str
    policy: str
    tasks: list[TaskSpec]
    trials: int
    seed: int
    run_dir: Path
    console: bool = False  # operator console (always on for the real backend)
    console_port: int = 0
    calibration: Path | None = None  # table calibration; the twin computes its own when None
    token_file: str | None = None
    unnorm_key: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads for a checkpoint folder (None: torch's choice)
    dtype: str = "auto"  # weights of a checkpoint folder (policy.precision)
    overrides: dict[str, Any] = field(default_factory=dict)  # hardware.yaml dotted-key overrides
    execution: ExecutionConfig | None = None  # None: DEFAULT_EXECUTION[backend], no injected latency
    # The mode was not chosen (no --execution): a checkpoint that predicts chunks then runs them open loop, with the
    # latency and age bound of ``execution``. Always so when ``execution`` is None.
    mode_from_policy: bool = False
    chunk_steps: int = DEFAULT_EXPERT_CHUNK_STEPS  # the scripted expert's plan in chunk execution
    batch: int = 1  # trials in lock-step with one batched forward per tick (eval_protocols/batched.py); twin only

    def resolved_execution(self) -> ExecutionConfig:
        return self.execution or ExecutionConfig(DEFAULT_EXECUTION[self.backend])


def evaluation_config(config: HardwareConfig, backend: str, overrides: dict[str, Any]) -> HardwareConfig:
    """The configuration trials run with: the twin's evaluation camera settings, then the user's overrides."""
    merged = {**(sim_eval_overrides(config) if backend == "sim" else {}), **overrides}
    return config.with_overrides(merged) if merged else config


def run_evaluation(config: HardwareConfig, options: RunOptions,
                   on_trial: Callable[[TrialReport], None] | None = None,
                   on_console: Callable[[str], None] | None = None,
                   on_execution: Callable[[ExecutionConfig], None] | None = None) -> dict[str, dict[str, int]]:
    """Run every unscored trial; returns per-task progress {task: {trials, scored, successes}}. ``on_execution``
    hears the execution the run uses, once the policy is known."""
    from robot.factory import open_robot

    if options.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {options.trials}")
    config = evaluation_config(config, options.backend, options.overrides)
    check_batch(options, config)
    with ExitStack() as stack:
        execution = options.resolved_execution()
        policy = open_policy(options.policy, options.backend, token_file=options.token_file,
                             unnorm_key=options.unnorm_key, device=options.device, threads=options.threads,
                             dtype=options.dtype, execution=execution, chunk_steps=options.chunk_steps)
        stack.callback(policy.close)
        if (options.execution is None or options.mode_from_policy) and isinstance(policy, CheckpointUnderTest):
            execution = policy.default_execution(execution)  # a chunk-predicting checkpoint: its chunks open loop
            policy.execution = execution
        if on_execution is not None:
            on_execution(execution)
        identity = RunIdentity(policy.identity, options.backend, options.seed, options.trials,
                               execution.describe(config.safety.watchdog_hold_s))
        extra = {"software_version": __version__, "hardware": config_snapshot(config),
                 "hardware_overrides": options.overrides}
        store = stack.enter_context(RunStore.open_for_run(options.run_dir, identity,
                                                          {t.name: t.describe() for t in options.tasks}, extra))
        if options.batch > 1:
            return _run_batched(config, options, policy, store, stack, on_trial)
        robot = stack.enter_context(open_robot(config, options.backend, seed=options.seed))
        judge = open_judge(robot, options, stack, on_console)
        evaluation = Evaluation(robot, policy, judge, store, options.tasks, options.trials, options.seed, on_trial)
        progress = evaluation.run()
        if hasattr(judge, "session"):
            judge.session.finish(progress)
            time.sleep(CONSOLE_LINGER_S)
        return progress


def check_batch(options: RunOptions, config: HardwareConfig) -> None:
    """--batch K needs the lock-step twin, no operator console and a policy (eval_protocols/batched.py)."""
    from eval_protocols.policies import BASELINES

    if isinstance(options.batch, bool) or not isinstance(options.batch, int) or not 1 <= options.batch <= MAX_BATCH:
        raise ValueError(f"--batch must be an int in 1..{MAX_BATCH}, got {options.batch!r}")
    if options.batch == 1:
        return
    if options.backend != "sim" or options.console:
        raise ValueError("--batch runs several twins at once: it needs --backend sim without --console (at the robot "
                         "trials run one at a time)")
    if config.sim.realtime:
        raise ValueError("--batch needs the lock-step twin; sim.realtime is on (a real-time twin runs one trial at "
                         "a time)")
    if options.policy in BASELINES:
        raise ValueError(f"--batch batches a policy's forwards; the baseline {options.policy!r} runs one trial at a "
                         f"time (leave --batch out)")


def _run_batched(config: HardwareConfig, options: RunOptions, policy, store: RunStore, stack: ExitStack,
                 on_trial: Callable[[TrialReport], None] | None) -> dict[str, dict[str, int]]:
    from eval_protocols.batched import BatchedEvaluation
    from eval_protocols.judges import TwinJudge
    from robot.factory import open_robot

    # As many twins as there are trials to run (no more than --batch), each seeded like the sequential runner's.
    unscored = sum(not store.is_scored(task.name, i) for task in options.tasks for i in range(options.trials))
    lanes = max(1, min(options.batch, unscored))
    robots = [stack.enter_context(open_robot(config, "sim", seed=options.seed)) for _ in range(lanes)]
    evaluation = BatchedEvaluation(robots, policy, TwinJudge, store, options.tasks, options.trials, options.seed,
                                   on_trial)
    return evaluation.run()


def open_judge(robot, options: RunOptions, stack: ExitStack, on_console: Callable[[str], None] | None):
    """The twin's automatic judge, or the operator's (console server started, closed with ``stack``)."""
    from eval_protocols.judges import OperatorJudge, TwinJudge

    if options.backend == "sim" and not options.console:
        return TwinJudge(robot)
    from eval_protocols.calibration import TableCalibration
    from eval_protocols.console_app import ConsoleServer, create_console_app
    from eval_protocols.console_session import ConsoleSession

    if options.calibration is not None:
        calibration = TableCalibration.load(options.calibration)
    elif robot.twin is not None:
        calibration = TableCalibration.from_twin(robot.twin)
    else:
        raise ValueError("the real backend needs a table calibration for the placement markers: make one with "
                         "'fanvla eval calibrate --backend real ...' and pass --calibration FILE")
    session = ConsoleSession()
    stack.callback(session.close)
    app = create_console_app(session, lambda: robot.camera.latest().color, calibration)
    server = stack.enter_context(ConsoleServer(app, options.console_port))
    log.info("operator console: %s (its URL with the run's token is printed on stdout, not logged)", server.base_url)
    if on_console is not None:
        on_console(server.url)
    return OperatorJudge(robot, session)
