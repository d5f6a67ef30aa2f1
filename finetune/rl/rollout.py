"""Rollouts: the actor-critic drives the vectorised twin for T ticks; what PPO needs is kept per tick.

Each tick: the N images become pixel values, the actor samples 7 action bins per scene (with their log-probability
and the value of the state), the bins decode to normalised actions, un-normalise with the checkpoint's statistics and
become arm commands relative to the measured state (``policy.action_space.command_from_action``, as at evaluation);
the twin runs one control period. Images are stored as rendered (uint8) and preprocessed again for training.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from finetune.rl.actor_critic import ActorCritic
from policy.action_space import ActionSpaceSpec, command_from_action
from policy.normalization import ActionStats, unnormalize
from robot.sim.vector_env import EpisodeEnd, TwinVectorEnv, VectorObservation


@dataclass
class Rollout:
    images: np.ndarray  # (T, N, H, W, 3) uint8
    instructions: list[list[str]]  # [T][N]
    bins: torch.Tensor  # (T, N, 7) long
    log_probs: torch.Tensor  # (T, N)
    values: torch.Tensor  # (T, N)
    rewards: torch.Tensor  # (T, N)
    dones: torch.Tensor  # (T, N) bool
    last_values: torch.Tensor  # (N,)
    ends: list[EpisodeEnd]
    width_norm: np.ndarray  # (7,) mean std of pi_d over the rollout, normalised action units
    width_bins: np.ndarray  # (7,) the same in bins
    entropy_nats: np.ndarray  # (7,)
    policy_s: float = 0.0
    env_s: float = 0.0

    @property
    def ticks(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        return int(self.rewards.shape[1])


@dataclass
class RolloutStats:
    """Running record of finished episodes: the rollout success over the last ``window`` of them."""

    window: int
    recent: deque = field(default_factory=deque)
    episodes: int = 0
    successes: int = 0

    def add(self, ends: list[EpisodeEnd]) -> None:
        for end in ends:
            self.episodes += 1
            self.successes += end.success
            self.recent.append(bool(end.success))
            while len(self.recent) > self.window:
                self.recent.popleft()

    @property
    def windowed_success(self) -> float:
        return float(np.mean(self.recent)) if self.recent else float("nan")

    @property
    def window_full(self) -> bool:
        return len(self.recent) >= self.window

    def to_dict(self) -> dict:
        return {"window": self.window, "recent": list(self.recent), "episodes": self.episodes,
                "successes": self.successes}

    @classmethod
    def from_dict(cls, data: dict) -> RolloutStats:
        return cls(int(data["window"]), deque(bool(v) for v in data["recent"]), int(data["episodes"]),
                   int(data["successes"]))


class ActionDecoder:
    """Bins -> normalised actions -> actions in the checkpoint's units -> arm commands."""

    def __init__(self, bin_values: np.ndarray, stats: ActionStats, space: ActionSpaceSpec) -> None:
        self.bin_values, self.stats, self.space = np.asarray(bin_values, dtype=np.float64), stats, space

    def actions(self, bins: np.ndarray) -> np.ndarray:
        """(N, 7) bins -> (N, 7) actions in the checkpoint's units."""
        return unnormalize(self.bin_values[bins], self.stats)

    def commands(self, bins: np.ndarray, observation: VectorObservation) -> list:
        actions = self.actions(bins)
        return [command_from_action(action, arm, self.space.name) for action, arm in
                zip(actions, observation.arms, strict=True)]


def _width(action_logits: torch.Tensor, bin_values: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(std in normalised units, std in bins, entropy), each (B, 7), of the action distributions."""
    log_pi = torch.log_softmax(action_logits, dim=-1)
    pi = log_pi.exp()
    index = torch.arange(pi.shape[-1], dtype=pi.dtype)

    def std(coordinates: torch.Tensor) -> torch.Tensor:
        mean = (pi * coordinates).sum(-1, keepdim=True)
        return (pi * (coordinates - mean) ** 2).sum(-1).sqrt()

    entropy = -(pi * log_pi).sum(-1)
    return std(bin_values.to(pi.dtype)).numpy(), std(index).numpy(), entropy.numpy()


def collect(actor: ActorCritic, env: TwinVectorEnv, observation: VectorObservation, ticks: int,
            decoder: ActionDecoder, temperature: float,
            generator: torch.Generator) -> tuple[Rollout, VectorObservation]:
    """Run every scene ``ticks`` ticks from ``observation``; (the rollout, the observation after it)."""
    import time

    n = env.num_envs
    images = np.empty((ticks, n, *env.image_shape), dtype=np.uint8)
    instructions: list[list[str]] = []
    bins = torch.empty((ticks, n, 7), dtype=torch.long)
    log_probs, values, rewards = (torch.empty((ticks, n)) for _ in range(3))
    dones = torch.empty((ticks, n), dtype=torch.bool)
    ends: list[EpisodeEnd] = []
    widths, widths_bins, entropies = [], [], []
    bin_values = torch.as_tensor(decoder.bin_values)
    policy_s = env_s = 0.0
    for t in range(ticks):
        started = time.perf_counter()
        images[t] = observation.images
        instructions.append(list(observation.instructions))
        sample = actor.act(actor.pixel_values(observation.images), actor.prompt_ids(observation.instructions),
                           temperature, generator)
        bins[t], log_probs[t], values[t] = sample.bins.cpu(), sample.log_probs.cpu(), sample.values.cpu()
        width, width_bins, entropy = _width(sample.action_logits.cpu(), bin_values)
        widths.append(width)
        widths_bins.append(width_bins)
        entropies.append(entropy)
        commands = decoder.commands(sample.bins.cpu().numpy(), observation)
        stepped = time.perf_counter()
        result = env.step(commands)
        env_s += time.perf_counter() - stepped
        policy_s += stepped - started
        rewards[t] = torch.from_numpy(result.rewards)
        dones[t] = torch.from_numpy(result.done)
        ends += result.ends
        observation = result.observation
    started = time.perf_counter()
    last_values = actor.value(actor.pixel_values(observation.images),
                              actor.prompt_ids(observation.instructions)).cpu()
    policy_s += time.perf_counter() - started
    rollout = Rollout(images, instructions, bins, log_probs, values, rewards, dones, last_values, ends,
                      np.concatenate(widths).mean(0), np.concatenate(widths_bins).mean(0),
                      np.concatenate(entropies).mean(0), policy_s, env_s)
    return rollout, observation
