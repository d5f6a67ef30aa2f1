"""Resumable training state: ``OUT/checkpoints/step-NNNNNNNN/``.

A checkpoint holds the trainable parameters (``trainable.safetensors``: the LoRA adapter, or every weight for full
finetuning), the optimiser state (``optimizer.pt``, loaded with ``weights_only=True``), each rank's torch RNG
state (``rng-rank<r>.pt``; dropout is the only user, batches are a function of the step) and ``state.json``
(step, training config, fingerprints of the data and the initial weights). It is written under a temporary
name and renamed, so a checkpoint directory is complete or absent; the oldest beyond ``keep`` are removed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
_PREFIX = "step-"


@dataclass(frozen=True)
class SavedState:
    path: Path
    step: int
    state: dict[str, Any]


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / CHECKPOINTS_DIR / f"{_PREFIX}{step:08d}"


def list_checkpoints(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir()
             if path.is_dir() and path.name.startswith(_PREFIX) and (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix(_PREFIX)))


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, step: int, module: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], rng_states: list[dict[str, Any]], keep: int) -> Path:
    """Rank 0 writes; ``rng_states`` holds every rank's RNG state (gathered by the caller)."""
    target = checkpoint_dir(out_dir, step)
    temp = target.with_name(f".{target.name}.writing")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    trainable = {name: p.detach().to("cpu").contiguous() for name, p in module.named_parameters() if p.requires_grad}
    save_file(trainable, str(temp / TRAINABLE_FILE))
    torch.save(optimizer.state_dict(), temp / OPTIMIZER_FILE)
    for rank, rng in enumerate(rng_states):
        torch.save(rng, temp / rng_file(rank))
    (temp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    temp.rename(target)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_state(path: Path) -> SavedState:
    state = json.loads((path / STATE_FILE).read_text())
    return SavedState(path=path, step=int(state["step"]), state=state)


def load_checkpoint(saved: SavedState, module: nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> None:
    """Trainable weights, optimiser state and this rank's RNG state, in place."""
    load_trainable(saved, module)
    optimizer.load_state_dict(torch.load(saved.path / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    rng_path = saved.path / rng_file(rank)
    if rng_path.is_file():
        restore_rng(torch.load(rng_path, weights_only=True))


def load_trainable(saved: SavedState, module: nn.Module) -> None:
    """The checkpoint's trainable weights (LoRA adapter or every weight) into ``module``, in place."""
    tensors = load_file(str(saved.path / TRAINABLE_FILE))
    parameters = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if set(tensors) != set(parameters):
        missing, extra = sorted(set(parameters) - set(tensors)), sorted(set(tensors) - set(parameters))
        raise ValueError(f"{saved.path / TRAINABLE_FILE} does not match the model being trained (missing "
                         f"{missing[:4]}, unexpected {extra[:4]}); was it written with other LoRA/full settings?")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[name].to(parameter.device, parameter.dtype))
