"""The console's HTTP API and session: buttons only in their phase, clear answers to bad requests."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from eval_protocols.console_app import ConsoleServer, create_console_app
from eval_protocols.console_session import ConsoleSession, SessionClosed
from robot.runtime import EpisodeResult, EpisodeStatus


@pytest.fixture()
def session():
    return ConsoleSession()


def logged_in(app):
    """A test client that opened the run's URL (cookie) and sends the page's CSRF token with every request."""
    keys = app.config["CONSOLE_SECRETS"]
    client = app.test_client()
    assert client.get(f"/?token={keys.token}").status_code == 303
    client.environ_base["HTTP_X_CSRF_TOKEN"] = keys.csrf
    return client


@pytest.fixture()
def client(session):
    return logged_in(create_console_app(session, lambda: np.zeros((48, 64, 3), np.uint8), None))


def _until_phase(session: ConsoleSession, phase: str) -> None:
    deadline = time.monotonic() + 10
    while session.snapshot()["phase"] != phase:
        assert time.monotonic() < deadline, f"never reached {phase}"
        time.sleep(0.005)


def _show(session: ConsoleSession) -> None:
    session.show_trial("task1", "Standard setting", 0, 30, "put the red cube into the box", "Place ...", {}, {})


def test_buttons_in_the_wrong_phase_are_refused_with_the_reason(client, session):
    answer = client.post("/api/start")
    assert answer.status_code == 409 and "only while setup; the trial is idle" in answer.get_json()["message"]
    _show(session)
    waiter = threading.Thread(target=session.wait_for_start)
    waiter.start()
    _until_phase(session, "setup")
    assert client.post("/api/stop").status_code == 409
    assert client.post("/api/score", json={"success": True}).status_code == 409
    assert client.post("/api/start").get_json() == {"ok": True, "message": "start pressed"}
    waiter.join(5)
    assert not waiter.is_alive()


def test_score_needs_a_boolean_and_a_short_note(client, session):
    _show(session)
    result = EpisodeResult(EpisodeStatus.TIMEOUT, 300, 30.0, 0, "no success within 30 s")
    scores = []
    waiter = threading.Thread(target=lambda: scores.append(session.wait_for_score(result)))
    waiter.start()
    _until_phase(session, "scoring")
    assert session.snapshot()["episode"] == {"status": "timeout", "reason": "no success within 30 s", "steps": 300,
                                             "duration_s": 30.0}
    assert client.post("/api/score", data="yes").status_code == 400
    assert client.post("/api/score", json={"success": "yes"}).status_code == 400
    too_long = client.post("/api/score", json={"success": False, "note": "x" * 501})
    assert too_long.status_code == 400 and "at most 500" in too_long.get_json()["message"]
    assert client.post("/api/score", json={"success": False, "note": " slipped "}).status_code == 200
    waiter.join(5)
    assert scores == [(False, "slipped")]


def test_state_frame_and_page(client):
    state = client.get("/api/state").get_json()
    assert state["phase"] == "idle" and state["calibrated"] is False
    frame = client.get("/frame.jpg")
    assert frame.status_code == 200 and frame.data[:2] == b"\xff\xd8"
    page = client.get("/")
    assert b'id="start"' in page.data and b"/assets/console.js" in page.data
    assert client.get("/assets/console.js").status_code == 200


def test_camera_failure_answers_503_and_closing_wakes_the_runner(session):
    def broken() -> np.ndarray:
        raise TimeoutError("no frame within 2 s")

    client = logged_in(create_console_app(session, broken, None))
    answer = client.get("/frame.jpg")
    assert answer.status_code == 503 and b"no frame within 2 s" in answer.data
    _show(session)
    errors = []

    def wait() -> None:
        try:
            session.wait_for_start()
        except SessionClosed as error:
            errors.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    session.close()
    waiter.join(5)
    assert errors and "closed while waiting" in str(errors[0])


def test_console_listens_on_loopback_only(session):
    app = create_console_app(session, lambda: np.zeros((4, 4, 3), np.uint8), None)
    with pytest.raises(ValueError, match="loopback only"):
        ConsoleServer(app, 0, host="0.0.0.0")
