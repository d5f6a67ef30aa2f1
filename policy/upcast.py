"""bf16 weights, float32 arithmetic: how a model held in bf16 runs on a device without bf16 arithmetic.

On such a CPU a bf16 matmul runs in a scalar fallback (about 100x slower than float32, ``policy.precision``), so
the arithmetic has to be float32 while the weights stay bf16 (half the memory: the 7B fits 24 GiB). Every use of a
weight then pays for its conversion: on the AVX2 CPU this project is developed on, converting the 7B's weights
once takes about a minute on 2 busy cores, so every forward pass (each decoded action token too) costs at least
that (docs/benchmarks.md, scale_7b). What this module bounds is memory:

- ``nn.Linear`` (almost all the weights): ``blockwise_linear`` converts the weight a few hundred rows at a time
  (a block of about 8 MB) and multiplies each block straight away; the backward pass does the same for the
  input's gradient and keeps only the bf16 weight. Converting whole matrices instead would hold a float32 copy of
  the layer, and autograd would keep every layer's copy until the backward pass (the whole model in float32).
  The weight takes no gradient: bf16 weights are the frozen base (LoRA adapters and full finetuning are float32).
- ``nn.Embedding``: looks rows up in bf16 and converts only the rows it returns.
- every other module with bf16 parameters (norms, the patch-embedding convolution, LayerScale, position
  embeddings, attention-pool heads: all small): a forward pre-hook swaps in float32 copies of its own parameters
  and a forward hook puts the bf16 ones back.

The result equals a float32 model holding the same (bf16-rounded) weights up to float32 summation order
(tests/policy/test_precision.py). Forwards are replaced per instance, so the modules keep their types: peft still
wraps the Linear layers, merges into their bf16 weights in place, and state dicts are unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_BYTES = 8 * 2**20  # float32 bytes of one converted weight block
_MARK = "_fanvla_upcast"


def _block_rows(in_features: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(in_features, 1)))


class _BlockwiseLinear(torch.autograd.Function):
    """y = x W^T + b with W (and b) in bf16 converted block by block; gradient for x only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = _block_rows(weight.shape[1])
        x = x.float()
        out = x.new_empty((*x.shape[:-1], weight.shape[0]))
        for start in range(0, weight.shape[0], rows):
            block = slice(start, start + rows)
            out[..., block] = F.linear(x, weight[block].float(), None if bias is None else bias[block].float())
        ctx.save_for_backward(weight)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight,) = ctx.saved_tensors
        rows = _block_rows(weight.shape[1])
        grad_in = None
        for start in range(0, weight.shape[0], rows):
            block = slice(start, start + rows)
            part = grad_out[..., block].float() @ weight[block].float()
            grad_in = part if grad_in is None else grad_in.add_(part)
        return grad_in, None, None


def blockwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("blockwise bf16 linear layers are frozen: train float32 weights (full finetuning holds "
                           "float32 masters) or LoRA adapters")
    return _BlockwiseLinear.apply(x, weight, bias)


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if self.weight.dtype == torch.bfloat16:
        return blockwise_linear(x, self.weight, self.bias)
    bias = None if self.bias is None else self.bias.to(self.weight.dtype)  # a float32 weight beside a bf16 bias
    return F.linear(x, self.weight, bias)


def _embedding_forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                       self.sparse).float()


def _upcast_parameters(module: nn.Module, _inputs) -> None:
    stored = {}
    for name, parameter in module._parameters.items():
        if parameter is not None and parameter.dtype == torch.bfloat16:
            stored[name] = parameter
            module._parameters[name] = nn.Parameter(parameter.float(), requires_grad=False)
    module._fanvla_stored = stored


def _restore_parameters(module: nn.Module, _inputs, _output) -> None:
    for name, parameter in getattr(module, "_fanvla_stored", {}).items():
        module._parameters[name] = parameter
    module._fanvla_stored = {}


def _has_bf16(module: nn.Module) -> bool:
    return any(p is not None and p.dtype == torch.bfloat16 for p in module._parameters.values())


def upcast_compute(model: nn.Module) -> int:
    """Make every module of ``model`` with bf16 parameters compute in float32 (see the module docstring); those
    parameters are frozen (they take no gradient). Returns the number of modules changed; calling it again changes
    nothing."""
    changed = 0
    for module in model.modules():
        if getattr(module, _MARK, False) or not _has_bf16(module):
            continue
        for parameter in module._parameters.values():
            if parameter is not None and parameter.dtype == torch.bfloat16:
                parameter.requires_grad_(False)
        if type(module) is nn.Linear:
            module.forward = types.MethodType(_linear_forward, module)
        elif type(module) is nn.Embedding:
            module.forward = types.MethodType(_embedding_forward, module)
        else:
            module.register_forward_pre_hook(_upcast_parameters)
            module.register_forward_hook(_restore_parameters, always_call=True)
        setattr(module, _MARK, True)
        changed += 1
    return changed
