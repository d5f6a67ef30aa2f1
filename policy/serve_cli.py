"""``fanvla serve --checkpoint DIR``: the policy server (docs/serving.md)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from policy.action_space import ActionSpace
from policy.precision import DTYPE_CHOICES
from policy.server_limits import ConnectionLimits
from policy.server_validation import RequestLimits
from robot.injected_latency import LatencySpec

READY_PREFIX = "fanvla serve: ready"  # first line on stdout once requests are accepted (scripts wait for it)


def start_serve_child(checkpoint: str | Path, *args: str, stderr: int = subprocess.STDOUT,
                      cwd: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """``fanvla serve --checkpoint CHECKPOINT --port 0 ARGS`` as a child process; (process, url) once it is ready.

    Its stdout is drained on a thread afterwards, so a full pipe can never block the server. The caller stops it.
    """
    process = subprocess.Popen([sys.executable, "-m", "fanvla", "serve", "--checkpoint", str(checkpoint), "--port",
                                "0", *args], stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, re.search(r"http://\S+", line).group(0)
    raise RuntimeError(f"fanvla serve exited with {process.wait()} before it was ready")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a policy checkpoint over HTTP (POST /act, GET /metadata, "
                                                "GET /health)")
    serve.add_argument("--checkpoint", required=True, help="model directory (openvla-7b layout, tiny or finetuned)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; anything "
                                                           "else requires --token-file)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port, printed when ready)")
    serve.add_argument("--token-file", default=None, help="file holding the bearer token clients must send")
    serve.add_argument("--wsgi", choices=("waitress", "werkzeug"), default="waitress",
                       help="HTTP server: waitress (production, default) or werkzeug (development)")
    serve.add_argument("--http-threads", type=int, default=4, help="request threads (they share one model)")
    serve.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads (default: torch's choice; 1 is fastest for tiny models on "
                            "few shared cores)")
    serve.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    serve.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                       help="weights: auto = the checkpoint's own (bf16 for openvla-7b, float32 for tiny models); "
                            "bf16 is refused on a device without bf16 arithmetic (docs/policy.md)")
    serve.add_argument("--action-space", default=None, choices=[space.value for space in ActionSpace],
                       help="action space when the checkpoint has no fanvla.json (default ee_delta)")
    serve.add_argument("--unnorm-key", default=None, help="statistics key (default: fanvla.json's, else the only one)")
    crop = serve.add_mutually_exclusive_group()
    crop.add_argument("--center-crop", dest="center_crop", action="store_true", default=None,
                      help="0.9-area centre crop (default: as fanvla.json says, else off)")
    crop.add_argument("--no-center-crop", dest="center_crop", action="store_false")
    serve.add_argument("--max-body-mb", type=float, default=RequestLimits.max_body_bytes / 2**20,
                       help="largest request body accepted")
    serve.add_argument("--max-batch", type=int, default=RequestLimits.max_batch)
    serve.add_argument("--policy-latency-ms", default="0", metavar="N|N+-M",
                       help="add N ms (or uniformly N-M..N+M ms) before every /act answer: rehearse a slower model "
                            "(e.g. 150 for OpenVLA-7B on a workstation GPU); shown in /metadata (default 0)")
    defaults = ConnectionLimits()
    serve.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help="open connections at most (waitress); more wait in the listen queue")
    serve.add_argument("--max-connections-per-client", type=int, default=defaults.max_connections_per_client,
                       help="open connections from one address other than loopback")
    serve.add_argument("--idle-timeout-s", type=float, default=defaults.idle_timeout_s,
                       help="close a connection idle this long")
    serve.add_argument("--request-timeout-s", type=float, default=defaults.request_timeout_s,
                       help="close a connection that has not sent a whole request (headers and body) this long after "
                            "its first byte")
    serve.add_argument("--max-request-rate", type=float, default=defaults.max_requests_per_s,
                       help="requests per second on one connection from an address other than loopback (429 beyond)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from fanvla.cli import UserError
    from policy.server_auth import ServerConfigError, check_exposure, read_token_file

    try:  # cheap checks first: refuse an unsafe configuration before spending time on loading the model
        token = read_token_file(args.token_file) if args.token_file else None
        check_exposure(args.host, token)
        limits = RequestLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_batch=args.max_batch)
        latency = LatencySpec.parse(args.policy_latency_ms)
        connections = ConnectionLimits(args.max_connections, args.max_connections_per_client, args.idle_timeout_s,
                                       args.request_timeout_s, args.max_request_rate)
        if not Path(args.checkpoint).is_dir():
            raise ValueError(f"cannot serve {args.checkpoint}: not a directory (give a model directory: openvla-7b "
                             f"layout, `fanvla policy init-tiny` or `fanvla finetune` output)")
    except (ServerConfigError, ValueError) as error:
        raise UserError(str(error)) from None
    server, checkpoint_id = _build_server(args, token, limits, latency, connections)
    print(f"{READY_PREFIX} {server.url} checkpoint {checkpoint_id} ({args.wsgi}, {args.http_threads} request "
          f"threads{', token required' if token else ''}"
          f"{f', {latency} ms added to every answer' if latency.enabled else ''})", flush=True)
    try:
        server.serve_forever()
    finally:
        print("fanvla serve: stopped", file=sys.stderr, flush=True)
    return 0


def _build_server(args: argparse.Namespace, token: str | None, limits: RequestLimits,
                  latency: LatencySpec, connections: ConnectionLimits) -> tuple[Any, str]:
    from dataclasses import replace

    from fanvla.cli import UserError
    from policy.checkpoint import CheckpointError
    from policy.config import ConfigError
    from policy.deployment import DeploymentError
    from policy.inference import InferenceEngine
    from policy.normalization import StatisticsError
    from policy.server import PolicyServer, create_app

    try:
        engine = InferenceEngine.load(args.checkpoint, action_space=args.action_space, unnorm_key=args.unnorm_key,
                                      center_crop=args.center_crop, device=args.device, dtype=args.dtype,
                                      threads=args.threads)
    except (CheckpointError, ConfigError, DeploymentError, StatisticsError, FileNotFoundError, ValueError) as error:
        raise UserError(f"cannot serve {args.checkpoint}: {error}") from None
    limits = replace(limits, state_dim=engine.deployment.state_dim)
    try:
        server = PolicyServer(create_app(engine, limits, token, latency), args.host, args.port, args.wsgi,
                              args.http_threads, limits.max_body_bytes, connections)
    except OSError as error:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {error}") from None
    return server, engine.checkpoint_id
