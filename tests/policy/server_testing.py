"""Helpers of the policy server tests: a real server (waitress or werkzeug) on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tests.conftest import REPO_ROOT

TOKEN = "test-token-0123456789abcdef"
INSTRUCTION = "put the red cube into the box"


# Gentle actions for a random model: at most 2 mm per step and no rotation (q01 == q99 == 0 un-normalises to 0),
# so that the safety layer has no reason to clamp or hold (a random wrist rotation soon meets J5's limit).
BOUND = np.array([2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 1.0])
LOWER = -BOUND * [1, 1, 1, 1, 1, 1, 0]
GENTLE_STATS = {"q01": LOWER.tolist(), "q99": BOUND.tolist(), "mask": [True] * 6 + [False], "mean": [0.0] * 7,
                "std": [1.0] * 7, "min": LOWER.tolist(), "max": BOUND.tolist()}


def build_gentle_model(out_dir: Path, seed: int = 3) -> Path:
    """A tiny random model whose actions the twin's arm can follow without the safety layer holding it."""
    from policy.tiny import build_tiny

    return build_tiny(out_dir, seed=seed, norm_stats={"jaka_sim": {"action": GENTLE_STATS}})


def rgb(height: int = 224, width: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@contextlib.contextmanager
def running_server(engine, token: str | None = None, limits=None, wsgi: str = "waitress", http_threads: int = 4,
                   injected_latency=None):
    from policy.server import PolicyServer, create_app

    app = create_app(engine, limits, token, injected_latency)
    max_body = limits.max_body_bytes if limits is not None else 32 * 1024 * 1024
    with PolicyServer(app, "127.0.0.1", 0, wsgi, http_threads, max_body) as server:
        yield server


@contextlib.contextmanager
def serve_subprocess(model_dir: Path, *extra: str, timeout_s: float = 120.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """``fanvla serve`` in a child process on a free port; yields (process, url) once it printed its ready line."""
    from policy.serve_cli import READY_PREFIX

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fanvla", "serve", "--checkpoint", str(model_dir), "--port", "0",
                                "--threads", "1", *extra], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"fanvla serve exited with {process.wait()}:\n{''.join(seen)}")
            seen.append(line)
            if line.startswith(READY_PREFIX):
                url = re.search(r"http://\S+", line).group(0)
                break
        else:
            raise RuntimeError(f"fanvla serve not ready within {timeout_s} s:\n{''.join(seen)}")
        # Keep reading its output so that a full pipe can never block the server.
        threading.Thread(target=lambda: seen.extend(process.stdout), daemon=True).start()
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(30)
        process.stdout.close()


@contextlib.contextmanager
def tcp_listener(behaviour: str):
    """A real TCP server that either closes every connection at once ("hang up") or never answers ("silent")."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept_loop() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)
            if behaviour == "hang up":
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST
                connection.close()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for connection in accepted:
            connection.close()
