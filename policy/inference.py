"""One OpenVLA instance shared by every caller: the policy server's request threads, or an in-process policy.

Calls are serialised around the model with a lock (the KV cache and torch's intra-op pool are not meant to
be shared by concurrent forward passes) and run under ``torch.inference_mode()``. The time spent waiting
for the lock is reported apart from the inference time, so a busy server shows up as queueing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fanvla import __version__
from policy.action_space import ACTION_DIM
from policy.deployment import DeploymentInfo, resolve_deployment
from policy.oft import OFTSettings
from policy.openvla import OpenVLA
from policy.precision import DTYPE_CHOICES
from policy.protocol import PROTOCOL_VERSION
from policy.server_validation import RequestLimits

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EnginePrediction:
    actions: np.ndarray  # (B, 7) float64, un-normalised; (B, K, 7) action chunks for OpenVLA-OFT
    bin_probs: np.ndarray | None  # (B, 7, bins) float32 when asked for; (B, K, 7, bins) for chunks
    unnorm_key: str
    queue_s: float  # waiting for the model
    inference_s: float  # preprocessing + decoding, inside the lock


class InferenceEngine:
    """``predict`` is safe to call from many threads; ``metadata`` describes what is served."""

    def __init__(self, model: OpenVLA, deployment: DeploymentInfo, threads: int | None = None) -> None:
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            # Process-wide: small models on a few shared cores run fastest with a single intra-op thread.
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.deployment = deployment
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | Path, *, action_space: str | None = None, unnorm_key: str | None = None,
             center_crop: bool | None = None, device: str = "cpu", dtype: str = "auto",
             threads: int | None = None, warmup: bool = True) -> InferenceEngine:
        """``dtype``: a --dtype choice (auto = the checkpoint's own; policy.precision)."""
        if dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
        if threads is not None:
            torch.set_num_threads(threads)  # before loading: loading converts tensors with the same pool
        model = OpenVLA.from_pretrained(model_dir, dtype=dtype, device=device)
        if model.tokenizer is None:
            raise ValueError(f"{model_dir} has no tokenizer files: a policy needs them to read instructions")
        dims = {key: entry.action.dim for key, entry in model.norm_stats.items()}
        deployment = resolve_deployment(model_dir, list(model.norm_stats), dims, action_space_name=action_space,
                                        unnorm_key=unnorm_key, center_crop=center_crop)
        log.info("loaded %s (%s, %s on %s); action space %s, statistics '%s'", deployment.checkpoint_id,
                 deployment.fingerprint_method, _precision_text(model), device, deployment.action_space.name.value,
                 deployment.unnorm_key)
        engine = cls(model, deployment, threads)
        if warmup:
            engine.warmup()
        return engine

    def warmup(self) -> float:
        """One prediction on a blank image, so that the first real request does not pay for lazy initialisation
        (kernel selection, CUDA context, allocator pools); returns its duration in seconds."""
        size = self.model.image_settings.image_size
        blank = np.zeros((size, size, 3), np.uint8)
        state = [np.zeros(self.oft.proprio_dim)] if self.requires_state else None
        return self.predict([blank], ["warm up"], states=state, wrist_images=[blank] if self.reads_wrist else None
                            ).inference_s

    @property
    def unnorm_keys(self) -> list[str]:
        return sorted(self.model.norm_stats)

    @property
    def checkpoint_id(self) -> str:
        return self.deployment.checkpoint_id

    @property
    def oft(self) -> OFTSettings | None:
        """The OpenVLA-OFT settings of the model (chunk size, inputs), None for single actions."""
        return getattr(self.model, "oft", None)

    @property
    def chunk_size(self) -> int:
        return self.oft.chunk_size if self.oft is not None else 1

    @property
    def requires_state(self) -> bool:
        return bool(self.oft is not None and self.oft.use_proprio)

    @property
    def reads_wrist(self) -> bool:
        return bool(self.oft is not None and self.oft.uses_wrist)

    def input_limits(self, given: RequestLimits | None = None) -> dict[str, Any]:
        """The request fields a server must check for this model: the state size (unless ``given`` fixes one),
        whether the state and a wrist image are required."""
        state_dim = (given.state_dim if given is not None else None) or self.deployment.state_dim
        if self.requires_state:
            state_dim = self.oft.proprio_dim
        return {"state_dim": state_dim, "requires_state": self.requires_state, "wrist_image": self.reads_wrist}

    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str], unnorm_key: str | None = None,
                return_probs: bool = False, *, states: Sequence[np.ndarray | None] | None = None,
                wrist_images: Sequence[np.ndarray] | None = None) -> EnginePrediction:
        """Actions for B RGB uint8 images and B instructions (greedy decoding), with the deployment's crop; an
        OpenVLA-OFT model answers (B, K, 7) chunks and reads ``states`` / ``wrist_images`` when trained with them
        (a model that does not read the state ignores it)."""
        key = unnorm_key or self.deployment.unnorm_key
        inputs: dict[str, Any] = {}
        if self.oft is not None:
            inputs = {"states": list(states) if self.requires_state and states is not None else None,
                      "wrist_images": list(wrist_images) if self.reads_wrist and wrist_images is not None else None}
        waiting_since = time.perf_counter()
        with self._lock:
            started = time.perf_counter()
            with torch.inference_mode():
                prediction = self.model.predict_action(list(images), list(instructions), unnorm_key=key,
                                                       center_crop=self.deployment.center_crop, **inputs)
            finished = time.perf_counter()
        return EnginePrediction(actions=np.asarray(prediction.actions, dtype=np.float64),
                                bin_probs=prediction.bin_probs if return_probs else None,
                                unnorm_key=prediction.unnorm_key, queue_s=started - waiting_since,
                                inference_s=finished - started)

    def metadata(self) -> dict[str, Any]:
        """What /metadata serves (the server adds its limits and formats)."""
        deployment, model = self.deployment, self.model
        size = model.image_settings.image_size
        return {
            "protocol_version": PROTOCOL_VERSION,
            "software_version": __version__,
            "checkpoint": {**deployment.describe(),
                           "tiny_preset": (model.config.raw.get("fanvla_tiny_preset") or {}).get("name")},
            "action_space": deployment.action_space.describe(),
            "action_dim": ACTION_DIM,
            # Actions per prediction: 1 (OpenVLA) or K (OpenVLA-OFT: /act answers (K, 7) chunks).
            "chunk_size": self.chunk_size,
            "inputs": {"state": self.requires_state, "wrist_image": self.reads_wrist},
            "n_action_bins": model.config.n_action_bins,
            "unnorm_key": deployment.unnorm_key,
            "unnorm_keys": self.unnorm_keys,
            "center_crop": deployment.center_crop,
            "image_size": size,
            "image": {"input": "RGB uint8 (H, W, 3), any size", "model_input_px": [size, size],
                      "resize": "whole image to the model size, bicubic (resize-naive)",
                      "center_crop": deployment.center_crop},
            "state_dim": self.input_limits()["state_dim"],
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "compute_dtype": str(model.input_dtype).removeprefix("torch."),
        }


def _precision_text(model: OpenVLA) -> str:
    weights, compute = (str(d).removeprefix("torch.") for d in (model.dtype, model.input_dtype))
    return weights if weights == compute else f"{weights} weights, {compute} compute"
