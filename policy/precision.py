"""Which dtype a model's weights are held in, and which dtype it computes in, on which device.

``--dtype`` (``fanvla finetune``, ``serve``, ``policy predict``, ``eval run``) takes:

- ``auto``: the checkpoint's own dtype (config.json ``torch_dtype``, else its safetensors files): bf16 for
  openvla-7b, float32 for the tiny models;
- ``bf16`` / ``fp32``: that dtype, whatever the checkpoint holds.

bf16 weights compute in bf16 where the device has bf16 arithmetic (CUDA compute capability >= 8.0; CPUs with
AVX512-BF16 / AMX or at least AVX-512, which oneDNN uses). Elsewhere a bf16 matmul runs in a scalar fallback:
on the AVX2-only CPU this project is developed on, 0.55 GFLOP/s against 43-66 GFLOP/s in float32 (one thread,
docs/benchmarks.md), i.e. hours for one 7B forward. So:

- an explicit ``bf16`` request on such a device is refused with a message saying why and what to use instead;
- ``auto`` on a bf16 checkpoint keeps the weights in bf16 (half the memory: the 7B fits 24 GiB) and computes in
  float32, converting the weights piece by piece as they are used (``policy.upcast``), so memory stays at the
  bf16 size.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Importing this module does not import torch, so the command line can offer the choices cheaply.
DTYPE_CHOICES = ("auto", "bf16", "fp32")


class PrecisionError(ValueError):
    """A dtype that this device cannot run, or an unknown dtype name."""


@dataclass(frozen=True)
class Precision:
    """``weights``: the dtype parameters are stored in; ``compute``: the dtype activations flow in."""

    weights: torch.dtype
    compute: torch.dtype

    @property
    def upcast(self) -> bool:
        return self.weights != self.compute

    def describe(self) -> str:
        name = str(self.weights).removeprefix("torch.")
        if self.upcast:
            return f"{name} weights, {str(self.compute).removeprefix('torch.')} compute"
        return name


def checkpoint_dtype(model_dir: str | Path) -> torch.dtype:
    """The dtype a model directory was saved in: config.json ``torch_dtype``, else the most common floating dtype
    of its safetensors headers, else float32."""
    import torch

    from policy.safetensors_io import read_header

    names = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if config_path.is_file():
        try:
            name = json.loads(config_path.read_text()).get("torch_dtype")
        except (OSError, ValueError):
            name = None
        if name in names:
            return names[name]

    counts: Counter[torch.dtype] = Counter()
    for path in sorted(model_dir.glob("model*.safetensors")):
        for entry in read_header(path).entries.values():
            if entry.dtype.is_floating_point:
                counts[entry.dtype] += entry.nbytes
    return counts.most_common(1)[0][0] if counts else torch.float32


@functools.cache
def _cpu_has_bf16() -> bool:
    import torch

    # oneDNN's own test: AVX-512 (core) or better, which is what its bf16 kernels need.
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic (not a scalar emulation)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return _cpu_has_bf16()
    return False


def _device_description(device: torch.device) -> str:
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor})"
    if device.type == "cpu":
        return f"this CPU (torch kernels: {torch.backends.cpu.get_cpu_capability()}, no AVX-512/AMX bf16)"
    return str(device)


def resolve_precision(choice: str, model_dir: str | Path, device: str | torch.device) -> Precision:
    """The precision a ``--dtype`` choice means for this checkpoint on this device (see the module docstring)."""
    import torch

    if choice not in DTYPE_CHOICES:
        raise PrecisionError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got {choice!r}")
    device = torch.device(device)
    if choice == "fp32":
        return Precision(torch.float32, torch.float32)
    if choice == "bf16":
        if not native_bf16(device):
            raise PrecisionError(
                f"--dtype bf16: {_device_description(device)} has no bf16 arithmetic; its bf16 matmuls run in a "
                f"scalar fallback about 100x slower than float32. Use --dtype auto (bf16 weights, float32 compute: "
                f"half the memory of fp32) or --dtype fp32, or run on a GPU with compute capability >= 8.0")
        return Precision(torch.bfloat16, torch.bfloat16)
    saved = checkpoint_dtype(model_dir)
    if saved == torch.bfloat16:
        return Precision(torch.bfloat16, torch.bfloat16 if native_bf16(device) else torch.float32)
    return Precision(torch.float32, torch.float32)  # float32 as saved; float16 checkpoints are widened
