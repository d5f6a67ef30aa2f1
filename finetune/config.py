"""What a finetuning run is told (``TrainConfig``), what it hands back (``TrainResult``), and its one error type.

Every option of ``fanvla finetune`` is a field here, so the demo orchestration and the CLI start the same run.
``RESUME_COMPATIBLE`` lists the fields that may change when a run is resumed: everything else decides the
arithmetic of training (data, model, loss, optimiser, batch layout, seed) and must be identical.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.precision import DTYPE_CHOICES

DEFAULT_LORA_RANK = 32
UPSTREAM_LORA_ALPHA_CAP = 16  # upstream: lora_alpha = min(rank, 16)
LR_SCHEDULES = ("constant", "cosine")
MODELS = ("openvla", "oft")  # single actions, or OpenVLA-OFT's action chunks (policy/oft.py)
DEFAULT_CHUNK = 8  # OpenVLA-OFT's K (the paper's setting)


def scheduled_lr(peak_lr: float, step: int, steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """lr for optimiser step ``step`` (0-based): linear warm-up over ``warmup_steps``, then constant or cosine
    decay to 0 at ``steps``. The one schedule of both ``fanvla finetune`` and ``pretrain-vision``."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "cosine":
        progress = min(max(step - warmup_steps, 0) / max(steps - warmup_steps, 1), 1.0)
        return peak_lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr * warm
PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = DTYPE_CHOICES

# Fields that do not change the training arithmetic: they may differ between a run and its resumption.
# (batch_size may change with the number of processes; the trainer checks batch_size x processes is unchanged.)
RESUME_COMPATIBLE = frozenset({
    "out", "batch_size", "steps", "resume", "val_every", "val_max_samples", "save_every", "keep_checkpoints", "workers",
    "threads", "device", "frame_cache", "tensorboard", "progress", "merge_lora", "decode_threads",
    "gradient_checkpointing", "export",
})


class FinetuneError(ValueError):
    """Bad input for a finetuning run (data, model, options): the message says what is wrong and what to check.

    Raised before any training step whenever the problem can be seen up front."""


@dataclass(frozen=True)
class TrainConfig:
    """One finetuning run. Paths may be strings or ``Path``s; see docs/finetune.md for every field."""

    data: tuple[str, ...]
    init: str
    out: str
    method: str = "fan-sft"
    alpha: float | None = None  # None: finetune.losses.DEFAULT_FAN_ALPHA (the paper's 0.05), see with_defaults()
    epsilon: float | None = None  # None: finetune.losses.DEFAULT_LABEL_SMOOTHING_EPSILON
    action_space: str = "ee_delta"
    steps: int = 1000
    batch_size: int = 16  # per process and micro-batch; one optimiser step sees batch_size * grad_accum * world
    grad_accum: int = 1
    lr: float = 5e-4  # upstream OpenVLA: constant 5e-4
    weight_decay: float = 0.01  # torch's AdamW default, which upstream's finetune script uses
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 disables clipping
    full: bool = False  # full finetuning (tiny models) instead of LoRA
    # Keep the vision towers as --init has them (e.g. after `fanvla finetune pretrain-vision`): only the projector
    # and the language model learn, and no gradient flows through the towers (faster steps).
    freeze_vision: bool = False
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float | None = None  # None: min(rank, 16) as upstream
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None: model.lora_target_modules() (every Linear but lm_head)
    val_fraction: float = 0.1
    val_every: int = 100
    val_max_samples: int | None = 2048
    save_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    unnorm_key: str | None = None  # None: the store names joined with "+"
    skip_noops: bool = True
    max_episodes: int | None = None  # only the first N episodes of the stores, in order (demonstration sweeps)
    augment: bool = True  # random crop (0.9 area) + colour jitter; the checkpoint then asks for a centre crop
    workers: int = 0  # DataLoader worker processes assembling batches (0: in the training process)
    decode_threads: int | None = None  # threads decoding frames into the cache (None: CPU count)
    threads: int | None = None  # torch intra-op threads (None: 1 on CPU, see docs/finetune.md; torch's on GPU)
    device: str = "auto"
    precision: str = "auto"  # autocast: auto = bf16 on CUDA or when the weights compute in bf16, else none
    # Weights of --init: auto = the checkpoint's own dtype (bf16 for openvla-7b, float32 for tiny models), see
    # policy/precision.py. LoRA keeps the frozen base in it (adapters in float32); full finetuning keeps float32
    # master weights whatever this says and exports in it.
    dtype: str = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward (LLM layers, ViT blocks)
    export: bool = True  # write OUT/final at the end (else later: `fanvla finetune export OUT`)
    frame_cache: str | None = None  # directory to keep decoded frames between runs (None: inside out/, removed)
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True
    merge_lora: bool = True
    # OpenVLA-OFT (--model oft): K actions per sample decoded in parallel, the robot state as a proprio token, the
    # wrist camera's frame as a second image (finetune/chunks.py, policy/oft.py).
    model: str = "openvla"
    chunk: int = DEFAULT_CHUNK
    proprio: bool = False
    wrist: bool = False

    def __post_init__(self) -> None:
        data = (self.data,) if isinstance(self.data, str | Path) else self.data
        object.__setattr__(self, "data", tuple(str(path) for path in data))
        object.__setattr__(self, "init", str(self.init))
        object.__setattr__(self, "out", str(self.out))
        if self.lora_targets is not None:
            object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.frame_cache is not None:
            object.__setattr__(self, "frame_cache", str(self.frame_cache))

    def with_defaults(self) -> TrainConfig:
        """Loss weights left as None get the defaults of ``finetune.losses`` (imported here: it needs torch)."""
        from finetune.losses import DEFAULT_FAN_ALPHA, DEFAULT_LABEL_SMOOTHING_EPSILON

        return self.replace(alpha=DEFAULT_FAN_ALPHA if self.alpha is None else float(self.alpha),
                            epsilon=DEFAULT_LABEL_SMOOTHING_EPSILON if self.epsilon is None else float(self.epsilon))

    # -------------------------------------------------------------------------------------------- checks
    def check(self) -> None:
        """Raise ``FinetuneError`` listing every invalid option (no file is looked at here)."""
        problems = [problem for problem in self._problems() if problem]
        if problems:
            raise FinetuneError("invalid finetuning options:\n  " + "\n  ".join(problems))

    def _problems(self) -> list[str]:
        from finetune.losses import METHODS
        from policy.action_space import ActionSpace

        spaces = [space.value for space in ActionSpace]
        return [
            "" if self.data else "--data: give at least one episode store",
            "" if self.method in METHODS else
            f"--method {self.method!r} is unknown; choose one of {', '.join(METHODS)}",
            "" if self.alpha is None or self.alpha >= 0 else f"--alpha must be >= 0, got {self.alpha}",
            "" if self.epsilon is None or 0 <= self.epsilon <= 1 else
            f"--epsilon must be in [0, 1], got {self.epsilon}",
            "" if self.action_space in spaces else
            f"--action-space {self.action_space!r} is unknown; choose one of {', '.join(spaces)}",
            "" if self.steps >= 1 else f"--steps must be >= 1, got {self.steps}",
            "" if self.batch_size >= 1 else f"--batch-size must be >= 1, got {self.batch_size}",
            "" if self.grad_accum >= 1 else f"--grad-accum must be >= 1, got {self.grad_accum}",
            "" if self.lr > 0 else f"--lr must be > 0, got {self.lr}",
            "" if self.weight_decay >= 0 else f"--weight-decay must be >= 0, got {self.weight_decay}",
            "" if self.lr_schedule in LR_SCHEDULES else f"--lr-schedule must be one of {LR_SCHEDULES}",
            "" if self.warmup_steps >= 0 else f"--warmup-steps must be >= 0, got {self.warmup_steps}",
            "" if self.max_grad_norm >= 0 else f"--max-grad-norm must be >= 0 (0 = off), got {self.max_grad_norm}",
            "" if self.full or self.lora_rank >= 1 else f"--lora-rank must be >= 1, got {self.lora_rank}",
            "" if 0 <= self.lora_dropout < 1 else f"--lora-dropout must be in [0, 1), got {self.lora_dropout}",
            "" if 0 <= self.val_fraction < 1 else f"--val-fraction must be in [0, 1), got {self.val_fraction}",
            "" if self.val_every >= 0 else f"--val-every must be >= 0 (0 = only at the end), got {self.val_every}",
            "" if self.val_max_samples is None or self.val_max_samples >= 1 else "--val-max-samples must be >= 1",
            "" if self.save_every >= 0 else f"--save-every must be >= 0 (0 = only at the end), got {self.save_every}",
            "" if self.keep_checkpoints >= 1 else f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}",
            "" if self.workers >= 0 else f"--workers must be >= 0, got {self.workers}",
            "" if self.threads is None or self.threads >= 1 else f"--threads must be >= 1, got {self.threads}",
            "" if self.decode_threads is None or self.decode_threads >= 1 else "--decode-threads must be >= 1",
            "" if self.precision in PRECISIONS else f"--precision must be one of {PRECISIONS}, got {self.precision!r}",
            "" if self.dtype in DTYPES else f"--dtype must be one of {DTYPES}, got {self.dtype!r}",
            "" if self.unnorm_key is None or self.unnorm_key.strip() else "--unnorm-key must not be empty",
            "" if self.max_episodes is None or self.max_episodes >= 1 else
            f"--max-episodes must be >= 1, got {self.max_episodes}",
            "" if self.model in MODELS else f"--model {self.model!r} is unknown; choose one of {', '.join(MODELS)}",
            "" if 1 <= self.chunk <= 64 else f"--chunk must be in 1..64, got {self.chunk}",
            "" if self.model == "oft" or not (self.proprio or self.wrist) else
            "--proprio and --wrist are inputs of OpenVLA-OFT: add --model oft",
        ]

    # ------------------------------------------------------------------------------------------- derived
    @property
    def effective_lora_alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else float(min(self.lora_rank,
                                                                                      UPSTREAM_LORA_ALPHA_CAP))

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["data"] = list(self.data)
        data["lora_targets"] = None if self.lora_targets is None else list(self.lora_targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FinetuneError(f"unknown training config fields {unknown}")
        return cls(**data)

    def resume_differences(self, saved: TrainConfig) -> list[str]:
        """Fields that differ from the run being resumed and would change its arithmetic."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return [f"{name}: {theirs[name]!r} in the saved run, {mine[name]!r} now" for name in mine
                if name not in RESUME_COMPATIBLE and mine[name] != theirs[name]]


@dataclass
class TrainResult:
    """What ``train`` returns (rank 0 has everything; other ranks get the same paths and step count)."""

    out_dir: Path
    model_dir: Path | None  # the final, self-contained policy directory (None when export was off)
    steps: int
    resumed_from_step: int
    wall_s: float
    train_metrics: dict[str, float] = field(default_factory=dict)  # last logged step
    val_metrics: dict[str, float] = field(default_factory=dict)  # last validation (empty without a split)
    data_fingerprint: str = ""
    weights_fingerprint: str = ""
    world_size: int = 1
