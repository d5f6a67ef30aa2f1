"""The operator console starts real robot trials: only the operator's browser, holding the run's token, may use it.

Issue 27's probes, against a real server on loopback: a cross-origin form POST to ``/api/start`` was accepted, and
a foreign Host header (DNS rebinding) was served ``/api/state`` and ``/frame.jpg``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from eval_protocols.console_app import ConsoleServer, create_console_app
from eval_protocols.console_security import CSRF_HEADER
from eval_protocols.console_session import ConsoleSession


@pytest.fixture()
def console():
    session = ConsoleSession()
    app = create_console_app(session, lambda: np.zeros((48, 64, 3), np.uint8), None)
    with ConsoleServer(app, 0) as server:
        yield server, session, app.config["CONSOLE_SECRETS"]
    session.close()


@pytest.fixture()
def in_setup(console):
    """The console waiting for the operator's Start (a runner thread blocked in wait_for_start)."""
    server, session, keys = console
    session.show_trial("task1", "Standard setting", 0, 30, "put the red cube into the box", "Place ...", {}, {})
    started = threading.Event()

    def runner() -> None:
        try:
            session.wait_for_start()
            started.set()
        except Exception:  # closed at the end of the test
            pass

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while session.snapshot()["phase"] != "setup":
        assert time.monotonic() < deadline
        time.sleep(0.005)
    yield server, session, keys, started


def _login(server) -> requests.Session:
    operator = requests.Session()
    first = operator.get(server.url, allow_redirects=False, timeout=10)
    assert first.status_code == 303 and first.headers["Location"].endswith("/")
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return operator


def test_the_printed_url_carries_a_random_token_and_logs_in(console):
    server, _, keys = console
    assert server.url == f"http://127.0.0.1:{server.port}/?token={keys.token}" and len(keys.token) >= 40
    assert ConsoleServer(create_console_app(ConsoleSession(), lambda: None, None), 0).url != server.url
    operator = _login(server)
    page = operator.get(server.base_url, timeout=10)
    assert page.status_code == 200 and f'content="{keys.csrf}"' in page.text
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert operator.get(server.base_url + "api/state", timeout=10).json()["phase"] == "idle"


def test_without_the_token_nothing_but_the_static_assets_is_served(console):
    server, _, keys = console
    for path in ("", "api/state", "frame.jpg"):
        assert requests.get(server.base_url + path, timeout=10).status_code == 401
    assert requests.get(server.base_url + "?token=" + "x" * len(keys.token), timeout=10).status_code == 401
    assert requests.post(server.base_url + "api/start", headers={CSRF_HEADER: keys.csrf}, timeout=10).status_code \
        == 401
    assert requests.get(server.base_url + "assets/console.js", timeout=10).status_code == 200


def test_a_cross_origin_form_post_cannot_start_a_trial(in_setup):
    server, session, keys, started = in_setup
    operator = _login(server)  # even with the operator's cookie in the browser (a same-site attacker)
    form = {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}
    forged = operator.post(server.base_url + "api/start", data={"go": "1"}, headers=form, timeout=10)
    assert forged.status_code == 403 and "cross-origin" in forged.json()["message"]
    other_port = operator.post(server.base_url + "api/start", timeout=10,
                               headers={"Origin": "http://127.0.0.1:1", CSRF_HEADER: keys.csrf})
    assert other_port.status_code == 403
    no_csrf = operator.post(server.base_url + "api/start", json={}, timeout=10,
                            headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert no_csrf.status_code == 403 and CSRF_HEADER in no_csrf.json()["message"]
    assert operator.get(server.base_url + "api/start", timeout=10).status_code == 405  # POST only
    assert session.snapshot()["phase"] == "setup" and not started.is_set()
    genuine = operator.post(server.base_url + "api/start", json={}, timeout=10,
                            headers={"Origin": f"http://127.0.0.1:{server.port}", CSRF_HEADER: keys.csrf})
    assert genuine.status_code == 200 and started.wait(10)


def test_a_foreign_host_header_is_refused_dns_rebinding(console):
    server, _, keys = console
    cookie = f"fanvla-console-{server.port}={keys.token}"  # even with the operator's cookie
    for path in ("api/state", "frame.jpg", ""):
        answer = requests.get(server.base_url + path, timeout=10,
                              headers={"Host": f"rebind.example:{server.port}", "Cookie": cookie})
        assert answer.status_code == 403 and b"127.0.0.1 or localhost" in answer.content
    assert requests.get(server.base_url + "api/state", headers={"Host": f"localhost:{server.port}", "Cookie": cookie},
                        timeout=10).status_code == 200
