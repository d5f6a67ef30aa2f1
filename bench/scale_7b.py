"""The full-size OpenVLA-7B path, from a random-weight checkpoint to a reloaded merged export, with its memory and time.

    python bench/scale_7b.py [--device cpu|cuda] [--work runs/bench-7b]      # `make bench-7b`: slow, on demand
    python bench/scale_7b.py --preset tiny                                   # the same stages on a tiny model

Stages, each in its own process (peak RSS from ``/usr/bin/time -v``), all through the project's own commands:

0. ``fanvla policy init-random --preset openvla-7b --dtype bf16`` (cached in --work; never downloaded) and a small
   recorded store (``fanvla collect record --backend sim --teleop scripted``);
a. load: ``OpenVLA.from_pretrained(dtype="auto")``; peak RSS growth against the weights (goal <= 1.10x);
b. ``fanvla policy predict`` on a 224x224 image, with the KV cache and without it (ratio: recompute / cached);
c. one FAN-SFT LoRA step (rank 32, batch 2, gradient checkpointing) through ``fanvla finetune --no-export``: step
   time, whole-process peak RSS (goal < 22 GiB), the loss finite, the adapters changed;
d. ``finetune.export.export_run`` (what ``fanvla finetune export`` runs): merge + sharded save, peak RSS (goal <=
   1.20x the weights), then a prediction with the merged model still in memory;
e. ``fanvla policy predict`` on the reloaded export: the same action as (d).

With ``--device cuda`` (a GPU machine) it also reports predict_action Hz at batch 1 and 8, the LoRA step time and
peak GPU memory at batch 16, the largest batch that fits 24 GB and 48 GB with gradient checkpointing, and
``fanvla serve`` latency p50/p99. ``--preset tiny`` runs every stage, the GPU ones included, on a tiny model on
the CPU, to check the script itself in minutes. Figures go to stdout and WORK/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
INSTRUCTION = "put the red cube into the box"
GOALS = {"load_rss_over_weights": 1.10, "finetune_peak_rss_gib": 22.0, "export_rss_over_weights": 1.20}


# ------------------------------------------------------------------------------------------------ processes
def run_measured(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command`` under /usr/bin/time -v; its stdout, wall time and peak RSS (whole process)."""
    started = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    log.write_text(f"$ {' '.join(command)}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({result.returncode}); see {log}\n"
                           f"{result.stderr[-2000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return {"stdout": result.stdout, "wall_s": time.perf_counter() - started, "peak_rss_bytes": peak_kib * 1024}


def fanvla(*args: str) -> list[str]:
    return [sys.executable, "-m", "fanvla", *args]


def last_json(text: str) -> dict:
    """The last JSON object a child printed (commands print one at the end)."""
    start = text.rfind("\n{")
    return json.loads(text[start + 1 if start >= 0 else text.index("{"):])


LOAD_CHILD = r"""
import json, resource, sys, time
import torch
from policy.openvla import OpenVLA
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
before = rss()
started = time.perf_counter()
model = OpenVLA.from_pretrained(sys.argv[1], dtype="auto", device=sys.argv[2])
print(json.dumps({"load_s": time.perf_counter() - started, "rss_before": before,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "weights_dtype": str(model.dtype), "compute_dtype": str(model.input_dtype),
                  "parameters": model.num_parameters()}))
"""

EXPORT_CHILD = r"""
import json, sys
import numpy as np
import torch
from PIL import Image
from finetune.export import export_run
final, merged = export_run(sys.argv[1], out=sys.argv[2], device=sys.argv[3])
image = np.asarray(Image.open(sys.argv[4]).convert("RGB"))
with torch.inference_mode():
    prediction = merged.predict_action([image], [sys.argv[5]])
print(json.dumps({"model_dir": str(final), "action": prediction.actions[0].tolist(),
                  "token_ids": prediction.token_ids[0].tolist()}))
"""

BATCH_CHILD = r"""
import json, sys, time
import numpy as np
import torch
from policy.inference import InferenceEngine
engine = InferenceEngine.load(sys.argv[1], device=sys.argv[2], dtype="auto")
rng = np.random.default_rng(0)
figures = {}
for batch, calls in ((1, int(sys.argv[3])), (8, max(int(sys.argv[3]) // 4, 1))):
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]
    engine.predict(images, [sys.argv[4]] * batch)
    started = time.perf_counter()
    for _ in range(calls):
        engine.predict(images, [sys.argv[4]] * batch)
    figures[f"batch_{batch}_actions_per_s"] = batch * calls / (time.perf_counter() - started)
print(json.dumps(figures))
"""

# LoRA steps at several batch sizes in one process: peak GPU memory per batch, a line through them, and the
# largest batch under 24 / 48 GB (a 1.5 GB margin for the CUDA context and fragmentation).
MEMORY_CHILD = r"""
import json, sys, time
import numpy as np
import torch
from finetune.config import TrainConfig
from finetune.losses import action_token_ids_in_bin_order, compute_loss
from finetune.model_setup import make_trainable
from policy.openvla import OpenVLA
from policy.precision import resolve_precision
from policy.prompt import build_training_example, collate_training_batch
device = torch.device(sys.argv[2])
precision = resolve_precision("auto", sys.argv[1], device)
model = OpenVLA.from_pretrained(sys.argv[1], dtype=precision, device=device)
config = TrainConfig(data=(), init=sys.argv[1], out="", lora_rank=32, gradient_checkpointing=True)
module = make_trainable(model, config).train()
optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=5e-4)
ids = action_token_ids_in_bin_order(model.action_tokenizer, device)
rng = np.random.default_rng(0)
size = model.image_settings.image_size
results = {}
for batch in [int(b) for b in sys.argv[3].split(",")]:
    tokens = model.action_tokenizer.vocab_end - 256 + rng.integers(0, 256, size=(batch, 7))
    examples = [build_training_example(model.tokenizer, "put the red cube into the box", row) for row in tokens]
    data = collate_training_batch(examples, model.pad_token_id)
    pixels = torch.from_numpy(rng.normal(size=(batch, 6, size, size)).astype(np.float32)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.compute == torch.bfloat16):
        output = module(input_ids=data["input_ids"].to(device), attention_mask=data["attention_mask"].to(device),
                        pixel_values=pixels)
    from finetune.losses import align_labels_to_multimodal
    labels = align_labels_to_multimodal(data["labels"].to(device), output.projected_patch_embeddings.shape[1])
    compute_loss("fan-sft", output.logits, labels, ids, alpha=0.05).total.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    results[batch] = {"step_s": time.perf_counter() - started, "peak_gib": peak}
print(json.dumps(results))
"""


# ---------------------------------------------------------------------------------------------------- stages
def prepare(work: Path, preset: str) -> tuple[Path, Path, Path]:
    """(model dir, store, image), generated once and reused."""
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / ("openvla-7b-random" if preset == "openvla-7b" else "tiny")
    if not (model_dir / "random_init.json").is_file() and not (model_dir / "config.json").is_file():
        command = fanvla("policy", "init-random", "--preset", "openvla-7b", "--dtype", "bf16", "--out",
                         str(model_dir)) if preset == "openvla-7b" else \
            fanvla("policy", "init-tiny", "--preset", "test", "--out", str(model_dir), "--instructions",
                   str(_instructions(work)))
        figures = run_measured(command, work / "init.log")
        print(f"0. generated {model_dir} in {figures['wall_s']:.0f} s", flush=True)
    store = work / "store.zarr"
    if not (store / "zarr.json").is_file():
        run_measured(fanvla("collect", "record", "--backend", "sim", "--teleop", "scripted", "--episodes", "2",
                            "--out", str(store), "--seed", "0"), work / "record.log", env={"MUJOCO_GL": "egl"})
    image = work / "image.png"
    if not image.is_file():
        from PIL import Image

        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, 224)[None, :, None] * np.ones((224, 1, 3))
        Image.fromarray(np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)).save(image)
    return model_dir, store, image


def _instructions(work: Path) -> Path:
    path = work / "instructions.txt"
    path.write_text(f"{INSTRUCTION}\nput the green cylinder into the box\nput the blue hexagonal block into the box\n")
    return path


def weights_bytes(model_dir: Path) -> int:
    return sum(path.stat().st_size for path in model_dir.glob("model*.safetensors"))


def stage_load(model_dir: Path, device: str, work: Path) -> dict:
    figures = run_measured([sys.executable, "-c", LOAD_CHILD, str(model_dir), device], work / "a-load.log")
    child = last_json(figures["stdout"])
    growth = child["peak_rss"] - child["rss_before"]
    return {"load_s": child["load_s"], "rss_growth_bytes": growth, "weights_dtype": child["weights_dtype"],
            "compute_dtype": child["compute_dtype"], "parameters": child["parameters"],
            "load_rss_over_weights": growth / weights_bytes(model_dir)}


def stage_predict(model_dir: Path, device: str, image: Path, work: Path, repeat: int) -> dict:
    """Each way timed on its last of ``repeat`` calls (the first pays for warm-up)."""
    results = {}
    for name, extra in (("cached", []), ("recompute", ["--no-kv-cache"])):
        figures = run_measured(fanvla("policy", "predict", str(model_dir), "--image", str(image), "--instruction",
                                      INSTRUCTION, "--json", "--device", device, "--repeat", str(repeat), *extra),
                               work / f"b-predict-{name}.log")
        results[name] = last_json(figures["stdout"])
    cached, recompute = results["cached"], results["recompute"]
    assert cached["token_ids"] == recompute["token_ids"], "cached and recomputed decoding disagree"
    return {"predict_s_kv_cache": cached["timing"]["predict_s"],
            "predict_s_recompute": recompute["timing"]["predict_s"],
            "calls_s_kv_cache": cached["timing"]["calls_s"], "load_s": cached["timing"]["load_s"],
            "recompute_over_cached": recompute["timing"]["predict_s"] / cached["timing"]["predict_s"],
            "action": cached["action"], "token_ids": cached["token_ids"]}


def stage_finetune(model_dir: Path, store: Path, device: str, work: Path, batch: int) -> dict:
    from safetensors.torch import load_file

    run = work / "run"
    if run.exists():
        import shutil

        shutil.rmtree(run)
    figures = run_measured(fanvla("finetune", "--data", str(store), "--init", str(model_dir), "--out", str(run),
                                  "--method", "fan-sft", "--lora-rank", "32", "--batch-size", str(batch), "--steps",
                                  "1", "--gradient-checkpointing", "--no-export", "--val-fraction", "0",
                                  "--val-every", "0", "--save-every", "1", "--no-augment", "--no-tensorboard",
                                  "--no-progress", "--device", device, "--threads", str(os.cpu_count() or 1)),
                           work / "c-finetune.log")
    from finetune.metrics import read_metrics

    metrics = read_metrics(run / "metrics" / "train.csv")
    adapters = load_file(str(next((run / "checkpoints").iterdir()) / "trainable.safetensors"))
    changed = max(float(t.abs().max()) for name, t in adapters.items() if "lora_B" in name)  # zero-initialised
    return {"step_compute_s": float(metrics["compute_s"][-1]), "loss": float(metrics["loss"][-1]),
            "loss_finite": bool(np.isfinite(metrics["loss"][-1])), "lora_B_max_abs_after_step": changed,
            "adapters_changed": changed > 0, "finetune_process_s": figures["wall_s"],
            "finetune_peak_rss_gib": figures["peak_rss_bytes"] / GIB, "run": str(run)}


def stage_export(run: Path, device: str, image: Path, work: Path) -> dict:
    from policy.safetensors_io import read_header

    out = work / "export"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    figures = run_measured([sys.executable, "-c", EXPORT_CHILD, str(run), str(out), device, str(image), INSTRUCTION],
                           work / "d-export.log")
    child = last_json(figures["stdout"])
    shards = sorted(out.glob("model*.safetensors"))
    dtypes = {str(entry.dtype) for shard in shards for entry in read_header(shard).entries.values()}
    return {"export_s": figures["wall_s"], "export_peak_rss_bytes": figures["peak_rss_bytes"],
            "export_rss_over_weights": figures["peak_rss_bytes"] / weights_bytes(out),
            "shards": [f"{shard.name} {shard.stat().st_size / 1e9:.2f} GB" for shard in shards],
            "export_weights_gb": weights_bytes(out) / 1e9, "export_dtypes": sorted(dtypes),
            "merged_action": child["action"], "merged_token_ids": child["token_ids"], "export_dir": str(out)}


def stage_reload(export_dir: Path, device: str, image: Path, work: Path, merged: dict) -> dict:
    figures = run_measured(fanvla("policy", "predict", str(export_dir), "--image", str(image), "--instruction",
                                  INSTRUCTION, "--json", "--device", device), work / "e-reload.log")
    child = last_json(figures["stdout"])
    return {"reloaded_action": child["action"], "same_action_as_merged": child["action"] == merged["merged_action"]
            and child["token_ids"] == merged["merged_token_ids"]}


def stage_gpu_readiness(model_dir: Path, device: str, work: Path, batches: str, calls: int) -> dict:
    figures = run_measured([sys.executable, "-c", BATCH_CHILD, str(model_dir), device, str(calls), INSTRUCTION],
                           work / "f-batch.log")
    results = last_json(figures["stdout"])
    memory = last_json(run_measured([sys.executable, "-c", MEMORY_CHILD, str(model_dir), device, batches],
                                    work / "g-memory.log")["stdout"])
    results["lora_steps"] = memory
    peaks = [(int(batch), entry["peak_gib"]) for batch, entry in memory.items() if entry["peak_gib"] is not None]
    if len(peaks) >= 2:
        slope, intercept = np.polyfit([b for b, _ in peaks], [g for _, g in peaks], 1)
        for budget in (24, 48):
            results[f"largest_batch_{budget}gb"] = int((budget * 1e9 / GIB - 1.5 - intercept) // slope)
    results["serve"] = serve_latency(model_dir, device, work, calls)
    return results


def serve_latency(model_dir: Path, device: str, work: Path, calls: int) -> dict:
    from policy.client import PolicyClient

    log = (work / "h-serve.log").open("w")
    server = subprocess.Popen(fanvla("serve", "--checkpoint", str(model_dir), "--port", "0", "--device", device),
                              stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO_ROOT)
    try:
        line = server.stdout.readline()
        url = re.search(r"ready (http://\S+)", line).group(1)
        client = PolicyClient(url)
        image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
        client.act(image, INSTRUCTION)
        latencies = []
        for _ in range(calls):
            started = time.perf_counter()
            client.act(image, INSTRUCTION)
            latencies.append(time.perf_counter() - started)
        return {"p50_ms": 1000 * float(np.percentile(latencies, 50)),
                "p99_ms": 1000 * float(np.percentile(latencies, 99)), "requests": calls}
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


# ------------------------------------------------------------------------------------------------------ main
def report(results: dict) -> None:
    a, b, c, d, e = (results.get(key, {}) for key in ("load", "predict", "finetune", "export", "reload"))
    weights = results["weights_gb"]
    print(f"\nmodel: {results['model_dir']} ({results['preset']}, {a.get('parameters', 0):,} parameters, "
          f"{weights:.2f} GB of weights, {a.get('weights_dtype')} held, {a.get('compute_dtype')} compute, "
          f"device {results['device']})")
    if a:
        print(f"a. load: {a['load_s']:.1f} s, peak RSS growth {a['rss_growth_bytes'] / 1e9:.2f} GB = "
              f"{a['load_rss_over_weights']:.3f}x the weights (goal <= {GOALS['load_rss_over_weights']})")
    if b:
        print(f"b. predict (one 224x224 image, 7 action tokens; load {b['load_s']:.0f} s, calls "
              f"{', '.join(f'{s:.2f}' for s in b['calls_s_kv_cache'])} s): {b['predict_s_kv_cache']:.2f} s with the "
              f"KV cache, {b['predict_s_recompute']:.2f} s recomputing the sequence per token: ratio "
              f"{b['recompute_over_cached']:.2f}")
    if c:
        print(f"c. FAN-SFT LoRA step (rank 32, batch {results['batch']}, gradient checkpointing): compute "
              f"{c['step_compute_s']:.1f} s, loss {c['loss']:.4f} (finite: {c['loss_finite']}), adapters changed: "
              f"{c['adapters_changed']} (max |lora_B| {c['lora_B_max_abs_after_step']:.2e}), whole process "
              f"{c['finetune_process_s']:.0f} s, peak RSS {c['finetune_peak_rss_gib']:.2f} GiB (goal < "
              f"{GOALS['finetune_peak_rss_gib']})")
    if d:
        print(f"d. merge + sharded save: {d['export_s']:.0f} s, peak RSS {d['export_peak_rss_bytes'] / 1e9:.2f} GB = "
              f"{d['export_rss_over_weights']:.3f}x the weights (goal <= {GOALS['export_rss_over_weights']}); "
              f"{d['export_weights_gb']:.2f} GB in {', '.join(d['shards'])}; dtypes {d['export_dtypes']}")
    if e:
        print(f"e. reloaded export predicts the same action as the merged model in memory: "
              f"{e['same_action_as_merged']}")
    gpu = results.get("gpu_readiness")
    if gpu:
        print(f"f. predict_action: {gpu['batch_1_actions_per_s']:.2f} actions/s at batch 1, "
              f"{gpu['batch_8_actions_per_s']:.2f} at batch 8; serve p50 {gpu['serve']['p50_ms']:.0f} ms, "
              f"p99 {gpu['serve']['p99_ms']:.0f} ms over {gpu['serve']['requests']} requests")
        for batch, entry in gpu["lora_steps"].items():
            peak = f", peak GPU memory {entry['peak_gib']:.2f} GiB" if entry["peak_gib"] is not None else ""
            print(f"   LoRA step at batch {batch}: {entry['step_s']:.2f} s{peak}")
        for budget in (24, 48):
            if f"largest_batch_{budget}gb" in gpu:
                largest = gpu[f"largest_batch_{budget}gb"]
                print(f"   largest batch in {budget} GB with gradient checkpointing: {largest}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("openvla-7b", "tiny"), default="openvla-7b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=None, help="cache and outputs (default runs/bench-7b or runs/bench-tiny)")
    parser.add_argument("--batch", type=int, default=2, help="LoRA step batch (stage c)")
    parser.add_argument("--stages", default="abcde", help="which of a-e to run (0 always runs, cached)")
    parser.add_argument("--gpu-batches", default="4,8,16", help="batches of the GPU memory fit (with --device cuda)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per batch size and for the server")
    parser.add_argument("--repeat", type=int, default=None,
                        help="predictions per process in stage b, the last one timed (default: 1 for the 7B, whose "
                             "warm-up is negligible next to minutes of compute; 2 for the tiny model)")
    args = parser.parse_args()
    args.repeat = args.repeat or (1 if args.preset == "openvla-7b" else 2)
    work = Path(args.work or REPO_ROOT / "runs" / ("bench-7b" if args.preset == "openvla-7b" else "bench-tiny"))
    started = time.perf_counter()
    model_dir, store, image = prepare(work, args.preset)
    results: dict = {"preset": args.preset, "device": args.device, "model_dir": str(model_dir),
                     "weights_gb": weights_bytes(model_dir) / 1e9, "batch": args.batch}
    steps = [("a", "load", lambda: stage_load(model_dir, args.device, work)),
             ("b", "predict", lambda: stage_predict(model_dir, args.device, image, work, args.repeat)),
             ("c", "finetune", lambda: stage_finetune(model_dir, store, args.device, work, args.batch)),
             ("d", "export", lambda: stage_export(Path(results["finetune"]["run"]), args.device, image, work)),
             ("e", "reload", lambda: stage_reload(Path(results["export"]["export_dir"]), args.device, image, work,
                                                  results["export"]))]
    for letter, name, stage in steps:
        if letter in args.stages:
            print(f"{letter}. {name} ...", flush=True)
            results[name] = stage()
    if args.device.startswith("cuda") or args.preset == "tiny":
        results["gpu_readiness"] = stage_gpu_readiness(model_dir, args.device, work, args.gpu_batches, args.calls)
    results["total_s"] = time.perf_counter() - started
    (work / "results.json").write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\ntotal {results['total_s'] / 60:.1f} min; figures in {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
