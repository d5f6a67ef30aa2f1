"""Multi-process training (``torchrun --nproc-per-node N``): process group, reductions, rank-0-only work.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them a run is one process and every helper
here is a no-op. The backend is NCCL on CUDA and gloo on CPU (used by the 2-process test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def context_from_env() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistContext(rank=int(os.environ.get("RANK", "0")), world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(context: DistContext, device: torch.device) -> None:
    if context.active and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)


def shutdown(context: DistContext) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.active:
        dist.barrier()


def sum_across(context: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (float64 on CPU for gloo; returned on CPU)."""
    if not context.active:
        return values
    device = torch.device(f"cuda:{context.local_rank}") if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = values.to(device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced.cpu()


def gather_objects(context: DistContext, value):
    """Every rank's ``value`` (a picklable object), in rank order, on every rank."""
    if not context.active:
        return [value]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(context: DistContext, value):
    """Rank 0's ``value`` on every rank."""
    if not context.active:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
