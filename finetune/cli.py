"""``fanvla finetune ...``: train a policy on episode stores; ``fanvla finetune plot RUN [RUN ...] --out curves.png``.

The training options live on the ``finetune`` parser itself; ``plot`` is an optional sub-action. Heavy imports
(torch, transformers, peft) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import os

from finetune.config import DEFAULT_LORA_RANK, DTYPES, LR_SCHEDULES, MODELS, PRECISIONS, TrainConfig

DEFAULTS = TrainConfig(data=(), init="", out="")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune", help="finetune a policy on episode stores (fan-sft, sft, label-smoothing); "
                         "'finetune plot RUN --out curves.png' draws a run's curves",
        description="Finetune an OpenVLA-style policy on episode stores. Outputs (docs/finetune.md): OUT/final (the "
                    "policy directory), OUT/checkpoints, OUT/metrics/*.csv, OUT/tensorboard.")
    _add_training_options(parser)
    parser.set_defaults(func=_train, finetune_action=None)
    actions = parser.add_subparsers(dest="finetune_action", metavar="{plot,pretrain-vision,export}")
    plot = actions.add_parser("plot", help="draw loss, accuracy, L1 and FAN diagnostics of one or more runs")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories (the --out of fanvla finetune)")
    plot.add_argument("--out", dest="plot_out", required=True, help="output image, e.g. curves.png")
    plot.set_defaults(func=_plot)
    pretrain = actions.add_parser(
        "pretrain-vision", help="give a tiny model's vision towers spatial features (gripper, grasp and release "
                                "positions) before finetuning; writes a new --init",
        description="Train a tiny model's vision towers and projector to regress the gripper position, the "
                    "episode's grasp and release points and the gripper state from single frames (labels from "
                    "the recorded TCP pose and gripper command), then write the whole model to OUT, an "
                    "initialisation for 'fanvla finetune --init OUT'. See docs/finetune.md.")
    pretrain.add_argument("--data", dest="pre_data", nargs="+", required=True, metavar="STORE")
    pretrain.add_argument("--init", dest="pre_init", required=True, metavar="MODEL_DIR")
    pretrain.add_argument("--out", dest="pre_out", required=True, metavar="MODEL_DIR", help="new model directory")
    pretrain.add_argument("--steps", dest="pre_steps", type=int, default=1500)
    pretrain.add_argument("--batch-size", dest="pre_batch_size", type=int, default=64)
    pretrain.add_argument("--lr", dest="pre_lr", type=float, default=1e-3)
    pretrain.add_argument("--seed", dest="pre_seed", type=int, default=0)
    pretrain.add_argument("--threads", dest="pre_threads", type=int, default=None, help="torch threads")
    pretrain.add_argument("--max-episodes", dest="pre_max_episodes", type=int, default=None,
                          help="only the first N episodes of the stores, in order (demonstration sweeps)")
    pretrain.add_argument("--frame-cache", dest="pre_frame_cache", default=None, metavar="DIR",
                          help="decoded frames, shared with 'fanvla finetune --frame-cache' (default: next to OUT)")
    pretrain.set_defaults(func=_pretrain_vision)
    export = actions.add_parser(
        "export", help="write the policy directory of a run (after --no-export, or from an earlier checkpoint)",
        description="Merge the LoRA adapter of a run's checkpoint into its --init and write the self-contained "
                    "policy directory (sharded safetensors in the run's --dtype, statistics, tokenizer, fanvla.json), "
                    "as a run does at its end. Default: the latest checkpoint, into RUN/final (the last step) or "
                    "RUN/export-step-N.")
    export.add_argument("run", metavar="RUN", help="the --out of a fanvla finetune run")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    export.add_argument("--out", dest="export_out", default=None, help="new directory (default: inside RUN)")
    export.add_argument("--device", dest="export_device", default="auto", help="auto, cpu, cuda, cuda:N")
    export.add_argument("--dtype", dest="export_dtype", default=None, choices=DTYPES,
                        help="override the run's --dtype (e.g. auto to merge a GPU run on a CPU without bf16)")
    export.set_defaults(func=_export)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    io = parser.add_argument_group("data and model")
    io.add_argument("--data", nargs="+", metavar="STORE", help="one or more episode stores (.zarr)")
    io.add_argument("--init", metavar="MODEL_DIR", help="initial model directory (openvla-7b layout or a tiny model)")
    io.add_argument("--out", metavar="RUN_DIR", help="run directory (new, or an earlier run with --resume)")
    io.add_argument("--action-space", default=d.action_space, choices=("ee_delta", "joint_delta"))
    io.add_argument("--unnorm-key", default=None, help="statistics key (default: store names joined with '+')")
    io.add_argument("--val-fraction", type=float, default=d.val_fraction, help="episodes held out for validation")
    io.add_argument("--no-skip-noops", dest="skip_noops", action="store_false", help="train on no-op steps too")
    io.add_argument("--max-episodes", type=int, default=None,
                    help="use only the first N episodes of the stores, in order (demonstration-count studies)")
    io.add_argument("--no-augment", dest="augment", action="store_false",
                    help="no random crop / colour jitter (the checkpoint then needs no centre crop)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", default=d.model, choices=MODELS,
                       help="openvla: one action per frame, decoded token by token; oft: OpenVLA-OFT, a chunk of "
                            "--chunk actions decoded in parallel (docs/finetune.md)")
    model.add_argument("--chunk", type=int, default=d.chunk, help="OFT: actions per chunk, K (default 8)")
    model.add_argument("--proprio", action="store_true", help="OFT: read the 13-D robot state as one token")
    model.add_argument("--wrist", action="store_true",
                       help="OFT: read the wrist camera's frame (stores recorded with cameras.wrist) as a second image")

    loss = parser.add_argument_group("loss")
    # Choices and default weights are checked/filled from finetune.losses when training starts (it imports torch).
    loss.add_argument("--method", default=d.method, help="fan-sft (default), sft or label-smoothing")
    loss.add_argument("--alpha", type=float, default=None, help="FAN-SFT weight (default: the paper's 0.05)")
    loss.add_argument("--epsilon", type=float, default=None,
                      help="label-smoothing epsilon (default: the paper's best, 0.05)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    optim.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per micro-batch per process")
    optim.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per optimiser step")
    optim.add_argument("--lr", type=float, default=d.lr)
    optim.add_argument("--weight-decay", type=float, default=d.weight_decay)
    optim.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES)
    optim.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    optim.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 disables clipping")
    optim.add_argument("--seed", type=int, default=d.seed)
    mode = optim.add_mutually_exclusive_group()
    mode.add_argument("--lora-rank", type=int, default=DEFAULT_LORA_RANK, help="LoRA rank (default)")
    mode.add_argument("--full", action="store_true", help="full finetuning instead of LoRA (tiny models)")
    optim.add_argument("--freeze-vision", action="store_true",
                       help="keep --init's vision towers fixed (after pretrain-vision): the projector and LLM learn")
    optim.add_argument("--lora-alpha", type=float, default=None, help="default: min(rank, 16)")
    optim.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    optim.add_argument("--lora-targets", default=None,
                       help="comma-separated module names (default: every Linear layer except lm_head)")

    run = parser.add_argument_group("run")
    run.add_argument("--val-every", type=int, default=d.val_every, help="validate every N steps (0: at the end)")
    run.add_argument("--val-max-samples", type=int, default=d.val_max_samples, help="0: the whole split")
    run.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: at the end)")
    run.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    run.add_argument("--workers", type=int, default=d.workers, help="batch-building worker processes")
    run.add_argument("--decode-threads", type=int, default=None, help="threads decoding frames (default: CPUs)")
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU)")
    run.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    run.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                     help="autocast; auto: bf16 on CUDA or when the weights compute in bf16, else none")
    run.add_argument("--dtype", default=d.dtype, choices=DTYPES,
                     help="dtype of --init's weights: auto = the checkpoint's own (bf16 for openvla-7b, float32 for "
                          "tiny models); LoRA keeps the frozen base in it, full finetuning keeps float32 master "
                          "weights and exports in it (docs/finetune.md)")
    run.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute activations in the backward pass (LLM layers, ViT blocks): far less memory, "
                          "about a third more compute")
    run.add_argument("--no-export", dest="export", action="store_false",
                     help="do not write OUT/final at the end; later: fanvla finetune export OUT")
    run.add_argument("--frame-cache", default=None, metavar="DIR",
                     help="keep decoded frames here to reuse across runs (default: inside --out, removed at the end)")
    run.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    run.add_argument("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from fanvla.cli import UserError

    missing = [flag for flag, value in (("--data", args.data), ("--init", args.init), ("--out", args.out))
               if not value]
    if missing:
        raise UserError(f"fanvla finetune needs {', '.join(missing)} (or use 'fanvla finetune plot RUN --out PNG')")
    targets = tuple(name.strip() for name in args.lora_targets.split(",") if name.strip()) \
        if args.lora_targets else None
    return TrainConfig(
        data=tuple(args.data), init=args.init, out=args.out, method=args.method, alpha=args.alpha,
        epsilon=args.epsilon, action_space=args.action_space, steps=args.steps, batch_size=args.batch_size,
        grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm, full=args.full,
        freeze_vision=args.freeze_vision, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, lora_targets=targets,
        val_fraction=args.val_fraction, val_every=args.val_every,
        val_max_samples=args.val_max_samples or None, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, seed=args.seed, unnorm_key=args.unnorm_key,
        skip_noops=args.skip_noops, max_episodes=args.max_episodes, augment=args.augment, workers=args.workers,
        decode_threads=args.decode_threads,
        threads=args.threads, device=args.device, precision=args.precision, dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing, export=args.export, frame_cache=args.frame_cache,
        resume=args.resume, tensorboard=args.tensorboard, progress=args.progress, model=args.model, chunk=args.chunk,
        proprio=args.proprio, wrist=args.wrist)


def _train(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from finetune.config import FinetuneError

    config = config_from_args(args)
    try:
        from finetune.trainer import train

        result = train(config)
    except FinetuneError as error:
        raise UserError(str(error)) from None
    summary = {"model_dir": str(result.model_dir) if result.model_dir else None, "steps": result.steps,
               "wall_s": round(result.wall_s, 1),
               "weights": result.weights_fingerprint, "data": result.data_fingerprint,
               "train": {k: round(v, 5) for k, v in result.train_metrics.items() if k in ("loss", "ce", "accuracy")},
               "val": {k: round(v, 5) for k, v in result.val_metrics.items() if k in ("loss", "ce", "accuracy")}}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from finetune.config import FinetuneError
    from finetune.plot import plot_runs

    try:
        path = plot_runs(args.runs, args.plot_out)
    except FinetuneError as error:
        raise UserError(str(error)) from None
    print(path)
    return 0


def _pretrain_vision(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from finetune.config import FinetuneError
    from finetune.vision_pretrain import PretrainConfig, pretrain_vision

    config = PretrainConfig(data=tuple(args.pre_data), init=args.pre_init, out=args.pre_out, steps=args.pre_steps,
                            batch_size=args.pre_batch_size, lr=args.pre_lr, seed=args.pre_seed,
                            threads=args.pre_threads, frame_cache=args.pre_frame_cache,
                            max_episodes=args.pre_max_episodes)
    try:
        errors = pretrain_vision(config)
    except FinetuneError as error:
        raise UserError(str(error)) from None
    print(json.dumps({"model_dir": config.out, "val_mean_abs_error": {k: round(v, 3) for k, v in errors.items()}},
                     indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from finetune.config import FinetuneError
    from finetune.export import export_run

    try:
        final, _ = export_run(args.run, step=args.step, out=args.export_out, device=args.export_device,
                              dtype=args.export_dtype)
    except FinetuneError as error:
        raise UserError(str(error)) from None
    print(json.dumps({"model_dir": str(final)}, indent=2))
    return 0
