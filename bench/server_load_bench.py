"""The policy server under connection pressure: /health latency, errors and memory, against the same server unloaded.

    python bench/server_load_bench.py [--idle 200] [--clients 32] [--seconds 20] [--http-threads 4]

Runs ``fanvla serve`` (waitress, token required, 1 torch thread, a tiny checkpoint) in a child process, as at the
GPU box, then in the same run:

1. baseline: the server's resident memory after warm-up, and ``GET /health`` latency with nothing else going on
   (one probe every 50 ms for 5 s);
2. load, ``--seconds`` long: ``--idle`` connections opened and held without sending a byte (no token), while
   ``--clients`` threads (in their own process) send ``POST /act`` back to back with the token, and a prober (in
   its own process, so that the load's threads do not delay its clock) sends ``GET /health`` every 50 ms;
3. after: the idle connections closed and the clients stopped, the server's memory again.

Printed: /health p50/p99/max under load and unloaded (ratio), every status code seen (5xx must be 0), /act
throughput, and the server's memory before, at the peak and after (ratio after/before). Goals (issue 27):
/health p99 under load < 100 ms, no 5xx, memory back to baseline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from policy.serve_cli import start_serve_child  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
INSTRUCTION = "put the red cube into the box"
PROBE_PERIOD_S = 0.05


def start_server(model_dir: Path, token_file: Path, http_threads: int) -> tuple[subprocess.Popen, str]:
    return start_serve_child(model_dir, "--threads", "1", "--http-threads", str(http_threads), "--token-file",
                             str(token_file), stderr=subprocess.DEVNULL, cwd=REPO_ROOT)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def probe(url: str, seconds: float, results) -> None:
    """GET /health every PROBE_PERIOD_S; puts (latencies_s, statuses) on ``results``."""
    import requests

    latencies, statuses = [], Counter()
    session = requests.Session()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            statuses[session.get(url + "/health", timeout=5).status_code] += 1
        except requests.RequestException as error:
            statuses[type(error).__name__] += 1
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, PROBE_PERIOD_S - (time.perf_counter() - started)))
    results.put((latencies, dict(statuses)))


def load(url: str, clients: int, seconds: float, results) -> None:
    """``clients`` threads posting /act back to back; puts (statuses, requests done) on ``results``."""
    import requests

    from policy.protocol import encode_act_request

    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    body = encode_act_request([image], [INSTRUCTION], batch=False)
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {TOKEN}"}
    statuses: Counter = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            try:
                status = session.post(url + "/act", data=body, headers=headers, timeout=60).status_code
            except requests.RequestException as error:
                status = type(error).__name__
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(statuses))


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    values = 1e3 * np.asarray(latencies)
    return float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--http-threads", type=int, default=4)
    args = parser.parse_args()

    from policy.tiny import build_tiny

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="server_load_bench_") as workdir:
        model = build_tiny(Path(workdir) / "tiny", preset="test", seed=0)
        token_file = Path(workdir) / "token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        server, url = start_server(model, token_file, args.http_threads)
        try:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            results = context.Queue()
            warm = context.Process(target=load, args=(url, 2, 2.0, results))
            warm.start()
            results.get(timeout=300)
            warm.join()
            baseline_mb = rss_mb(server.pid)
            prober = context.Process(target=probe, args=(url, 5.0, results))
            prober.start()
            unloaded, unloaded_statuses = results.get(timeout=300)
            prober.join()

            peak_mb = baseline_mb
            idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(args.idle)]
            loader = context.Process(target=load, args=(url, args.clients, args.seconds, results))
            prober = context.Process(target=probe, args=(url, args.seconds, results))
            loader.start()
            prober.start()
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                peak_mb = max(peak_mb, rss_mb(server.pid))
                time.sleep(0.5)
            outcomes = [results.get(timeout=300), results.get(timeout=300)]
            loader.join()
            prober.join()
            loaded, probe_statuses = next(o for o in outcomes if isinstance(o, tuple))
            act_statuses = next(o for o in outcomes if isinstance(o, dict))
            for sock in idle:
                sock.close()
            time.sleep(3.0)
            after_mb = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(30)

    p50, p99, worst = percentiles(loaded)
    b50, b99, bworst = percentiles(unloaded)
    acts = sum(n for status, n in act_statuses.items() if status == 200)
    fivexx = sum(n for status, n in {**act_statuses, **probe_statuses}.items()
                 if isinstance(status, int) and status >= 500)
    print(f"fanvla serve (waitress, {args.http_threads} request threads, token required, tiny 'test' model, 1 torch "
          f"thread) on loopback; {os.cpu_count()} CPUs")
    print(f"unloaded: /health p50 {b50:.1f} ms, p99 {b99:.1f} ms, max {bworst:.1f} ms ({len(unloaded)} probes, "
          f"statuses {unloaded_statuses})")
    print(f"load: {args.idle} idle connections held (no token, no bytes) + {args.clients} client threads posting /act "
          f"for {args.seconds:g} s")
    print(f"  /health under load: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms ({len(loaded)} probes, "
          f"statuses {probe_statuses}) -> p99 / unloaded p99 = {p99 / b99:.1f}; goal p99 < 100 ms: "
          f"{'met' if p99 < 100 else 'NOT MET'}")
    print(f"  /act: {acts} answered 200 ({acts / args.seconds:.1f}/s), statuses {act_statuses}")
    print(f"  5xx answers: {fivexx} (goal 0)")
    print(f"memory (server RSS): before {baseline_mb:.0f} MB, peak {peak_mb:.0f} MB, 3 s after the load "
          f"{after_mb:.0f} MB -> after / before = {after_mb / baseline_mb:.3f}")


if __name__ == "__main__":
    main()
