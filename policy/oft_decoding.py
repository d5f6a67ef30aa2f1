"""Parallel decoding of an OpenVLA-OFT chunk: one forward pass, K x 7 action tokens read off at once.

Each prompt gets n = K x 7 placeholder positions and ``</s>`` (the training layout, ``policy.oft``); the prompts are
left-padded so that every row's block ends at the same column, and the n rows that predict the action tokens are
the n positions from "▁" on. Greedy decoding takes the argmax over the full vocabulary as ``policy.generation``
does (a non-action id decodes with the tokenizer's clipping rule); per token we also return the distribution over
the 256 bins and the probability mass on action tokens. Nothing is fed back: a token never depends on another
token's choice, only on the context (the difference from autoregressive decoding, and why one pass suffices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from policy.generation import ActionPrediction, left_pad
from policy.normalization import normalize, select_unnorm_key, unnormalize

if TYPE_CHECKING:
    from policy.oft import OpenVLAOFT

# ActionPrediction with chunk shapes: actions / normalized / token_ids / action_token_mass (B, K, 7),
# bin_probs (B, K, 7, bins).
ChunkPrediction = ActionPrediction


def chunk_input_ids(model: OpenVLAOFT, prompt_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) (B, L): each prompt + n placeholders (the pad id: their embeddings are zeroed)
    + ``</s>``, left-padded."""
    eos = model.config.text_config.get("eos_token_id", 2)
    tail = [model.pad_token_id] * model.oft.n_action_tokens + [int(eos)]
    return left_pad([list(ids) + tail for ids in prompt_ids], model.pad_token_id)


def normalized_proprio(model: OpenVLAOFT, states, key: str) -> torch.Tensor | None:
    """(B, proprio_dim) states normalised with the checkpoint's proprio statistics; None without proprio."""
    if not model.oft.use_proprio:
        if states is not None and any(state is not None for state in states):
            raise ValueError("this OFT model was trained without proprio: it takes no robot state")
        return None
    stats = model.norm_stats[key].proprio
    if stats is None or stats.dim != model.oft.proprio_dim:
        raise ValueError(f"the checkpoint's statistics '{key}' have no {model.oft.proprio_dim}-D proprio entry "
                         f"(dataset_statistics.json 'proprio'); it cannot normalise the robot state")
    if states is None or any(state is None for state in states):
        raise ValueError(f"this OFT model reads the robot state: pass one {model.oft.proprio_dim}-D state per "
                         f"observation (policy.agent.STATE_LAYOUT)")
    values = np.asarray([np.asarray(state, dtype=np.float64) for state in states])
    if values.ndim != 2 or values.shape[1] != model.oft.proprio_dim:
        raise ValueError(f"states must be (B, {model.oft.proprio_dim}), got {values.shape}")
    return torch.from_numpy(normalize(values, stats)).float()


@torch.no_grad()
def chunk_logits(model: OpenVLAOFT, prompt_ids: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                 proprio: torch.Tensor | None) -> torch.Tensor:
    """(B, n, vocab) float32 logits predicting the n = K x 7 action tokens, from one forward pass."""
    if pixel_values.shape[0] != len(prompt_ids):
        raise ValueError(f"{pixel_values.shape[0]} images but {len(prompt_ids)} prompts")
    n = model.oft.n_action_tokens
    input_ids, attention_mask = chunk_input_ids(model, prompt_ids)
    output = model(input_ids, attention_mask, pixel_values=pixel_values, proprio=proprio, logits_to_keep=n + 2)
    return output.logits[:, :n].float()  # rows "▁", e_1 .. e_(n-1)


def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    flat = torch.softmax(logits.reshape(-1, logits.shape[-1]) / temperature, dim=-1)
    return torch.multinomial(flat.cpu(), 1, generator=generator).reshape(logits.shape[:-1]).to(logits.device)


def predict_chunk(model: OpenVLAOFT, prompt_ids: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                  unnorm_key: str | None = None, states=None, temperature: float = 0.0,
                  generator: torch.Generator | None = None) -> ChunkPrediction:
    if not model.norm_stats:
        raise ValueError("the model has no normalisation statistics: it cannot produce actions in real units")
    key = select_unnorm_key(model.norm_stats, unnorm_key)
    stats = model.norm_stats[key].action
    if stats.dim != model.oft.action_dim:
        raise ValueError(f"statistics '{key}' describe {stats.dim}-D actions, the OFT model {model.oft.action_dim}-D")
    proprio = normalized_proprio(model, states, key)
    logits = chunk_logits(model, prompt_ids, pixel_values, proprio)
    tokens = _choose(logits, temperature, generator)
    tokenizer = model.action_tokenizer
    action_ids = torch.as_tensor(tokenizer.action_token_ids, device=logits.device)
    shape = (len(prompt_ids), model.oft.chunk_size, model.oft.action_dim)
    token_ids = tokens.cpu().numpy().astype(np.int64).reshape(shape)
    normalized = tokenizer.decode(token_ids)
    bin_probs = torch.softmax(logits[..., action_ids], dim=-1).cpu().numpy().astype(np.float32)
    mass = torch.softmax(logits, dim=-1)[..., action_ids].sum(dim=-1).cpu().numpy().astype(np.float32)
    return ChunkPrediction(actions=unnormalize(normalized, stats), normalized=normalized, token_ids=token_ids,
                           bin_probs=bin_probs.reshape(*shape, -1), action_token_mass=mass.reshape(shape),
                           bin_values=tokenizer.bin_values, stats=stats, unnorm_key=key)
