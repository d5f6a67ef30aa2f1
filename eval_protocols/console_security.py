"""Who may use the operator console: it starts real robot trials, so only the operator's own browser may.

- **Loopback only**: the server binds 127.0.0.1 (``ConsoleServer`` refuses anything else), and every request must
  name a loopback host in its ``Host`` header (a DNS-rebinding page arrives with its own host name: 403).
- **A random token per run**, in the URL ``fanvla eval run`` prints (``/?token=...``). Opening it sets an
  HttpOnly, SameSite=Strict cookie holding the token and redirects to ``/`` (the token leaves the address bar);
  every other request needs that cookie (401 otherwise). Static assets (``/assets/``) are public.
- **State-changing calls are POST only** (Flask answers 405 to anything else) and need, besides the cookie, the
  page's CSRF token in the ``X-CSRF-Token`` header; an ``Origin`` header, when sent, must be the console's own.
  A cross-origin form or script can neither read the CSRF token nor set the header without a CORS preflight
  the console never grants.
- Pages are not cacheable, frameable or leaked through ``Referer``.

Tokens are compared in constant time. Docs: docs/evaluation.md ("Operator console").
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from flask import Flask, Response, jsonify, redirect, request

TOKEN_PARAM = "token"
CSRF_HEADER = "X-CSRF-Token"
COOKIE_PREFIX = "fanvla-console-"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PUBLIC_PREFIX = "/assets/"
SAFE_METHODS = frozenset({"GET", "HEAD"})
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class ConsoleSecrets:
    """The per-run login token (in the printed URL) and the CSRF token (in the page)."""

    token: str
    csrf: str

    @classmethod
    def new(cls) -> ConsoleSecrets:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def host_name(host: str) -> str:
    """The name in a Host header without its port: ``127.0.0.1:8765`` -> ``127.0.0.1``, ``[::1]:80`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def cookie_name(host: str) -> str:
    """One cookie per port: browsers share cookies across the ports of a host, and two consoles may run."""
    port = host.rsplit(":", 1)[1] if ":" in host.rsplit("]", 1)[-1] else "80"
    return f"{COOKIE_PREFIX}{port}"


def _refuse(status: int, message: str) -> Response:
    if request.path.startswith("/api/"):
        response = jsonify({"ok": False, "message": message})
    else:
        response = Response(message + "\n", mimetype="text/plain")
    response.status_code = status
    return response


def install(app: Flask, keys: ConsoleSecrets) -> None:
    """Check every request of ``app`` as the module docstring says."""

    @app.before_request
    def guard() -> Response | None:
        if host_name(request.host) not in LOOPBACK_HOSTS:
            return _refuse(403, f"refused: this console answers only to 127.0.0.1 or localhost, not to Host "
                                f"{request.host[:80]!r}")
        if request.path == "/" and request.method == "GET" and TOKEN_PARAM in request.args:
            if not _same(request.args.get(TOKEN_PARAM, ""), keys.token):
                return _refuse(401, "wrong console token: open the URL `fanvla eval run` printed for this run")
            response = redirect("/", code=303)
            response.set_cookie(cookie_name(request.host), keys.token, httponly=True, samesite="Strict", path="/")
            return response
        if request.path.startswith(PUBLIC_PREFIX):
            return None
        if not _same(request.cookies.get(cookie_name(request.host), ""), keys.token):
            return _refuse(401, "not logged in: open the URL `fanvla eval run` printed for this run (it carries "
                                "the run's token)")
        if request.method not in SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                return _refuse(403, f"refused: a cross-origin request (Origin {origin[:80]!r})")
            if not _same(request.headers.get(CSRF_HEADER, ""), keys.csrf):
                return _refuse(403, f"refused: missing or wrong {CSRF_HEADER} header (reload the console page)")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response
