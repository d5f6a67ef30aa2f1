"""The pieces between the twin and the PPO update: decoding sampled bins into actions, the action-width metrics, the
running rollout success, the run's options, and one PPO / FAN-PPO update on a tiny model (what moves and what must
not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.config import FinetuneError, TrainConfig
from finetune.model_setup import make_trainable
from finetune.rl.actor_critic import ActorCritic
from finetune.rl.config import RLConfig
from finetune.rl.losses import action_log_probs, fan_ppo_regularizer
from finetune.rl.ppo import make_optimizer, ppo_update
from finetune.rl.rollout import ActionDecoder, Rollout, RolloutStats, _width
from policy.action_space import action_space
from policy.normalization import compute_stats, unnormalize
from policy.tiny import build_tiny_model
from robot.sim.vector_env import EpisodeEnd

INSTRUCTIONS = ["put the red cube into the box", "put the blue block into the box carefully"]


def _end(success: bool, episode: int = 0) -> EpisodeEnd:
    return EpisodeEnd(0, episode, "task1", 5, "success" if success else "step_limit", success)


# ------------------------------------------------------------------------------------------------ decoding, metrics
def test_decoded_actions_are_the_served_policys_decoding_of_the_same_tokens() -> None:
    model = build_tiny_model("test", seed=0, instructions=INSTRUCTIONS)
    tokenizer = model.action_tokenizer
    actor = ActorCritic(model, model)
    rng = np.random.default_rng(3)
    stats = compute_stats(rng.normal(size=(200, 7)) * [5, 5, 5, 0.1, 0.1, 0.1, 0] + [0, 0, 0, 0, 0, 0, 0.5],
                          mask=[True] * 6 + [False])
    decoder = ActionDecoder(tokenizer.bin_values, stats, action_space("ee_delta"))
    bins = rng.integers(0, 256, size=(5, 7))
    tokens = actor.action_ids[torch.as_tensor(bins)].numpy()  # what act() feeds back to the model
    np.testing.assert_array_equal(tokens, tokenizer.bin_to_token(bins))
    expected = unnormalize(tokenizer.decode(tokens), stats)  # the path of policy.inference
    np.testing.assert_allclose(decoder.actions(bins), expected)


def test_width_metrics_against_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = torch.as_tensor(rng.normal(size=(3, 7, 256)) * 3, dtype=torch.float32)
    values = np.linspace(-1, 1, 256)
    width, width_bins, entropy = _width(logits, torch.as_tensor(values))
    pi = np.exp(logits.double().numpy())
    pi /= pi.sum(-1, keepdims=True)

    def std(coordinates):
        mean = (pi * coordinates).sum(-1, keepdims=True)
        return np.sqrt((pi * (coordinates - mean) ** 2).sum(-1))

    np.testing.assert_allclose(width, std(values), rtol=1e-4)
    np.testing.assert_allclose(width_bins, std(np.arange(256.0)), rtol=1e-4)
    np.testing.assert_allclose(entropy, -(pi * np.log(pi)).sum(-1), rtol=1e-4)
    # a point mass has no width
    point = torch.full((1, 7, 256), -1e4)
    point[..., 17] = 0
    assert np.allclose(_width(point, torch.as_tensor(values))[0], 0, atol=1e-6)


def test_rollout_success_is_over_the_last_window_of_episodes_and_survives_a_resume() -> None:
    stats = RolloutStats(window=3)
    assert np.isnan(stats.windowed_success) and not stats.window_full
    stats.add([_end(True), _end(False)])
    assert stats.windowed_success == 0.5 and not stats.window_full
    stats.add([_end(True), _end(True)])  # the first success leaves the window
    assert stats.windowed_success == pytest.approx(2 / 3) and stats.window_full
    assert (stats.episodes, stats.successes) == (4, 3)
    restored = RolloutStats.from_dict(stats.to_dict())
    restored.add([_end(False), _end(False)])
    stats.add([_end(False), _end(False)])
    assert restored.to_dict() == stats.to_dict() and restored.windowed_success == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ options
def test_every_bad_option_is_named_at_once() -> None:
    bad = RLConfig(init="m", out="o", method="ppo", envs=0, alpha=0.5, clip=1.5, lr=0.0, gae_lambda=2.0)
    with pytest.raises(FinetuneError) as error:
        bad.check()
    message = str(error.value)
    for expected in ("--envs must be >= 1", "--alpha and --sigma belong to --method fan-ppo", "--clip",
                     "--lr must be > 0", "lambda"):
        assert expected in message
    with pytest.raises(FinetuneError, match="--sigma must be > 0"):
        RLConfig(init="m", out="o", sigma=0.0).check()
    with pytest.raises(FinetuneError, match="--temperature must be > 0"):
        RLConfig(init="m", out="o", temperature=0.0).check()
    RLConfig(init="m", out="o").check()


def test_the_paper_settings_are_the_defaults_and_updates_cover_the_steps() -> None:
    config = RLConfig(init="m", out="o", envs=4, steps=1000, max_episode_steps=100)
    assert (config.fan_alpha, config.fan_sigma, config.gae_lambda, config.clip, config.entropy_coef) == \
        (1.0, 0.3, 0.95, 0.2, 0.0)
    assert (config.lr, config.value_lr, config.lora_rank) == (1e-4, 3e-3, 32)
    assert config.samples_per_update == 400 and config.updates == 3  # 1200 steps >= 1000
    assert config.replace(rollout_steps=10).updates == 25


def test_a_resume_may_change_bookkeeping_but_not_the_optimisation() -> None:
    saved = RLConfig(init="m", out="o", steps=100)
    assert saved.replace(steps=500, workers=0, eval_every=3, resume=True).resume_differences(saved) == []
    differences = saved.replace(method="ppo", lr=1e-3).resume_differences(saved)
    assert len(differences) == 2 and differences[0].startswith("method: 'fan-ppo' in the saved run")


# ------------------------------------------------------------------------------------------------ one update
def _actor(seed: int = 0) -> ActorCritic:
    model = build_tiny_model("test", seed=seed, instructions=INSTRUCTIONS)
    trainable = make_trainable(model, TrainConfig(data=(), init="-", out="-", full=True))
    actor = ActorCritic(model, trainable)
    actor.eval()
    return actor


def _rollout(actor: ActorCritic, rewards: torch.Tensor) -> Rollout:
    """A rollout of T ticks x N scenes sampled by ``actor`` on fixed images, with the given rewards; no episode ends."""
    ticks, n = rewards.shape
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(ticks, n, 40, 70, 3), dtype=np.uint8)
    instructions = [[INSTRUCTIONS[i % 2] for i in range(n)] for _ in range(ticks)]
    generator = torch.Generator().manual_seed(2)
    samples = [actor.act(actor.pixel_values(images[t]), actor.prompt_ids(instructions[t]), 1.0, generator)
               for t in range(ticks)]
    width = np.zeros(7)
    return Rollout(images, instructions, torch.stack([s.bins for s in samples]),
                   torch.stack([s.log_probs for s in samples]), torch.stack([s.values for s in samples]), rewards,
                   torch.zeros((ticks, n), dtype=torch.bool), torch.zeros(n), [], width, width, width)


def _measure(actor: ActorCritic, rollout: Rollout, bin_values) -> tuple[torch.Tensor, float]:
    """(log-probabilities of the rollout's actions (T, N), FAN-KL) under the actor now."""
    ticks, n = rollout.rewards.shape
    images = rollout.images.reshape(ticks * n, *rollout.images.shape[2:])
    prompts = actor.prompt_ids([text for row in rollout.instructions for text in row])
    bins = rollout.bins.reshape(ticks * n, 7)
    with torch.no_grad():
        evaluation = actor.evaluate(actor.pixel_values(images), prompts, bins)
    return action_log_probs(evaluation.action_logits, bins).reshape(ticks, n), \
        float(fan_ppo_regularizer(evaluation.action_logits, bin_values, 0.3))


def _config(method: str, **changes) -> RLConfig:
    return RLConfig(init="-", out="-", method=method, full=True, epochs=3, minibatch=4, lr=3e-3, **changes)


def test_ppo_raises_the_probability_of_rewarded_actions_and_lowers_the_others() -> None:
    actor = _actor()
    bin_values = actor.vla.action_tokenizer.bin_values
    rewards = torch.zeros((3, 2))
    rewards[:, 0] = 1.0  # scene 0 is rewarded at every tick, scene 1 never
    rollout = _rollout(actor, rewards)
    before, _ = _measure(actor, rollout, bin_values)
    config = _config("ppo")
    metrics = ppo_update(actor, make_optimizer(actor, config), rollout, config, bin_values,
                         torch.Generator().manual_seed(0))
    after, _ = _measure(actor, rollout, bin_values)
    change = after - before
    assert (change[:, 0] > 0).all() and (change[:, 1] < 0).all(), change
    assert metrics["policy_loss"] < 0 and 0 <= metrics["clip_fraction"] <= 1 and metrics["value_loss"] > 0
    assert float(actor.value_head.fc2.weight.detach().abs().sum()) > 0  # the value head (zero at the start) learnt


def test_without_reward_ppo_leaves_the_policy_alone_and_fan_ppo_pulls_it_to_the_prior() -> None:
    results = {}
    for method in ("ppo", "fan-ppo"):
        actor = _actor(seed=4)
        bin_values = actor.vla.action_tokenizer.bin_values
        rollout = _rollout(actor, torch.zeros((2, 2)))
        before, kl_before = _measure(actor, rollout, bin_values)
        config = _config(method)
        metrics = ppo_update(actor, make_optimizer(actor, config), rollout, config, bin_values,
                             torch.Generator().manual_seed(0))
        after, kl_after = _measure(actor, rollout, bin_values)
        results[method] = (before, after, kl_before, kl_after, metrics)
    before, after, _, _, metrics = results["ppo"]
    torch.testing.assert_close(after, before)  # zero advantages, zero value error: no gradient anywhere
    assert metrics["grad_norm"] == 0 and metrics["fan_kl"] > 0  # the FAN-KL is measured, not optimised
    _, _, kl_before, kl_after, metrics = results["fan-ppo"]
    assert kl_after < kl_before - 1e-3 and metrics["grad_norm"] > 0


# ------------------------------------------------------------------------------------------------ exports
def test_a_mid_run_export_is_the_actors_policy_and_training_keeps_its_adapters(tmp_path) -> None:
    from finetune.model_setup import load_initial_model
    from finetune.rl.export import export_policy
    from policy.deployment import resolve_deployment
    from policy.tiny import build_tiny

    init = build_tiny(tmp_path / "init", "test", seed=0, instructions=INSTRUCTIONS)
    config = RLConfig(init=str(init), out=str(tmp_path / "run"), lora_rank=4)

    def load(path):
        return load_initial_model(TrainConfig(data=(), init=str(path), out="-"), torch.device("cpu"), torch.float32)

    model = load(init)
    dims = {key: entry.action.dim for key, entry in model.norm_stats.items()}
    deployment = resolve_deployment(init, list(model.norm_stats), dims)
    torch.manual_seed(0)
    actor = ActorCritic(model, make_trainable(model, TrainConfig(data=(), init="-", out="-", lora_rank=4)))
    with torch.no_grad():  # adapters that change the policy (lora_B starts at zero)
        for name, parameter in actor.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 40, 70, 3), dtype=np.uint8)
    pixels, prompts = actor.pixel_values(images), actor.prompt_ids(INSTRUCTIONS)
    sample = actor.act(pixels, prompts, temperature=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = actor.evaluate(pixels, prompts, sample.bins).action_logits
    exported = export_policy(actor, config, deployment, tmp_path / "run" / "evals" / "policy", {"rl": {}})
    assert any("lora_A" in name for name, _ in actor.named_parameters())  # the training model keeps its adapters
    served = ActorCritic(load(exported), load(exported))
    with torch.no_grad():
        after = actor.evaluate(pixels, prompts, sample.bins).action_logits
        merged = served.evaluate(served.pixel_values(images), served.prompt_ids(INSTRUCTIONS), sample.bins)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(merged.action_logits, before, rtol=1e-4, atol=1e-4)
    base = ActorCritic(load(init), load(init))
    with torch.no_grad():
        untrained = base.evaluate(pixels, prompts, sample.bins).action_logits
    assert (untrained - before).abs().max() > 1e-2  # the adapters mattered, so the comparison above means something
