"""The policy client: no torch, retries on connection failures only, a total time budget, typed errors."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from policy.client import (
    PolicyAuthError,
    PolicyClient,
    PolicyProtocolError,
    PolicyRequestError,
    PolicyServerError,
    PolicyTimeoutError,
    PolicyUnavailableError,
)
from policy.protocol import ActReply, encode_act_reply
from policy.wire import encode
from tests.conftest import REPO_ROOT
from tests.policy.server_testing import INSTRUCTION, rgb, tcp_listener


def test_client_side_modules_do_not_import_torch():
    code = ("import sys; import policy.client, policy.agent, policy.runner, policy.step_log, policy.protocol, "
            "policy.server_validation, policy.server_auth, policy.serve_cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'flask') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_connection_refused_is_retried_with_backoff_then_reported():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = PolicyClient(url, retries=3, backoff_s=0.02, timeout_s=5.0)
    started = time.monotonic()
    with pytest.raises(PolicyUnavailableError, match="after 4 attempt") as caught:
        client.act(rgb(8, 8), INSTRUCTION)
    assert client.attempts == 4 and time.monotonic() - started >= 0.02 + 0.04 + 0.08
    assert isinstance(caught.value, ConnectionError)


def test_a_dropped_connection_is_retried():
    with tcp_listener("hang up") as (url, accepted):
        client = PolicyClient(url, retries=2, backoff_s=0.01, timeout_s=5.0)
        with pytest.raises(PolicyUnavailableError):
            client.health()
    assert client.attempts == 3 and len(accepted) == 3


def test_a_silent_server_times_out_once_without_retries():
    with tcp_listener("silent") as (url, accepted):
        client = PolicyClient(url, retries=5, backoff_s=0.01)
        started = time.monotonic()
        with pytest.raises(PolicyTimeoutError) as caught:
            client.act(rgb(8, 8), INSTRUCTION, timeout_s=0.3)
        elapsed = time.monotonic() - started
    assert client.attempts == 1 and len(accepted) == 1 and isinstance(caught.value, TimeoutError)
    assert 0.3 <= elapsed < 5.0


def test_retries_stop_when_the_time_budget_is_spent():
    client = PolicyClient(f"http://127.0.0.1:{free_port()}", retries=1000, backoff_s=0.05, max_backoff_s=0.05)
    started = time.monotonic()
    with pytest.raises(PolicyUnavailableError):
        client.act(rgb(8, 8), INSTRUCTION, timeout_s=0.4)
    assert time.monotonic() - started < 0.4 + 0.3  # the budget bounds the call, retries included
    assert 2 <= client.attempts < 1000


def test_a_server_that_comes_up_during_the_retries_is_reached(tiny_model_dir):
    from policy.inference import InferenceEngine
    from policy.server import PolicyServer, create_app

    engine = InferenceEngine.load(tiny_model_dir, threads=1)
    port = free_port()
    servers: list[PolicyServer] = []
    starter = threading.Timer(0.3, lambda: servers.append(PolicyServer(create_app(engine), port=port).start()))
    starter.start()
    try:
        client = PolicyClient(f"http://127.0.0.1:{port}", retries=50, backoff_s=0.05, max_backoff_s=0.1,
                              timeout_s=30.0)
        assert client.act(rgb(32, 32), INSTRUCTION).action.shape == (7,)
        assert client.attempts > 1
    finally:
        starter.join()
        for server in servers:
            server.stop()


@contextlib.contextmanager
def canned_http_server(status: int, body: bytes, content_type: str):
    """A real HTTP server answering every request with the same status and body (another service, a proxy)."""
    requests_seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            requests_seen.append({"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length)})
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requests_seen
    finally:
        server.shutdown()
        server.server_close()


def error_body(status: int, field: str, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "type": "x", "field": field, "message": message}}).encode()


@pytest.mark.parametrize(("status", "body", "content_type", "error_type", "text"), [
    (500, error_body(500, "", "CUDA out of memory"), "application/json", PolicyServerError, "CUDA out of memory"),
    (502, b"<html>bad gateway</html>", "text/html", PolicyServerError, "bad gateway"),
    (401, error_body(401, "", "wrong token"), "application/json", PolicyAuthError, "wrong token"),
    (403, b"forbidden", "text/plain", PolicyAuthError, "forbidden"),
    (422, error_body(422, "observation.state", "bad"), "application/json", PolicyRequestError, "observation.state"),
    (200, b"<html>a web page</html>", "text/html", PolicyProtocolError, "is this a fanvla policy server"),
    (200, encode({"something": "else"}), "application/msgpack", PolicyProtocolError, "'action'"),
    (200, b"\xc1", "application/msgpack", PolicyProtocolError, "not a valid msgpack"),
    (200, encode({"action": np.array([np.nan] * 7), "unnorm_key": "k", "checkpoint_id": "c", "timing": {}}),
     "application/msgpack", PolicyProtocolError, "non-finite"),
    (200, encode_act_reply(ActReply(np.zeros((2, 7)), None, "k", "c"), batch=True), "application/msgpack",
     PolicyProtocolError, "'action'"),
])
def test_replies_map_to_typed_errors(status, body, content_type, error_type, text):
    with canned_http_server(status, body, content_type) as (url, seen):
        client = PolicyClient(url, retries=3)
        with pytest.raises(error_type) as caught:
            client.act(rgb(8, 8), INSTRUCTION)
    assert text in str(caught.value)
    assert len(seen) == 1  # HTTP errors are answers: never retried


def test_requests_carry_the_token_and_the_msgpack_body(tmp_path):
    reply = encode_act_reply(ActReply(np.arange(7.0)[None], None, "k", "ckpt"), batch=False)
    (tmp_path / "token").write_text("secret-token-0123456789\n")
    with (canned_http_server(200, reply, "application/msgpack") as (url, seen),
          PolicyClient(url, token_file=tmp_path / "token") as client):
        answer = client.act(rgb(8, 8), INSTRUCTION, state=np.ones(3))
    np.testing.assert_array_equal(answer.action, np.arange(7.0))
    assert answer.checkpoint_id == "ckpt" and answer.bin_probs is None
    request = seen[0]
    assert request["path"] == "/act" and request["headers"]["Authorization"] == "Bearer secret-token-0123456789"
    assert request["headers"]["Content-Type"] == "application/msgpack"


def test_bad_client_options_are_refused():
    with pytest.raises(ValueError, match="image_format"):
        PolicyClient("http://127.0.0.1:1", image_format="gif")
    with pytest.raises(ValueError, match="token or token_file"):
        PolicyClient("http://127.0.0.1:1", token="a", token_file="b")
    with pytest.raises(ValueError, match="cannot read the token file"):
        PolicyClient("http://127.0.0.1:1", token_file="/nonexistent/token")
