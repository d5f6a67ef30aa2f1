"""The VLA as a PPO actor-critic: action tokens sampled over the 256 bins, their log-probabilities, and a value head
on the VLA's last hidden state.

The value head reads the final (normed) hidden state at the last prompt position, the position whose logits predict
the first action token: it has seen the image and the instruction and nothing of the action (RL4VLA's choice). It is
a two-layer MLP that belongs to the RL run, not to the policy: a served policy has no value head.

Sampling (``act``) decodes the 7 tokens one by one with the KV cache, each drawn from ``softmax(action logits /
temperature)``, the action tokens only (an action is 7 action tokens; a non-action token has no meaning in the twin).
Training (``evaluate``) recomputes the same 7 distributions in one teacher-forced pass over prompt + chosen tokens;
both give the same log-probabilities up to float rounding (tests/finetune/test_rl_actor_critic.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from finetune.losses import action_token_ids_in_bin_order
from policy.generation import left_pad
from policy.language_model import cache_keyword, new_cache
from policy.openvla import OpenVLA
from policy.prompt import encode_prompt

ACTION_TOKENS = 7


class ValueHead(nn.Module):
    """hidden (B, H) -> value (B,): Linear - GELU - Linear; the last layer starts at zero (V = 0 before training)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size)
        self.fc2 = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(hidden.float()))).squeeze(-1)


@dataclass
class ActionSample:
    bins: torch.Tensor  # (B, 7) chosen bins (bin 0 = most negative value)
    log_probs: torch.Tensor  # (B,) sum of the 7 tokens' log-probabilities
    values: torch.Tensor  # (B,)
    action_logits: torch.Tensor  # (B, 7, n_bins) in bin order, float32


@dataclass
class ActionEvaluation:
    action_logits: torch.Tensor  # (B, 7, n_bins) in bin order, float32, with gradients
    values: torch.Tensor  # (B,)


class ActorCritic(nn.Module):
    """``vla``: the OpenVLA whose layers train (LoRA layers injected by peft, or every weight); ``trainable``: the
    module holding the trainable parameters (the peft wrapper, or ``vla`` itself)."""

    def __init__(self, vla: OpenVLA, trainable: nn.Module, center_crop: bool = False) -> None:
        super().__init__()
        self.vla = vla
        self._peft = [trainable] if trainable is not vla else []  # a list: not a second registration of vla
        hidden = vla.language_model.config.get_text_config().hidden_size
        self.value_head = ValueHead(hidden).to(vla.device)
        self.center_crop = center_crop
        self.register_buffer("action_ids", action_token_ids_in_bin_order(vla.action_tokenizer, vla.device),
                             persistent=False)
        self._prompts: dict[str, list[int]] = {}

    @property
    def peft(self) -> nn.Module:
        """The peft wrapper of a LoRA run (save / merge the adapters)."""
        if not self._peft:
            raise ValueError("this actor finetunes every weight: it has no LoRA adapters")
        return self._peft[0]

    # -------------------------------------------------------------------------------------------- inputs
    def prompt_ids(self, instructions: Sequence[str]) -> list[list[int]]:
        """Prompt ids per instruction (encoded once per distinct instruction)."""
        out = []
        for text in instructions:
            if text not in self._prompts:
                self._prompts[text] = encode_prompt(self.vla.tokenizer, text)
            out.append(self._prompts[text])
        return out

    def pixel_values(self, images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        return self.vla.preprocess(list(images), center_crop=self.center_crop)

    # -------------------------------------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, pixel_values: torch.Tensor, prompt_ids: Sequence[Sequence[int]], temperature: float = 1.0,
            generator: torch.Generator | None = None) -> ActionSample:
        """Sample (``temperature`` > 0) or take the mode (``temperature`` = 0) of each of the 7 action tokens. The
        log-probabilities are those of the distribution sampled, softmax(logits / temperature); ``action_logits`` are
        the model's own (untempered)."""
        vla = self.vla
        input_ids, attention_mask = left_pad(prompt_ids, vla.pad_token_id)
        _, projected = vla.image_embeddings(pixel_values)
        inputs = vla.multimodal_inputs(input_ids, attention_mask, projected)
        cache = new_cache(vla.language_model)
        keyword = cache_keyword(vla.language_model)
        mask, positions = inputs.attention_mask, inputs.position_ids
        output = vla.language_model(inputs_embeds=inputs.embeds, attention_mask=mask, position_ids=positions,
                                    use_cache=True, output_hidden_states=True, logits_to_keep=1, **{keyword: cache})
        values = self.value_head(output.hidden_states[-1][:, -1])
        logits = output.logits[:, -1]
        bins, step_logits = [], []
        for step in range(ACTION_TOKENS):
            action_logits = logits[:, self.action_ids].float()
            step_logits.append(action_logits)
            bins.append(_choose(action_logits, temperature, generator))
            if step == ACTION_TOKENS - 1:
                break
            token = self.action_ids[bins[-1]]
            embeds = vla.get_input_embeddings()(token[:, None]).to(inputs.embeds.dtype)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            logits = vla.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        use_cache=True, logits_to_keep=1, **{keyword: cache}).logits[:, -1]
        chosen = torch.stack(bins, dim=1)
        stacked = torch.stack(step_logits, dim=1)
        log_pi = torch.log_softmax(stacked / temperature if temperature > 0 else stacked, dim=-1)
        return ActionSample(chosen, log_pi.gather(-1, chosen.unsqueeze(-1)).squeeze(-1).sum(-1), values, stacked)

    @torch.no_grad()
    def value(self, pixel_values: torch.Tensor, prompt_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """V(s) alone (the bootstrap value after a rollout)."""
        vla = self.vla
        input_ids, attention_mask = left_pad(prompt_ids, vla.pad_token_id)
        output = vla(input_ids, attention_mask, pixel_values=pixel_values, output_hidden_states=True,
                     logits_to_keep=1)
        return self.value_head(output.hidden_states[-1][:, -1])

    # -------------------------------------------------------------------------------------------- training
    def evaluate(self, pixel_values: torch.Tensor, prompt_ids: Sequence[Sequence[int]],
                 bins: torch.Tensor) -> ActionEvaluation:
        """The 7 action distributions given the chosen tokens (teacher forcing) and V(s), with gradients."""
        vla = self.vla
        tokens = self.action_ids[bins.to(self.action_ids.device)].tolist()
        sequences = [list(prompt) + list(chosen) for prompt, chosen in zip(prompt_ids, tokens, strict=True)]
        input_ids, attention_mask = left_pad(sequences, vla.pad_token_id)
        # Rows end together (left padding): the last 8 positions are the last prompt token and the 7 action tokens;
        # the first 7 of them predict the action tokens.
        output = vla(input_ids, attention_mask, pixel_values=pixel_values, output_hidden_states=True,
                     logits_to_keep=ACTION_TOKENS + 1)
        action_logits = output.logits[:, :ACTION_TOKENS][..., self.action_ids].float()
        values = self.value_head(output.hidden_states[-1][:, -(ACTION_TOKENS + 1)])
        return ActionEvaluation(action_logits, values)


def _choose(action_logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0.0:
        return action_logits.argmax(dim=-1)
    probs = torch.softmax(action_logits / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(action_logits.device)
