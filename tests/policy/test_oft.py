"""OpenVLA-OFT (policy/oft.py): the attention mask, parallel decoding against separate computations, checkpoints."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from policy.normalization import ActionStats, DatasetStatistics
from policy.oft import OFTSettings, OpenVLAOFT, action_block, action_block_attention, to_oft
from policy.oft_decoding import chunk_input_ids, chunk_logits
from tests.policy.conftest import random_images

INSTRUCTIONS = ["put the red cube into the box", "lift"]


def _statistics(model) -> dict[str, DatasetStatistics]:
    action = model.norm_stats["untrained"].action
    rng = np.random.default_rng(0)
    low = rng.uniform(-2, -1, 13)
    proprio = ActionStats(q01=low, q99=low + 3.0, mask=np.ones(13, bool), mean=np.zeros(13), std=np.ones(13),
                          min=low - 1, max=low + 4)
    return {"k": DatasetStatistics(action=action, proprio=proprio)}


@pytest.fixture(scope="module")
def oft_model():
    from policy.tiny import build_tiny_model

    model = build_tiny_model("test-oft", seed=3, instructions=INSTRUCTIONS)
    model.norm_stats = _statistics(model)
    return model


def test_the_mask_is_causal_except_inside_the_action_block():
    # Two rows: one left-padded (two pads), one full; 3 action positions before a trailing </s>.
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    block = action_block(attention, 3)
    assert block[0].tolist() == [False] * 5 + [True] * 3 + [False]
    assert block[1].tolist() == block[0].tolist()
    allowed = action_block_attention(attention, block, torch.float32)[:, 0] == 0
    for row in range(2):
        for query in range(9):
            for key in range(9):
                in_block = bool(block[row, query]) and bool(block[row, key])
                expected = (bool(attention[row, key]) and (key <= query or in_block)) or key == query
                assert bool(allowed[row, query, key]) == expected, (row, query, key)
    # The action positions see each other (also later ones) ...
    assert allowed[1, 5, 7] and allowed[1, 7, 5]
    # ... the prompt does not see them, and they do not see the trailing </s>.
    assert not allowed[1, :5, 5:8].any() and not allowed[1, 5:8, 8].any()
    # Right-padded rows find their block before their own last token.
    right = action_block(torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]]), 3)
    assert right[0].tolist() == [False, False, True, True, True, False, False, False]
    with pytest.raises(ValueError, match="too short"):
        action_block(torch.tensor([[1, 1, 1]]), 3)


def test_the_prompt_does_not_see_the_action_positions_and_they_see_each_other(oft_model):
    images = random_images(1, seed=4, shape=(60, 80))
    pixels = oft_model.preprocess_views(images)
    proprio = torch.zeros(1, 13)
    prompt = oft_model.encode_instructions(INSTRUCTIONS[:1])
    input_ids, attention = chunk_input_ids(oft_model, prompt)
    with torch.no_grad():
        full = oft_model(input_ids, attention, pixel_values=pixels, proprio=proprio).logits
        # The same weights with a shorter chunk: the prompt's logits do not change (it never sees the block) ...
        short = to_oft(_plain(oft_model), OFTSettings(chunk_size=2, use_proprio=True))
        short.proprio_projector = oft_model.proprio_projector
        ids, mask = chunk_input_ids(short, prompt)
        shorter = short(ids, mask, pixel_values=pixels, proprio=proprio).logits
    prompt_rows = oft_model.num_prefix_tokens + len(prompt[0])
    torch.testing.assert_close(full[:, :prompt_rows], shorter[:, :prompt_rows], rtol=1e-5, atol=1e-5)
    # ... but the first action position's do: it sees the action positions after it (bidirectional block).
    first = prompt_rows  # e_1
    assert (full[0, first] - shorter[0, first]).abs().max() > 1e-3


def _plain(model: OpenVLAOFT):
    """The OFT model's own modules as a plain OpenVLA (no copy)."""
    from policy.config import parse_config
    from policy.openvla import OpenVLA

    raw = {k: v for k, v in model.config.raw.items() if k != "fanvla_oft"}
    with torch.device("meta"):
        plain = OpenVLA(parse_config(raw))
    plain.vision_backbone, plain.projector, plain.language_model = model.vision_backbone, model.projector, \
        model.language_model
    plain.norm_stats, plain.tokenizer, plain.image_settings = model.norm_stats, model.tokenizer, model.image_settings
    return plain.eval()


@functools.cache
def _element_mask(length: int, n: int) -> torch.Tensor:
    """Additive (1, 1, L, L) mask set element by element: causal, and open both ways among the n positions
    before the last one."""
    block = range(length - 1 - n, length - 1)
    allowed = [[key <= query or (query in block and key in block) for key in range(length)] for query in range(length)]
    zero, blocked = 0.0, torch.finfo(torch.float32).min
    return torch.tensor([[zero if ok else blocked for ok in row] for row in allowed])[None, None]


def _reference_distribution(model: OpenVLAOFT, prompt: list[int], pixels: torch.Tensor, proprio: torch.Tensor,
                            row: int) -> torch.Tensor:
    """The logits predicting action token ``row``, computed on their own: the sequence assembled by hand, a mask
    built element by element, eager attention, and only that one query row read."""
    n = model.oft.n_action_tokens
    embed = model.get_input_embeddings()
    with torch.no_grad():
        patches = model.projector(model.vision_backbone(pixels))
        state = model.proprio_projector(proprio)[:, None]
        text = embed(torch.tensor([prompt]))
        empty = torch.zeros(1, n, text.shape[-1])
        eos = embed(torch.tensor([[2]]))
        sequence = torch.cat([text[:, :1], patches, state, text[:, 1:], empty, eos], dim=1)
        length = sequence.shape[1]
        mask = _element_mask(length, n)
        language_model = model.language_model
        previous = language_model.config._attn_implementation
        language_model.config._attn_implementation = "eager"
        try:
            output = language_model(inputs_embeds=sequence, attention_mask=mask,
                                    position_ids=torch.arange(length)[None], use_cache=False)
        finally:
            language_model.config._attn_implementation = previous
    predicting = length - 2 - n + row  # "▁" predicts token 0, e_j predicts token j
    return output.logits[0, predicting].float()


def test_one_forward_gives_k_times_7_distributions_equal_to_separate_computations(oft_model):
    images = random_images(2, seed=5, shape=(60, 80))
    pixels = oft_model.preprocess_views(images)
    states = torch.tensor(np.random.default_rng(1).normal(size=(2, 13)), dtype=torch.float32)
    prompts = oft_model.encode_instructions(INSTRUCTIONS)  # different lengths: the batch is left-padded
    assert len(prompts[0]) != len(prompts[1])
    logits = chunk_logits(oft_model, prompts, pixels, states)
    n = oft_model.oft.n_action_tokens
    assert logits.shape == (2, n, oft_model.config.vocab_size) and n == 8 * 7
    for sample in range(2):
        for row in range(n):
            reference = _reference_distribution(oft_model, prompts[sample], pixels[sample:sample + 1],
                                                 states[sample:sample + 1], row)
            torch.testing.assert_close(torch.softmax(logits[sample, row], -1), torch.softmax(reference, -1),
                                       rtol=1e-4, atol=2e-6)


def test_predict_action_returns_a_chunk_and_needs_the_state(oft_model):
    images = random_images(2, seed=6, shape=(60, 80))
    states = [np.linspace(-1, 1, 13), np.zeros(13)]
    prediction = oft_model.predict_action(images, INSTRUCTIONS, states=states)
    assert prediction.actions.shape == (2, 8, 7) and prediction.token_ids.shape == (2, 8, 7)
    assert prediction.bin_probs.shape == (2, 8, 7, 256)
    np.testing.assert_allclose(prediction.bin_probs.sum(-1), 1.0, atol=1e-5)
    single = oft_model.predict_action(images[1:], INSTRUCTIONS[1:], states=states[1:])
    np.testing.assert_array_equal(single.token_ids[0], prediction.token_ids[1])
    np.testing.assert_allclose(single.bin_probs[0], prediction.bin_probs[1], atol=1e-5)
    with pytest.raises(ValueError, match="robot state"):
        oft_model.predict_action(images, INSTRUCTIONS)
    with pytest.raises(ValueError, match="wrist"):
        oft_model.predict_action(images, INSTRUCTIONS, states=states, wrist_images=images)


def test_a_wrist_image_goes_through_the_same_towers():
    from policy.tiny import build_tiny_model

    model = build_tiny_model("test-oft", seed=1, instructions=INSTRUCTIONS, overrides={"num_images": 2})
    model.norm_stats = _statistics(model)
    main, wrist, other = random_images(3, seed=7, shape=(60, 80))
    states = [np.zeros(13)]
    a = model.predict_action([main], INSTRUCTIONS[:1], states=states, wrist_images=[wrist])
    b = model.predict_action([main], INSTRUCTIONS[:1], states=states, wrist_images=[other])
    assert np.abs(a.bin_probs - b.bin_probs).max() > 1e-5  # the wrist view matters
    pixels = model.preprocess_views([main], [wrist])
    assert pixels.shape[1] == 12
    features = model.vision_features(pixels)
    patches = model.vision_backbone.num_patches
    torch.testing.assert_close(features[:, patches:], model.vision_backbone(model.preprocess([wrist])))
    with pytest.raises(ValueError, match="wrist camera"):
        model.predict_action([main], INSTRUCTIONS[:1], states=states)


def test_checkpoints_round_trip_with_the_proprio_projector(oft_model, tmp_path):
    from policy.checkpoint import weight_map
    from policy.openvla import OpenVLA

    out = oft_model.save_pretrained(tmp_path / "oft")
    names = set(weight_map(out))
    assert {"proprio_projector.fc1.weight", "proprio_projector.fc1.bias", "proprio_projector.fc2.weight",
            "proprio_projector.fc2.bias"} <= names
    loaded = OpenVLA.from_pretrained(out)
    assert isinstance(loaded, OpenVLAOFT) and loaded.oft == oft_model.oft
    images = random_images(1, seed=8, shape=(60, 80))
    state = [np.linspace(0, 1, 13)]
    np.testing.assert_array_equal(loaded.predict_action(images, INSTRUCTIONS[:1], states=state).token_ids,
                                  oft_model.predict_action(images, INSTRUCTIONS[:1], states=state).token_ids)


def test_to_oft_keeps_the_modules_and_refuses_other_settings(tiny_model):
    oft = to_oft(tiny_model, OFTSettings(chunk_size=4, use_proprio=True), seed=0)
    assert oft.language_model is tiny_model.language_model and oft.projector is tiny_model.projector
    assert oft.config.raw["fanvla_oft"]["chunk_size"] == 4
    again = to_oft(tiny_model, OFTSettings(chunk_size=4, use_proprio=True), seed=0)
    torch.testing.assert_close(again.proprio_projector.fc1.weight, oft.proprio_projector.fc1.weight)
    assert "proprio_projector.fc1" not in oft.lora_target_modules() and oft.trained_in_full() == ["proprio_projector"]
    with pytest.raises(ValueError, match="already OpenVLA-OFT"):
        to_oft(oft, OFTSettings(chunk_size=8))


def test_bad_settings_are_refused_with_their_field():
    from policy.config import ConfigError
    from policy.tiny import tiny_config_dict

    with pytest.raises(ValueError, match="chunk_size"):
        OFTSettings(chunk_size=0)
    with pytest.raises(ValueError, match="num_images"):
        OFTSettings(num_images=3)
    from policy.config import parse_config
    from policy.tiny import resolve_preset

    raw = tiny_config_dict(resolve_preset("test-oft"), 1000, "test-oft")
    raw["fanvla_oft"]["chunk_sise"] = 3
    with pytest.raises(ConfigError, match="chunk_sise"):
        parse_config(raw)
