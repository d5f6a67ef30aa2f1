"""``fanvla demo``: the whole stack end to end in the twin, reproducing the shape of the paper's Table 3.

1. record demonstrations with the scripted expert through the real recorder and Zarr store;
2. create one tiny VLA initialisation, pretrain its vision towers on the recorded frames (``fanvla finetune
   pretrain-vision``), and finetune it twice, plain SFT and FAN-SFT, same data, same steps;
3. serve each checkpoint with the real policy server and run the four tasks through the real trial runner, with
   batched forwards (``eval run --batch``);
4. write the Table-3-style report (successes, Wilson intervals, Fisher tests, chart) and print it.

With ``--seeds N`` stages 2-3 run once per training seed (seed, seed + 1, ...: its own initialisation, vision
pretraining and finetuning data order; the same recordings and the same trial situations), and the report adds the
per-seed, pooled and seed-stratified comparison (``eval report --seeds-per-method N``). Seed 0's folders keep the
one-seed names (``train-sft``), later seeds add ``-seed<k>``.

``--model oft`` does the same with the paper's second model, OpenVLA-OFT (policy/oft.py): both methods finetune
the same initialisation into a chunk policy (``--chunk`` K actions decoded in parallel, the robot state as proprio,
``--wrist`` the wrist camera too), and the evaluation runs each chunk open loop for K ticks. ``--data`` and
``--init`` start from existing recordings and an existing (e.g. vision-pretrained) initialisation, so that both
models can be trained on the same recordings.

Every stage is the real CLI in a child process, so the demo exercises exactly what users run. Re-running
the same command resumes: the recorder tops the store up, training continues from its checkpoints and
the evaluation skips scored trials.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from fanvla import __version__
from fanvla.cli import UserError
from fanvla.config import config_snapshot, load_hardware_config
from fanvla.procs import Child, fanvla_argv, run_all

METHODS = ("sft", "fan-sft")
MODEL_NAMES = {"openvla": "OpenVLA-tiny", "oft": "OpenVLA-OFT-tiny"}
METHOD_SUFFIXES = {"sft": "SFT", "fan-sft": "FAN-SFT"}
# The twin's wrist camera for `--model oft --wrist`: the default flange camera (fanvla/config.py) at the demo's
# colour mode.
DEMO_WRIST_CAMERA = {"cameras.wrist": {"color": {"width": 424, "height": 240, "fps": 15}}}
SERVER_READY = r"fanvla serve: ready (http://\S+)"

# The twin's camera for the demo: a genuine D455 colour mode small enough for 2 CPU cores (the policy
# sees 112 px anyway), no depth stream.
DEMO_CAMERA = {"camera.color": {"width": 424, "height": 240, "fps": 15}, "camera.depth.enabled": False,
               "recording.record_depth": False}


@dataclass(frozen=True)
class DemoPreset:
    episodes: int  # demonstrations, cycled over the three objects
    steps: int  # optimiser steps per method
    batch_size: int
    trials: int  # per task
    val_every: int
    preset: str = "demo"  # tiny model preset (policy/tiny.py)
    # A from-scratch tiny model learns faster with a higher peak rate than upstream's constant 5e-4.
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    # Random crops and colour jitter: off, since the twin's camera and lighting never change between
    # demonstrations and trials, and the policy must read positions to the millimetre (README, the demo).
    augment: bool = False
    # `fanvla finetune pretrain-vision` steps before finetuning (0 = off): both methods then start from
    # vision towers that already locate the gripper, the grasp and the release point (docs/finetune.md).
    vision_pretrain_steps: int = 1500
    # Twin trials in lock-step per batched policy forward (eval run --batch; 1 = one trial at a time).
    eval_batch: int = 8


@dataclass(frozen=True)
class ModelChoice:
    """Which model both methods finetune: OpenVLA (single actions) or OpenVLA-OFT (``fanvla finetune --model oft``:
    K-action chunks, the robot state as proprio, the paper's setting; the wrist camera on request)."""

    model: str = "openvla"
    chunk: int = 8
    proprio: bool = True
    wrist: bool = False

    def finetune_args(self) -> list[str]:
        if self.model != "oft":
            return []
        return ["--model", "oft", "--chunk", str(self.chunk), *(["--proprio"] if self.proprio else []),
                *(["--wrist"] if self.wrist else [])]

    def method_name(self, method: str) -> str:
        return f"{MODEL_NAMES[self.model]} + {METHOD_SUFFIXES[method]}"


PRESETS = {
    # 1,700 steps: on 150 demonstrations the validation loss flattens out by 1,500 to 2,000 steps (and rose
    # after 3,000 with the earlier expert), and 2,000 steps took the whole demo to 45.6 min on 2 cores, over its
    # 45-minute budget; 1,700 steps took 44.9 min (README).
    "default": DemoPreset(episodes=150, steps=1700, batch_size=32, trials=30, val_every=850),
    "quick": DemoPreset(episodes=6, steps=30, batch_size=8, trials=2, val_every=15, preset="test", warmup_steps=5,
                        vision_pretrain_steps=10),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="end-to-end simulated demo: record, finetune SFT and FAN-SFT, "
                                              "evaluate the four tasks, report", description=__doc__)
    demo.add_argument("--out", default="runs/demo", help="run folder (re-run the same command to resume)")
    demo.add_argument("--quick", action="store_true", help="a few demos, steps and trials: every stage in minutes")
    demo.add_argument("--config", default=None, help="hardware.yaml to start from (default: the repository's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--alpha", type=float, default=None, help="FAN-SFT weight (default: the paper's 0.05)")
    demo.add_argument("--episodes", type=int, default=None, help="override the preset's demonstration count")
    demo.add_argument("--steps", type=int, default=None, help="override the preset's optimiser steps")
    demo.add_argument("--trials", type=int, default=None, help="override the preset's trials per task")
    demo.add_argument("--seeds", type=int, default=1, help="training seeds per method (default 1): each trains "
                                                           "and is evaluated on the same trials; the report pools "
                                                           "them and tests stratified by seed")
    demo.add_argument("--eval-batch", type=int, default=None,
                      help="trials in lock-step per batched forward (default: the preset's, 8; 1 = one at a time)")
    demo.add_argument("--jobs", type=int, default=2, choices=(1, 2),
                      help="run the two methods' training and evaluation side by side (2, one core each) or in turn")
    demo.add_argument("--model", choices=tuple(MODEL_NAMES), default="openvla",
                      help="openvla: single actions; oft: OpenVLA-OFT action chunks decoded in parallel, with proprio "
                           "(docs/finetune.md)")
    demo.add_argument("--chunk", type=int, default=8, help="--model oft: actions per chunk, K (default 8)")
    demo.add_argument("--wrist", action="store_true",
                      help="--model oft: record and read the twin's wrist camera too (hardware.yaml cameras.wrist)")
    demo.add_argument("--data", nargs="+", default=None, metavar="STORE",
                      help="train on these recordings (e.g. an earlier demo's demos-*.zarr) instead of recording")
    demo.add_argument("--init", default=None, metavar="MODEL_DIR",
                      help="finetune from this model (e.g. an earlier demo's init-vision) instead of making one")
    demo.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    preset = PRESETS["quick" if args.quick else "default"]
    overrides = {k: v for k, v in (("episodes", args.episodes), ("steps", args.steps), ("trials", args.trials),
                                   ("eval_batch", args.eval_batch)) if v is not None}
    if any(v <= 0 for v in overrides.values()) or args.seeds < 1:
        raise UserError(f"--episodes, --steps, --trials, --eval-batch and --seeds must be positive, got "
                        f"{ {**overrides, 'seeds': args.seeds} }")
    if args.model != "oft" and (args.wrist or args.chunk != 8):
        raise UserError("--chunk and --wrist are settings of --model oft")
    if args.chunk < 1:
        raise UserError(f"--chunk must be >= 1, got {args.chunk}")
    if args.init and args.seeds > 1:
        raise UserError("--init gives every training seed the same initialisation; --seeds N makes one per seed: "
                        "use one of them")
    for path in [*(args.data or []), *([args.init] if args.init else [])]:
        if not Path(path).exists():
            raise UserError(f"{path} does not exist")
    demo = Demo(Path(args.out), replace(preset, **overrides), args.seed, args.alpha, args.config, args.jobs,
                args.seeds, choice=ModelChoice(args.model, args.chunk, wrist=args.wrist),
                data=[Path(p) for p in args.data] if args.data else None, init=Path(args.init) if args.init else None)
    demo.run()
    return 0


class Demo:
    def __init__(self, out: Path, preset: DemoPreset, seed: int, alpha: float | None, config_path: str | None,
                 jobs: int, seeds: int = 1, *, choice: ModelChoice = ModelChoice(),
                 data: list[Path] | None = None, init: Path | None = None) -> None:
        self.out, self.preset, self.seed, self.alpha, self.jobs = out, preset, seed, alpha, jobs
        self.training_seeds = [seed + k for k in range(seeds)]
        self.config_path = config_path
        self.choice, self.data, self.init = choice, data, init
        self.timings: dict[str, float] = {}

    # -- paths -------------------------------------------------------------------------------------
    @property
    def hardware(self) -> Path:
        return self.out / "hardware.yaml"

    @property
    def stores(self) -> list[Path]:
        """One store per recording process (the finetuner reads several stores as one dataset), or ``--data``."""
        if self.data is not None:
            return list(self.data)
        return [self.out / f"demos-{i + 1}.zarr" for i in range(self.jobs)]

    def store_episodes(self) -> list[int]:
        """Episodes per store: the total split as evenly as possible, objects cycling within each store."""
        base, extra = divmod(self.preset.episodes, len(self.stores))
        return [base + (i < extra) for i in range(len(self.stores))]

    def _suffix(self, training_seed: int | None) -> str:
        """Folder suffix of a training seed: none for the first (the one-seed demo's names), ``-seed<k>`` after."""
        return "" if training_seed is None or training_seed == self.seed else f"-seed{training_seed}"

    def train_dir(self, method: str, training_seed: int | None = None) -> Path:
        return self.out / f"train-{method}{self._suffix(training_seed)}"

    def eval_dir(self, method: str, training_seed: int | None = None) -> Path:
        return self.out / f"eval-{method}{self._suffix(training_seed)}"

    def init_dir(self, training_seed: int | None = None) -> Path:
        return self.out / f"init{self._suffix(training_seed)}"

    def finetune_init_for(self, training_seed: int | None = None) -> Path:
        """The model both methods start from: ``--init``, else the tiny initialisation, with pretrained vision
        towers if enabled."""
        if self.init is not None:
            return self.init
        if self.preset.vision_pretrain_steps > 0:
            return self.out / f"init-vision{self._suffix(training_seed)}"
        return self.init_dir(training_seed)

    @property
    def finetune_init(self) -> Path:
        return self.finetune_init_for(None)

    def log(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"

    # -- stages ------------------------------------------------------------------------------------
    def run(self) -> None:
        started = time.monotonic()
        stages = (("config", self.write_config), ("record", self.record), ("init", self.init_model),
                  ("finetune", self.finetune), ("evaluate", self.evaluate), ("report", self.report))
        for index, (name, stage) in enumerate(stages, 1):
            print(f"\n== fanvla demo [{index}/{len(stages)}] {name} ==", flush=True)
            stage_start = time.monotonic()
            stage()
            self.timings[name] = round(time.monotonic() - stage_start, 1)
            print(f"== {name} done in {self.timings[name]:.0f} s (total {time.monotonic() - started:.0f} s) ==",
                  flush=True)
        self.timings["total"] = round(time.monotonic() - started, 1)
        self._write_summary()
        print(f"\nfanvla demo finished in {self.timings['total'] / 60:.1f} min; report: {self.out / 'report'}")

    def write_config(self) -> None:
        """The run's own hardware.yaml: the starting config with the demo camera, kept with the results."""
        self.out.mkdir(parents=True, exist_ok=True)
        config = load_hardware_config(self.config_path).with_overrides(self.camera_overrides)
        text = yaml.safe_dump(config_snapshot(config), sort_keys=False)
        header = "# Written by `fanvla demo`: the repository's hardware.yaml with the demo camera profile.\n"
        if self.hardware.exists() and self.hardware.read_text() != header + text:
            raise UserError(f"{self.hardware} differs from this demo's configuration: use a new --out")
        self.hardware.write_text(header + text)
        (self.out / "demo.json").write_text(json.dumps(self._settings(), indent=2))
        print(f"configuration: {self.hardware}; settings: {json.dumps(self._settings())}")

    @property
    def camera_overrides(self) -> dict:
        return {**DEMO_CAMERA, **(DEMO_WRIST_CAMERA if self.choice.wrist else {})}

    def record(self) -> None:
        if self.data is not None:
            print("training on the given recordings (--data): nothing to record")
            self._check_stores()
            return
        # Side by side into separate stores (one writer per store): the twin renders on one core each.
        children = [Child(f"record-{i + 1}", fanvla_argv(
            "collect", "record", "--backend", "sim", "--teleop", "scripted", "--episodes", str(count),
            "--out", str(store), "--seed", str(self.seed + 1000 * i), "--config", str(self.hardware)),
            self.log(f"record-{i + 1}")) for i, (store, count) in enumerate(zip(self.stores, self.store_episodes(),
                                                                              strict=True))]
        run_all(children)
        self._check_stores()

    def init_model(self) -> None:
        """Per training seed: the tiny initialisation, then (if the preset says so) its vision-pretrained copy both
        methods start from; nothing with ``--init``."""
        if self.init is not None:
            print(f"finetuning from the given model (--init): {self.init}")
            return
        for training_seed in self.training_seeds:
            init = self.create_init(training_seed)
            if self.finetune_init_for(training_seed) != init:
                self.pretrain_vision(self.stores, self.finetune_init_for(training_seed), init=init,
                                     seed=training_seed)

    def create_init(self, training_seed: int | None = None) -> Path:
        init = self.init_dir(training_seed)
        seed = self.seed if training_seed is None else training_seed
        if (init / "config.json").exists():
            print(f"reusing the initial model {init}")
        else:
            instructions = self.out / "instructions.txt"
            config = load_hardware_config(self.hardware)
            instructions.write_text("\n".join(config.scene.instruction_for(name) for name in config.scene.objects)
                                    + "\n")
            Child("init", fanvla_argv("policy", "init-tiny", "--preset", self.preset.preset, "--seed", str(seed),
                                      "--instructions", str(instructions), "--out", str(init)),
                  self.log(init.name)).wait()
        return init

    def pretrain_vision(self, stores: list[Path], out: Path, max_episodes: int | None = None, init: Path | None = None,
                        seed: int | None = None) -> None:
        """``fanvla finetune pretrain-vision`` from the initial model into ``out`` (skipped when it exists)."""
        if (out / "config.json").exists():
            print(f"reusing the vision-pretrained model {out}")
            return
        # Into a scratch folder renamed when complete, so an interrupted stage is simply redone.
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        limit = [] if max_episodes is None else ["--max-episodes", str(max_episodes)]
        # Both cores: nothing else runs at this stage.
        Child(f"pretrain-{out.name}", fanvla_argv(
            "finetune", "pretrain-vision", "--data", *map(str, stores), "--init", str(init or self.init_dir()),
            "--out", str(partial), "--steps", str(self.preset.vision_pretrain_steps),
            "--seed", str(self.seed if seed is None else seed),
            "--threads", str(self.jobs), "--frame-cache", str(self.out / "frame-cache"), *limit),
            self.log(f"pretrain-{out.name}")).wait()
        partial.rename(out)

    def finetune(self) -> None:
        for training_seed in self.training_seeds:  # the two methods of one seed side by side (one core each)
            children = []
            for method in METHODS:
                child = Child(self.train_dir(method, training_seed).name, self._train_argv(method, training_seed),
                              self.log(self.train_dir(method, training_seed).name))
                if self.jobs == 1:
                    child.wait()
                else:
                    children.append(child)
            run_all(children)
            for method in METHODS:
                final = self.train_dir(method, training_seed) / "final"
                if not (final / "fanvla.json").is_file():
                    raise UserError(f"training {method} (seed {training_seed}) produced no final checkpoint in "
                                    f"{final.parent}")

    def _train_argv(self, method: str, training_seed: int) -> list[str]:
        alpha = self.alpha if method == "fan-sft" else None
        return self.finetune_argv(self.stores, self.train_dir(method, training_seed), method, alpha,
                                  init=self.finetune_init_for(training_seed), seed=training_seed)

    def finetune_argv(self, stores: list[Path], out: Path, method: str, alpha: float | None,
                      *extra: str, init: Path | None = None, seed: int | None = None) -> list[str]:
        """``fanvla finetune`` with this preset's optimisation settings (shared with ``fanvla sweep``)."""
        preset = self.preset
        argv = ["finetune", "--data", *map(str, stores), "--init", str(init or self.finetune_init), "--out", str(out),
                "--method", method, "--full", "--steps", str(preset.steps), "--batch-size", str(preset.batch_size),
                "--lr", f"{preset.lr:g}", "--lr-schedule", preset.lr_schedule, "--warmup-steps",
                str(preset.warmup_steps), "--seed", str(self.seed if seed is None else seed), "--threads", "1",
                "--val-every", str(preset.val_every), "--frame-cache", str(self.out / "frame-cache"), "--no-progress",
                *self.choice.finetune_args(), *extra]
        if not preset.augment:
            argv.append("--no-augment")
        if alpha is not None:
            argv += ["--alpha", f"{alpha:g}"]
        if out.exists():
            argv.append("--resume")
        return fanvla_argv(*argv)

    def evaluate(self) -> None:
        for training_seed in self.training_seeds:
            self.evaluate_seed(training_seed)

    def evaluate_seed(self, training_seed: int) -> None:
        """Serve both methods of one training seed and run every trial (run seed ``self.seed`` for every training
        seed: the same trial situations)."""
        servers: list[Child] = []
        try:
            urls = {}
            for method in METHODS:
                name = self.train_dir(method, training_seed).name.replace("train-", "serve-")
                server = Child(name, fanvla_argv(
                    "serve", "--checkpoint", str(self.train_dir(method, training_seed) / "final"), "--port", "0",
                    "--threads", "1", "--http-threads", "1"),
                    self.log(name))
                server.expect(SERVER_READY)
                servers.append(server)
                urls[method] = server.wait_for(timeout_s=300).group(1)
            runs = []
            for method in METHODS:
                run_dir = self.eval_dir(method, training_seed)
                child = Child(run_dir.name, fanvla_argv(
                    "eval", "run", "--backend", "sim", "--policy", urls[method], "--tasks", "all", "--trials",
                    str(self.preset.trials), "--seed", str(self.seed), "--out", str(run_dir),
                    "--batch", str(self.preset.eval_batch), "--config", str(self.hardware)), self.log(run_dir.name))
                if self.jobs == 1:
                    child.wait()
                else:
                    runs.append(child)
            run_all(runs)
        finally:
            for server in servers:
                server.stop()

    def report(self) -> None:
        names = ",".join(self.choice.method_name(m) for m in METHODS)
        runs = [str(self.eval_dir(m, s)) for m in METHODS for s in self.training_seeds]  # method by method
        seeds = ["--seeds-per-method", str(len(self.training_seeds))] if len(self.training_seeds) > 1 else []
        Child("report", fanvla_argv("eval", "report", *runs, "--names", names, *seeds,
                                    "--out", str(self.out / "report")), self.log("report")).wait()
        table = (self.out / "report" / "README.md").read_text()
        print("\n" + table)

    # -- bookkeeping -------------------------------------------------------------------------------
    def _check_stores(self) -> None:
        from collect.store import EpisodeStore

        expected_counts = [1] * len(self.stores) if self.data is not None else self.store_episodes()
        for path, expected in zip(self.stores, expected_counts, strict=True):
            with EpisodeStore.open(path, mode="r") as store:
                episodes, frames = store.num_episodes, store.num_frames
            if episodes < expected:
                raise UserError(f"{path} holds {episodes} episodes, expected {expected}")
            print(f"{path}: {episodes} episodes, {frames} frames")

    def _settings(self) -> dict:
        return {"preset": asdict(self.preset), "seed": self.seed, "training_seeds": self.training_seeds,
                "alpha": self.alpha, "jobs": self.jobs, "software_version": __version__,
                "camera_overrides": self.camera_overrides, "model": asdict(self.choice),
                "data": [str(p) for p in self.data] if self.data else None,
                "init": str(self.init) if self.init else None}

    def _write_summary(self) -> None:
        summary = {**self._settings(), "timings_s": self.timings,
                   "report": str(self.out / "report" / "README.md")}
        (self.out / "demo.json").write_text(json.dumps(summary, indent=2))
