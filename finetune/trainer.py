"""``train(config)``: one finetuning run from episode stores and an initial model to a policy directory.

Order of work: check the options, read the stores (actions, split, statistics), load the model and check it fits
(every bad-input error is raised here, before the first step), decode the frames once, then train with
checkpoints, validation and metrics, and export ``OUT/final``. docs/finetune.md describes the outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finetune import checkpointing, distributed, export
from finetune.batches import (
    BatchBuilder,
    BatchLayout,
    SampleStream,
    TrainingMicroBatches,
    evaluation_batches,
    evaluation_rows,
    training_batches,
)
from finetune.config import FinetuneError, TrainConfig, TrainResult, scheduled_lr
from finetune.data import IMAGE_KEY, TrainingData, default_unnorm_key, load_training_data
from finetune.features import compute_patch_features, fits_in_memory
from finetune.frames import crop_source_size, ensure_frame_file, frame_file, open_frame_file
from finetune.metrics import MetricSums, MetricsWriter
from finetune.model_kind import model_kind
from finetune.model_setup import (
    check_model_fits,
    describe_parameters,
    export_final,
    load_initial_model,
    make_trainable,
    resolve_device,
    trainable_parameters,
    training_precision,
)
from finetune.steps import LossStep, evaluate

log = logging.getLogger(__name__)

FINAL_DIR = export.FINAL_DIR
RUN_CONFIG_FILE = export.RUN_CONFIG_FILE
EXPORT_RECORD_FILE = export.EXPORT_RECORD_FILE  # what export_final records, kept for `fanvla finetune export`
FRAME_CACHE_DIR = "frame_cache"
DEFAULT_CPU_THREADS = 1  # measured: 2 threads made a demo-preset step 6-40x slower on a loaded 2-core machine


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a finetuning run; see the module docstring. Raises ``FinetuneError`` on bad input."""
    config.check()
    config = config.with_defaults()
    context = distributed.context_from_env()
    device = resolve_device(config.device, context.local_rank)
    previous_threads = torch.get_num_threads()
    threads = config.threads or (DEFAULT_CPU_THREADS if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    distributed.init_process_group(context, device)
    try:
        return _Run(config, context, device).execute()
    finally:
        distributed.shutdown(context)
        torch.set_num_threads(previous_threads)


def learning_rate(config: TrainConfig, step: int) -> float:
    """lr for optimiser step ``step`` (0-based) under the run's --lr, --warmup-steps and --lr-schedule."""
    return scheduled_lr(config.lr, step, config.steps, config.warmup_steps, config.lr_schedule)


@dataclass
class _Prepared:
    data: TrainingData
    unnorm_key: str
    builder_train: BatchBuilder
    builder_val: BatchBuilder
    val_rows: np.ndarray  # the validation rows used (all, or val_max_samples evenly spaced)


@dataclass
class _Training:
    """What the training loop works with (one instance per run)."""

    wrapped: nn.Module  # DDP wrapper, or the module itself in one process
    module: nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: LossStep
    prepared: _Prepared
    batches: Iterator[dict]
    writer: MetricsWriter | None
    state: dict
    params: list
    train_metrics: dict = field(default_factory=dict)
    val_metrics: dict = field(default_factory=dict)


class _Run:
    def __init__(self, config: TrainConfig, context: distributed.DistContext, device: torch.device) -> None:
        self.config, self.context, self.device = config, context, device
        self.kind = model_kind(config)  # single actions (OpenVLA) or action chunks (OpenVLA-OFT)
        self.out = config.out_dir
        self.held, self.save_dtype = training_precision(config, device)
        # Autocast: asked for, or by default wherever the weights compute in bf16 (CUDA, bf16-capable CPUs).
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and (
            device.type == "cuda" or self.held.compute == torch.bfloat16))

    # --------------------------------------------------------------------------------------- preparation
    def _saved_state(self) -> checkpointing.SavedState | None:
        checkpoints = checkpointing.list_checkpoints(self.out)
        if not self.config.resume:
            if checkpoints or (self.out / RUN_CONFIG_FILE).is_file() or (self.out / FINAL_DIR).exists():
                raise FinetuneError(f"{self.out} already holds a finetuning run; pass --resume to continue it, or "
                                    f"choose a new --out (nothing was overwritten)")
            return None
        return checkpointing.read_state(checkpoints[-1]) if checkpoints else None

    def _check_resume(self, saved: checkpointing.SavedState, data: TrainingData, init_fingerprint: str) -> None:
        differences = self.config.resume_differences(TrainConfig.from_dict(saved.state["config"]))
        if saved.state["data_sha256"] != data.fingerprint["sha256"]:
            differences.append("the data differ from those the run was trained on (fingerprint changed)")
        if saved.state["init_fingerprint"] != init_fingerprint:
            differences.append(f"the initial weights in {self.config.init} changed since the run started")
        if saved.state["global_micro_batch"] != self.config.batch_size * self.context.world_size:
            differences.append(f"batch per micro-step: {saved.state['global_micro_batch']} samples in the saved run, "
                               f"{self.config.batch_size * self.context.world_size} now (batch size x processes)")
        if saved.step > self.config.steps:
            differences.append(f"the checkpoint is at step {saved.step}, beyond --steps {self.config.steps}")
        if differences:
            raise FinetuneError(f"cannot resume {saved.path}: " + "; ".join(differences))

    def _frames(self, data: TrainingData, size: int, image_key: str) -> tuple:
        cache_dir = Path(self.config.frame_cache) if self.config.frame_cache else self.out / FRAME_CACHE_DIR
        train_size = crop_source_size(size) if self.config.augment else size
        jobs = ((data.train, train_size, False, "train"), (data.val, size, self.config.augment, "val"))
        threads = self.config.decode_threads or (os.cpu_count() or 1)
        sha = data.fingerprint["sha256"]
        if self.context.is_main:
            for table, side, crop, split in jobs:
                ensure_frame_file(cache_dir, sha, data.store_paths, table, side, crop, split, threads, image_key)
        distributed.barrier(self.context)
        return tuple(open_frame_file(frame_file(cache_dir, sha, table, side, crop, split, image_key), len(table), side)
                     for table, side, crop, split in jobs)

    def _prepare(self, model, data: TrainingData) -> _Prepared:
        """The training and validation batch builders of the run's kind (single actions or OFT chunks)."""
        config, kind = self.config, self.kind
        unnorm_key = config.unnorm_key or default_unnorm_key(config.data)
        size = model.image_settings.image_size
        frames = {key: self._frames(data, size, key) for key in kind.image_keys}
        train_frames, val_frames = frames[IMAGE_KEY]
        cache_features = kind.caches_features and self._caches_features(model, size,
                                                                        len(train_frames) + len(val_frames))
        splits = []
        for index, table in enumerate((data.train, data.val)):
            views = {key: pair[index] for key, pair in frames.items()}
            features = compute_patch_features(model, views[IMAGE_KEY], size) if cache_features else None
            splits.append(kind.builder_class(kind.split_arrays(model, data, table, views, features),
                                             data.instructions, model.tokenizer, model.pad_token_id,
                                             model.image_settings, size))
        return _Prepared(data, unnorm_key, splits[0], splits[1],
                         evaluation_rows(len(data.val), config.val_max_samples))

    def _caches_features(self, model, size: int, num_frames: int) -> bool:
        """Frozen towers and unaugmented frames: compute each frame's patch features once (finetune.features)."""
        if not self.config.freeze_vision or self.config.augment:
            return False
        fits, size_bytes = fits_in_memory(model, size, num_frames)
        if self.context.is_main:
            log.info("frozen vision towers: %s (%.0f MB for %d frames)", "patch features computed once per frame"
                     if fits else "too many features to keep in memory, the towers run at every step",
                     size_bytes / 2**20, num_frames)
        return fits

    # ----------------------------------------------------------------------------------------------- run
    def execute(self) -> TrainResult:
        started = time.perf_counter()
        config = self.config
        saved = self._saved_state()
        data = load_training_data(config.data, config.action_space, config.val_fraction, config.skip_noops,
                                  config.max_episodes)
        model = self.kind.prepare_model(load_initial_model(config, self.device, self.held), data)
        check_model_fits(model, data, config.init)
        from policy.deployment import weights_fingerprint

        init_fingerprint = weights_fingerprint(Path(config.init))[0]
        if saved is not None:
            self._check_resume(saved, data, init_fingerprint)
        if self.context.is_main:
            log.info("data: %s", data.summary())
            self._write_run_config(data)
        prepared = self._prepare(model, data)
        torch.manual_seed(config.seed)
        module = make_trainable(model, config).to(self.device).train()
        parameters = trainable_parameters(module)
        optimizer = torch.optim.AdamW(parameters.values(), lr=config.lr, weight_decay=config.weight_decay)
        start_step = 0
        if saved is not None:
            checkpointing.load_checkpoint(saved, module, optimizer, self.context.rank)
            start_step = saved.step
            log.info("resuming %s at step %d", saved.path, start_step)
        if self.context.is_main:
            log.info("model: %s (%s, %s%s), %s", config.init, "full finetuning" if config.full else
                     f"LoRA rank {config.lora_rank} alpha {config.effective_lora_alpha:g}", self.held.describe(),
                     ", bf16 autocast" if self.bf16 else "", describe_parameters(module))
        wrapped = self._wrap(module)
        step_fn = self.kind.loss_step(model, config, data, self.device, self.bf16)
        writer = MetricsWriter(self.out, config.tensorboard, start_step if saved else None) \
            if self.context.is_main else None
        state = {"init_fingerprint": init_fingerprint, "data_sha256": data.fingerprint["sha256"],
                 "global_micro_batch": config.batch_size * self.context.world_size}
        try:
            train_metrics, val_metrics = self._loop(wrapped, module, optimizer, step_fn, prepared, start_step, writer,
                                                    state)
        finally:
            if writer is not None:
                writer.close()
        self._check_ranks_in_sync(module)
        final = self._export(module, prepared, train_metrics, val_metrics, init_fingerprint, start_step)
        return TrainResult(out_dir=self.out, model_dir=self.out / FINAL_DIR if config.export else None,
                           steps=config.steps,
                           resumed_from_step=start_step, wall_s=time.perf_counter() - started,
                           train_metrics=train_metrics, val_metrics=val_metrics,
                           data_fingerprint=data.fingerprint["sha256"], weights_fingerprint=final,
                           world_size=self.context.world_size)

    def _write_run_config(self, data: TrainingData) -> None:
        from fanvla import __version__

        self.out.mkdir(parents=True, exist_ok=True)
        document = {"config": self.config.to_dict(), "world_size": self.context.world_size,
                    "software_version": __version__, "torch": torch.__version__, "data": data.fingerprint}
        (self.out / RUN_CONFIG_FILE).write_text(json.dumps(document, indent=2))

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.context.active:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Some weights are in the checkpoint but unused by OpenVLA (the towers' last block and heads).
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    # ---------------------------------------------------------------------------------------------- loop
    def _loop(self, wrapped, module, optimizer, step_fn, prepared: _Prepared, start_step: int, writer,
              state: dict) -> tuple[dict, dict]:
        from tqdm import tqdm

        config, context = self.config, self.context
        dataset = TrainingMicroBatches(prepared.builder_train, SampleStream(len(prepared.data.train), config.seed),
                                       BatchLayout(config.batch_size, context.world_size, context.rank),
                                       config.seed, config.augment)
        remaining = config.steps - start_step
        batches = training_batches(dataset, start_step * config.grad_accum, remaining * config.grad_accum,
                                   config.workers)
        run = _Training(wrapped, module, optimizer, step_fn, prepared, batches, writer, state,
                        [p for p in module.parameters() if p.requires_grad])
        bar = tqdm(total=config.steps, initial=start_step, unit="step", dynamic_ncols=True,
                   disable=not (config.progress and context.is_main))
        if start_step == 0 and config.val_every > 0 and len(prepared.val_rows):
            run.val_metrics = self._validate(run, 0)  # the starting point of the curves
        try:
            for step in range(start_step, config.steps):
                self._one_step(run, step)
                bar.set_postfix(loss=f"{run.train_metrics['loss']:.4f}", acc=f"{run.train_metrics['accuracy']:.3f}",
                                lr=f"{run.train_metrics['lr']:.2e}", refresh=False)
                bar.update(1)
        finally:
            batches.close()
            bar.close()
        return run.train_metrics, run.val_metrics

    def _one_step(self, run: _Training, step: int) -> None:
        config = self.config
        lr = learning_rate(config, step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.train_metrics = {**self._optimizer_step(run), "lr": lr}
        done = step + 1
        if run.writer is not None:
            run.writer.write("train", done, run.train_metrics)
        if self._due(done, config.val_every) and len(run.prepared.val_rows):
            run.val_metrics = self._validate(run, done)
        if self._due(done, config.save_every):
            self._save(done, run)

    def _due(self, done: int, every: int) -> bool:
        return done == self.config.steps or (every > 0 and done % every == 0)

    def _optimizer_step(self, run: _Training) -> dict:
        config = self.config
        sums = MetricSums()
        timing = {"data_wait_s": 0.0, "compute_s": 0.0}
        for micro in range(config.grad_accum):
            waited = time.perf_counter()
            batch = next(run.batches)
            computed = time.perf_counter()
            timing["data_wait_s"] += computed - waited
            sync = micro == config.grad_accum - 1 or not self.context.active
            with contextlib.nullcontext() if sync else run.wrapped.no_sync():
                result = run.step_fn(run.wrapped, batch)
                (result.loss.total / config.grad_accum).backward()
            sums.merge(result.metrics)
            timing["compute_s"] += time.perf_counter() - computed
        started = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm if config.max_grad_norm > 0
                                                   else float("inf"))
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        timing["compute_s"] += time.perf_counter() - started
        metrics = self._reduce(sums)
        samples = config.batch_size * config.grad_accum * self.context.world_size
        metrics.update(grad_norm=float(grad_norm), **timing,
                       samples_per_s=samples / max(timing["data_wait_s"] + timing["compute_s"], 1e-9))
        if self.device.type == "cuda":  # the run's high-water mark so far (bench/scale_7b.py reads it)
            metrics["cuda_peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return metrics

    def _reduce(self, sums: MetricSums) -> dict:
        names = sums.names()  # the same on every rank: every batch yields the same metrics
        sums.load_tensor(names, distributed.sum_across(self.context, sums.as_tensor(names)))
        return sums.means()

    def _validate(self, run: _Training, done: int) -> dict:
        started = time.perf_counter()
        batches = evaluation_batches(run.prepared.builder_val, run.prepared.val_rows, self.config.batch_size,
                                     self.context.world_size, self.context.rank)
        metrics = self._reduce(evaluate(run.step_fn, run.module, batches))
        metrics["samples"] = len(run.prepared.val_rows)
        metrics["wall_s"] = time.perf_counter() - started
        if run.writer is not None:
            run.writer.write("val", done, metrics)
            log.info("step %d validation: loss %.4f, ce %.4f, action-token accuracy %.3f (%d samples, %.1f s)", done,
                     metrics["loss"], metrics["ce"], metrics["accuracy"], metrics["samples"], metrics["wall_s"])
        return metrics

    def _save(self, done: int, run: _Training) -> None:
        rng_states = distributed.gather_objects(self.context, checkpointing.rng_state())
        if self.context.is_main:
            checkpointing.save_checkpoint(self.out, done, run.module, run.optimizer,
                                          {**run.state, "config": self.config.to_dict()}, rng_states,
                                          self.config.keep_checkpoints)
        distributed.barrier(self.context)

    # ------------------------------------------------------------------------------------------- the end
    def _check_ranks_in_sync(self, module: nn.Module) -> None:
        """DDP keeps every rank's weights identical; a difference would mean a broken run, never shipped."""
        if not self.context.active:
            return
        with torch.no_grad():
            checksum = [float(sum(p.double().sum() for p in module.parameters() if p.requires_grad)),
                        float(sum(p.double().abs().sum() for p in module.parameters() if p.requires_grad))]
        sums = distributed.gather_objects(self.context, checksum)
        if any(other != sums[0] for other in sums[1:]):
            raise RuntimeError(f"the processes ended with different weights (checksums {sums}); the gradients were "
                               f"not synchronised; nothing was exported")

    def _export(self, module, prepared: _Prepared, train_metrics: dict, val_metrics: dict, init_fingerprint: str,
                start_step: int) -> str:
        fingerprint = ""
        if self.context.is_main:
            from fanvla import __version__

            record = {"steps": self.config.steps, "resumed_from_step": start_step,
                      "world_size": self.context.world_size, "software_version": __version__,
                      "ranks_in_sync": True if self.context.active else None,
                      "metrics": {"train": train_metrics, "val": val_metrics},
                      "init_fingerprint": init_fingerprint, **self.kind.export_fields()}
            if not self.config.frame_cache:
                shutil.rmtree(self.out / FRAME_CACHE_DIR, ignore_errors=True)
            if self.config.export:
                final, _ = export_final(module.module if isinstance(module, nn.parallel.DistributedDataParallel)
                                     else module, self.config, prepared.data, prepared.unnorm_key,
                                     self.out / FINAL_DIR, record, self.save_dtype)
                fingerprint = json.loads((final / "fanvla.json").read_text())["fingerprints"]["weights"]
                log.info("final policy: %s (%s)", final, fingerprint)
            else:
                (self.out / EXPORT_RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
                log.info("no export (--no-export): the trained weights are in %s; write the policy directory "
                         "with `fanvla finetune export %s`", checkpointing.CHECKPOINTS_DIR, self.out)
        return distributed.broadcast_object(self.context, fingerprint)
