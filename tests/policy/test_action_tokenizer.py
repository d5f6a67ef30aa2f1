from __future__ import annotations

import numpy as np
import pytest

from policy.action_tokenizer import OPENVLA_7B_VOCAB_END, ActionTokenizer


@pytest.fixture
def tokenizer() -> ActionTokenizer:
    return ActionTokenizer(vocab_end=OPENVLA_7B_VOCAB_END)


def test_upstream_rule_and_reversed_order(tokenizer):
    assert tokenizer.encode(1.0) == 31744
    assert tokenizer.encode(-1.0) == 31999
    assert tokenizer.encode(0.0) == 32000 - np.digitize(0.0, np.linspace(-1, 1, 256))
    values = np.linspace(-1, 1, 50)
    tokens = tokenizer.encode(values)
    assert (np.diff(tokens) <= 0).all(), "larger actions must give smaller (or equal) ids"
    assert tokens.min() >= 31744 and tokens.max() <= 31999


def test_matches_fixture_tokens_and_bins(tokenizer, fixture_reference):
    ref = fixture_reference
    np.testing.assert_array_equal(tokenizer.bins, ref["bins"])
    np.testing.assert_array_equal(tokenizer.bin_centers, ref["bin_centers"])
    for index in (0, 1):
        tokens = ref[f"action_token_ids_{index}"]
        np.testing.assert_array_equal(tokenizer.decode(tokens), ref[f"normalized_action_{index}"])
        np.testing.assert_array_equal(tokenizer.encode(ref[f"normalized_action_{index}"]), tokens)


def test_round_trip_within_half_a_bin(tokenizer):
    values = np.random.default_rng(0).uniform(-1, 1, size=(1000, 7))
    decoded = tokenizer.decode(tokenizer.encode(values))
    half_bin = (tokenizer.bins[1] - tokenizer.bins[0]) / 2
    assert np.abs(decoded - values).max() <= half_bin + 1e-12
    centers = tokenizer.bin_centers
    np.testing.assert_array_equal(tokenizer.decode(tokenizer.encode(centers)), centers)


def test_out_of_range_is_clipped_and_nan_rejected(tokenizer):
    np.testing.assert_array_equal(tokenizer.encode([5.0, -7.0, np.inf, -np.inf]), [31744, 31999, 31744, 31999])
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode([0.1, np.nan])


def test_decode_clips_non_action_ids_like_upstream(tokenizer):
    assert tokenizer.decode(32010) == tokenizer.bin_centers[0]
    assert tokenizer.decode(5) == tokenizer.bin_centers[-1]
    assert tokenizer.decode(31744) == tokenizer.bin_centers[-1]


def test_bins_are_in_value_order(tokenizer):
    ids = tokenizer.action_token_ids
    assert ids[0] == 31999 and ids[-1] == 31744 and len(ids) == 256
    np.testing.assert_array_equal(tokenizer.token_to_bin(ids), np.arange(256))
    np.testing.assert_array_equal(tokenizer.bin_to_token(np.arange(256)), ids)
    assert (np.diff(tokenizer.bin_values) >= 0).all()
    np.testing.assert_array_equal(tokenizer.bin_values, tokenizer.decode(ids))
    with pytest.raises(ValueError, match="not action tokens"):
        tokenizer.token_to_bin([32000])
    with pytest.raises(ValueError, match="bin indices"):
        tokenizer.bin_to_token([256])


def test_small_vocabulary():
    small = ActionTokenizer(vocab_end=512)
    assert small.encode(-1.0) == 511 and small.encode(1.0) == 256
    with pytest.raises(ValueError, match="vocab_end"):
        ActionTokenizer(vocab_end=100)
