"""Our implementation against outputs of the official OpenVLA code (../shared/fixtures/openvla/tiny, float32, CPU).

Tolerances: measured maxima are in docs/policy.md; the bounds below leave ~3-5x headroom. Token ids and actions
must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policy.generation import decode_action_tokens
from policy.openvla import OpenVLA

VISION_ATOL = 1e-5
HIDDEN_ATOL = 5e-5
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, openvla_fixtures) -> OpenVLA:
    return OpenVLA.from_pretrained(openvla_fixtures / "tiny", attn_implementation=request.param)


def _inputs(reference, index):
    return (torch.from_numpy(reference[f"input_ids_{index}"]), torch.from_numpy(reference[f"attention_mask_{index}"]),
            torch.from_numpy(reference[f"pixel_values_{index}"]))


def _max_diff(ours: torch.Tensor, theirs: np.ndarray) -> float:
    assert tuple(ours.shape) == theirs.shape
    return float(np.abs(ours.detach().numpy().astype(np.float64) - theirs).max())


@pytest.mark.parametrize("index", [0, 1])
def test_forward_matches_reference(model, fixture_reference, index):
    ref = fixture_reference
    input_ids, attention_mask, pixel_values = _inputs(ref, index)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                    output_hidden_states=True)
    sequence = 1 + 256 + (input_ids.shape[1] - 1)
    assert out.logits.shape == (1, sequence, 32064)
    diffs = {
        "patch_features": _max_diff(out.patch_features, ref[f"patch_features_{index}"]),
        "projector": _max_diff(out.projected_patch_embeddings, ref[f"projected_patch_embeddings_{index}"]),
        "hidden_states": max(_max_diff(h, ref[f"llm_hidden_states_{index}"][k])
                             for k, h in enumerate(out.hidden_states)),
        "logits_text": _max_diff(out.logits[:, ref[f"logits_text_positions_{index}"]], ref[f"logits_text_{index}"]),
        "logits_subset": _max_diff(out.logits[..., ref["logits_vocab_subset_ids"]],
                                   ref[f"logits_vocab_subset_{index}"]),
        "logsumexp": _max_diff(torch.logsumexp(out.logits, dim=-1), ref[f"logits_logsumexp_{index}"]),
        "max": _max_diff(out.logits.max(dim=-1).values, ref[f"logits_max_{index}"]),
    }
    print(f"input {index}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert len(out.hidden_states) == ref[f"llm_hidden_states_{index}"].shape[0]
    assert diffs["patch_features"] < VISION_ATOL and diffs["projector"] < VISION_ATOL
    assert diffs["hidden_states"] < HIDDEN_ATOL
    assert max(diffs["logits_text"], diffs["logits_subset"], diffs["logsumexp"], diffs["max"]) < LOGITS_ATOL
    np.testing.assert_array_equal(out.logits.argmax(dim=-1).numpy(), ref[f"logits_argmax_{index}"])


@pytest.mark.parametrize("index", [0, 1])
def test_generation_matches_reference(model, fixture_reference, index):
    ref = fixture_reference
    input_ids, _, pixel_values = _inputs(ref, index)
    prompt = [input_ids[0].tolist()]
    tokens, step_logits = decode_action_tokens(model, prompt, pixel_values, n_tokens=7)
    diff = _max_diff(step_logits[0], ref[f"generation_step_logits_{index}"])
    print(f"input {index}: generation step logits {diff:.2e}")
    assert diff < LOGITS_ATOL
    np.testing.assert_array_equal(tokens[0].numpy(), ref[f"action_token_ids_{index}"])
    prediction = model.predict_action_from_ids(prompt, pixel_values, unnorm_key="fixture")
    np.testing.assert_array_equal(prediction.token_ids[0], ref[f"action_token_ids_{index}"])
    np.testing.assert_array_equal(prediction.normalized[0], ref[f"normalized_action_{index}"])
    np.testing.assert_allclose(prediction.actions[0], ref[f"action_{index}"], rtol=0, atol=1e-12)


def test_actions_depend_on_the_image(fixture_model, fixture_reference):
    ref = fixture_reference
    prompt = [ref["input_ids_0"][0].tolist()]
    own = fixture_model.predict_action_from_ids(prompt, torch.from_numpy(ref["pixel_values_0"]))
    swapped = fixture_model.predict_action_from_ids(prompt, torch.from_numpy(ref["pixel_values_1"]))
    assert (own.token_ids != swapped.token_ids).all()
    assert np.abs(own.actions - swapped.actions).max() > 1e-3


def test_fixture_without_tokenizer_explains_itself(fixture_model, fixture_reference):
    assert fixture_model.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer files"):
        fixture_model.predict_action([fixture_reference["image_0"]], ["pick up the red block"])
