"""Reinforced finetuning formulas: GAE, the PPO clipped objective, the value loss, FAN-PPO's fixed-sigma FAN-KL,
and the closed form of the paper's Proposition 1. One formula per function (docs/rl.md explains them).

Conventions. Rollout tensors are (T, N): T ticks of N scenes. An action is OpenVLA's 7 action tokens; its
log-probability is the sum of the 7 per-token log-probabilities, each over the 256 action bins only (the policy
samples among action tokens, so its distribution per dimension is ``pi_d = softmax(action logits)``, the same
``pi_d`` as FAN-SFT's). Action logits are (..., D, n_bins) in BIN order (bin 0 = most negative value), as in
``finetune.losses``.

FAN-PPO's sigma is in NORMALISED ACTION UNITS: the Gaussian target of dimension d is
``q_d(j) ~ exp(-(c_j - c_mode)^2 / (2 sigma^2))`` with ``c_j`` the value bin j decodes to in [-1, 1]
(``ActionTokenizer.bin_values``). Why not bins: sigma = 0.3 bins would put exp(-5.6) = 0.4 % on each neighbour
of the mode, a near one-hot target, so the KL would sharpen the policy onto one bin, the opposite of a feasible
action *neighbourhood*; in normalised units 0.3 is 15 % of each dimension's q01..q99 half-range (about 38 bins),
a neighbourhood of near-equivalent actions; it does not depend on the bin count; and OpenVLA-OFT's sigma = 0.2,
whose actions are continuous in the same normalised range, is then on the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.losses import _log_policy
from finetune.rl.config import (  # the paper's settings (torch-free, so the CLI can show them)
    DEFAULT_CLIP,
    DEFAULT_FAN_PPO_SIGMA,
    DEFAULT_GAE_LAMBDA,
    DEFAULT_GAMMA,
)


class RLLossInputError(ValueError):
    """Tensors that do not fit together; the message says which and why."""


def gae(rewards: torch.Tensor, values: torch.Tensor, dones: torch.Tensor, last_values: torch.Tensor,
        gamma: float = DEFAULT_GAMMA, lam: float = DEFAULT_GAE_LAMBDA) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (T, N), by generalised advantage estimation.

    ``rewards[t]``, ``values[t]`` = V(s_t) and ``dones[t]`` (the episode ended with step t: nothing is bootstrapped
    across it) are (T, N); ``last_values`` (N,) = V(s_T), the observation after the last step.
    delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t);  A_t = delta_t + gamma lam (1 - done_t) A_{t+1};
    returns = A + V (the value targets).
    """
    if rewards.ndim != 2 or rewards.shape != values.shape or rewards.shape != dones.shape:
        raise RLLossInputError(f"rewards, values and dones must all be (T, N); got {tuple(rewards.shape)}, "
                               f"{tuple(values.shape)}, {tuple(dones.shape)}")
    if last_values.shape != rewards.shape[1:]:
        raise RLLossInputError(f"last_values must be (N,) = {tuple(rewards.shape[1:])}, got {tuple(last_values.shape)}")
    continuing = 1.0 - dones.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value, next_advantage = last_values, torch.zeros_like(last_values)
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_value * continuing[t] - values[t]
        next_advantage = delta + gamma * lam * continuing[t] * next_advantage
        advantages[t] = next_advantage
        next_value = values[t]
    return advantages, advantages + values


def action_log_probs(action_logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """(B,) log-probability of whole actions: sum over the D dimensions of log pi_d(bin_d).

    ``action_logits`` (B, D, n_bins) in bin order, ``bins`` (B, D) the chosen bins."""
    if action_logits.ndim != 3 or bins.shape != action_logits.shape[:2]:
        raise RLLossInputError(f"expected action_logits (B, D, n_bins) and bins (B, D); got "
                               f"{tuple(action_logits.shape)} and {tuple(bins.shape)}")
    log_pi = _log_policy(action_logits)
    return log_pi.gather(-1, bins.long().unsqueeze(-1)).squeeze(-1).sum(dim=-1)


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor  # to minimise: -mean(min(ratio A, clip(ratio) A))
    clip_fraction: torch.Tensor  # share of samples whose ratio left [1 - clip, 1 + clip] (detached)
    approx_kl: torch.Tensor  # mean(old log p - new log p), an estimate of KL(old || new) (detached)


def ppo_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                    clip: float = DEFAULT_CLIP) -> PolicyLoss:
    """PPO's clipped surrogate: ratio = exp(log p - old log p); loss = -mean(min(ratio A, clip(ratio, 1 +- eps) A)).

    All inputs (B,); ``old_log_probs`` and ``advantages`` are constants (detached here)."""
    if not (log_probs.shape == old_log_probs.shape == advantages.shape) or log_probs.ndim != 1:
        raise RLLossInputError(f"log_probs, old_log_probs and advantages must be (B,) alike; got "
                               f"{tuple(log_probs.shape)}, {tuple(old_log_probs.shape)}, {tuple(advantages.shape)}")
    if not 0.0 < clip < 1.0:
        raise RLLossInputError(f"clip must be in (0, 1), got {clip}")
    log_ratio = log_probs - old_log_probs.detach()
    ratio = log_ratio.exp()
    advantages = advantages.detach()
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip, 1.0 + clip) * advantages)
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip).float().mean()
        approx_kl = (-log_ratio).mean()
    return PolicyLoss(-surrogate.mean(), clip_fraction, approx_kl)


def value_loss(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """0.5 * mean((V(s) - R)^2) against the GAE returns (constants)."""
    if values.shape != returns.shape:
        raise RLLossInputError(f"values {tuple(values.shape)} and returns {tuple(returns.shape)} differ in shape")
    return 0.5 * (values - returns.detach()).pow(2).mean()


@torch.no_grad()
def fixed_sigma_target(log_pi: torch.Tensor, bin_values: torch.Tensor, sigma: float) -> torch.Tensor:
    """log q (..., n_bins): a Gaussian of FIXED ``sigma`` over the bin values (normalised action units), centred on
    the value of pi's mode, normalised over the bins; a constant for autograd (stop-gradient on the mode)."""
    mode = log_pi.argmax(dim=-1, keepdim=True)
    values = bin_values.to(log_pi.dtype)
    centre = values[mode]
    return torch.log_softmax(-((values - centre) ** 2) / (2.0 * sigma**2), dim=-1)


def fan_ppo_regularizer(action_logits: torch.Tensor, bin_values, sigma: float = DEFAULT_FAN_PPO_SIGMA) -> torch.Tensor:
    """Mean over samples and action dimensions of KL(pi_d || N(mu_d, sigma^2)), FAN-PPO's term (weight alpha).

    ``action_logits`` (..., n_bins) in bin order; ``bin_values`` (n_bins,) the value of each bin in [-1, 1]; mu_d is
    the value of pi_d's mode (a constant); sigma is fixed, in normalised action units."""
    values = torch.as_tensor(np.asarray(bin_values), device=action_logits.device)
    if values.ndim != 1 or values.numel() != action_logits.shape[-1]:
        raise RLLossInputError(f"bin_values must be (n_bins,) = ({action_logits.shape[-1]},), got "
                               f"{tuple(values.shape)}")
    if not sigma > 0:
        raise RLLossInputError(f"sigma must be > 0, got {sigma}")
    log_pi = _log_policy(action_logits)
    log_q = fixed_sigma_target(log_pi, values, sigma)
    return (log_pi.exp() * (log_pi - log_q)).sum(dim=-1).mean()


def kl_regularized_step(pi_t: np.ndarray, q_values: np.ndarray, prior: np.ndarray, alpha: float,
                        beta: float) -> np.ndarray:
    """Proposition 1: the maximiser over distributions pi of  E_pi[Q] - alpha KL(pi || N) - beta KL(pi || pi_t)
    is  pi_{t+1} ~ N^(alpha / (alpha + beta)) * pi_t^(beta / (alpha + beta)) * exp(Q / (alpha + beta)).

    Discrete distributions over the last axis; computed in log space and normalised."""
    if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
        raise RLLossInputError(f"need alpha, beta >= 0 with alpha + beta > 0; got {alpha}, {beta}")
    total = alpha + beta
    with np.errstate(divide="ignore"):
        logits = (alpha * np.log(prior) + beta * np.log(pi_t) + np.asarray(q_values, dtype=np.float64)) / total
    logits = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)
