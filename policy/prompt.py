"""The prompt, and the token layout of training examples (the one source of truth for both).

Upstream OpenVLA trains on the text ``In: What action should the robot take to {instruction}?\\nOut: `` followed
by the action string and ``</s>``. With Llama-2's SentencePiece tokenizer the space after ``Out:`` becomes its
own piece ``"▁"`` (id 29871), so the model sees ``... Out : ▁ a1 .. a7 </s>``; at inference
``predict_action`` tokenizes the prompt *without* the trailing space and appends 29871 when it is missing.

We build the same ids directly instead of round-tripping the action string through the tokenizer:

    prompt ids  = tokenizer.encode(build_prompt(instruction))            (starts with BOS)
                  + [id of "▁"] unless the prompt already ends with it     (29871 for Llama-2)
    training    = prompt ids + 7 action ids + [EOS]
    labels      = -100 on the prompt ids, the action ids and EOS supervised (upstream masks all but the
                  last ``action_dim + 1`` tokens)

so training and inference see identical ids. The prompt-end piece is looked up as the token ``"▁"`` of the
tokenizer, so tiny tokenizers built with a SentencePiece-style ``"▁"`` behave the same way.

Importing this module does not import torch (``collate_training_batch`` imports it when called).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

IGNORE_INDEX = -100
PROMPT_END_PIECE = "▁"
LLAMA2_PROMPT_END_TOKEN_ID = 29871


class PromptTokenizer(Protocol):
    """What the prompt helpers need from a tokenizer (any Hugging Face tokenizer provides it)."""

    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def convert_tokens_to_ids(self, token: str) -> int: ...


def build_prompt(instruction: str) -> str:
    """The OpenVLA prompt for an instruction (lowercased, otherwise verbatim like upstream)."""
    if not instruction.strip():
        raise ValueError("the instruction is empty")
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


def prompt_end_token_id(tokenizer: PromptTokenizer) -> int:
    """Id of the ``"▁"`` piece that follows ``Out:`` (29871 for Llama-2)."""
    token_id = tokenizer.convert_tokens_to_ids(PROMPT_END_PIECE)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if token_id is None or token_id == unk_id:
        raise ValueError(f"the tokenizer has no '{PROMPT_END_PIECE}' piece: OpenVLA prompts end with it "
                         f"(Llama-2 id {LLAMA2_PROMPT_END_TOKEN_ID})")
    return int(token_id)


def encode_prompt(tokenizer: PromptTokenizer, instruction: str) -> list[int]:
    """Prompt ids as the model sees them at inference and in training: BOS ... ``Out:`` ``▁``."""
    ids = [int(i) for i in tokenizer.encode(build_prompt(instruction))]
    end_id = prompt_end_token_id(tokenizer)
    if not ids or ids[-1] != end_id:
        ids.append(end_id)
    return ids


@dataclass(frozen=True)
class TrainingExample:
    input_ids: list[int]
    labels: list[int]


def build_training_example(tokenizer: PromptTokenizer, instruction: str,
                           action_token_ids: Sequence[int]) -> TrainingExample:
    """Prompt ids + action ids + EOS; labels supervise only the action ids and EOS (like upstream)."""
    actions = [int(i) for i in action_token_ids]
    if not actions:
        raise ValueError("a training example needs at least one action token")
    prompt = encode_prompt(tokenizer, instruction)
    target = [*actions, int(tokenizer.eos_token_id)]
    return TrainingExample(input_ids=prompt + target, labels=[IGNORE_INDEX] * len(prompt) + target)


def collate_training_batch(examples: Sequence[TrainingExample], pad_token_id: int) -> dict:
    """Right-pads a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` 0 there.

    Returns torch int64 tensors (B, L_max) under the keys ``input_ids``, ``attention_mask``, ``labels``.
    """
    import torch

    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), int(pad_token_id), dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        if len(example.input_ids) != len(example.labels):
            raise ValueError(f"example {row}: {len(example.input_ids)} input ids but {len(example.labels)} labels")
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :size] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
