"""The policy server: one OpenVLA behind ``POST /act``, ``GET /metadata`` and ``GET /health`` (layouts:
``policy/protocol.py``; deployment notes: docs/serving.md).

Request handling is layered: wire decode -> validate (``policy.server_validation``) -> predict
(``policy.inference``, one model behind a lock) -> encode. Client mistakes become 4xx JSON errors that name
the field; a 5xx only ever means the server itself failed, and the server keeps answering either way.

Authentication is a bearer token compared in constant time; it is mandatory whenever the server listens on
anything but loopback (``check_exposure`` refuses to start otherwise). Connection limits, timeouts, the token
check before a body is read, rate limits and ``/health`` on the network thread: ``policy/server_limits.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from policy.protocol import (
    ACT_PATH,
    HEALTH_PATH,
    METADATA_PATH,
    UNNORM_KEY,
    ActReply,
    encode_act_reply,
    error_document,
    server_timing_header,
)
from policy.server_auth import ServerConfigError, bearer_token_matches
from policy.server_limits import UNAUTHORIZED_MESSAGE, ConnectionLimits, create_policy_wsgi_server
from policy.server_validation import ActRequest, RequestError, RequestLimits, invalid, parse_act_request
from policy.wire import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, encode_openvla_reply
from robot.injected_latency import LatencySpec

if TYPE_CHECKING:
    from policy.inference import InferenceEngine

log = logging.getLogger(__name__)

WsgiServerName = Literal["waitress", "werkzeug"]
WSGI_SERVERS: tuple[WsgiServerName, ...] = ("waitress", "werkzeug")
POLL_INTERVAL_S = 0.2  # how soon a waitress server notices stop()


@dataclass
class _Counters:
    started_s: float
    served: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def count(self, ok: bool) -> None:
        with self._lock:
            self.served += ok
            self.failed += not ok


def _error(status: int, kind: str, message: str, field: str = "") -> Response:
    error = RequestError(status, kind, message, field)  # cuts the message and field short
    response = jsonify(error_document(status, kind, error.message, error.field))
    response.status_code = status
    return response


def create_app(engine: InferenceEngine, limits: RequestLimits | None = None, token: str | None = None,
               injected_latency: LatencySpec | None = None) -> Flask:
    """The Flask application; ``token`` None disables authentication (loopback only, see check_exposure);
    ``injected_latency``: a delay added before every /act answer (rehearsing a slower model,
    robot/injected_latency.py)."""
    limits = replace(limits or RequestLimits(), **engine.input_limits(limits))
    delay = _InjectedDelay(injected_latency or LatencySpec())
    app = Flask("fanvla.policy_server")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes  # larger bodies: 413 before they are read
    expected = None if token is None else token.encode("utf-8")
    app.config["FANVLA_TOKEN"] = expected  # PolicyServer checks it before reading a body (server_limits.py)
    counters = _Counters(time.monotonic())

    @app.before_request
    def authenticate() -> Response | None:
        if expected is None or request.path == HEALTH_PATH:
            return None
        if bearer_token_matches(request.headers.get("Authorization", ""), expected):
            return None
        response = _error(401, "unauthorized", UNAUTHORIZED_MESSAGE)
        response.headers["WWW-Authenticate"] = 'Bearer realm="fanvla"'
        return response

    @app.get(HEALTH_PATH)
    def health() -> Response:
        return jsonify({"status": "ok", "checkpoint_id": engine.checkpoint_id,
                        "uptime_s": round(time.monotonic() - counters.started_s, 3),
                        "requests_served": counters.served, "requests_failed": counters.failed})

    @app.get(METADATA_PATH)
    def metadata() -> Response:
        return jsonify({**engine.metadata(), "limits": limits.describe(), **delay.metadata(),
                        "formats": {"request": [CONTENT_TYPE_MSGPACK, CONTENT_TYPE_JSON], "reply": CONTENT_TYPE_MSGPACK,
                                    "images": ["raw uint8 array", "jpeg", "png"]},
                        "auth": {"required": expected is not None, "scheme": "Bearer"}})

    @app.post(ACT_PATH)
    def act() -> Response:
        started = time.perf_counter()
        parsed = parse_act_request(request.get_data(cache=False), request.content_type, limits)
        if parsed.unnorm_key is not None and parsed.unnorm_key not in engine.unnorm_keys:
            raise invalid(UNNORM_KEY, f"'{parsed.unnorm_key}' is not a statistics key of this checkpoint; available: "
                                      f"{engine.unnorm_keys}")
        decoded = time.perf_counter()
        prediction = engine.predict(parsed.images, parsed.instructions, parsed.unnorm_key, parsed.return_probs,
                                    states=parsed.states, wrist_images=parsed.wrist_images)
        injected_s = delay.wait()
        timing = {"decode_s": decoded - started, "queue_s": prediction.queue_s,
                  "inference_s": prediction.inference_s, **({"injected_s": injected_s} if delay.enabled else {}),
                  "total_s": time.perf_counter() - started}
        counters.count(ok=True)
        response = _reply(parsed, ActReply(prediction.actions, prediction.bin_probs, prediction.unnorm_key,
                                           engine.checkpoint_id, timing))
        response.headers["Server-Timing"] = server_timing_header(timing)
        return response

    @app.errorhandler(RequestError)
    def request_error(error: RequestError) -> Response:
        counters.count(ok=False)
        log.info("rejected %s %s: %s", request.method, request.path, error)
        return _error(error.status, error.kind, error.message, error.field)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        counters.count(ok=False)
        status = error.code or 500
        return _error(status, (error.name or "error").lower().replace(" ", "_"), error.description or str(error))

    @app.errorhandler(Exception)
    def server_error(error: Exception) -> Response:
        counters.count(ok=False)
        log.exception("internal error while handling %s %s", request.method, request.path)
        return _error(500, "internal_error", f"the server failed ({type(error).__name__}: {error}); it logged the "
                                             f"traceback and keeps serving")

    return app


class _InjectedDelay:
    """``fanvla serve --policy-latency-ms``: sleeps a drawn delay in the request thread after the prediction (outside
    the model lock, so concurrent requests are delayed side by side)."""

    def __init__(self, spec: LatencySpec) -> None:
        self.spec, self._rng, self._lock = spec, np.random.default_rng(), threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.spec.enabled

    def wait(self) -> float:
        if not self.enabled:
            return 0.0
        with self._lock:
            delay_s = self.spec.sample_s(self._rng)
        time.sleep(delay_s)
        return delay_s

    def metadata(self) -> dict[str, Any]:
        return {"injected_latency": self.spec.describe()} if self.enabled else {}


def _reply(parsed: ActRequest, reply: ActReply) -> Response:
    if parsed.upstream:  # upstream clients read the bare json_numpy action
        return Response(encode_openvla_reply(reply.actions[0], parsed.double_encoded), mimetype=CONTENT_TYPE_JSON)
    return Response(encode_act_reply(reply, parsed.batch), mimetype=CONTENT_TYPE_MSGPACK)


class PolicyServer:
    """A running server: ``start()`` serves on a background thread (tests, in-process use), ``serve_forever()``
    blocks (``fanvla serve``). Port 0 picks a free port; ``url`` tells which."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 8000, wsgi: WsgiServerName = "waitress",
                 http_threads: int = 4, max_body_bytes: int = RequestLimits.max_body_bytes,
                 connection_limits: ConnectionLimits | None = None) -> None:
        if wsgi not in WSGI_SERVERS:
            raise ServerConfigError(f"unknown WSGI server {wsgi!r}; choose one of {', '.join(WSGI_SERVERS)}")
        # One listening address: "localhost" may resolve to both 127.0.0.1 and ::1.
        self.host = "127.0.0.1" if host.strip().lower() == "localhost" else host
        self.wsgi = wsgi
        self.connection_limits = connection_limits or ConnectionLimits()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        if wsgi == "waitress":
            self._server: Any = create_policy_wsgi_server(app, self.host, port, http_threads, max_body_bytes,
                                                          self.connection_limits, app.config.get("FANVLA_TOKEN"))
            self.port = int(self._server.effective_port)
        else:
            from werkzeug.serving import make_server

            self._server = make_server(self.host, port, app, threaded=True)
            self.port = int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Serve until ``stop()`` (from another thread) or Ctrl-C."""
        self._stopping.clear()
        if self.wsgi == "werkzeug":
            self._server.serve_forever()
            return
        from waitress import wasyncore

        # waitress' own loop, one poll at a time, so that the stop request is seen here and the sockets are
        # closed by this thread (closing them from another thread would race with the poll).
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=POLL_INTERVAL_S, map=self._server._map,
                               use_poll=self._server.adj.asyncore_use_poll, count=1)
        finally:
            self._server.task_dispatcher.shutdown(timeout=2.0)
            wasyncore.close_all(self._server._map)

    def start(self) -> PolicyServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"policy-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        if self.wsgi == "werkzeug":
            if self._thread is not None:  # shutdown() waits for a running serve_forever
                self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> PolicyServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
