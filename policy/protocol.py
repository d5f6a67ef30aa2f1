"""The policy server's HTTP protocol: paths, request and reply layouts, shared by ``policy.server`` and
``policy.client`` so both sides encode exactly the same thing (numpy only: no torch here).

``POST /act`` with ``Content-Type: application/msgpack`` (the envelope of ``policy.wire``)::

    {"observation": {"image": <uint8 (H, W, 3) array or JPEG/PNG>, "instruction": str, "state": <float (D,)>?,
                     "wrist_image": <like image>?},
     "unnorm_key": str?, "return_probs": bool?}
    # or a batch (the model runs it as one batch):
    {"observations": [<observation>, ...], "unnorm_key": str?, "return_probs": bool?}

``state`` is required by a checkpoint that reads the robot state (OpenVLA-OFT with proprio), ``wrist_image`` by
one trained with a wrist camera (and refused by the others); ``/metadata`` says which (``inputs``).

The reply (msgpack) holds ``action`` (7,) float64 (``actions`` (B, 7) for a batch), ``bin_probs`` (7, 256)
float32 (B, 7, 256) when asked for, ``unnorm_key``, ``checkpoint_id`` and ``timing`` (seconds, measured by the
server: ``decode_s``, ``queue_s``, ``inference_s``, ``total_s``), also sent as a ``Server-Timing`` header. A
checkpoint that predicts action chunks (OpenVLA-OFT, ``/metadata`` ``chunk_size`` K) answers in the same envelope
with one more axis: ``action`` (K, 7), ``actions`` (B, K, 7), ``bin_probs`` (K, 7, 256) or (B, K, 7, 256).

``POST /act`` with ``Content-Type: application/json`` is upstream OpenVLA's json_numpy request
``{"image", "instruction", "unnorm_key"?}`` (also double-encoded; ``state`` and ``wrist_image`` may be added for
the checkpoints that read them); the reply is the bare json_numpy action, as upstream clients expect: (7,), or the
(K, 7) chunk. Errors are always ``application/json``: ``{"error": {"status", "type", "field",
"message"}}`` with a 4xx status for anything the client sent, 5xx only for the server's own failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from policy.wire import EncodedImage, WireError, decode, encode

PROTOCOL_VERSION = 1
ACT_PATH, HEALTH_PATH, METADATA_PATH = "/act", "/health", "/metadata"

OBSERVATION, OBSERVATIONS = "observation", "observations"
IMAGE, INSTRUCTION, STATE, WRIST_IMAGE = "image", "instruction", "state", "wrist_image"
UNNORM_KEY, RETURN_PROBS = "unnorm_key", "return_probs"
REQUEST_FIELDS = frozenset({OBSERVATION, OBSERVATIONS, UNNORM_KEY, RETURN_PROBS})
OBSERVATION_FIELDS = frozenset({IMAGE, INSTRUCTION, STATE, WRIST_IMAGE})
UPSTREAM_FIELDS = frozenset({IMAGE, INSTRUCTION, UNNORM_KEY, STATE, WRIST_IMAGE})
TIMING_FIELDS = ("decode_s", "queue_s", "inference_s", "total_s")

ImageFormat = Literal["raw", "png", "jpeg"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("raw", "png", "jpeg")


class ProtocolError(ValueError):
    """A reply that does not have the layout of this protocol (a different server, a proxy's page, ...)."""


def wire_image(image: np.ndarray, image_format: ImageFormat, jpeg_quality: int = 90) -> np.ndarray | EncodedImage:
    """How an image travels: the raw array (exact, largest), PNG (exact, slower to encode) or JPEG (lossy)."""
    if image_format == "raw":
        return np.ascontiguousarray(image)
    if image_format in ("png", "jpeg"):
        return EncodedImage.from_array(np.asarray(image), image_format, quality=jpeg_quality)
    raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")


def observation_message(image: np.ndarray, instruction: str, state: np.ndarray | None = None,
                        image_format: ImageFormat = "raw", jpeg_quality: int = 90,
                        wrist_image: np.ndarray | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {IMAGE: wire_image(image, image_format, jpeg_quality), INSTRUCTION: instruction}
    if state is not None:
        message[STATE] = np.asarray(state, dtype=np.float64)
    if wrist_image is not None:
        message[WRIST_IMAGE] = wire_image(wrist_image, image_format, jpeg_quality)
    return message


def encode_act_request(images: Sequence[np.ndarray], instructions: Sequence[str],
                       states: Sequence[np.ndarray | None] | None = None, *, batch: bool,
                       unnorm_key: str | None = None, return_probs: bool = False,
                       image_format: ImageFormat = "raw", jpeg_quality: int = 90,
                       wrist_images: Sequence[np.ndarray] | None = None) -> bytes:
    """The msgpack body of ``POST /act``; ``batch=False`` needs exactly one observation."""
    if len(images) != len(instructions) or (states is not None and len(states) != len(images)) or \
            (wrist_images is not None and len(wrist_images) != len(images)):
        raise ValueError(f"{len(images)} images, {len(instructions)} instructions, "
                         f"{'no' if states is None else len(states)} states and "
                         f"{'no' if wrist_images is None else len(wrist_images)} wrist images: give one of each per "
                         f"observation")
    if not batch and len(images) != 1:
        raise ValueError(f"a single request carries one observation, got {len(images)}; use a batch")
    observations = [observation_message(image, text, None if states is None else states[i], image_format,
                                        jpeg_quality, None if wrist_images is None else wrist_images[i])
                    for i, (image, text) in enumerate(zip(images, instructions, strict=True))]
    message: dict[str, Any] = {OBSERVATIONS: observations} if batch else {OBSERVATION: observations[0]}
    if unnorm_key is not None:
        message[UNNORM_KEY] = unnorm_key
    if return_probs:
        message[RETURN_PROBS] = True
    return encode(message)


@dataclass(frozen=True)
class ActReply:
    """What ``/act`` answered, always batched here: ``actions`` (B, 7), ``bin_probs`` (B, 7, bins) or None; for a
    chunk-predicting checkpoint ``actions`` (B, K, 7) and ``bin_probs`` (B, K, 7, bins)."""

    actions: np.ndarray
    bin_probs: np.ndarray | None
    unnorm_key: str
    checkpoint_id: str
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def action(self) -> np.ndarray:
        """The single observation's action (7,) (its chunk (K, 7) for a chunk-predicting checkpoint)."""
        return self.actions[0]


def encode_act_reply(reply: ActReply, batch: bool) -> bytes:
    """Server side: the msgpack reply of a single (``action``) or batched (``actions``) request."""
    message: dict[str, Any] = {"actions" if batch else "action": reply.actions if batch else reply.actions[0],
                               UNNORM_KEY: reply.unnorm_key, "checkpoint_id": reply.checkpoint_id,
                               "timing": {key: float(value) for key, value in reply.timing.items()}}
    if reply.bin_probs is not None:
        message["bin_probs"] = reply.bin_probs if batch else reply.bin_probs[0]
    return encode(message)


def _require(document: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = document.get(key)
    if not isinstance(value, kind):
        raise ProtocolError(f"the reply's '{key}' is {type(value).__name__}, expected {kind}")
    return value


def decode_act_reply(body: bytes, batch: bool, expected_count: int) -> ActReply:
    """Client side: parse and check a msgpack reply (shapes, finiteness); raises ProtocolError."""
    try:
        document = decode(body)
    except WireError as error:
        raise ProtocolError(f"the reply is not a valid msgpack envelope: {error}") from error
    if not isinstance(document, dict):
        raise ProtocolError(f"the reply is a {type(document).__name__}, expected a map")
    key = "actions" if batch else "action"
    actions = np.asarray(_require(document, key, np.ndarray), dtype=np.float64)
    actions = actions if batch else actions[None]
    if actions.ndim not in (2, 3) or actions.shape[0] != expected_count:  # (B, 7) actions or (B, K, 7) chunks
        raise ProtocolError(f"the reply's '{key}' has shape {actions.shape}, expected {expected_count} actions "
                            f"(or action chunks)")
    if not np.isfinite(actions).all():
        raise ProtocolError(f"the reply's '{key}' holds non-finite values: {actions.tolist()}")
    probs = document.get("bin_probs")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float32)
        probs = probs if batch else probs[None]
        if probs.shape[:-1] != actions.shape:
            raise ProtocolError(f"the reply's 'bin_probs' has shape {probs.shape}, expected {actions.shape} + (bins,)")
    timing = _require(document, "timing", dict)
    return ActReply(actions=actions, bin_probs=probs, unnorm_key=_require(document, UNNORM_KEY, str),
                    checkpoint_id=_require(document, "checkpoint_id", str),
                    timing={str(k): float(v) for k, v in timing.items() if isinstance(v, int | float)})


def server_timing_header(timing: Mapping[str, float]) -> str:
    """The standard ``Server-Timing`` header (durations in milliseconds), e.g. ``inference;dur=12.3``."""
    return ", ".join(f"{name.removesuffix('_s')};dur={seconds * 1e3:.3f}" for name, seconds in timing.items())


def error_document(status: int, kind: str, message: str, field_name: str = "") -> dict[str, Any]:
    """The JSON body of every error reply."""
    return {"error": {"status": status, "type": kind, "field": field_name, "message": message}}
