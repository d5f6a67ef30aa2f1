"""Strict checks of a ``POST /act`` body: wire decoding, then every field, before anything reaches the model.

Every problem becomes a ``RequestError`` carrying the HTTP status (400 malformed or invalid, 413 too large,
415 wrong content type), the offending field's path (``observations[2].image``) and what was expected, so a
client never has to guess. Nothing here imports torch: the checks are cheap and run outside the model lock.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy.protocol import (
    IMAGE,
    INSTRUCTION,
    OBSERVATION,
    OBSERVATION_FIELDS,
    OBSERVATIONS,
    REQUEST_FIELDS,
    RETURN_PROBS,
    STATE,
    UNNORM_KEY,
    UPSTREAM_FIELDS,
    WRIST_IMAGE,
)
from policy.wire import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, WireError, decode, decode_openvla_request

MAX_WIRE_DEPTH = 8  # request documents are 4 levels deep at most
MAX_FIELD_CHARS = 120  # error documents and log lines stay short, whatever a request holds
MAX_MESSAGE_CHARS = 400
NAMES_SHOWN = 5


def few_names(names: list[str] | set[str]) -> str:
    """At most a few names, each cut short: ``['a', 'b', ...] (and 999995 more)``."""
    shown = [name if len(name) <= 40 else name[:37] + "..." for name in heapq.nsmallest(NAMES_SHOWN, map(str, names))]
    more = len(names) - len(shown)
    return f"{shown}" + (f" (and {more} more)" if more > 0 else "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RequestError(Exception):
    """A client error: ``status`` (4xx), ``kind`` (short name), ``field`` (path, "" = whole body), ``message``."""

    def __init__(self, status: int, kind: str, message: str, field: str = "") -> None:
        field, message = _cut(field, MAX_FIELD_CHARS), _cut(message, MAX_MESSAGE_CHARS)
        super().__init__(f"{field or '<body>'}: {message}")
        self.status, self.kind, self.field, self.message = status, kind, field, message


def invalid(field: str, message: str) -> RequestError:
    return RequestError(400, "invalid_request", message, field)


@dataclass(frozen=True)
class RequestLimits:
    """What the server accepts. ``state_dim`` None: any 1-D state of at most ``max_state_dim`` values;
    ``requires_state``: every observation must carry its state; ``wrist_image``: every observation must carry a
    wrist image (and none may without it): what the checkpoint reads (OpenVLA-OFT, policy/oft.py)."""

    max_body_bytes: int = 32 * 1024 * 1024
    max_batch: int = 16
    max_image_side_px: int = 2048
    max_instruction_chars: int = 1000
    state_dim: int | None = None
    max_state_dim: int = 64
    requires_state: bool = False
    wrist_image: bool = False

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_image_side_px", "max_instruction_chars", "max_state_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_dim is not None and not 1 <= self.state_dim <= self.max_state_dim:
            raise ValueError(f"state_dim must be in 1..{self.max_state_dim}, got {self.state_dim}")

    @property
    def max_image_elements(self) -> int:
        return self.max_image_side_px ** 2 * 3

    def wire_limits(self) -> dict[str, int]:
        """Limits for policy.wire, checked before anything is allocated or decompressed."""
        # A few full-size images (or a batch of smaller ones) per request bounds the memory one request can take.
        return {"max_bytes": self.max_body_bytes, "max_array_elements": self.max_image_elements,
                "max_total_elements": self.max_image_elements * min(self.max_batch, 4), "max_depth": MAX_WIRE_DEPTH}

    def describe(self) -> dict[str, Any]:
        return {"max_body_bytes": self.max_body_bytes, "max_batch": self.max_batch,
                "max_image_side_px": self.max_image_side_px, "max_instruction_chars": self.max_instruction_chars,
                "state_dim": self.state_dim, "max_state_dim": self.max_state_dim,
                "requires_state": self.requires_state, "wrist_image": self.wrist_image}


@dataclass(frozen=True)
class ActRequest:
    """A validated request: B RGB uint8 images, B instructions, B states (or None each), and B wrist images when
    the checkpoint reads them (None otherwise)."""

    images: list[np.ndarray]
    instructions: list[str]
    states: list[np.ndarray | None]
    unnorm_key: str | None
    return_probs: bool
    batch: bool
    upstream: bool = False  # upstream OpenVLA json_numpy format: reply with the bare action
    double_encoded: bool = False
    wrist_images: list[np.ndarray] | None = None

    @property
    def size(self) -> int:
        return len(self.images)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_act_request(body: bytes, content_type: str | None, limits: RequestLimits) -> ActRequest:
    """Decode and validate a ``POST /act`` body; raises only RequestError."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, "too_large", f"the body has {len(body)} bytes, more than the server's limit of "
                                             f"{limits.max_body_bytes}")
    kind = media_type(content_type)
    try:
        if kind == CONTENT_TYPE_MSGPACK:
            return _parse_msgpack(decode(body, **limits.wire_limits()), limits)
        if kind == CONTENT_TYPE_JSON:
            upstream = decode_openvla_request(body, **limits.wire_limits())
            return _parse_upstream(upstream.payload, upstream.double_encoded, limits)
    except WireError as error:
        raise invalid(error.field, f"malformed body: {error.problem}") from None
    raise RequestError(415, "unsupported_media_type",
                       f"Content-Type {content_type!r} is not accepted; send {CONTENT_TYPE_MSGPACK} (this server's "
                       f"envelope) or {CONTENT_TYPE_JSON} (upstream OpenVLA's json_numpy)")


def _check_fields(document: Any, allowed: frozenset[str], path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(document, dict):
        raise invalid(path, f"{what} must be a map, got {type(document).__name__}")
    unknown = set(document) - allowed
    if unknown:
        raise invalid(path, f"unknown fields {few_names(unknown)}; {what} takes {sorted(allowed)}")
    return document


def _parse_msgpack(document: Any, limits: RequestLimits) -> ActRequest:
    document = _check_fields(document, REQUEST_FIELDS, "", "the request")
    if (OBSERVATION in document) == (OBSERVATIONS in document):
        raise invalid("", f"give exactly one of '{OBSERVATION}' (one observation) or '{OBSERVATIONS}' (a batch)")
    batch = OBSERVATIONS in document
    if batch:
        items = document[OBSERVATIONS]
        if not isinstance(items, list) or not 1 <= len(items) <= limits.max_batch:
            count = len(items) if isinstance(items, list) else type(items).__name__
            raise invalid(OBSERVATIONS, f"must be a list of 1..{limits.max_batch} observations, got {count}")
        paths = [f"{OBSERVATIONS}[{i}]" for i in range(len(items))]
    else:
        items, paths = [document[OBSERVATION]], [OBSERVATION]
    observations = [_observation(item, path, limits) for item, path in zip(items, paths, strict=True)]
    return_probs = document.get(RETURN_PROBS, False)
    if not isinstance(return_probs, bool):
        raise invalid(RETURN_PROBS, f"must be true or false, got {type(return_probs).__name__}")
    wrists = [o[3] for o in observations]
    return ActRequest(images=[o[0] for o in observations], instructions=[o[1] for o in observations],
                      states=[o[2] for o in observations], unnorm_key=_unnorm_key(document.get(UNNORM_KEY)),
                      return_probs=return_probs, batch=batch, wrist_images=wrists if limits.wrist_image else None)


def _observation(item: Any, path: str,
                 limits: RequestLimits) -> tuple[np.ndarray, str, np.ndarray | None, np.ndarray | None]:
    item = _check_fields(item, OBSERVATION_FIELDS, path, "an observation")
    for required in (IMAGE, INSTRUCTION):
        if required not in item:
            raise invalid(f"{path}.{required}", "missing; an observation needs an image and an instruction")
    state, wrist = _model_inputs(item, f"{path}.", limits)
    return (check_image(item[IMAGE], f"{path}.{IMAGE}", limits),
            check_instruction(item[INSTRUCTION], f"{path}.{INSTRUCTION}", limits), state, wrist)


def _model_inputs(item: Mapping[str, Any], prefix: str,
                  limits: RequestLimits) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(state, wrist image) of an observation, each required or refused as the checkpoint reads it."""
    state, wrist = item.get(STATE), item.get(WRIST_IMAGE)
    if state is None and limits.requires_state:
        raise invalid(f"{prefix}{STATE}", f"missing; this checkpoint reads the robot state ({limits.state_dim} "
                                          f"values: joints_rad (6), tcp_pose (6), gripper opening) with every image")
    if wrist is None and limits.wrist_image:
        raise invalid(f"{prefix}{WRIST_IMAGE}", "missing; this checkpoint reads the wrist camera's image (RGB uint8) "
                                                "with every image")
    if wrist is not None and not limits.wrist_image:
        raise invalid(f"{prefix}{WRIST_IMAGE}", "this checkpoint reads one camera; send no wrist_image")
    return (None if state is None else check_state(state, f"{prefix}{STATE}", limits),
            None if wrist is None else check_image(wrist, f"{prefix}{WRIST_IMAGE}", limits))


def _parse_upstream(document: Any, double_encoded: bool, limits: RequestLimits) -> ActRequest:
    document = _check_fields(document, UPSTREAM_FIELDS, "", "an upstream OpenVLA (json_numpy) request")
    for required in (IMAGE, INSTRUCTION):
        if required not in document:
            raise invalid(required, "missing; upstream's request is {\"image\", \"instruction\", \"unnorm_key\"?}")
    state, wrist = _model_inputs(document, "", limits)
    return ActRequest(images=[check_image(document[IMAGE], IMAGE, limits)],
                      instructions=[check_instruction(document[INSTRUCTION], INSTRUCTION, limits)], states=[state],
                      unnorm_key=_unnorm_key(document.get(UNNORM_KEY)), return_probs=False, batch=False,
                      upstream=True, double_encoded=double_encoded,
                      wrist_images=[wrist] if limits.wrist_image else None)


def _unnorm_key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise invalid(UNNORM_KEY, f"must be a statistics key (a non-empty string), got {value!r:.60}")
    return value


def check_image(value: Any, path: str, limits: RequestLimits) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise invalid(path, f"must be an RGB image: a uint8 array (H, W, 3) or JPEG/PNG bytes in the image "
                            f"envelope, got {type(value).__name__}")
    if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
        raise invalid(path, f"must be RGB uint8 with shape (H, W, 3), got {value.dtype} {list(value.shape)}"
                            + (" (grey or RGBA: convert to RGB first)" if value.ndim in (2, 3) else ""))
    height, width = value.shape[:2]
    if not (1 <= height <= limits.max_image_side_px and 1 <= width <= limits.max_image_side_px):
        raise invalid(path, f"is {width}x{height} px; each side must be 1..{limits.max_image_side_px} px")
    return value


def check_instruction(value: Any, path: str, limits: RequestLimits) -> str:
    if not isinstance(value, str):
        raise invalid(path, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise invalid(path, "is empty; say what the robot should do, e.g. 'put the red cube into the box'")
    if len(value) > limits.max_instruction_chars:
        raise invalid(path, f"has {len(value)} characters, more than the limit of {limits.max_instruction_chars}")
    try:
        value.encode("utf-8")  # lone surrogates (possible in JSON) would fail inside the tokenizer
    except UnicodeEncodeError as error:
        raise invalid(path, f"is not valid Unicode text ({error.reason} at position {error.start})") from None
    return value


def check_state(value: Any, path: str, limits: RequestLimits) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise invalid(path, f"must be a numeric array (D,), got {kind}")
    expected = f"{limits.state_dim}" if limits.state_dim is not None else f"1..{limits.max_state_dim}"
    if value.ndim != 1 or not (value.shape[0] == limits.state_dim if limits.state_dim is not None
                               else 1 <= value.shape[0] <= limits.max_state_dim):
        raise invalid(path, f"has shape {list(value.shape)}; this checkpoint expects a 1-D state of {expected} values")
    state = value.astype(np.float64)
    if not np.isfinite(state).all():
        raise invalid(path, f"holds non-finite values at indices {np.flatnonzero(~np.isfinite(state)).tolist()}")
    return state
