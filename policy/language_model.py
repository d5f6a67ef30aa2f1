"""The LLM half of OpenVLA: a transformers causal LM built from the checkpoint's ``text_config``.

openvla-7b uses Llama-2-7B (vocab padded to 32064); tiny models use a small Llama, and any other causal LM that
transformers can build from a config works the same way. Two things differ between transformers 5.x releases
and are resolved here once: the name of the KV-cache keyword (``past_key_values`` became ``cache``) and the
re-creation of non-persistent buffers (rotary ``inv_freq``) after building on the meta device.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel

DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def build_language_model(text_config: dict, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> PreTrainedModel:
    fields = dict(text_config)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def cache_keyword(language_model: nn.Module) -> str:
    """The forward keyword that takes the KV cache in this transformers version."""
    return _cache_keyword_of(type(language_model))


@functools.cache
def _cache_keyword_of(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def new_cache(language_model: PreTrainedModel) -> DynamicCache:
    return DynamicCache(config=language_model.config)


def materialize_meta_buffers(language_model: PreTrainedModel, device: torch.device) -> None:
    """Give meta-device buffers real storage and recompute them with transformers' own init rule.

    Only non-persistent buffers (rotary ``inv_freq``) can still be on meta after the checkpoint is loaded; they
    are derived from the config, so transformers' ``_init_weights`` recomputes them exactly as its own
    ``from_pretrained`` does.
    """
    for module in language_model.modules():
        meta_names = [name for name, buffer in module.named_buffers(recurse=False) if buffer.is_meta]
        if not meta_names:
            continue
        for name in meta_names:
            module._buffers[name] = torch.empty_like(module._buffers[name], device=device)
        language_model._init_weights(module)
