"""One PPO update on a rollout: GAE, advantage normalisation, ``epochs`` passes of shuffled minibatches.

Per minibatch: the teacher-forced action distributions and values (``ActorCritic.evaluate``), then
loss = PPO clipped surrogate + value_coef * value loss [+ alpha * FAN-KL for fan-ppo] - entropy_coef * entropy,
one optimiser step (the policy's parameters at ``lr``, the value head at ``value_lr``), gradients clipped to
``max_grad_norm``. The FAN-KL is measured for both methods (the PPO run shows how far it drifts from the prior).
The ratio's log-probabilities are those of the rollout's sampling distribution, softmax(logits / temperature); the
FAN-KL and the entropy read the model's own pi_d = softmax(logits) (the same at the default temperature 1).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch

from finetune.rl.actor_critic import ActorCritic
from finetune.rl.config import RLConfig
from finetune.rl.losses import action_log_probs, fan_ppo_regularizer, gae, ppo_policy_loss, value_loss
from finetune.rl.rollout import Rollout


def make_optimizer(actor: ActorCritic, config: RLConfig) -> torch.optim.AdamW:
    """AdamW over two groups: the policy's trainable parameters at ``lr``, the value head at ``value_lr`` (the
    paper's 1e-4 and 3e-3); no weight decay."""
    value = list(actor.value_head.parameters())
    value_ids = {id(p) for p in value}
    policy = [p for p in actor.parameters() if p.requires_grad and id(p) not in value_ids]
    return torch.optim.AdamW([{"params": policy, "lr": config.lr, "name": "policy"},
                              {"params": value, "lr": config.value_lr, "name": "value_head"}], weight_decay=0.0)


def ppo_update(actor: ActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout, config: RLConfig,
               bin_values: np.ndarray, generator: torch.Generator) -> dict[str, float]:
    started = time.perf_counter()
    advantages, returns = gae(rollout.rewards, rollout.values, rollout.dones, rollout.last_values, config.gamma,
                              config.gae_lambda)
    count = rollout.ticks * rollout.num_envs
    flat_advantages = advantages.reshape(count)
    normalised = (flat_advantages - flat_advantages.mean()) / (flat_advantages.std(unbiased=False) + 1e-8)
    flat_returns, old_values = returns.reshape(count), rollout.values.reshape(count)
    old_log_probs = rollout.log_probs.reshape(count)
    images = rollout.images.reshape(count, *rollout.images.shape[2:])
    instructions = [text for row in rollout.instructions for text in row]
    bins = rollout.bins.reshape(count, -1)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    sums: dict[str, float] = defaultdict(float)
    actor.train()
    for _ in range(config.epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, config.minibatch):
            index = order[start:start + config.minibatch]
            rows = index.tolist()
            evaluation = actor.evaluate(actor.pixel_values(images[rows]), actor.prompt_ids([instructions[i]
                                                                                            for i in rows]),
                                        bins[index])
            # The ratio compares the distributions the actions were sampled from: softmax(logits / temperature).
            log_probs = action_log_probs(evaluation.action_logits / config.temperature, bins[index])
            policy = ppo_policy_loss(log_probs, old_log_probs[index], normalised[index], config.clip)
            values = value_loss(evaluation.values, flat_returns[index])
            fan_kl = fan_ppo_regularizer(evaluation.action_logits, bin_values, config.fan_sigma)
            log_pi = torch.log_softmax(evaluation.action_logits, dim=-1)
            entropy = -(log_pi.exp() * log_pi).sum(-1).mean()
            loss = policy.loss + config.value_coef * values - config.entropy_coef * entropy
            if config.method == "fan-ppo":
                loss = loss + config.fan_alpha * fan_kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm or float("inf"))
            optimizer.step()
            weight = len(rows)
            for name, value in (("loss", loss), ("policy_loss", policy.loss), ("value_loss", values),
                                ("fan_kl", fan_kl), ("entropy_nats", entropy), ("clip_fraction", policy.clip_fraction),
                                ("approx_kl", policy.approx_kl), ("grad_norm", grad_norm)):
                sums[name] += float(value.detach()) * weight
            sums["_weight"] += weight
    actor.eval()
    metrics = {name: value / sums["_weight"] for name, value in sums.items() if name != "_weight"}
    variance = float(flat_returns.var(unbiased=False))
    metrics["explained_variance"] = float("nan") if variance == 0 else \
        1.0 - float((flat_returns - old_values).var(unbiased=False)) / variance
    metrics["advantage_mean"] = float(flat_advantages.mean())
    metrics["value_mean"] = float(old_values.mean())
    metrics["train_s"] = time.perf_counter() - started
    return metrics
