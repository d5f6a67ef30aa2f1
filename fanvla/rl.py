"""``fanvla rl``: PPO / FAN-PPO finetuning in the twin; ``fanvla rl compare``: both methods from one checkpoint over
seeds; ``fanvla rl plot``: curves of runs.

This module joins the pieces of three packages: the evaluation's task files (``eval_protocols.task_spec``) give the
training scenes (``TaskScenes``: the tasks' perturbation ranges, objects and instructions, with seeds of their own so
that no training scene is an evaluation trial), the trial runner is the evaluator (``fanvla eval run`` in a child
process, the real CLI), and ``finetune.rl`` trains. docs/rl.md describes the method, the options and the outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import yaml

from fanvla.cli import UserError
from robot.cli import add_config_argument

QUICK_TASK_DURATION_S = 2.0  # --quick evaluates one trial of this length (the test model cannot succeed anyway)


def training_scene_seed(task_name: str, run_seed: int, index: int) -> int:
    """Seed of training scene ``index`` of a task: a SHA-256 in a namespace of its own (``fanvla-rl/``), so training
    never meets an evaluation trial (those are ``fanvla-eval/``, eval_protocols.task_spec.trial_seed)."""
    digest = hashlib.sha256(f"fanvla-rl/{task_name}/{run_seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class TaskScenes:
    """``robot.sim.vector_env.SceneSource`` over evaluation task files: episode k of scene i is global episode
    g = k * N + i; it takes task g mod T (round robin), that task's objects in turn, the task's perturbation ranges
    and its instruction, and min(max_episode_steps, the task's max_duration_s) ticks."""

    def __init__(self, tasks, hardware, seed: int, num_envs: int, max_episode_steps: int) -> None:
        from robot.scene import SceneSampler

        if not tasks:
            raise ValueError("no training tasks")
        self.tasks, self.hardware, self.seed, self.num_envs = list(tasks), hardware, seed, num_envs
        self.max_episode_steps = max_episode_steps
        self.sampler = SceneSampler(hardware)
        self.period_s = hardware.recording.period_s

    def scene(self, env_index: int, episode: int):
        from robot.sim.vector_env import EnvScene

        index = episode * self.num_envs + env_index
        task = self.tasks[index % len(self.tasks)]
        per_task = index // len(self.tasks)
        name = task.objects[per_task % len(task.objects)]
        spec = self.sampler.sample(training_scene_seed(task.name, self.seed, per_task), name, task.perturbation)
        ticks = min(self.max_episode_steps, math.floor(task.max_duration_s / self.period_s + 1e-9))
        return EnvScene(spec, task.instruction_for(name, self.hardware.scene), ticks, task.name)


class TrialRunnerEvaluator:
    """``finetune.rl.trainer.Evaluator``: ``fanvla eval run`` (the trial runner, sim backend) on a policy directory,
    in a child process, into ``<run>/evals/update-NNNN/eval``; returns each task's success rate."""

    def __init__(self, out_dir: Path, hardware_path: Path, tasks: str, trials: int, seed: int) -> None:
        self.out_dir, self.hardware_path, self.tasks, self.trials, self.seed = out_dir, hardware_path, tasks, trials, \
            seed

    def __call__(self, policy_dir: Path, update: int, env_steps: int) -> dict[str, float]:
        from finetune.rl.trainer import eval_dir

        return run_evaluation(policy_dir, eval_dir(self.out_dir, update) / "eval", self.hardware_path, self.tasks,
                              self.trials, self.seed, self.out_dir / "logs" / f"eval-update-{update:04d}.log")


def run_evaluation(policy: Path, out: Path, hardware_path: Path, tasks: str, trials: int, seed: int,
                   log_path: Path) -> dict[str, float]:
    """The trial runner in a child process (resumes a partial run); each task's success rate."""
    from eval_protocols.results import RunStore
    from fanvla.procs import Child, fanvla_argv

    Child(f"eval-{out.parent.name}", fanvla_argv(
        "eval", "run", "--backend", "sim", "--policy", str(policy), "--tasks", tasks, "--trials", str(trials),
        "--seed", str(seed), "--out", str(out), "--config", str(hardware_path), "--threads", "1"), log_path).wait()
    store = RunStore.read(out)
    rates: dict[str, list[bool]] = {}
    for record in store.records():
        rates.setdefault(record["task"], []).append(bool(record["success"]))
    return {task: sum(values) / len(values) for task, values in rates.items()}


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rl", help="PPO / FAN-PPO finetuning in the twin; 'rl compare' runs both over seeds; 'rl plot' draws runs",
        description="Reinforced finetuning of a policy in the vectorised twin (docs/rl.md). Outputs: OUT/final (a "
                    "servable policy), OUT/checkpoints, OUT/metrics/{train,eval}.csv, OUT/tensorboard, "
                    "OUT/curves.png, OUT/evals/update-N/{policy,eval}.")
    add_run_options(parser)
    parser.add_argument("--init", metavar="MODEL_DIR", help="the finetuned checkpoint to start from")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (new, or an earlier run with --resume)")
    parser.add_argument("--method", default="fan-ppo", choices=("ppo", "fan-ppo"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--quick", action="store_true",
                        help="2 scenes, 6-tick episodes, 2 updates (24 steps; with --resume, --steps), one 2 s "
                             "evaluation trial at the end: every stage in a minute (a test; without --init a "
                             "test-size tiny model is made in OUT/init)")
    parser.set_defaults(func=_train, rl_action=None)
    actions = parser.add_subparsers(dest="rl_action", metavar="{compare,plot}")
    from fanvla.rl_compare import register_compare

    register_compare(actions)
    plot = actions.add_parser("plot", help="draw rollout success, evaluation success and action width of runs")
    plot.add_argument("runs", nargs="+", metavar="RUN")
    plot.add_argument("--out", dest="plot_out", required=True, help="output image, e.g. curves.png")
    plot.set_defaults(func=_plot)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``fanvla rl`` and ``fanvla rl compare`` (defaults: finetune.rl.config.RLConfig)."""
    from finetune.rl.config import DEFAULT_MAX_EPISODE_STEPS

    add_config_argument(parser)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="hardware.yaml override, e.g. --set camera.color.width=424 (repeatable)")
    parser.add_argument("--tasks", default="task1", help="training tasks: comma-separated names or task files "
                                                         "(default task1)")
    parser.add_argument("--envs", type=int, default=8, help="scenes stepped together (default 8)")
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps in total (default 20000)")
    parser.add_argument("--rollout-steps", type=int, default=None,
                        help="ticks per scene per update (default: --max-episode-steps)")
    parser.add_argument("--max-episode-steps", type=int, default=DEFAULT_MAX_EPISODE_STEPS,
                        help=f"ticks per trajectory at most (default {DEFAULT_MAX_EPISODE_STEPS}; docs/rl.md)")
    parser.add_argument("--alpha", type=float, default=None, help="FAN-PPO weight (default: the paper's 1.0)")
    parser.add_argument("--sigma", type=float, default=None,
                        help="FAN-PPO's fixed sigma, normalised action units (default: the paper's 0.3)")
    parser.add_argument("--lr", type=float, default=1e-4, help="policy learning rate (the paper's 1e-4)")
    parser.add_argument("--value-lr", type=float, default=3e-3, help="value-head learning rate (the paper's 3e-3)")
    parser.add_argument("--epochs", type=int, default=1, help="PPO passes over each rollout")
    parser.add_argument("--minibatch", type=int, default=64)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    parser.add_argument("--shaping-weight", type=float, default=0.0,
                        help="potential-based grasp shaping (default 0: sparse success reward only)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--lora-rank", type=int, default=32, help="LoRA rank (default, the paper's 32)")
    mode.add_argument("--full", action="store_true", help="full finetuning instead of LoRA (tiny models)")
    parser.add_argument("--workers", type=int, default=2, help="twin worker processes (0: in the training process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--save-every", type=int, default=5, help="updates between checkpoints")
    parser.add_argument("--eval-every", type=int, default=0, help="updates between evaluations (0: at the end)")
    parser.add_argument("--eval-tasks", default="all", help="tasks evaluated (default all)")
    parser.add_argument("--eval-trials", type=int, default=10, help="trials per evaluated task (default 10)")
    parser.add_argument("--eval-seed", type=int, default=0, help="evaluation run seed (default 0)")
    parser.add_argument("--no-initial-eval", dest="eval_initial", action="store_false",
                        help="do not evaluate --init before the first update")
    parser.add_argument("--no-eval", dest="evaluate", action="store_false", help="no evaluation at all")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")


def write_hardware(config_path: str | None, overrides: list[str], path: Path):
    """The run's hardware.yaml (the evaluation's children read it); refuses to change an existing run's."""
    from eval_protocols.cli import parse_overrides
    from fanvla.config import config_snapshot, load_hardware_config

    try:
        config = load_hardware_config(config_path).with_overrides(parse_overrides(overrides))
    except ValueError as error:
        raise UserError(str(error)) from None
    text = "# Written by `fanvla rl`: the twin of this run and of its evaluations.\n" + \
        yaml.safe_dump(config_snapshot(config), sort_keys=False)
    if path.exists() and path.read_text() != text:
        raise UserError(f"{path} holds another hardware configuration than this command's; use the same --config and "
                        f"--set, or a new --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return config


def rl_config_from_args(args: argparse.Namespace, init: str, out: str, method: str, seed: int, resume: bool):
    from finetune.rl.config import RLConfig

    return RLConfig(init=init, out=out, method=method, envs=args.envs, steps=args.steps,
                    rollout_steps=args.rollout_steps, max_episode_steps=args.max_episode_steps,
                    alpha=args.alpha, sigma=args.sigma, lr=args.lr, value_lr=args.value_lr, epochs=args.epochs,
                    minibatch=args.minibatch, gamma=args.gamma, temperature=args.temperature,
                    shaping_weight=args.shaping_weight, full=args.full, lora_rank=args.lora_rank,
                    workers=args.workers, threads=args.threads, seed=seed, save_every=args.save_every,
                    eval_every=args.eval_every, eval_initial=args.eval_initial, resume=resume,
                    tensorboard=args.tensorboard)


def _quick(args: argparse.Namespace, out: Path) -> None:
    """--quick: small settings; a test-size tiny model when no --init is given; a 2 s task-1 for evaluation."""
    from eval_protocols.task_spec import BUILTIN_TASKS_DIR

    args.envs, args.workers, args.max_episode_steps, args.minibatch = 2, 0, 6, 6
    args.steps = args.steps if args.resume else 24  # (a resumed quick run may be given more steps)
    args.save_every, args.eval_every, args.eval_trials, args.eval_initial = 1, 0, 1, False
    quick_task = out / "quick-task1.yaml"
    if not quick_task.exists():
        data = yaml.safe_load((BUILTIN_TASKS_DIR / "task1.yaml").read_text())
        out.mkdir(parents=True, exist_ok=True)
        quick_task.write_text(yaml.safe_dump({**data, "max_duration_s": QUICK_TASK_DURATION_S}, sort_keys=False))
    args.tasks = args.eval_tasks = str(quick_task)
    if args.init is None:
        init = out / "init"
        if not (init / "config.json").exists():
            from fanvla.config import load_hardware_config
            from policy.tiny import build_tiny

            scene = load_hardware_config(args.config).scene
            build_tiny(init, "test", seed=0, instructions=[scene.instruction_for(n) for n in scene.objects])
        args.init = str(init)


def _train(args: argparse.Namespace) -> int:
    from eval_protocols.task_spec import TaskFileError, resolve_tasks
    from finetune.config import FinetuneError
    from finetune.rl.trainer import train_rl

    if args.out is None:
        raise UserError("fanvla rl needs --out (and --init unless --quick); or 'fanvla rl compare' / 'fanvla rl plot'")
    out = Path(args.out)
    if args.quick:
        _quick(args, out)
    if args.init is None:
        raise UserError("fanvla rl needs --init MODEL_DIR: the finetuned checkpoint to start from")
    config = rl_config_from_args(args, args.init, str(out), args.method, args.seed, args.resume)
    try:
        config.check()
        hardware_path = out / "hardware.yaml"
        hardware = write_hardware(args.config, args.overrides, hardware_path)
        tasks = resolve_tasks(args.tasks, hardware.scene)
        source = TaskScenes(tasks, hardware, args.seed, config.envs, config.max_episode_steps)
        evaluator = TrialRunnerEvaluator(out, hardware_path, args.eval_tasks, args.eval_trials, args.eval_seed) \
            if args.evaluate else None
        result = train_rl(config, hardware, source, evaluator)
    except (FinetuneError, TaskFileError) as error:
        raise UserError(str(error)) from None
    print(json.dumps({"final": str(result.final_dir), "updates": result.updates, "env_steps": result.env_steps,
                      "wall_s": round(result.wall_s, 1), "rollout_success_window": result.rollout_success,
                      "evaluations": {str(k): v for k, v in result.evaluations.items()}}, indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from finetune.config import FinetuneError
    from finetune.rl.plot import plot_rl_runs

    try:
        print(plot_rl_runs(args.runs, args.plot_out))
    except FinetuneError as error:
        raise UserError(str(error)) from None
    return 0

