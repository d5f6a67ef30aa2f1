"""Who may talk to the policy server: loopback detection, the exposure rule, token files, the token check.

No torch and no Flask here, so ``fanvla serve`` refuses an unsafe configuration before loading anything.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16


class ServerConfigError(ValueError):
    """The server cannot start as configured (exposed without a token, unreadable token file, ...)."""


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: the policy server moves a robot."""
    if token is None and not is_loopback(host):
        raise ServerConfigError(f"refusing to listen on {host!r} without authentication: anyone on that network could "
                                f"drive the robot. Give --token-file FILE (a random token of at least "
                                f"{MIN_TOKEN_CHARS} characters) or bind to 127.0.0.1")


def read_token_file(path: str | Path) -> str:
    file = Path(path)
    try:
        token = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ServerConfigError(f"cannot read the token file {file}: {error}") from None
    if len(token) < MIN_TOKEN_CHARS or any(ch.isspace() for ch in token) or not token.isprintable():
        raise ServerConfigError(f"the token in {file} must be one line of at least {MIN_TOKEN_CHARS} printable, "
                                f"non-space characters; create one with: python -c \"import secrets; "
                                f"print(secrets.token_urlsafe(32))\" > {file}")
    if file.stat().st_mode & 0o077:
        log.warning("token file %s is readable by other users; chmod 600 it", file)
    return token


def bearer_token_matches(authorization: str, expected: bytes) -> bool:
    """``Authorization: Bearer <token>`` against the expected token, compared in constant time."""
    scheme, _, provided = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(provided.strip().encode("utf-8"), expected)
