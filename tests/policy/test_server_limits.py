"""The policy server's connection handling (policy/server_limits.py), on real sockets. Functional checks only: the
timing goal (/health p99 under load) is measured by bench/server_load_bench.py, not asserted here.

Issue 27's probes: 120 idle connections without any token made /health time out (waitress' 100-connection limit
and 120 s idle timeout); an unknown-key flood was echoed into a 10.9 MB reply and log line.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
import requests

from policy.inference import InferenceEngine
from policy.server import PolicyServer, create_app
from policy.server_limits import ConnectionLimits
from policy.wire import CONTENT_TYPE_MSGPACK, encode
from tests.policy.server_testing import INSTRUCTION, TOKEN, rgb

WAIT_S = 30.0  # generous: these tests check what happens, not how fast


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return InferenceEngine.load(tiny_model_dir, threads=1)


@contextlib.contextmanager
def serving(engine, host: str = "127.0.0.1", token: str | None = None, threads: int = 2, **limits):
    app = create_app(engine, None, token)
    with PolicyServer(app, host, 0, "waitress", threads, connection_limits=ConnectionLimits(**limits)) as server:
        yield server


def _connect(server: PolicyServer, source: str | None = None) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=WAIT_S,
                                    source_address=(source, 0) if source else None)
    return sock


def _closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Wait (sending ``trickle`` every 0.2 s) until the server closes the connection."""
    deadline = time.monotonic() + WAIT_S
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def _response(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT_S)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_idle_connections_beyond_waitress_default_limit_do_not_lock_out_health(engine):
    with serving(engine, token=TOKEN) as server:
        idle = [_connect(server) for _ in range(120)]  # no token, no request: just held open
        try:
            answer = requests.get(server.url + "/health", timeout=WAIT_S)
            assert answer.status_code == 200 and answer.json()["status"] == "ok"
        finally:
            for sock in idle:
                sock.close()


def test_idle_and_slow_connections_are_closed(engine):
    with serving(engine, idle_timeout_s=1, request_timeout_s=2) as server:
        assert _closed_by_server(_connect(server))  # idle: nothing sent
        slow = _connect(server)
        slow.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\n")
        assert _closed_by_server(slow, trickle=b"X")  # a header byte every 0.2 s, never finishing
        assert requests.get(server.url + "/health", timeout=WAIT_S).status_code == 200


def test_the_token_is_checked_before_the_body_is_read(engine):
    with serving(engine, token=TOKEN) as server:
        sock = _connect(server)
        sock.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789\r\n"
                     b"Content-Type: application/msgpack\r\nContent-Length: 20000000\r\n\r\n")
        head = _response(sock)  # answered although none of the 20 MB body was sent
        assert head.startswith(b"HTTP/1.1 401") and b"www-authenticate: bearer" in head.lower()
        assert _closed_by_server(sock)
        sock.close()
        good = requests.post(server.url + "/act", data=encode({"observation": {"image": rgb(32, 32),
                                                                               "instruction": INSTRUCTION}}),
                             headers={"Content-Type": CONTENT_TYPE_MSGPACK, "Authorization": f"Bearer {TOKEN}"},
                             timeout=WAIT_S)
        assert good.status_code == 200


def test_an_unknown_key_flood_gets_a_short_error(engine, caplog):
    document = {"observation": {"image": rgb(32, 32), "instruction": INSTRUCTION},
                **{f"unknown_{i:06d}": i for i in range(100_000)}}
    with serving(engine) as server, caplog.at_level("INFO", logger="policy.server"):
        answer = requests.post(server.url + "/act", data=encode(document), timeout=WAIT_S,
                               headers={"Content-Type": CONTENT_TYPE_MSGPACK})
    assert answer.status_code == 400 and len(answer.content) < 1000
    message = answer.json()["error"]["message"]
    assert "unknown fields ['unknown_000000'," in message and "(and 99995 more)" in message
    assert all(len(record.getMessage()) < 1000 for record in caplog.records)


def test_health_is_answered_while_every_request_thread_waits_for_the_model(engine, monkeypatch):
    release, inside = threading.Event(), threading.Semaphore(0)
    predict = engine.predict

    def blocked_predict(*args, **kwargs):
        inside.release()
        release.wait(WAIT_S)
        return predict(*args, **kwargs)

    monkeypatch.setattr(engine, "predict", blocked_predict)
    body = encode({"observation": {"image": rgb(32, 32), "instruction": INSTRUCTION}})
    with serving(engine, threads=2) as server:
        answers: list[int] = []

        def act() -> None:
            answers.append(requests.post(server.url + "/act", data=body, timeout=2 * WAIT_S,
                                         headers={"Content-Type": CONTENT_TYPE_MSGPACK}).status_code)

        clients = [threading.Thread(target=act) for _ in range(4)]  # 2 in the model's threads, 2 queued
        for client in clients:
            client.start()
        try:
            for _ in range(2):
                assert inside.acquire(timeout=WAIT_S)  # both request threads are now stuck in predict
            health = requests.get(server.url + "/health", timeout=WAIT_S)
            assert health.status_code == 200 and health.json()["status"] == "ok"
        finally:
            release.set()
            for client in clients:
                client.join(2 * WAIT_S)
    assert answers == [200] * 4


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_off_loopback_a_connection_is_rate_limited_and_clients_are_capped(engine):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    # One request per 10 s on a connection: the second request on it comes sooner, however loaded the machine.
    with serving(engine, host=address, token=TOKEN, max_requests_per_s=0.1, max_connections_per_client=3) as server:
        with requests.Session() as session:  # one keep-alive connection (a 429 closes it; the next is a new one)
            statuses = [session.get(server.url + "/health", timeout=WAIT_S).status_code for _ in range(3)]
        assert statuses == [200, 429, 200]
        held = [_connect(server) for _ in range(3)]
        extra = _connect(server)
        try:
            assert _closed_by_server(extra)  # a fourth connection from the same address is closed at once
        finally:
            for sock in [*held, extra]:
                sock.close()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="idle_timeout_s must be > 0"):
        ConnectionLimits(idle_timeout_s=0)
    with pytest.raises(ValueError, match="exceeds max_connections"):
        ConnectionLimits(max_connections=10, max_connections_per_client=20)
    assert np.isfinite(ConnectionLimits().max_requests_per_s)


def test_serve_refuses_bad_limits_before_loading_the_model(tiny_model_dir, capsys):
    from fanvla.cli import main

    assert main(["serve", "--checkpoint", str(tiny_model_dir), "--idle-timeout-s", "0"]) == 2
    assert "idle_timeout_s must be > 0" in capsys.readouterr().err
