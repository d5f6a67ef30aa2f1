"""Memory pre-flight: before a model is loaded, check that its weights (and what the caller needs beside them)
fit the free memory of the device, and say how much is needed and how much is free when they do not.

Free memory: on CUDA ``torch.cuda.mem_get_info``; on the CPU ``MemAvailable`` from /proc/meminfo, lowered to the
cgroup v2 limit (``memory.max - memory.current``) when the process runs in a container with a limit.
``FANVLA_SKIP_MEMORY_CHECK=1`` turns the check into a warning (for when the estimate is wrong, e.g. swap).

``bound_allocator_retention`` keeps glibc from sitting on freed memory: after a large block it hands back, glibc
raises its mmap threshold (up to 32 MB), so later multi-MB temporaries (activations, weight blocks being
converted) come from the heap, which fragments and is not returned. With a 7B model that retention took one LoRA
step past 23 GB and the kernel killed it; on a 4-layer model of the same widths (3.75 GB of weights) it was 1.8 GB
of a 6.4 GB peak, which a fixed 1 MB threshold brought to 4.6 GB (docs/benchmarks.md, scale_7b).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)

SKIP_ENV = "FANVLA_SKIP_MEMORY_CHECK"
GIB = 2**30
_CGROUP = Path("/sys/fs/cgroup")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
ALLOCATOR_MMAP_THRESHOLD_BYTES = 1 << 20


class MemoryPreflightError(ValueError):
    """The weights (plus the caller's estimate of the rest) do not fit the free memory of the device."""


class _Sized(Protocol):
    dtype: torch.dtype
    shape: tuple[int, ...]


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> tuple[int | None, str]:
    """(free bytes or None when unknown, where they were read)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"{device} (torch.cuda.mem_get_info)"
    figures = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
    return (min(figures) if figures else None), "host memory (MemAvailable / cgroup limit)"


def weights_bytes(entries: Iterable[_Sized], dtype: torch.dtype) -> int:
    """Bytes of the tensors once floating ones are converted to ``dtype``."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(entry.shape) * (size if entry.dtype.is_floating_point
                                         else torch.empty((), dtype=entry.dtype).element_size())
               for entry in entries)


def preflight(entries: Iterable[_Sized], dtype: torch.dtype, device: torch.device, reserve_bytes: int,
              what: str) -> int:
    """Raise ``MemoryPreflightError`` when the weights of ``what`` at ``dtype`` plus ``reserve_bytes`` exceed the
    free memory of ``device``; return the bytes needed."""
    weights = weights_bytes(entries, dtype)
    needed = weights + reserve_bytes
    free, source = available_bytes(device)
    if free is None or needed <= free:
        return needed
    rest = f" + {reserve_bytes / GIB:.1f} GiB for the rest of the run" if reserve_bytes else ""
    message = (f"{what}: needs about {needed / GIB:.1f} GiB ({weights / GIB:.1f} GiB of weights in "
               f"{str(dtype).removeprefix('torch.')}{rest}) but only {free / GIB:.1f} GiB are free on {source}. "
               f"Free memory, choose --dtype bf16/auto for half of float32's size, or use a device with more memory "
               f"({SKIP_ENV}=1 skips this check)")
    if os.environ.get(SKIP_ENV) == "1":
        log.warning("%s", message)
        return needed
    raise MemoryPreflightError(message)


def bound_allocator_retention(threshold_bytes: int = ALLOCATOR_MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every allocation above ``threshold_bytes`` with its own mapping, returned to the system when freed
    (glibc's ``mallopt(M_MMAP_THRESHOLD)``, which also stops the threshold from growing; see the module
    docstring). Process-wide; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):
        return False
