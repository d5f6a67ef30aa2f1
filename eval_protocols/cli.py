"""``fanvla eval ...``: run the four-task protocol (twin or robot), report it, calibrate the table, list tasks.

Handlers import their heavy modules lazily (mujoco, torch, flask) and turn bad input into one clear message.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from policy.precision import DTYPE_CHOICES
from robot.cli import add_config_argument


def _user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        from collect.errors import StoreError
        from eval_protocols.calibration import CalibrationError
        from eval_protocols.console_session import SessionClosed
        from eval_protocols.policies import PolicyError
        from eval_protocols.results import RunDirError
        from eval_protocols.stats import StatsInputError
        from eval_protocols.task_spec import TaskFileError
        from fanvla.cli import UserError

        try:
            return handler(args)
        except (TaskFileError, RunDirError, PolicyError, CalibrationError, StatsInputError, StoreError) as error:
            raise UserError(str(error)) from None
        except SessionClosed as error:
            raise UserError(f"{error}; re-run the same command to continue with the first unscored trial") from None
        except ValueError as error:
            raise UserError(str(error)) from None

    return wrapped


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("eval", help="the four-task evaluation protocol: run, report, calibrate")
    commands = evaluate.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    _add_run(commands)
    _add_ab(commands)
    _add_report(commands)
    _add_calibrate(commands)
    _add_tasks(commands)


def _add_task_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="all", help="'all' or comma-separated task names / paths to task YAML "
                                                       "files (default all)")
    parser.add_argument("--tasks-dir", default=None, help="folder of task files for names and 'all' "
                                                          "(default: eval_protocols/tasks)")


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run (or resume) the trials of the selected tasks into RUN_DIR")
    add_config_argument(run)
    run.add_argument("--backend", choices=("sim", "real"), required=True)
    run.add_argument("--policy", required=True, help="http(s)://host:port of 'fanvla serve', a checkpoint folder, "
                                                     "or a baseline: scripted-expert (sim only), random")
    _add_task_selection(run)
    run.add_argument("--trials", type=int, default=30, help="trials per task (default 30)")
    run.add_argument("--seed", type=int, default=0, help="run seed: trial i of a task is the same situation in every "
                                                         "run with this seed (default 0)")
    run.add_argument("--out", required=True, help="RUN_DIR: results, step logs and videos; re-run to resume")
    add_session_arguments(run)
    run.add_argument("--batch", type=int, default=1, metavar="K",
                     help="twin only: run K trials in lock-step, one batched policy forward per tick (each trial "
                          "keeps its own twin, scene, seed, log and video; default 1 = one trial at a time)")
    add_execution_arguments(run)
    run.set_defaults(func=_run)


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Console, calibration, policy loading and hardware overrides: shared by 'eval run' and 'eval ab'."""
    parser.add_argument("--console", action="store_true", help="operator console with the twin too (rehearsal); "
                                                               "always on with --backend real")
    parser.add_argument("--console-port", type=int, default=8765, help="operator console port on 127.0.0.1 "
                                                                       "(0 = any free port; default 8765)")
    parser.add_argument("--calibration", default=None, help="table calibration from 'fanvla eval calibrate' "
                                                            "(needed with --backend real)")
    parser.add_argument("--token-file", default=None, help="bearer token file for a policy server")
    parser.add_argument("--unnorm-key", default=None, help="statistics key of the checkpoint (default: its own)")
    parser.add_argument("--device", default="cpu", help="torch device for a checkpoint folder (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for a checkpoint folder "
                                                                  "(default: torch's choice; 1 suits tiny models)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                        help="weights of a checkpoint folder: auto = the checkpoint's own (docs/policy.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="hardware.yaml override for this run, e.g. --set camera.color.fps=30 (repeatable)")


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    """--execution, --policy-latency-ms, --max-action-age-ms, --chunk-steps, --open-loop-steps, --ensemble-decay
    (robot/execution.py, robot/ensemble_execution.py)."""
    parser.add_argument("--execution", choices=("sync", "async", "chunk"), default=None,
                        help="how slow answers reach the arm: sync (wait for each answer, the arm holds), async (ask "
                             "while the arm executes the last answer), chunk (run action chunks open loop); default "
                             "sync in the twin, async at the robot (docs/evaluation.md, 'Latency')")
    parser.add_argument("--policy-latency-ms", default="0", metavar="N|N+-M",
                        help="add N ms (or uniformly N-M..N+M ms) before every answer of the policy, any kind: a "
                             "rehearsal of a slow policy, e.g. 150+-30 (default 0)")
    parser.add_argument("--max-action-age-ms", type=float, default=None,
                        help="an answer older than this when it would move the arm is dropped (default: "
                             "safety.watchdog_hold_s)")
    parser.add_argument("--chunk-steps", type=int, default=None,
                        help="chunk execution: steps the scripted expert plans ahead (default 8: "
                             "eval_protocols.policies.DEFAULT_EXPERT_CHUNK_STEPS)")
    parser.add_argument("--open-loop-steps", type=int, default=None, metavar="N",
                        help="chunk execution: send N steps of each chunk before asking for the next (OpenVLA-OFT's "
                             "open-loop setting: N = K); default: ask as soon as the policy is free")
    parser.add_argument("--ensemble-decay", type=float, default=None, metavar="M",
                        help="chunk execution: temporal ensembling (ACT's): each tick runs the mean of the steps every "
                             "live chunk planned for it, weighted exp(-M j) from the oldest (0: plain mean)")


def execution_from_args(args: argparse.Namespace, backend: str):
    """The ``ExecutionConfig`` of the execution arguments (None: the backend's default mode, nothing injected)."""
    from robot.execution import ExecutionConfig, ExecutionMode
    from robot.injected_latency import LatencySpec

    latency = LatencySpec.parse(args.policy_latency_ms)
    if args.max_action_age_ms is not None and not args.max_action_age_ms > 0:
        raise ValueError(f"--max-action-age-ms must be > 0, got {args.max_action_age_ms:g}")
    open_loop, decay = getattr(args, "open_loop_steps", None), getattr(args, "ensemble_decay", None)
    if open_loop is not None and (args.execution != "chunk" or open_loop < 1):
        raise ValueError(f"--open-loop-steps {open_loop}: needs --execution chunk and N >= 1")
    if decay is not None and (args.execution != "chunk" or open_loop is not None or not decay >= 0):
        raise ValueError(f"--ensemble-decay {decay:g}: needs --execution chunk, M >= 0 and no --open-loop-steps")
    if args.execution is None and not latency.enabled and args.max_action_age_ms is None:
        return None
    from eval_protocols.launch import DEFAULT_EXECUTION

    mode = ExecutionMode(args.execution) if args.execution else DEFAULT_EXECUTION[backend]
    max_age_s = args.max_action_age_ms / 1000.0 if args.max_action_age_ms is not None else None
    return ExecutionConfig(mode, latency, max_age_s, open_loop_steps=open_loop, ensemble_decay=decay)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. camera.color.fps=30")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@_user_errors
def _run(args: argparse.Namespace) -> int:
    from eval_protocols.launch import RunOptions, run_evaluation
    from eval_protocols.task_spec import resolve_tasks
    from fanvla.config import load_hardware_config

    config = load_hardware_config(args.config)
    tasks = resolve_tasks(args.tasks, config.scene, args.tasks_dir)
    options = RunOptions(args.backend, args.policy, tasks, args.trials, args.seed, Path(args.out),
                         console=args.console or args.backend == "real", console_port=args.console_port,
                         calibration=Path(args.calibration) if args.calibration else None, token_file=args.token_file,
                         unnorm_key=args.unnorm_key, device=args.device, threads=args.threads, dtype=args.dtype,
                         overrides=parse_overrides(args.overrides), execution=execution_from_args(args, args.backend),
                         batch=args.batch,
                         mode_from_policy=args.execution is None,
                         **({"chunk_steps": args.chunk_steps} if args.chunk_steps is not None else {}))

    def on_execution(execution) -> None:
        open_loop = f", open loop {execution.open_loop_steps} steps" if execution.open_loop_steps else ""
        print(f"execution: {execution.mode.value}{open_loop}, injected policy latency {execution.latency} ms",
              flush=True)

    def on_trial(report) -> None:
        record = report.record
        verdict = "SUCCESS" if record["success"] else "failure"
        summary = record.get("summary") or {}
        print(f"[{report.done}/{report.total}] {record['task']} trial {record['trial']:02d} ({record['object']}): "
              f"{verdict} - {record['note'] or record['episode']['reason']} ({record['episode']['steps']} steps, "
              f"{summary.get('held_steps', 0)} held, {record['episode']['late_ticks']} late, "
              f"{record['wall_s']:.1f} s)", flush=True)

    progress = run_evaluation(config, options, on_trial,
                              on_console=lambda url: print(f"operator console: {url}", flush=True),
                              on_execution=on_execution)
    for task, counts in progress.items():
        print(f"{task}: {counts['successes']}/{counts['scored']} successes ({counts['scored']} of {counts['trials']} "
              f"trials scored)")
    print(f"results in {args.out}; report with: fanvla eval report {args.out} --out REPORT_DIR")
    return 0


def _add_ab(commands: argparse._SubParsersAction) -> None:
    ab = commands.add_parser("ab", help="blinded, interleaved A/B: both policies on every trial situation, back to "
                                        "back in a random order per pair; the report unblinds (paired McNemar test)")
    add_config_argument(ab)
    ab.add_argument("--backend", choices=("sim", "real"), required=True)
    ab.add_argument("--a", dest="policy_a", required=True, help="policy A (as --policy of 'eval run')")
    ab.add_argument("--b", dest="policy_b", required=True, help="policy B (as --policy of 'eval run')")
    _add_task_selection(ab)
    ab.add_argument("--pairs", type=int, default=30, help="trial situations per task, each run with both policies "
                                                          "(default 30)")
    ab.add_argument("--seed", type=int, default=0, help="run seed: pair i is trial i of 'eval run' with this seed")
    ab.add_argument("--out", required=True, help="A/B run folder (ab.json, a/, b/); re-run to resume")
    ab.add_argument("--sequential", action="store_true",
                    help="stop a task early once the evidence is decisive (exact group-sequential test on the "
                         "discordant pairs; its error rate holds with a look after every pair)")
    ab.add_argument("--alpha", type=float, default=0.05, help="two-sided level of --sequential (default 0.05)")
    add_session_arguments(ab)
    add_execution_arguments(ab)
    ab.set_defaults(func=_ab)


@_user_errors
def _ab(args: argparse.Namespace) -> int:
    from eval_protocols.ab import ABOptions, run_ab
    from eval_protocols.launch import RunOptions
    from eval_protocols.task_spec import resolve_tasks
    from fanvla.config import load_hardware_config

    config = load_hardware_config(args.config)
    tasks = resolve_tasks(args.tasks, config.scene, args.tasks_dir)
    common = RunOptions(args.backend, "", tasks, args.pairs, args.seed, Path(args.out),
                        console=args.console or args.backend == "real", console_port=args.console_port,
                        calibration=Path(args.calibration) if args.calibration else None, token_file=args.token_file,
                        unnorm_key=args.unnorm_key, device=args.device, threads=args.threads, dtype=args.dtype,
                        overrides=parse_overrides(args.overrides), execution=execution_from_args(args, args.backend),
                        **({"chunk_steps": args.chunk_steps} if args.chunk_steps is not None else {}))
    options = ABOptions(args.policy_a, args.policy_b, args.pairs, common, args.sequential, args.alpha)

    def on_trial(report) -> None:  # blinded: the slot, never which policy
        record = report.record
        print(f"[{report.done}/{report.total}] {record['task']} pair {record['trial']:02d}, policy "
              f"{record['ab']['slot']} ({record['object']}): {'SUCCESS' if record['success'] else 'failure'} - "
              f"{record['note'] or record['episode']['reason']} ({record['episode']['steps']} steps)", flush=True)

    def on_stop(task: str, decision) -> None:
        print(f"{task}: sequential stopping decided after {decision.pairs} pairs (which way: in the report)",
              flush=True)

    summary = run_ab(config, options, on_trial, on_console=lambda url: print(f"operator console: {url}", flush=True),
                     on_stop=on_stop)
    for task, state in summary.items():
        print(f"{task}: {state['complete']} of {state['pairs']} pairs scored"
              + (" (stopped early by the sequential design)" if state["stopped_early"] else ""))
    print(f"results in {args.out}; unblinded report with: fanvla eval report {args.out} --out REPORT_DIR")
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="Markdown table (paper's Table 3 shape), statistics, chart, video "
                                                "links for one or more runs")
    report.add_argument("runs", nargs="+", help="RUN_DIRs (the first is the baseline of the comparisons), or one "
                                                "A/B run of 'fanvla eval ab' (paired, unblinded report)")
    report.add_argument("--out", required=True, help="report folder (README.md, chart.png, results.json)")
    report.add_argument("--names", default=None, help="comma-separated row names, one per run (default: policy names)")
    report.add_argument("--significance", type=float, default=0.05, help="significance level (default 0.05)")
    report.add_argument("--seeds-per-method", type=int, default=1, metavar="N",
                        help="the runs are N training seeds of each method, method by method (e.g. SFT seed 0, 1, "
                             "2, FAN-SFT seed 0, 1, 2 with N = 3): adds per-method pooled rows, the spread between "
                             "seeds and tests stratified by seed (default 1)")
    report.set_defaults(func=_report)


@_user_errors
def _report(args: argparse.Namespace) -> int:
    from eval_protocols.ab import is_ab_run
    from eval_protocols.report import README, summary_lines, write_report

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    runs = [Path(r) for r in args.runs]
    ab_runs = [r for r in runs if is_ab_run(r)]
    if ab_runs and (len(runs) > 1 or args.seeds_per_method > 1):
        raise ValueError(f"{ab_runs[0]} is an A/B run ('fanvla eval ab'): report it on its own "
                         f"('fanvla eval report {ab_runs[0]} --out ...'), or its arms {ab_runs[0]}/a and "
                         f"{ab_runs[0]}/b as ordinary runs")
    if ab_runs:
        from eval_protocols.ab_report import write_ab_report

        numbers = write_ab_report(runs[0], Path(args.out), names, args.significance)
    elif args.seeds_per_method > 1:
        from eval_protocols.seeds_report import write_seeds_report

        numbers = write_seeds_report(runs, args.seeds_per_method, Path(args.out), names, args.significance)
    else:
        numbers = write_report(runs, Path(args.out), names, args.significance)
    for line in summary_lines(numbers):
        print(line)
    for comparison in numbers["comparisons"]:
        if comparison["significant"]:
            print(f"significant: {comparison['task']} {comparison['run']} vs {comparison['baseline']} "
                  f"(p = {comparison['fisher_p']:.4f})")
    for task, row in (numbers.get("paired") or {}).get("tasks", {}).items():
        print(f"paired {task}: {row['pairs']} pairs, A only {row['only_a']}, B only {row['only_b']}, McNemar p = "
              f"{row['mcnemar_p']:.4f}" + (f", sequential: {row['sequential']['outcome']} after "
                                           f"{row['sequential']['pairs']} pairs" if row["sequential"] else ""))
    for row in (numbers.get("seeds") or {}).get("comparisons", []):
        print(f"over seeds {row['task']} {row['method']} vs {row['baseline']}: pooled {row['pooled_b']} vs "
              f"{row['pooled_a']}, exact stratified p = {row['exact_p']:.4f}, CMH p = {row['cmh_p']:.4f}")
    print(f"wrote {Path(args.out) / README}")
    return 0


def _add_calibrate(commands: argparse._SubParsersAction) -> None:
    calibrate = commands.add_parser("calibrate", help="store the table calibration used for the placement markers")
    add_config_argument(calibrate)
    calibrate.add_argument("--backend", choices=("sim", "real"), required=True)
    calibrate.add_argument("--points", default=None,
                           help="YAML file 'points: [{x_mm, y_mm, u_px, v_px}, ...]' (4 or more table points in "
                                "the base frame and their pixels; real backend)")
    calibrate.add_argument("--snapshot", default=None, help="also save the camera's current image (PNG) to read "
                                                            "pixel coordinates from")
    calibrate.add_argument("--preview", default=None, help="save the camera image with the nominal placements drawn "
                                                           "through the new calibration (PNG), to check it")
    calibrate.add_argument("--out", required=True, help="calibration file to write (JSON)")
    calibrate.set_defaults(func=_calibrate)


@_user_errors
def _calibrate(args: argparse.Namespace) -> int:
    from PIL import Image

    from eval_protocols.calibration import TableCalibration, draw_placement, read_points_file
    from fanvla.config import load_hardware_config
    from robot.factory import open_robot
    from robot.scene import PerturbationRanges, SceneSampler

    config = load_hardware_config(args.config)
    if args.backend == "real" and not args.points and not args.snapshot:
        raise ValueError("--backend real needs --points FILE (take a --snapshot first to read the pixels from)")
    with open_robot(config, args.backend) as robot:
        if robot.twin is not None:
            robot.twin.reset_scene(SceneSampler(config).sample(0, ranges=PerturbationRanges()))
            robot.clock.sleep(0.2)
        image = robot.camera.latest().color
        if args.snapshot:
            Image.fromarray(image).save(args.snapshot)
            print(f"snapshot: {args.snapshot}")
        if args.points:
            table_xy, pixels, intrinsics = read_points_file(args.points)
            calibration = TableCalibration.from_table_points(table_xy, pixels, intrinsics or robot.camera.intrinsics)
        elif robot.twin is not None:
            calibration = TableCalibration.from_twin(robot.twin)
        else:
            return 0  # snapshot only
    calibration.save(args.out)
    print(f"{args.out}: {calibration.method}, reprojection error {calibration.reprojection_rms_px:.2f} px RMS")
    if args.preview:
        nominal = SceneSampler(config).sample(0, ranges=PerturbationRanges())
        Image.fromarray(draw_placement(image, calibration, nominal)).save(args.preview)
        print(f"preview: {args.preview}")
    return 0


def _add_tasks(commands: argparse._SubParsersAction) -> None:
    tasks = commands.add_parser("tasks", help="validate task files and print their trials (what the operator sets up)")
    add_config_argument(tasks)
    _add_task_selection(tasks)
    tasks.add_argument("--trials", type=int, default=0, help="also print the first N trials of each task")
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--json", action="store_true", help="print JSON (tasks, and trials with their scene specs)")
    tasks.set_defaults(func=_tasks)


@_user_errors
def _tasks(args: argparse.Namespace) -> int:
    from eval_protocols.task_spec import resolve_tasks
    from fanvla.config import load_hardware_config
    from robot.scene import SceneSampler

    config = load_hardware_config(args.config)
    tasks = resolve_tasks(args.tasks, config.scene, args.tasks_dir)
    sampler = SceneSampler(config)
    out = []
    for task in tasks:
        trials = [task.trial(sampler, args.seed, i) for i in range(args.trials)]
        preview = [{"trial": t.index, "seed": t.seed, "instruction": t.instruction, "scene": t.scene.to_dict()}
                   for t in trials]
        out.append({**task.describe(), "trials_preview": preview})
        if not args.json:
            print(f"{task.name}: {task.title} ({task.path.name}, sha256 {task.sha256[:12]}; {task.max_duration_s:g} s, "
                  f"objects {', '.join(task.objects)})")
            for trial in trials:
                print(f"  trial {trial.index:02d}: {trial.scene.operator_text()}")
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    return 0
