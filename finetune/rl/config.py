"""``RLConfig``: one reinforced-finetuning run (PPO or FAN-PPO in the twin), with the paper's settings as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from finetune.config import FinetuneError

# The paper's settings (../shared/notes/fan.md). This module imports no torch: `fanvla`'s parser reads it.
DEFAULT_GAMMA = 0.99
DEFAULT_GAE_LAMBDA = 0.95  # the paper's
DEFAULT_CLIP = 0.2  # the paper's
DEFAULT_FAN_PPO_ALPHA = 1.0  # the paper's, OpenVLA
DEFAULT_FAN_PPO_SIGMA = 0.3  # the paper's, OpenVLA; normalised action units (finetune/rl/losses.py)

RL_METHODS = ("ppo", "fan-ppo")
# The paper caps trajectories at 80 steps for ManiSkill. The twin's task takes the scripted expert 77-87 ticks at
# 10 Hz (the demo's 150 demonstrations), so 80 would end most episodes of a good policy just before success; the
# default gives it 1.5x the longest demonstration (docs/rl.md). An episode never outlasts its task's
# max_duration_s either.
DEFAULT_MAX_EPISODE_STEPS = 130


@dataclass(frozen=True)
class RLConfig:
    init: str
    out: str
    method: str = "fan-ppo"
    envs: int = 8  # scenes stepped together
    steps: int = 20_000  # environment steps in total (every scene's ticks summed)
    rollout_steps: int | None = None  # ticks per scene per update (None: max_episode_steps)
    max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS
    alpha: float | None = None  # FAN-PPO weight (None: the paper's 1.0 for OpenVLA)
    sigma: float | None = None  # FAN-PPO's fixed sigma in normalised action units (None: the paper's 0.3)
    gamma: float = DEFAULT_GAMMA
    gae_lambda: float = DEFAULT_GAE_LAMBDA
    clip: float = DEFAULT_CLIP
    entropy_coef: float = 0.0  # the paper's
    value_coef: float = 1.0
    lr: float = 1e-4  # policy (the paper's)
    value_lr: float = 3e-3  # value head (the paper's)
    epochs: int = 1  # passes over each rollout
    minibatch: int = 64
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # rollout sampling
    full: bool = False  # full finetuning (tiny models) instead of LoRA
    lora_rank: int = 32  # the paper's
    lora_alpha: float | None = None  # None: min(rank, 16) as upstream
    shaping_weight: float = 0.0  # potential-based grasp shaping (robot/sim/vector_env.py); 0 = sparse success
    workers: int = 2  # twin worker processes (0: the scenes run in the training process)
    threads: int = 1  # torch threads
    seed: int = 0
    success_window: int = 0  # rollout success over the last N finished episodes (0: 2 x envs)
    save_every: int = 5  # updates between resumable checkpoints
    keep_checkpoints: int = 2
    eval_every: int = 0  # updates between evaluations through the trial runner (0: at the end only)
    eval_initial: bool = True  # evaluate --init before the first update too
    resume: bool = False
    tensorboard: bool = True
    dtype: str = "auto"
    device: str = "cpu"

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def fan_alpha(self) -> float:
        return DEFAULT_FAN_PPO_ALPHA if self.alpha is None else self.alpha

    @property
    def fan_sigma(self) -> float:
        return DEFAULT_FAN_PPO_SIGMA if self.sigma is None else self.sigma

    @property
    def ticks_per_update(self) -> int:
        return self.rollout_steps or self.max_episode_steps

    @property
    def samples_per_update(self) -> int:
        return self.ticks_per_update * self.envs

    @property
    def updates(self) -> int:
        return max(1, -(-self.steps // self.samples_per_update))

    @property
    def window(self) -> int:
        return self.success_window or 2 * self.envs

    def check(self) -> None:
        """Every bad option, named, before anything is loaded."""
        problems = []
        if self.method not in RL_METHODS:
            problems.append(f"--method {self.method!r} is not one of {', '.join(RL_METHODS)}")
        positive = {"--envs": self.envs, "--steps": self.steps, "--max-episode-steps": self.max_episode_steps,
                    "--epochs": self.epochs, "--minibatch": self.minibatch, "--lora-rank": self.lora_rank,
                    "--threads": self.threads, "--save-every": self.save_every,
                    "--keep-checkpoints": self.keep_checkpoints}
        problems += [f"{flag} must be >= 1, got {value}" for flag, value in positive.items() if value < 1]
        if self.rollout_steps is not None and self.rollout_steps < 1:
            problems.append(f"--rollout-steps must be >= 1, got {self.rollout_steps}")
        if self.alpha is not None and self.alpha < 0:
            problems.append(f"--alpha must be >= 0, got {self.alpha}")
        if self.sigma is not None and not self.sigma > 0:
            problems.append(f"--sigma must be > 0 (normalised action units), got {self.sigma}")
        if self.method == "ppo" and (self.alpha is not None or self.sigma is not None):
            problems.append("--alpha and --sigma belong to --method fan-ppo")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append(f"need 0 < gamma <= 1 and 0 <= lambda <= 1, got {self.gamma}, {self.gae_lambda}")
        if not 0 < self.clip < 1:
            problems.append(f"--clip must be in (0, 1), got {self.clip}")
        for flag, value in (("--lr", self.lr), ("--value-lr", self.value_lr)):
            if not value > 0:
                problems.append(f"{flag} must be > 0, got {value}")
        for flag, value in (("--entropy-coef", self.entropy_coef), ("--value-coef", self.value_coef),
                            ("--max-grad-norm", self.max_grad_norm), ("--shaping-weight", self.shaping_weight)):
            if value < 0:
                problems.append(f"{flag} must be >= 0, got {value}")
        if not self.temperature > 0:
            problems.append(f"--temperature must be > 0 (PPO needs sampled actions), got {self.temperature}")
        if self.workers < 0 or self.eval_every < 0 or self.success_window < 0:
            problems.append("--workers, --eval-every and --success-window must be >= 0")
        if problems:
            raise FinetuneError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLConfig:
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def replace(self, **changes: Any) -> RLConfig:
        return replace(self, **changes)

    # What may change when a run is resumed: bookkeeping, never the optimisation.
    RESUMABLE_CHANGES = ("steps", "resume", "workers", "threads", "save_every", "keep_checkpoints", "eval_every",
                         "eval_initial", "tensorboard", "out")

    def resume_differences(self, saved: RLConfig) -> list[str]:
        return [f"{name}: {getattr(saved, name)!r} in the saved run, {getattr(self, name)!r} now"
                for name in (field.name for field in fields(self))
                if name not in self.RESUMABLE_CHANGES and getattr(saved, name) != getattr(self, name)]
