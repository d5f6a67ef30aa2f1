"""Round-trip overhead of the policy server over in-process inference, for one 224x224 observation.

Runs ``fanvla serve`` (waitress, 1 torch thread) on loopback in a child process, as at the robot, and times in the
same run and on the same tiny checkpoint:

- in-process: ``InferenceEngine.predict`` in this process (the baseline),
- our msgpack envelope with the image as a raw uint8 array, as PNG and as JPEG (``PolicyClient``),
- upstream OpenVLA's json_numpy request (base64 JSON), as its clients send it.

For every request the overhead is the round trip minus the inference time the server measured for it
(``timing.inference_s`` in our reply, the ``Server-Timing`` header for json_numpy), so the figures do not depend on
the model's own speed. Printed: p50/p99 round trip and overhead per mode, and the ratios against the baseline.

    python bench/serve_overhead.py [--iterations 100] [--image-size 224] [--preset test]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from policy.client import PolicyClient  # noqa: E402
from policy.protocol import encode_act_request  # noqa: E402
from policy.serve_cli import start_serve_child  # noqa: E402
from policy.wire import decode_openvla_reply, encode_json_numpy  # noqa: E402

INSTRUCTION = "put the red cube into the box"


def start_server(model_dir: Path) -> tuple[subprocess.Popen, str]:
    return start_serve_child(model_dir, "--threads", "1", "--http-threads", "1", stderr=subprocess.DEVNULL,
                             cwd=REPO_ROOT)


def server_inference_s(response: requests.Response) -> float:
    match = re.search(r"inference;dur=([0-9.]+)", response.headers.get("Server-Timing", ""))
    return float(match.group(1)) / 1e3


def time_upstream(session: requests.Session, url: str, image: np.ndarray) -> tuple[float, float]:
    started = time.perf_counter()
    body = encode_json_numpy({"image": image, "instruction": INSTRUCTION})
    response = session.post(url + "/act", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    response.raise_for_status()
    decode_openvla_reply(response.content)
    return time.perf_counter() - started, server_inference_s(response)


def time_in_process(engine, image: np.ndarray) -> tuple[float, float]:
    started = time.perf_counter()
    prediction = engine.predict([image], [INSTRUCTION])
    return time.perf_counter() - started, prediction.inference_s


def time_client(client: PolicyClient, image: np.ndarray) -> tuple[float, float]:
    started = time.perf_counter()
    reply = client.act(image, INSTRUCTION)
    return time.perf_counter() - started, reply.timing["inference_s"]


def quantiles_ms(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50) * 1e3), float(np.percentile(values, 99) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--preset", default="test", help="tiny preset of the checkpoint (test, demo)")
    args = parser.parse_args()

    import torch

    from policy.inference import InferenceEngine
    from policy.tiny import build_tiny

    torch.set_num_threads(1)
    image = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_tiny(Path(scratch) / "model", preset=args.preset)
        engine = InferenceEngine.load(model_dir, threads=1)
        process, url = start_server(model_dir)
        try:
            clients = {fmt: PolicyClient(url, timeout_s=60, image_format=fmt) for fmt in ("raw", "png", "jpeg")}
            session = requests.Session()
            modes = {
                "in-process (baseline)": lambda: time_in_process(engine, image),
                "msgpack raw uint8": lambda: time_client(clients["raw"], image),
                "msgpack PNG": lambda: time_client(clients["png"], image),
                "msgpack JPEG q90": lambda: time_client(clients["jpeg"], image),
                "json_numpy (upstream)": lambda: time_upstream(session, url, image),
            }
            for run in modes.values():  # warm up connections and caches
                for _ in range(3):
                    run()
            rounds: dict[str, list[float]] = {name: [] for name in modes}
            overheads: dict[str, list[float]] = {name: [] for name in modes}
            for _ in range(args.iterations):  # interleaved, so that load changes hit every mode alike
                for name, run in modes.items():
                    total_s, inference_s = run()
                    rounds[name].append(total_s)
                    overheads[name].append(total_s - inference_s)
        finally:
            process.kill()
            process.wait()

    base_p50, base_p99 = quantiles_ms(rounds["in-process (baseline)"])
    print(f"policy server round trip, {args.image_size}x{args.image_size} RGB, tiny preset '{args.preset}', "
          f"{args.iterations} requests per mode, loopback, waitress, 1 torch thread")
    print(f"{'mode':24s} {'p50 ms':>8s} {'p99 ms':>8s} {'overhead p50':>13s} {'overhead p99':>13s} "
          f"{'p50 / in-process':>17s} {'body bytes':>11s}")
    sizes = {"msgpack raw uint8": "raw", "msgpack PNG": "png", "msgpack JPEG q90": "jpeg"}
    for name in modes:
        p50, p99 = quantiles_ms(rounds[name])
        o50, o99 = quantiles_ms(overheads[name])
        if name in sizes:
            size = len(encode_act_request([image], [INSTRUCTION], batch=False, image_format=sizes[name]))
        elif name.startswith("json"):
            size = len(encode_json_numpy({"image": image, "instruction": INSTRUCTION}))
        else:
            size = 0
        print(f"{name:24s} {p50:8.2f} {p99:8.2f} {o50:13.2f} {o99:13.2f} {p50 / base_p50:17.2f} {size:11d}")
    ours, theirs = quantiles_ms(overheads["msgpack raw uint8"]), quantiles_ms(overheads["json_numpy (upstream)"])
    print(f"overhead msgpack raw / json_numpy: p50 {ours[0] / theirs[0]:.2f}, p99 {ours[1] / theirs[1]:.2f}")
    print(f"baseline in-process: p50 {base_p50:.2f} ms, p99 {base_p99:.2f} ms")


if __name__ == "__main__":
    main()
