from __future__ import annotations

import pytest
import torch

from policy.prompt import (
    IGNORE_INDEX,
    build_prompt,
    build_training_example,
    collate_training_batch,
    encode_prompt,
    prompt_end_token_id,
)
from policy.tiny_tokenizer import train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(["pick up the red block", "open the drawer"])[0]


def test_prompt_is_upstream_with_lowercased_instruction():
    assert build_prompt("Pick up the RED block") == ("In: What action should the robot take to pick up the red "
                                                     "block?\nOut:")
    with pytest.raises(ValueError, match="empty"):
        build_prompt("  ")


def test_fixture_prompt_ids_end_with_the_llama_space_piece(fixture_reference):
    # The fixture's ids were tokenised with Llama-2's vocabulary: ... "Out" ":" then 29871 appended.
    ids = fixture_reference["input_ids_0"][0].tolist()
    assert ids[0] == 1 and ids[-3:] == [3744, 29901, 29871]


def test_encode_prompt_appends_the_space_piece_once(tokenizer):
    ids = encode_prompt(tokenizer, "pick up the red block")
    end = prompt_end_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(end) == "▁"
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == end and ids[-2] != end
    assert tokenizer.convert_ids_to_tokens(ids[-3:-1]) == ["Out", ":"]


def test_training_example_supervises_only_actions_and_eos(tokenizer):
    actions = [300, 301, 302, 303, 304, 305, 306]
    example = build_training_example(tokenizer, "Pick up the red block", actions)
    prompt = encode_prompt(tokenizer, "pick up the red block")
    assert example.input_ids == prompt + actions + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt) + actions + [tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="at least one action"):
        build_training_example(tokenizer, "lift", [])


def test_collate_right_pads(tokenizer):
    short = build_training_example(tokenizer, "lift", [300] * 7)
    long = build_training_example(tokenizer, "pick up the red block and open the drawer", [301] * 7)
    batch = collate_training_batch([short, long], pad_token_id=512)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(long.input_ids))
    pad = len(long.input_ids) - len(short.input_ids)
    assert batch["input_ids"][0, -pad:].tolist() == [512] * pad
    assert batch["labels"][0, -pad:].tolist() == [IGNORE_INDEX] * pad
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * pad
    assert batch["attention_mask"][1].all() and batch["labels"].dtype == torch.long
    assert batch["labels"][1].tolist() == long.labels
