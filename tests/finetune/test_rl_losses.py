"""finetune/rl/losses.py against independent computations: GAE by a plain loop over one scene at a time, the PPO
surrogate sample by sample, the fixed-sigma FAN-KL with NumPy, and Proposition 1's closed form against a numerical
maximisation of the regularised objective."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from finetune.rl.losses import (
    RLLossInputError,
    action_log_probs,
    fan_ppo_regularizer,
    gae,
    kl_regularized_step,
    ppo_policy_loss,
    value_loss,
)
from policy.action_tokenizer import ActionTokenizer

N_BINS = 256
BIN_VALUES = ActionTokenizer(32000).bin_values


# ----------------------------------------------------------------------------------------------------------- GAE
def _gae_one_scene(rewards, values, dones, last_value, gamma, lam):
    """Textbook GAE for one scene: walk the episodes backwards; a done step bootstraps nothing."""
    advantages = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        if dones[t]:
            next_value, running = 0.0, 0.0
        else:
            next_value = values[t + 1] if t + 1 < len(rewards) else last_value
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


def test_gae_matches_a_per_scene_loop_across_episode_ends() -> None:
    rng = np.random.default_rng(0)
    steps, scenes, gamma, lam = 23, 4, 0.97, 0.9
    rewards = (rng.random((steps, scenes)) < 0.1).astype(np.float64)
    values = rng.normal(size=(steps, scenes))
    dones = rng.random((steps, scenes)) < 0.15
    dones[-1, 0], dones[:, 1] = True, False  # a rollout ending exactly at an episode end; one without any end
    last = rng.normal(size=scenes)
    advantages, returns = gae(torch.tensor(rewards), torch.tensor(values), torch.tensor(dones), torch.tensor(last),
                              gamma, lam)
    for scene in range(scenes):
        expected = _gae_one_scene(rewards[:, scene], values[:, scene], dones[:, scene], last[scene], gamma, lam)
        np.testing.assert_allclose(advantages[:, scene].numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(returns.numpy(), advantages.numpy() + values, rtol=1e-12)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value() -> None:
    rewards = torch.tensor([[0.0], [0.0], [1.0], [0.0], [0.0]])
    dones = torch.tensor([[False], [False], [True], [False], [False]])
    values = torch.tensor([[0.5], [0.2], [0.1], [0.3], [0.4]])
    advantages, returns = gae(rewards, values, dones, torch.tensor([2.0]), gamma=0.9, lam=1.0)
    expected_returns = [0.81, 0.9, 1.0, 0.9**2 * 2.0, 0.9 * 2.0]  # the first episode ends with its reward at t=2
    np.testing.assert_allclose(returns[:, 0].numpy(), expected_returns, rtol=1e-6)
    np.testing.assert_allclose(advantages.numpy(), (returns - values).numpy(), rtol=1e-6)


def test_gae_refuses_mismatched_shapes() -> None:
    with pytest.raises(RLLossInputError, match="last_values"):
        gae(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool), torch.zeros(3))


# ----------------------------------------------------------------------------------------------------------- PPO
def test_ppo_policy_loss_matches_a_sample_by_sample_computation() -> None:
    rng = np.random.default_rng(1)
    new, old, adv = rng.normal(size=50), rng.normal(size=50), rng.normal(size=50)
    new[:5] = old[:5]  # ratio exactly 1
    expected = []
    for n, o, a in zip(new, old, adv, strict=True):
        ratio = math.exp(n - o)
        expected.append(-min(ratio * a, min(max(ratio, 0.8), 1.2) * a))
    result = ppo_policy_loss(torch.tensor(new, requires_grad=True), torch.tensor(old), torch.tensor(adv), clip=0.2)
    assert result.loss.item() == pytest.approx(float(np.mean(expected)), rel=1e-12)
    ratios = np.exp(new - old)
    assert result.clip_fraction.item() == pytest.approx(float(np.mean(np.abs(ratios - 1) > 0.2)))
    assert result.approx_kl.item() == pytest.approx(float(np.mean(old - new)))


def test_ppo_gradient_vanishes_where_the_clip_binds() -> None:
    new = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.0], requires_grad=True)  # ratios e^0.5 = 1.65 and e^-0.5 = 0.61
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
    ppo_policy_loss(new, torch.zeros(5), advantages, clip=0.2).loss.backward()
    grad = new.grad.numpy()
    assert grad[0] == 0.0 and grad[2] == 0.0  # clipped: more of a good action / less of a bad one gains nothing
    assert grad[1] != 0.0 and grad[3] != 0.0  # unclipped side: the pessimistic term keeps the gradient
    assert grad[4] == pytest.approx(-1.0 / 5)


def test_action_log_probs_sum_the_dimensions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 7, N_BINS)
    bins = torch.randint(0, N_BINS, (3, 7))
    log_pi = torch.log_softmax(logits.double(), dim=-1).numpy()
    expected = [sum(log_pi[b, d, bins[b, d]] for d in range(7)) for b in range(3)]
    np.testing.assert_allclose(action_log_probs(logits, bins).numpy(), expected, rtol=1e-5)


def test_value_loss_is_half_the_mean_squared_error() -> None:
    assert value_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx(0.25 * (1 + 4))


# ----------------------------------------------------------------------------------------------- FAN-KL, fixed sigma
def _numpy_fan_kl(logits: np.ndarray, values: np.ndarray, sigma: float) -> float:
    total, count = 0.0, 0
    for row in logits.reshape(-1, logits.shape[-1]).astype(np.float64):
        pi = np.exp(row - row.max())
        pi /= pi.sum()
        mu = values[int(np.argmax(row))]
        exponent = -((values - mu) ** 2) / (2 * sigma**2)
        log_q = exponent - logsumexp(exponent)  # in logs: at sigma = 0.01 far bins underflow exp()
        total += float(np.sum(pi * (np.log(pi) - log_q)))
        count += 1
    return total / count


@pytest.mark.parametrize("sigma", [0.3, 0.2, 0.01])
def test_fan_ppo_kl_matches_numpy(sigma: float) -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 7, N_BINS) * 3.0
    ours = fan_ppo_regularizer(logits, BIN_VALUES, sigma)
    assert ours.item() == pytest.approx(_numpy_fan_kl(logits.numpy(), BIN_VALUES, sigma), rel=1e-5)


def test_sigma_is_in_normalised_action_units_not_bins() -> None:
    """A policy spread over a few bins is close to a 0.3-wide prior's *shape* only if sigma is read in action units:
    the target at sigma = 0.3 gives a mode's neighbour (one bin = 2/255 away) almost the mode's own weight."""
    logits = torch.full((1, 1, N_BINS), -1e4)
    logits[..., 128] = 0.0
    pi_one_hot = fan_ppo_regularizer(logits, BIN_VALUES, 0.3).item()
    # KL(one-hot || q) = -log q(mode): with q a Gaussian of std 0.3 over values spaced 2/255, q(mode) ~ spacing /
    # (sqrt(2 pi) 0.3), so the KL is about log(sqrt(2 pi) * 0.3 * 255 / 2) = 4.56 nats.
    assert pi_one_hot == pytest.approx(math.log(math.sqrt(2 * math.pi) * 0.3 * 255 / 2), abs=0.02)


def test_fan_ppo_kl_is_invariant_to_reversing_the_bins_with_their_values() -> None:
    torch.manual_seed(3)
    logits = torch.randn(5, 7, N_BINS) * 4.0
    value = fan_ppo_regularizer(logits, BIN_VALUES, 0.3)
    reversed_value = fan_ppo_regularizer(logits.flip(-1), -BIN_VALUES[::-1].copy(), 0.3)
    torch.testing.assert_close(reversed_value, value, rtol=1e-5, atol=1e-7)
    symmetric = np.linspace(-1, 1, N_BINS)  # on a symmetric grid reversing the bins alone changes nothing
    torch.testing.assert_close(fan_ppo_regularizer(logits.flip(-1), symmetric, 0.3),
                               fan_ppo_regularizer(logits, symmetric, 0.3), rtol=1e-5, atol=1e-7)
    shuffled = logits[..., torch.randperm(N_BINS)]
    assert abs(fan_ppo_regularizer(shuffled, BIN_VALUES, 0.3).item() - value.item()) > 1e-3


def test_fan_ppo_gradient_treats_the_target_as_a_constant() -> None:
    """d KL(pi || q) / d z = pi (log pi - log q - KL) when q does not move with z (stop-gradient on the mode)."""
    torch.manual_seed(4)
    logits = (torch.randn(1, 1, N_BINS, dtype=torch.float64) * 2.0).requires_grad_(True)
    fan_ppo_regularizer(logits, BIN_VALUES, 0.3).backward()
    z = logits.detach().numpy().reshape(-1)
    pi = np.exp(z - z.max())
    pi /= pi.sum()
    mu = BIN_VALUES[int(np.argmax(z))]
    log_q = -((BIN_VALUES - mu) ** 2) / (2 * 0.09)
    log_q -= np.log(np.exp(log_q).sum())
    kl = np.sum(pi * (np.log(pi) - log_q))
    np.testing.assert_allclose(logits.grad.numpy().reshape(-1), pi * (np.log(pi) - log_q - kl), rtol=1e-6,
                               atol=1e-12)


def test_fan_ppo_kl_refuses_bad_input() -> None:
    with pytest.raises(RLLossInputError, match="bin_values"):
        fan_ppo_regularizer(torch.zeros(2, 7, N_BINS), BIN_VALUES[:10], 0.3)
    with pytest.raises(RLLossInputError, match="sigma"):
        fan_ppo_regularizer(torch.zeros(2, 7, N_BINS), BIN_VALUES, 0.0)


# ----------------------------------------------------------------------------------------------- Proposition 1
def _numerical_step(pi_t, q, prior, alpha, beta):
    """Maximise E_pi[Q] - alpha KL(pi || N) - beta KL(pi || pi_t) over the simplex (softmax parameters, BFGS)."""
    def negative_objective(z):
        z = z - z.max()
        pi = np.exp(z) / np.exp(z).sum()
        return -(pi @ q - alpha * pi @ (np.log(pi) - np.log(prior)) - beta * pi @ (np.log(pi) - np.log(pi_t)))

    result = minimize(negative_objective, np.zeros(len(q)), method="BFGS", options={"gtol": 1e-10, "maxiter": 5000})
    z = result.x - result.x.max()
    return np.exp(z) / np.exp(z).sum()


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.3, 2.0), (2.0, 0.5), (0.0, 1.0)])
def test_proposition_1_closed_form_is_the_exact_regularised_step(alpha: float, beta: float) -> None:
    rng = np.random.default_rng(5)
    actions = 7
    values = np.linspace(-1, 1, actions)
    pi_t = rng.dirichlet(np.ones(actions))
    prior = np.exp(-((values - values[int(np.argmax(pi_t))]) ** 2) / (2 * 0.3**2))
    prior /= prior.sum()
    q = rng.normal(size=actions)
    closed = kl_regularized_step(pi_t, q, prior, alpha, beta)
    np.testing.assert_allclose(closed, _numerical_step(pi_t, q, prior, alpha, beta), atol=2e-5)
    expected = prior ** (alpha / (alpha + beta)) * pi_t ** (beta / (alpha + beta)) * np.exp(q / (alpha + beta))
    np.testing.assert_allclose(closed, expected / expected.sum(), rtol=1e-12)
    assert closed.sum() == pytest.approx(1.0)
