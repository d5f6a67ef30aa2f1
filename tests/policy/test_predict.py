from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.generation import ActionPrediction, left_pad
from tests.policy.conftest import random_images

INSTRUCTIONS = ["pick up the red block", "lift", "open the top drawer and put the bowl inside", "push the cube left"]


def test_batch_equals_single_calls(tiny_model):
    images = random_images(len(INSTRUCTIONS), seed=1)
    batch = tiny_model.predict_action(images, INSTRUCTIONS)
    assert batch.actions.shape == (4, 7) and batch.actions.dtype == np.float64
    assert batch.token_ids.shape == (4, 7) and batch.bin_probs.shape == (4, 7, 256)
    assert batch.bin_probs.dtype == np.float32
    for row, (image, instruction) in enumerate(zip(images, INSTRUCTIONS, strict=True)):
        single = tiny_model.predict_action([image], [instruction])
        np.testing.assert_array_equal(single.token_ids[0], batch.token_ids[row])
        np.testing.assert_array_equal(single.actions[0], batch.actions[row])
        np.testing.assert_allclose(single.bin_probs[0], batch.bin_probs[row], atol=1e-6)
        np.testing.assert_allclose(single.action_token_mass[0], batch.action_token_mass[row], atol=1e-6)


def test_prediction_depends_on_the_image(tiny_model):
    first, second = random_images(2, seed=2)
    a = tiny_model.predict_action([first], [INSTRUCTIONS[0]])
    b = tiny_model.predict_action([second], [INSTRUCTIONS[0]])
    assert np.abs(a.bin_probs - b.bin_probs).max() > 1e-4


def test_bin_probabilities_are_in_value_order(fixture_model, fixture_reference):
    prompt = [fixture_reference["input_ids_0"][0].tolist()]
    prediction = fixture_model.predict_action_from_ids(prompt, torch.from_numpy(fixture_reference["pixel_values_0"]))
    np.testing.assert_allclose(prediction.bin_probs.sum(axis=-1), 1.0, atol=1e-5)
    tokenizer = fixture_model.action_tokenizer
    np.testing.assert_array_equal(prediction.bin_probs[0].argmax(axis=-1),
                                  tokenizer.token_to_bin(prediction.token_ids[0]))
    assert ((prediction.action_token_mass > 0) & (prediction.action_token_mass <= 1.0 + 1e-6)).all()
    assert prediction.unnorm_key == "fixture"


def _prediction(bin_probs: np.ndarray, q01: float = -2.0, q99: float = 2.0) -> ActionPrediction:
    from policy.action_tokenizer import ActionTokenizer
    from policy.normalization import ActionStats

    dim = bin_probs.shape[1]
    stats = ActionStats(q01=np.full(dim, q01), q99=np.full(dim, q99), mask=np.array([True] * (dim - 1) + [False]),
                        mean=np.zeros(dim), std=np.ones(dim), min=np.full(dim, q01), max=np.full(dim, q99))
    zeros = np.zeros(bin_probs.shape[:2])
    return ActionPrediction(actions=zeros, normalized=zeros, token_ids=zeros.astype(np.int64), bin_probs=bin_probs,
                            action_token_mass=np.ones_like(zeros), bin_values=ActionTokenizer(512).bin_values,
                            stats=stats, unnorm_key="k")


def test_spread_is_the_std_of_the_bin_distribution_in_action_units():
    probs = np.zeros((1, 2, 256), dtype=np.float32)
    probs[0, :, 10] = 1.0
    np.testing.assert_allclose(_prediction(probs).spread(), 0.0, atol=1e-7)
    probs[0, :, 10], probs[0, :, 0], probs[0, :, 254] = 0.0, 0.5, 0.5
    values = _prediction(probs).bin_values
    half_range = (values[254] - values[0]) / 2
    # masked dimension: scaled by (q99 - q01) / 2 = 2; the unmasked one stays in normalised units
    np.testing.assert_allclose(_prediction(probs).spread()[0], [2.0 * half_range, half_range], rtol=1e-6)


def test_left_padding_aligns_prompt_ends():
    ids, mask = left_pad([[1, 5, 6], [1, 7]], pad_token_id=0)
    assert ids.tolist() == [[1, 5, 6], [0, 1, 7]] and mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_bad_requests_are_explained(tiny_model):
    images = random_images(2)
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        tiny_model.predict_action(images, ["lift"])
    with pytest.raises(ValueError, match="available"):
        tiny_model.predict_action(images[:1], ["lift"], unnorm_key="nope")


def test_sampling_is_reproducible_and_greedy_is_default(tiny_model):
    image = random_images(1, seed=4)
    greedy = tiny_model.predict_action(image, ["lift"])
    np.testing.assert_array_equal(greedy.token_ids, tiny_model.predict_action(image, ["lift"]).token_ids)
    sampled = [tiny_model.predict_action(image, ["lift"], temperature=1.0,
                                         generator=torch.Generator().manual_seed(7)).token_ids for _ in range(2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])


def test_center_crop_changes_what_the_model_sees(tiny_model):
    image = random_images(1, seed=6, shape=(120, 160))
    plain = tiny_model.predict_action(image, ["lift"])
    cropped = tiny_model.predict_action(image, ["lift"], center_crop=True)
    assert np.abs(plain.bin_probs - cropped.bin_probs).max() > 1e-5
