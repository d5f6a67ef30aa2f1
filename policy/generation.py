"""Batched action decoding: left-padded prompts, one multimodal prefill, then one cached step per action dimension.

Greedy decoding takes the argmax over the *full* vocabulary, like upstream ``generate``; a non-action id decodes
with the tokenizer's clipping rule. Alongside the tokens we return, per step, the probability distribution over
the 256 action bins (softmax over the action-token logits only, in bin = value order) and the probability mass the
full-vocabulary softmax puts on action tokens at all (a trained policy has ~1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from policy.language_model import cache_keyword, new_cache
from policy.normalization import ActionStats, select_unnorm_key, unnormalize

if TYPE_CHECKING:
    from policy.openvla import OpenVLA


@dataclass(frozen=True)
class ActionPrediction:
    """B predictions of a D-dimensional action (D = 7 for OpenVLA's end-effector actions)."""

    actions: np.ndarray  # (B, D) float64, un-normalised with the statistics of unnorm_key
    normalized: np.ndarray  # (B, D) float64 in [-1, 1] (bin centres)
    token_ids: np.ndarray  # (B, D) int64
    bin_probs: np.ndarray  # (B, D, n_bins) float32, bin order (bin 0 = most negative value)
    action_token_mass: np.ndarray  # (B, D) float32: full-vocabulary probability of any action token
    bin_values: np.ndarray  # (n_bins,) normalised value of each bin
    stats: ActionStats
    unnorm_key: str

    def normalized_std(self) -> np.ndarray:
        """(B, D) standard deviation of the bin distribution, in normalised units."""
        mean = (self.bin_probs * self.bin_values).sum(axis=-1, keepdims=True)
        return np.sqrt((self.bin_probs * (self.bin_values - mean) ** 2).sum(axis=-1))

    def spread(self) -> np.ndarray:
        """(B, D) standard deviation of the bin distribution in action units (q01/q99 scale on masked dims)."""
        scale = np.where(self.stats.mask, 0.5 * (self.stats.q99 - self.stats.q01), 1.0)
        return self.normalized_std() * scale


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, L_max), prompts aligned to the right so they all end together."""
    if not prompt_ids or any(len(ids) == 0 for ids in prompt_ids):
        raise ValueError("every prompt needs at least one token (BOS)")
    length = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids), length), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, length - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask


def _choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _language_model_step(model: OpenVLA, cache, **inputs) -> torch.Tensor:
    """Last-position logits; with a cache only the new positions are computed, without one the whole sequence."""
    cached = {"use_cache": True, cache_keyword(model.language_model): cache} if cache is not None \
        else {"use_cache": False}
    output = model.language_model(logits_to_keep=1, **cached, **inputs)
    return output.logits[:, -1]


@torch.no_grad()
def decode_action_tokens(model: OpenVLA, prompt_ids: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                         n_tokens: int, temperature: float = 0.0, generator: torch.Generator | None = None,
                         use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids (B, n_tokens), raw logits of every step (B, n_tokens, vocab) float32). With ``use_cache`` (the
    default) the prompt and image are computed once and each further token reuses their keys and values; without
    it every step recomputes the whole sequence (the baseline ``bench/scale_7b.py`` compares against)."""
    if pixel_values.shape[0] != len(prompt_ids):
        raise ValueError(f"{pixel_values.shape[0]} images but {len(prompt_ids)} prompts")
    input_ids, attention_mask = left_pad(prompt_ids, model.pad_token_id)
    _, projected = model.image_embeddings(pixel_values)
    inputs = model.multimodal_inputs(input_ids, attention_mask, projected)
    cache = new_cache(model.language_model) if use_cache else None
    embeds, mask, positions = inputs.embeds, inputs.attention_mask, inputs.position_ids
    logits = _language_model_step(model, cache, inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    tokens, step_logits = [], []
    for step in range(n_tokens):
        step_logits.append(logits.float())
        tokens.append(_choose(logits, temperature, generator))
        if step == n_tokens - 1:
            break
        new_embeds = model.get_input_embeddings()(tokens[-1][:, None]).to(embeds.dtype)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        new_positions = positions[:, -1:] + 1
        if use_cache:
            embeds, positions = new_embeds, new_positions
        else:
            embeds = torch.cat([embeds, new_embeds], dim=1)
            positions = torch.cat([positions, new_positions], dim=1)
        logits = _language_model_step(model, cache, inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    return torch.stack(tokens, dim=1), torch.stack(step_logits, dim=1)


def predict_from_ids(model: OpenVLA, prompt_ids: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                     unnorm_key: str | None = None, temperature: float = 0.0,
                     generator: torch.Generator | None = None, use_cache: bool = True) -> ActionPrediction:
    if not model.norm_stats:
        raise ValueError("the model has no normalisation statistics: it cannot produce actions in real units")
    key = select_unnorm_key(model.norm_stats, unnorm_key)
    stats = model.norm_stats[key].action
    tokens, step_logits = decode_action_tokens(model, prompt_ids, pixel_values, stats.dim, temperature, generator,
                                               use_cache)
    action_tokenizer = model.action_tokenizer
    action_ids = torch.as_tensor(action_tokenizer.action_token_ids, device=step_logits.device)
    full_probs = torch.softmax(step_logits, dim=-1)
    token_ids = tokens.cpu().numpy().astype(np.int64)
    normalized = action_tokenizer.decode(token_ids)
    return ActionPrediction(
        actions=unnormalize(normalized, stats),
        normalized=normalized,
        token_ids=token_ids,
        bin_probs=torch.softmax(step_logits[..., action_ids], dim=-1).cpu().numpy().astype(np.float32),
        action_token_mass=full_probs[..., action_ids].sum(dim=-1).cpu().numpy().astype(np.float32),
        bin_values=action_tokenizer.bin_values,
        stats=stats,
        unnorm_key=key,
    )
