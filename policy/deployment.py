"""How a checkpoint is to be run at the robot: action space, statistics key, centre crop, and its fingerprint.

Finetuned checkpoints carry ``fanvla.json`` (written by finetuning; fields read here: ``action_space`` (a name
or ``ActionSpaceSpec.describe()``), ``unnorm_key``, ``center_crop``, optional ``state_dim`` and
``fingerprints`` (``fingerprints.weights``, when present, is the checkpoint's fingerprint)). A directory
without it (a tiny model from ``init-tiny``, the released openvla-7b) gets sensible defaults: the action
space the operator names (``ee_delta`` unless told), the only statistics key, no centre crop, and a
fingerprint hashed from the weight files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy.action_space import ACTION_DIM, ActionSpace, ActionSpaceSpec, action_space
from policy.model_info import FANVLA_FILE

log = logging.getLogger(__name__)

DEFAULT_ACTION_SPACE = ActionSpace.EE_DELTA
# Weights up to this size are hashed in full (the tiny models: milliseconds). Larger ones (openvla-7b: 15 GB)
# hash their safetensors headers (names, dtypes, shapes, offsets) plus evenly spaced 1 MiB samples of the data.
FULL_HASH_LIMIT_BYTES = 1 << 30
SAMPLE_BLOCKS, SAMPLE_BYTES = 32, 1 << 20


class DeploymentError(ValueError):
    """The checkpoint cannot be served as asked (conflicting action space, unknown statistics key, ...)."""


@dataclass(frozen=True)
class DeploymentInfo:
    action_space: ActionSpaceSpec
    unnorm_key: str
    center_crop: bool
    fingerprint: str  # "sha256:<hex>"
    fingerprint_method: str  # "weights-sha256" | "weights-sampled-sha256" | "fanvla.json (<its method>)"
    checkpoint_name: str
    source: str  # "fanvla.json" or "defaults"
    state_dim: int | None = None
    fingerprints: dict[str, Any] = field(default_factory=dict)  # fanvla.json's block, passed on as it is

    @property
    def checkpoint_id(self) -> str:
        return f"{self.checkpoint_name}@{self.fingerprint.split(':', 1)[-1][:12]}"

    def describe(self) -> dict[str, Any]:
        return {"id": self.checkpoint_id, "name": self.checkpoint_name, "fingerprint": self.fingerprint,
                "fingerprint_method": self.fingerprint_method, "deployment_source": self.source,
                "fingerprints": self.fingerprints}


def read_fanvla_json(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / FANVLA_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DeploymentError(f"{path} cannot be read as JSON ({error}); restore it from the finetuning output") \
            from None
    if not isinstance(document, dict):
        raise DeploymentError(f"{path} must hold a JSON object, got {type(document).__name__}")
    return document


def _action_space_name(value: Any, where: str) -> str:
    name = value.get("name") if isinstance(value, dict) else value
    if not isinstance(name, str):
        raise DeploymentError(f"{where}: action_space must be a name or an object with 'name', got {value!r:.80}")
    return name


def resolve_deployment(model_dir: str | Path, unnorm_keys: Sequence[str], action_dims: dict[str, int], *,
                       action_space_name: str | None = None, unnorm_key: str | None = None,
                       center_crop: bool | None = None) -> DeploymentInfo:
    """The deployment of ``model_dir``: fanvla.json first, the operator's options where it is silent.

    ``unnorm_keys``/``action_dims`` come from the loaded statistics. An option that contradicts fanvla.json
    is refused (serving a joint-delta policy as ee-delta would move the arm wrongly)."""
    directory = Path(model_dir)
    recorded = read_fanvla_json(directory) or {}
    where = str(directory / FANVLA_FILE)
    space = _pick("action space", _action_space_name(recorded["action_space"], where)
                  if "action_space" in recorded else None, action_space_name, DEFAULT_ACTION_SPACE.value, where)
    try:
        spec = action_space(space)
    except ValueError as error:
        raise DeploymentError(str(error)) from None
    key = _pick("unnorm_key", recorded.get("unnorm_key"), unnorm_key, None, where)
    if key is None:
        if len(unnorm_keys) != 1:
            raise DeploymentError(f"{directory} has statistics for several datasets {sorted(unnorm_keys)}; choose one "
                                  f"with --unnorm-key")
        key = unnorm_keys[0]
    if key not in unnorm_keys:
        raise DeploymentError(f"unnorm_key '{key}' is not in {directory}'s statistics; available: "
                              f"{sorted(unnorm_keys)}")
    if action_dims[key] != ACTION_DIM:
        raise DeploymentError(f"statistics '{key}' describe {action_dims[key]}-D actions; the {spec.name.value} action "
                              f"space needs {ACTION_DIM} (6 motion deltas + gripper)")
    crop = _pick("center_crop", recorded.get("center_crop"), center_crop, False, where)
    fingerprints = recorded.get("fingerprints") if isinstance(recorded.get("fingerprints"), dict) else {}
    if isinstance(fingerprints.get("weights"), str):
        recorded_method = fingerprints.get("weights_method")
        fingerprint, method = fingerprints["weights"], f"fanvla.json ({recorded_method})" if recorded_method \
            else "fanvla.json"
    else:
        fingerprint, method = weights_fingerprint(directory)
    state_dim = recorded.get("state_dim")
    return DeploymentInfo(action_space=spec, unnorm_key=key, center_crop=bool(crop), fingerprint=fingerprint,
                          fingerprint_method=method, checkpoint_name=directory.resolve().name,
                          source="fanvla.json" if recorded else "defaults",
                          state_dim=state_dim if isinstance(state_dim, int) and state_dim > 0 else None,
                          fingerprints=fingerprints)


def _pick(what: str, recorded: Any, option: Any, default: Any, where: str) -> Any:
    if recorded is not None and option is not None and recorded != option:
        raise DeploymentError(f"{what} {option!r} was asked for, but {where} says the checkpoint was trained with "
                              f"{recorded!r}; drop the option or use a checkpoint trained for {option!r}")
    if recorded is not None:
        return recorded
    return option if option is not None else default


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DeploymentError(f"{model_dir} has no *.safetensors weights to fingerprint")
    return files


def weights_fingerprint(model_dir: Path) -> tuple[str, str]:
    """("sha256:<hex>", method): the bytes of every weight file, or headers + samples for large checkpoints."""
    files = weight_files(model_dir)
    total = sum(path.stat().st_size for path in files)
    digest = hashlib.sha256()
    full = total <= FULL_HASH_LIMIT_BYTES
    for path in files:
        digest.update(path.name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as handle:
            if full:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            else:
                _hash_sampled(handle, path.stat().st_size, digest)
    return f"sha256:{digest.hexdigest()}", "weights-sha256" if full else "weights-sampled-sha256"


def _hash_sampled(handle, size: int, digest) -> None:
    header_length = int.from_bytes(handle.read(8), "little")
    digest.update(handle.read(min(header_length, size)))  # every tensor's name, dtype, shape and offsets
    data_start = 8 + header_length
    span = max(size - data_start - SAMPLE_BYTES, 0)
    for i in range(SAMPLE_BLOCKS):
        handle.seek(data_start + span * i // max(SAMPLE_BLOCKS - 1, 1))
        digest.update(handle.read(SAMPLE_BYTES))
