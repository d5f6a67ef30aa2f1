"""The actor-critic on a tiny model: what sampling reports equals what training recomputes (log-probabilities,
values), padding does not change a row, and the losses reach LoRA adapters and the value head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.config import TrainConfig
from finetune.model_setup import make_trainable
from finetune.rl.actor_critic import ActorCritic
from finetune.rl.losses import action_log_probs, fan_ppo_regularizer, ppo_policy_loss, value_loss
from policy.tiny import build_tiny_model

INSTRUCTIONS = ["put the red cube into the box", "put the blue block into the box carefully"]


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("test", seed=0, instructions=INSTRUCTIONS)


def _inputs(actor: ActorCritic, count: int):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 40, 70, 3), dtype=np.uint8)
    instructions = [INSTRUCTIONS[i % 2] for i in range(count)]  # two prompt lengths: left padding in play
    return actor.pixel_values(images), actor.prompt_ids(instructions)


def test_sampled_log_probs_and_values_equal_the_teacher_forced_ones(model) -> None:
    torch.manual_seed(0)
    actor = ActorCritic(model, model)
    with torch.no_grad():  # a non-zero value head, so that the values are compared for real
        actor.value_head.fc2.weight.normal_()
    pixels, prompts = _inputs(actor, 4)
    sample = actor.act(pixels, prompts, temperature=1.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        evaluation = actor.evaluate(pixels, prompts, sample.bins)
    torch.testing.assert_close(action_log_probs(evaluation.action_logits, sample.bins), sample.log_probs,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(evaluation.values, sample.values, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actor.value(pixels, prompts), sample.values, rtol=1e-4, atol=1e-5)
    assert sample.bins.shape == (4, 7) and int(sample.bins.min()) >= 0 and int(sample.bins.max()) < 256


def test_tempered_sampling_reports_the_log_probs_of_the_distribution_it_sampled(model) -> None:
    actor = ActorCritic(model, model)
    pixels, prompts = _inputs(actor, 3)
    sample = actor.act(pixels, prompts, temperature=0.5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        evaluation = actor.evaluate(pixels, prompts, sample.bins)
    torch.testing.assert_close(action_log_probs(evaluation.action_logits / 0.5, sample.bins), sample.log_probs,
                               rtol=1e-4, atol=1e-4)
    assert not torch.allclose(action_log_probs(evaluation.action_logits, sample.bins), sample.log_probs, atol=1e-2)


def test_a_row_is_the_same_alone_and_in_a_padded_batch(model) -> None:
    actor = ActorCritic(model, model)
    pixels, prompts = _inputs(actor, 2)
    bins = torch.tensor([[10, 20, 30, 40, 50, 60, 70], [200, 100, 0, 255, 128, 1, 2]])
    with torch.no_grad():
        batch = actor.evaluate(pixels, prompts, bins)
        alone = actor.evaluate(pixels[:1], prompts[:1], bins[:1])
    torch.testing.assert_close(batch.action_logits[:1], alone.action_logits, rtol=1e-4, atol=1e-4)


def test_greedy_acting_takes_each_dimensions_mode(model) -> None:
    actor = ActorCritic(model, model)
    pixels, prompts = _inputs(actor, 3)
    sample = actor.act(pixels, prompts, temperature=0.0)
    assert torch.equal(sample.bins, sample.action_logits.argmax(-1))
    with torch.no_grad():
        evaluation = actor.evaluate(pixels, prompts, sample.bins)
    assert torch.equal(evaluation.action_logits.argmax(-1), sample.bins)


def test_losses_reach_the_lora_adapters_and_the_value_head() -> None:
    model = build_tiny_model("test", seed=1, instructions=INSTRUCTIONS)
    trainable = make_trainable(model, TrainConfig(data=(), init="-", out="-", lora_rank=4))
    actor = ActorCritic(model, trainable)
    pixels, prompts = _inputs(actor, 2)
    sample = actor.act(pixels, prompts, generator=torch.Generator().manual_seed(0))
    evaluation = actor.evaluate(pixels, prompts, sample.bins)
    log_probs = action_log_probs(evaluation.action_logits, sample.bins)
    loss = ppo_policy_loss(log_probs, sample.log_probs, torch.tensor([1.0, -0.5])).loss \
        + value_loss(evaluation.values, torch.tensor([1.0, 0.0])) \
        + fan_ppo_regularizer(evaluation.action_logits, model.action_tokenizer.bin_values, 0.3)
    loss.backward()
    grads = {name: p.grad for name, p in actor.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in grads) and "value_head.fc2.weight" in grads
    # (the towers' last block and pooling head exist in the checkpoint, but OpenVLA reads the features before them)
    unused = sorted(name for name, g in grads.items() if g is None)
    assert all(name.startswith("vla.vision_backbone.") for name in unused), unused[:5]
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert any(float(g.abs().sum()) > 0 for name, g in grads.items() if "lora_B" in name or "lora_A" in name)
    frozen = [name for name, p in actor.named_parameters() if not p.requires_grad]
    assert frozen and all("lora" not in name for name in frozen)
    assert actor.peft is trainable
