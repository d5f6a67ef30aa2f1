"""Client of the policy server (``fanvla serve``); numpy + requests only, so a robot PC needs no torch.

    with PolicyClient("http://gpu-box:8000", token_file="~/.fanvla/token", timeout_s=0.3) as client:
        client.metadata()["action_space"]
        reply = client.act(rgb, "put the red cube into the box")
        reply.action, reply.timing["inference_s"]

Every call has a total time budget (``timeout_s``) that covers retries: connection failures (refused, reset,
no route) are retried with exponential backoff while the budget lasts; nothing else is retried (a read
timeout means the server is busy or stuck, and a 4xx will not change). Failures raise the typed exceptions
below; ``PolicyUnavailableError`` is a ``ConnectionError`` and ``PolicyTimeoutError`` a ``TimeoutError``, which
the control loop treats as a missing command.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from policy.protocol import (
    ACT_PATH,
    HEALTH_PATH,
    IMAGE_FORMATS,
    INSTRUCTION,
    METADATA_PATH,
    UNNORM_KEY,
    ActReply,
    ImageFormat,
    ProtocolError,
    decode_act_reply,
    encode_act_request,
)
from policy.wire import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, WireError, decode_openvla_reply, encode_json_numpy

log = logging.getLogger(__name__)


class PolicyClientError(Exception):
    """Base class of everything the client raises."""


class PolicyUnavailableError(PolicyClientError, ConnectionError):
    """The server could not be reached (after the retries the time budget allowed)."""


class PolicyTimeoutError(PolicyClientError, TimeoutError):
    """No complete answer within the time budget."""


class PolicyAuthError(PolicyClientError):
    """401/403: missing or wrong token."""


class PolicyRequestError(PolicyClientError):
    """4xx: the server rejected the request; ``field`` and ``message`` say what was wrong."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"HTTP {status}: {field or '<body>'}: {message}")
        self.status, self.field, self.message = status, field, message


class PolicyServerError(PolicyClientError):
    """5xx: the server failed (not because of this request's content)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class PolicyProtocolError(PolicyClientError):
    """The reply is not what this protocol answers (another service on that port, a proxy page, ...)."""


def load_token(token: str | None, token_file: str | Path | None) -> str | None:
    if token is not None and token_file is not None:
        raise ValueError("give token or token_file, not both")
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ValueError(f"cannot read the token file {path}: {error}") from None
    return token


class PolicyClient:
    """One HTTP session (keep-alive) to one server. Not thread-safe: use one client per thread."""

    def __init__(self, url: str, *, token: str | None = None, token_file: str | Path | None = None,
                 timeout_s: float = 5.0, connect_timeout_s: float = 1.0, retries: int = 2, backoff_s: float = 0.05,
                 max_backoff_s: float = 1.0, image_format: ImageFormat = "raw", jpeg_quality: int = 90) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError("timeouts must be > 0, retries and backoff_s >= 0")
        self.url = url.rstrip("/")
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "fanvla-policy-client"
        secret = load_token(token, token_file)
        if secret:
            self._session.headers["Authorization"] = f"Bearer {secret}"
        self.attempts = 0  # connection attempts made by the last call (1 + retries used)

    # -------------------------------------------------------------------------------------------- calls
    def act(self, image: np.ndarray, instruction: str, state: np.ndarray | None = None, *,
            unnorm_key: str | None = None, return_probs: bool = False, timeout_s: float | None = None,
            wrist_image: np.ndarray | None = None) -> ActReply:
        """The action for one observation (``reply.action`` (7,), or the (K, 7) chunk of an OpenVLA-OFT
        checkpoint); ``timeout_s`` overrides the client's budget; ``wrist_image`` for a checkpoint that reads one."""
        body = encode_act_request([image], [instruction], None if state is None else [state], batch=False,
                                  unnorm_key=unnorm_key, return_probs=return_probs, image_format=self.image_format,
                                  jpeg_quality=self.jpeg_quality,
                                  wrist_images=None if wrist_image is None else [wrist_image])
        return self._act(body, batch=False, count=1, timeout_s=timeout_s)

    def act_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                  states: Sequence[np.ndarray | None] | None = None, *, unnorm_key: str | None = None,
                  return_probs: bool = False, timeout_s: float | None = None,
                  wrist_images: Sequence[np.ndarray] | None = None) -> ActReply:
        """Actions (B, 7) (or (B, K, 7) chunks) for B observations, predicted as one batch by the server."""
        body = encode_act_request(images, instructions, states, batch=True, unnorm_key=unnorm_key,
                                  return_probs=return_probs, image_format=self.image_format,
                                  jpeg_quality=self.jpeg_quality, wrist_images=wrist_images)
        return self._act(body, batch=True, count=len(images), timeout_s=timeout_s)

    def act_upstream(self, image: np.ndarray, instruction: str, unnorm_key: str | None = None,
                     timeout_s: float | None = None, state: np.ndarray | None = None,
                     wrist_image: np.ndarray | None = None) -> np.ndarray:
        """Upstream OpenVLA's json_numpy request, as its own clients send it (compatibility checks, benches); the
        answer is the action (7,), or the (K, 7) chunk of an OpenVLA-OFT checkpoint."""
        payload: dict[str, Any] = {"image": np.ascontiguousarray(image, dtype=np.uint8), INSTRUCTION: instruction}
        if unnorm_key is not None:
            payload[UNNORM_KEY] = unnorm_key
        if state is not None:
            payload["state"] = np.asarray(state, dtype=np.float64)
        if wrist_image is not None:
            payload["wrist_image"] = np.ascontiguousarray(wrist_image, dtype=np.uint8)
        response = self._request("POST", ACT_PATH, timeout_s, data=encode_json_numpy(payload).encode(),
                                 headers={"Content-Type": CONTENT_TYPE_JSON})
        try:
            return np.asarray(decode_openvla_reply(response.content), dtype=np.float64)
        except WireError as error:
            raise PolicyProtocolError(f"the upstream-format reply cannot be read: {error}") from error

    def metadata(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json(self._request("GET", METADATA_PATH, timeout_s))

    def health(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._json(self._request("GET", HEALTH_PATH, timeout_s))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- plumbing
    def _act(self, body: bytes, batch: bool, count: int, timeout_s: float | None) -> ActReply:
        response = self._request("POST", ACT_PATH, timeout_s, data=body,
                                 headers={"Content-Type": CONTENT_TYPE_MSGPACK, "Accept": CONTENT_TYPE_MSGPACK})
        if not response.headers.get("Content-Type", "").startswith(CONTENT_TYPE_MSGPACK):
            raise PolicyProtocolError(f"{self.url}{ACT_PATH} answered {response.headers.get('Content-Type')!r}, not "
                                      f"{CONTENT_TYPE_MSGPACK}: is this a fanvla policy server?")
        try:
            return decode_act_reply(response.content, batch, count)
        except ProtocolError as error:
            raise PolicyProtocolError(str(error)) from error

    def _request(self, method: str, path: str, timeout_s: float | None, **kwargs: Any) -> requests.Response:
        budget_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        self.attempts = 0
        refused: Exception | None = None  # the last connection failure, when the budget ends during a backoff
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and refused is not None:
                raise PolicyUnavailableError(f"{method} {self.url}{path}: cannot reach the policy server within "
                                             f"{budget_s:.3g} s ({self.attempts} attempts): {_reason(refused)}")
            if remaining <= 0:
                raise PolicyTimeoutError(f"{method} {self.url}{path}: no answer within {budget_s:.3g} s")
            self.attempts += 1
            try:
                response = self._session.request(method, self.url + path,
                                                 timeout=(min(self.connect_timeout_s, remaining), remaining), **kwargs)
            except requests.exceptions.ReadTimeout as error:  # sent, not answered in time: never retried
                raise PolicyTimeoutError(f"{method} {self.url}{path}: no answer within {budget_s:.3g} s") from error
            except requests.exceptions.ConnectionError as error:
                pause = min(self.backoff_s * 2 ** (self.attempts - 1), self.max_backoff_s)
                # No retry that could not start before the deadline (a refused connection is reported as such).
                if self.attempts > self.retries or time.monotonic() + pause >= deadline:
                    raise PolicyUnavailableError(f"{method} {self.url}{path}: cannot reach the policy server after "
                                                 f"{self.attempts} attempt(s): {_reason(error)}") from error
                log.debug("connection to %s failed (%s); retrying in %.3f s", self.url, _reason(error), pause)
                refused = error
                time.sleep(pause)  # client-side backoff between network attempts, not control timing
                continue
            except requests.exceptions.ChunkedEncodingError as error:  # the server went away while answering
                raise PolicyUnavailableError(f"{method} {self.url}{path}: the answer broke off: {_reason(error)}") \
                    from error
            except requests.exceptions.RequestException as error:  # a bad URL and the like: not worth retrying
                raise PolicyClientError(f"{method} {self.url}{path}: {error}") from error
            _raise_for_status(response)
            return response

    @staticmethod
    def _json(response: requests.Response) -> dict[str, Any]:
        try:
            document = response.json()
        except ValueError as error:
            raise PolicyProtocolError(f"{response.url} did not answer JSON: {response.text[:120]!r}") from error
        if not isinstance(document, dict):
            raise PolicyProtocolError(f"{response.url} answered a JSON {type(document).__name__}, expected an object")
        return document


def _reason(error: Exception) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."


def _raise_for_status(response: requests.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        detail = response.json().get("error", {})
        field, message = str(detail.get("field", "")), str(detail.get("message", ""))
    except (ValueError, AttributeError, json.JSONDecodeError):
        field, message = "", response.text[:300]
    if status in (401, 403):
        raise PolicyAuthError(f"HTTP {status} from {response.url}: {message or 'unauthorized'}; check the token")
    if status < 500:
        raise PolicyRequestError(status, field, message)
    raise PolicyServerError(status, message)
