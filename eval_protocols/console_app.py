"""The operator console: a small Flask app on loopback, served while a real evaluation runs.

Routes::

    GET  /                 the page (eval_protocols/console/index.html + console.js + console.css)
    GET  /api/state        the session's snapshot (JSON): phase, task, trial, operator text, progress, message
    GET  /frame.jpg        the newest camera frame with the placement markers (JPEG)
    POST /api/start        start the trial (phase setup)
    POST /api/stop         end the running trial early (phase running)
    POST /api/score        {"success": true|false, "note": "..."} (phase scoring)

A button pressed in the wrong phase answers 409 with the reason; bad JSON answers 400. The console starts robot
trials, so it is locked down (``eval_protocols/console_security.py``): 127.0.0.1 only, Host and Origin checks, a
random per-run token in the URL it prints (then a cookie), and a CSRF token for every POST.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flask import Flask, Response, jsonify, request, send_from_directory

from eval_protocols import console_security
from eval_protocols.calibration import TableCalibration, draw_placement
from eval_protocols.console_security import ConsoleSecrets
from eval_protocols.console_session import ConsoleSession, PhaseError
from robot.scene import SceneSpec

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "console"
JPEG_QUALITY = 80
LOOPBACK = "127.0.0.1"
CSRF_PLACEHOLDER = "__FANVLA_CSRF__"  # in index.html, replaced by the run's CSRF token


def _placement_frame(frame_source: Callable[[], np.ndarray], session: ConsoleSession,
                     calibration: TableCalibration | None) -> np.ndarray:
    image = frame_source()
    scene = session.scene
    if calibration is not None and scene:
        image = draw_placement(image, calibration, SceneSpec.from_dict(scene))
    return image


def create_console_app(session: ConsoleSession, frame_source: Callable[[], np.ndarray],
                       calibration: TableCalibration | None, keys: ConsoleSecrets | None = None) -> Flask:
    """``frame_source()`` returns the newest RGB frame (e.g. ``lambda: robot.camera.latest().color``); ``keys``:
    the run's login and CSRF tokens (new random ones unless given; ``app.config["CONSOLE_SECRETS"]``)."""
    import cv2

    app = Flask("fanvla-eval-console", static_folder=None)
    keys = keys or ConsoleSecrets.new()
    app.config["CONSOLE_SECRETS"] = keys
    console_security.install(app, keys)
    page = (ASSETS_DIR / "index.html").read_text(encoding="utf-8").replace(CSRF_PLACEHOLDER, keys.csrf)

    @app.get("/")
    def index() -> Response:
        return Response(page, mimetype="text/html")

    @app.get("/assets/<path:name>")
    def asset(name: str) -> Response:
        return send_from_directory(ASSETS_DIR, name)

    @app.get("/api/state")
    def state() -> Response:
        return jsonify({**session.snapshot(), "calibrated": calibration is not None})

    @app.get("/frame.jpg")
    def frame() -> Response:
        try:
            image = _placement_frame(frame_source, session, calibration)
        except Exception as error:  # a camera hiccup must not take the console down; the page retries
            log.warning("no camera frame for the console: %s", error)
            return Response(f"no camera frame: {error}", status=503, mimetype="text/plain")
        ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return Response("JPEG encoding failed", status=500, mimetype="text/plain")
        return Response(encoded.tobytes(), mimetype="image/jpeg", headers={"Cache-Control": "no-store"})

    def press(action: Callable[[], str]) -> tuple[Response, int]:
        try:
            return jsonify({"ok": True, "message": action()}), 200
        except PhaseError as error:
            return jsonify({"ok": False, "message": str(error)}), 409
        except ValueError as error:
            return jsonify({"ok": False, "message": str(error)}), 400

    @app.post("/api/start")
    def start():
        return press(session.press_start)

    @app.post("/api/stop")
    def stop():
        return press(session.press_stop)

    @app.post("/api/score")
    def score():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("success"), bool):
            return jsonify({"ok": False, "message": 'send JSON {"success": true|false, "note": "..."}'}), 400
        note = body.get("note", "")
        if not isinstance(note, str):
            return jsonify({"ok": False, "message": "note must be text"}), 400
        return press(lambda: session.press_score(body["success"], note))

    return app


class ConsoleServer:
    """The console on a background thread (werkzeug, threaded: the page polls while a button is pressed)."""

    def __init__(self, app: Flask, port: int = 0, host: str = LOOPBACK) -> None:
        from werkzeug.serving import make_server

        if host not in (LOOPBACK, "localhost", "::1"):
            raise ValueError(f"the operator console listens on loopback only (it moves the arm); got host {host!r}")
        self._server = make_server(host, port, app, threaded=True)
        self.host, self.port = host, int(self._server.server_port)
        self._token = app.config["CONSOLE_SECRETS"].token
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The URL to open: it carries the run's token (the page then keeps it in a cookie)."""
        return f"{self.base_url}?{console_security.TOKEN_PARAM}={self._token}"

    def start(self) -> ConsoleServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="eval-console", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> ConsoleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
