"""How the policy server's HTTP layer (waitress) treats connections: limits, timeouts, early refusal, /health first.

waitress' defaults let 100 idle connections, without any token, lock everyone out for two minutes (its connection
limit and idle timeout), read a whole body before anyone looked at the token, and queue ``/health`` behind every
``/act`` waiting for the model. Here (``ConnectionLimits``, ``fanvla serve`` options in parentheses):

- at most ``max_connections`` open connections (``--max-connections``), and at most
  ``max_connections_per_client`` from one address other than loopback; poll(), not select(), so hundreds of
  sockets are fine;
- a connection idle for ``idle_timeout_s`` is closed (``--idle-timeout-s``), and so is one that has not delivered a
  whole request (headers and body) within ``request_timeout_s`` of its first byte (slow senders);
- the bearer token is checked as soon as the headers are in, **before the body is read**: a wrong or missing
  token gets its 401 and the connection is closed, whatever the body's size;
- off loopback, each connection may send at most ``max_requests_per_s`` requests a second (a token bucket with a
  burst of as many); beyond, 429 and the connection is closed;
- ``/health`` and these refusals are answered on the network thread itself, never queued behind requests waiting
  for the model, so health checks answer while every request thread is busy.

Only waitress is hardened this way; ``--wsgi werkzeug`` is the development server.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import Error

from policy.protocol import HEALTH_PATH, error_document
from policy.server_auth import ServerConfigError, bearer_token_matches, is_loopback


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 512
    max_connections_per_client: int = 64
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 30.0
    max_requests_per_s: float = 50.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.max_connections_per_client > self.max_connections:
            raise ValueError(f"max_connections_per_client ({self.max_connections_per_client}) exceeds "
                             f"max_connections ({self.max_connections})")

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class _JsonError(Error):
    """A waitress error answered with the server's JSON error document (and closing the connection)."""

    kind = "error"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = json.dumps(error_document(self.code, self.kind, self.body)).encode("utf-8")
        return f"{self.code} {self.reason}", [("Content-Type", "application/json"), *self.extra_headers], body


class Unauthorized(_JsonError):
    code, reason, kind = 401, "Unauthorized", "unauthorized"
    extra_headers = (("WWW-Authenticate", 'Bearer realm="fanvla"'),)


class TooManyRequests(_JsonError):
    code, reason, kind = 429, "Too Many Requests", "too_many_requests"
    extra_headers = (("Retry-After", "1"),)


UNAUTHORIZED_MESSAGE = "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the server's token"


class _TokenBucket:
    def __init__(self, rate_per_s: float) -> None:
        self.rate, self.capacity = rate_per_s, max(1.0, rate_per_s)
        self.tokens, self.updated = self.capacity, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _parser_class(token: bytes | None) -> type[HTTPRequestParser]:
    class CheckedRequest(HTTPRequestParser):
        """Remembers when its first byte came; refuses a wrong token once the headers are parsed."""

        def __init__(self, adj: Adjustments) -> None:
            super().__init__(adj)
            self.started_s = time.monotonic()

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            if token is None or self.path == HEALTH_PATH:
                return
            if not bearer_token_matches(self.headers.get("AUTHORIZATION", ""), token):
                self.error = Unauthorized(UNAUTHORIZED_MESSAGE)
                self.completed = True  # the body is never read: the connection closes after the 401

    return CheckedRequest


class _Channel(HTTPChannel):
    limits: ConnectionLimits

    def __init__(self, server: PolicyWsgiServer, sock: Any, addr: Any, adj: Adjustments, map: Any = None) -> None:
        super().__init__(server, sock, addr, adj, map=map)
        host = addr[0] if isinstance(addr, tuple) and addr else "127.0.0.1"
        self.loopback = is_loopback(str(host))
        self.bucket = _TokenBucket(self.limits.max_requests_per_s)
        self.receiving_thread: int | None = None
        self.serve_inline = False
        if not self.loopback and server.connections_from(host) > self.limits.max_connections_per_client:
            server.logger.warning("refusing a connection from %s: more than %d open", host,
                                  self.limits.max_connections_per_client)
            self.will_close = True

    def received(self, data: bytes) -> bool:
        self.receiving_thread = threading.get_ident()
        try:
            result = super().received(data)
        finally:
            self.receiving_thread = None
        while self.serve_inline:  # a /health or a refusal: answered here, on the network thread
            self.serve_inline = False
            self.service()
        return result


class PolicyWsgiServer(TcpWSGIServer):
    """waitress' TCP server with :class:`ConnectionLimits` (see the module docstring)."""

    def __init__(self, application: Any, adj: Adjustments, limits: ConnectionLimits, token: bytes | None) -> None:
        self.limits = limits
        self.channel_class = type("PolicyChannel", (_Channel,), {"limits": limits,
                                                                  "parser_class": _parser_class(token)})
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(adj.threads)
        super().__init__(application, {}, True, None, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])

    def connections_from(self, host: str) -> int:
        return sum(1 for channel in list(self.active_channels.values())
                   if isinstance(channel.addr, tuple) and channel.addr and channel.addr[0] == host)

    def add_task(self, channel: _Channel) -> None:  # type: ignore[override]
        request = channel.requests[0]
        if request.error is None and not channel.loopback and not channel.bucket.take():
            request.error = TooManyRequests(f"more than {self.limits.max_requests_per_s:g} requests a second on one "
                                            f"connection; slow down")
        cheap = request.error is not None or (request.command in ("GET", "HEAD") and request.path == HEALTH_PATH)
        if cheap and channel.receiving_thread == threading.get_ident():
            channel.serve_inline = True
            return
        super().add_task(channel)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # closes connections idle for longer than the idle timeout
        too_old = time.monotonic() - self.limits.request_timeout_s
        for channel in list(self.active_channels.values()):
            request = channel.request
            if request is not None and not request.completed and getattr(request, "started_s", too_old) < too_old:
                self.logger.info("closing a connection from %s: no whole request within %g s", channel.addr,
                                 self.limits.request_timeout_s)
                channel.will_close = True


def create_policy_wsgi_server(app: Any, host: str, port: int, threads: int, max_body_bytes: int,
                              limits: ConnectionLimits, token: bytes | None) -> PolicyWsgiServer:
    # waitress' own body limit is only an outer guard: Flask answers oversized bodies with a JSON 413 first.
    # Reading up to 1 MiB per socket read (default 18 kB) takes a camera frame in a few loop passes instead of
    # dozens: measured 7 -> 3.5 ms of round-trip overhead for a 150 kB request.
    adj = Adjustments(host=host, port=port, threads=threads, max_request_body_size=2 * max_body_bytes + (1 << 20),
                      recv_bytes=1 << 20, ident="fanvla", connection_limit=limits.max_connections,
                      channel_timeout=math.ceil(limits.idle_timeout_s), asyncore_use_poll=True,
                      cleanup_interval=max(1, int(min(limits.idle_timeout_s, limits.request_timeout_s) / 4)))
    if len(adj.listen) != 1:  # several sockets: one per address the name resolves to
        raise ServerConfigError(f"{host!r} resolves to several addresses; give one IP address to listen on")
    return PolicyWsgiServer(app, adj, limits, token)
