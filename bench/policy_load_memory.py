"""Peak host memory while loading a sharded checkpoint, compared with its size on disk.

Writes a mid-size random OpenVLA (tiny classes, widened Llama: ~110 M parameters, ~440 MB in float32) as
~64 MB shards to a temporary directory, then loads it in fresh processes and reports the growth of peak RSS
during the load (peak RSS minus RSS after imports):

- ``OpenVLA.from_pretrained`` (meta-device build, shard-by-shard assignment): the goal is ~1x the checkpoint size;
- baseline in the same run: the plain way (build the model with real random weights, read every shard into one
  state dict, ``load_state_dict``), which holds about two copies.

    python bench/policy_load_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARD_BYTES = 64 * 1024 * 1024
MID_SIZE = {"llm_hidden": 1024, "llm_layers": 8, "llm_heads": 16, "llm_intermediate": 2816, "dino_width": 256,
            "dino_heads": 4, "siglip_width": 256, "siglip_heads": 4, "image_size": 112}

CHILD = r"""
import resource, sys, time
sys.path.insert(0, {repo!r})
import torch
from policy.openvla import OpenVLA
from policy.checkpoint import load_openvla, weight_map
from policy.config import load_config
from safetensors.torch import load_file

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

before = rss_kib()
start = time.perf_counter()
if {mode!r} == "ours":
    model = OpenVLA.from_pretrained({path!r})
else:
    model = OpenVLA(load_config({path!r}))
    state = {{}}
    for shard in sorted(set(weight_map(__import__("pathlib").Path({path!r})).values())):
        state.update(load_file(shard))
    model.load_state_dict(state)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, peak, elapsed, sum(p.numel() for p in model.parameters()))
"""


def write_checkpoint(out_dir: Path) -> int:
    sys.path.insert(0, str(REPO_ROOT))
    from policy.tiny import build_tiny_model

    model = build_tiny_model("demo", seed=0, overrides=MID_SIZE)
    model.save_pretrained(out_dir, max_shard_bytes=SHARD_BYTES)
    return sum(path.stat().st_size for path in out_dir.glob("*.safetensors"))


def measure(path: Path, mode: str) -> tuple[float, float, float]:
    """(RSS after imports MiB, peak RSS MiB, load seconds) of a fresh process loading ``path``."""
    code = CHILD.format(repo=str(REPO_ROOT), path=str(path), mode=mode)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before_kib, peak_kib, elapsed, _ = result.stdout.split()
    return int(before_kib) / 1024, int(peak_kib) / 1024, float(elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="write the checkpoint here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.keep) if args.keep else Path(tmp) / "mid"
        size_mib = write_checkpoint(directory) / 2**20
        shards = len(list(directory.glob("model-*.safetensors")))
        print(f"checkpoint: {size_mib:.0f} MiB of float32 weights in {shards} shards ({directory})")
        results = {mode: measure(directory, mode) for mode in ("ours", "naive")}
    labels = {"ours": "OpenVLA.from_pretrained", "naive": "baseline: build + load_file + load_state_dict"}
    for mode, label in labels.items():
        before, peak, elapsed = results[mode]
        growth = peak - before
        print(f"  {label:47s} peak RSS growth {growth:7.0f} MiB = {growth / size_mib:.2f}x checkpoint "
              f"({elapsed:.1f} s)")
    ours, naive = (results[m][1] - results[m][0] for m in ("ours", "naive"))
    print(f"  ratio ours / baseline peak growth: {ours / naive:.2f}")


if __name__ == "__main__":
    main()
