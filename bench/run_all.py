"""Run every benchmark in bench/ and write their output into docs/benchmarks.md.

    python bench/run_all.py                # all benchmarks, rewrites docs/benchmarks.md
    python bench/run_all.py sim_bench      # a subset (the other sections and the last full run's date are kept)

Each benchmark prints its own figures and a ratio against a baseline it measures in the same run; this
script only runs them one after another (never in parallel: they time the CPU) and records what they
printed, with the machine and the date, so the document always shows measured numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DOC = BENCH_DIR.parent / "docs" / "benchmarks.md"

# name -> (what it measures, the goal it checks, extra arguments)
BENCHMARKS: dict[str, tuple[str, str, list[str]]] = {
    "sim_bench": ("twin render rate (224x224, 640x480), physics step rate, 125 Hz servo-loop jitter",
                  "renders in milliseconds with shadows and anti-aliasing off; servo p99 close to a bare sleep loop",
                  []),
    "camera_bench": ("software RealSense -> pipeline -> latest() delivery rate vs bare injection",
                     "frames delivered well above the camera's 30 fps", []),
    "store_bench": ("episode store write throughput vs the bare codec, bytes per frame per codec",
                    "the store adds little over the codec", ["--depth"]),
    "store_integrity_bench": ("chunk checksums: recording/reading time with and without them; fault injection per "
                              "array kind", "checksums cost <= 3 % of recording time; 0 silent corruptions", []),
    "record_bench": ("sustained 30 Hz recording of 640x480 colour + depth on the realtime twin; lock-step throughput",
                     "zero late ticks at 30 Hz", []),
    "policy_predict": ("tiny-model predict latency (B=1) and batch throughput (B=8) on CPU",
                       "batching beats single calls", []),
    "policy_load_memory": ("peak memory while loading a sharded checkpoint vs its size",
                           "about one copy of the weights", []),
    "fan_loss_bench": ("FAN-SFT loss time vs SFT loss time on the same batch", "FAN-SFT / SFT <= 1.05", []),
    "finetune_step_bench": ("FAN-SFT training step time vs SFT step time (demo preset)",
                            "FAN-SFT / SFT <= 1.05", []),
    "finetune_loader_bench": ("data loader samples/s vs the training loop's consumption",
                              "the loader is never the bottleneck", []),
    "serve_overhead": ("policy server round trip over in-process inference (p50/p99), msgpack vs json_numpy",
                       "our envelope's overhead below json_numpy's", []),
    "server_load_bench": ("policy server: /health under 200 idle connections + 32 /act clients vs unloaded; 5xx; "
                          "memory", "/health p99 < 100 ms, no 5xx, memory back to baseline", []),
    "oft_bench": ("OpenVLA-OFT vs autoregressive OpenVLA of the same size: actions/s at batch 1, evaluation time per "
                  "trial; FAN-SFT / SFT step time of OFT", "OFT >= 6x the actions/s (demo preset, chunk 8); OFT "
                  "FAN-SFT / SFT <= 1.05", []),
    "eval_trial_overhead": ("evaluation trial cost per step vs a bare control-loop episode",
                            "the trial runner adds little", []),
    "vector_env_bench": ("vectorised twin (robot/sim/vector_env.py): env steps/s for N = 1, 8, 32 scenes, in process "
                         "and over 2 worker processes, vs the single-scene evaluation loop",
                         "many scenes over the two cores step faster than the evaluation loop", []),
    "rl_step_bench": ("RL update time: FAN-PPO vs PPO on the same minibatch, vs the SFT training step; acting per "
                      "tick", "FAN-PPO / PPO <= 1.05", []),
}
# Slow, on demand only (`python bench/run_all.py scale_7b`, `make bench-7b`); their sections are kept otherwise.
ON_DEMAND: dict[str, tuple[str, str, list[str]]] = {
    "scale_7b": ("the full-size OpenVLA-7B path (random weights, exact geometry): load, predict with and without the "
                 "KV cache, one FAN-SFT LoRA step, merge + sharded export, reload",
                 "load peak RSS <= 1.10x the weights, finetune process < 22 GiB, export <= 1.20x the weights, the "
                 "reloaded export predicts the merged model's action", []),
    "eval_batched": ("twin evaluation with K trials in lock-step and one batched forward per tick (eval run --batch 8) "
                     "vs the sequential trial runner, 4 tasks x 30 trials of the demo's SFT checkpoint behind fanvla "
                     "serve, in one run; trial outcomes that differ between the two", "sequential / batched >= 2.5x",
                     ["--policy", "runs/demo/train-sft/final", "--serve"]),
}


def run(name: str, args: list[str]) -> tuple[str, float, int]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), *args], capture_output=True, text=True,
                            env=env, cwd=BENCH_DIR.parent)
    output = (result.stdout + ("\n" + result.stderr if result.returncode else "")).strip()
    return output, time.monotonic() - started, result.returncode


def section(name: str, output: str, seconds: float, code: int) -> str:
    """One benchmark's part of the page, dated: a partial rerun refreshes only its own sections."""
    what, goal, args = {**BENCHMARKS, **ON_DEMAND}[name]
    command = " ".join(["python", f"bench/{name}.py", *args])
    status = "" if code == 0 else f"\n**The benchmark exited with code {code}.**\n"
    return (f"## {name}\n\n{what}. Goal: {goal}.\n\n`{command}` ({seconds:.0f} s, {now_utc()}){status}\n\n"
            f"```\n{output}\n```\n")


def now_utc() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"


def previous_full_run() -> str:
    """The header's "Last full run" line as the page has it (kept when only some benchmarks are rerun)."""
    found = re.search(r"(?m)^Last (?:full )?run: (.*)$", DOC.read_text()) if DOC.exists() else None
    return found.group(1).split(". Timings on ")[0].rstrip(".") if found else "never"


def machine() -> str:
    cores = os.cpu_count()
    memory = ""
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{platform.machine()}, {cores} cores{memory}, Python {platform.python_version()}"


def existing_sections() -> dict[str, str]:
    if not DOC.exists():
        return {}
    parts = re.split(r"(?m)^## ", DOC.read_text())
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip("\n") + "\n" for part in parts[1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all but the on-demand ones): "
                                                 f"{', '.join(BENCHMARKS)}; on demand: {', '.join(ON_DEMAND)}")
    args = parser.parse_args()
    known = {**BENCHMARKS, **ON_DEMAND}
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(known)}")
    sections = existing_sections()
    failed = []
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}", flush=True)
        output, seconds, code = run(name, known[name][2])
        print(output, flush=True)
        sections[name] = section(name, output, seconds, code)
        if code:
            failed.append(name)
    full_run = f"{now_utc()} on {machine()}" if not args.names else previous_full_run()
    header = (f"# Benchmarks\n\nEvery script in `bench/` prints its figures and a ratio against a baseline it "
              f"measures in the same run. This page is written by `python bench/run_all.py` (`make bench`) from "
              f"what they printed; rerun it to refresh (`python bench/run_all.py NAME` refreshes one section, "
              f"dated in its command line).\n\nLast full run: {full_run}. Timings on a shared 2-core machine are "
              f"noisy; the ratios are the point.\n\n")
    DOC.write_text(header + "\n".join(sections[name] for name in known if name in sections))
    print(f"wrote {DOC}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
