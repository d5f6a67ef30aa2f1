"""``fanvla demo --quick`` and ``fanvla sweep --quick`` end to end: the real CLI in child processes, every stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collect.store import EpisodeStore
from eval_protocols.results import RunStore

TASKS = ("task1", "task2", "task3", "task4")
STAGES = ("config", "record", "init", "finetune", "evaluate", "report")


def _fanvla(*args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "LP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "fanvla", *args], capture_output=True, text=True, env=env,
                            timeout=timeout_s)
    assert result.returncode == 0, f"fanvla {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, float]:
    out = tmp_path_factory.mktemp("demo") / "run"
    started = time.monotonic()
    result = _fanvla("demo", "--quick", "--out", str(out))
    return out, result, time.monotonic() - started


def test_quick_demo_runs_every_stage(quick_demo):
    # How long it takes is the machine's business (it varied 115-306 s with the load here): the demo prints and
    # stores its stage timings (demo.json), and speed goals belong to bench/, not to a test that fails under load.
    out, result, _ = quick_demo
    summary = json.loads((out / "demo.json").read_text())
    assert set(summary["timings_s"]) == {*STAGES, "total"}
    assert summary["preset"]["trials"] == 2 and summary["camera_overrides"]["camera.depth.enabled"] is False
    for stage in STAGES:
        assert f"] {stage} ==" in result.stdout


def test_quick_demo_records_trains_and_scores_each_method(quick_demo):
    out, _, _ = quick_demo
    summary = json.loads((out / "demo.json").read_text())
    stores = sorted(out.glob("demos-*.zarr"))
    episodes = 0
    for path in stores:
        with EpisodeStore.open(path, mode="r") as store:
            episodes += store.num_episodes
            assert store.num_frames > 0
    assert len(stores) == 2 and episodes == summary["preset"]["episodes"]
    for method in ("sft", "fan-sft"):
        final = out / f"train-{method}" / "final"
        assert (final / "fanvla.json").is_file() and (final / "config.json").is_file()
        run = RunStore.read(out / f"eval-{method}")
        for task in TASKS:
            assert len(run.records(task)) == 2, f"{method} {task}"
    provenance = json.loads((out / "train-fan-sft" / "final" / "fanvla.json").read_text())
    assert provenance["center_crop"] is False  # the presets train without augmentation (no crop to undo)
    # Both methods start from the vision-pretrained copy of the tiny initialisation.
    assert (out / "init-vision" / "config.json").is_file() and not (out / "init-vision.partial").exists()
    for method in ("sft", "fan-sft"):
        trained = json.loads((out / f"train-{method}" / "final" / "fanvla.json").read_text())
        assert trained["training_config"]["init"] == str(out / "init-vision")


def test_quick_demo_report_is_the_table_it_prints(quick_demo):
    out, result, _ = quick_demo
    table = (out / "report" / "README.md").read_text()
    assert "OpenVLA-tiny + SFT" in table and "OpenVLA-tiny + FAN-SFT" in table
    assert all(task in table for task in TASKS)
    assert table.strip() in result.stdout
    numbers = json.loads((out / "report" / "results.json").read_text())
    assert numbers and (out / "report" / "chart.png").stat().st_size > 0


def test_rerunning_the_quick_demo_resumes_without_redoing_work(quick_demo):
    out, _, first_s = quick_demo
    before = (out / "eval-sft" / "results.jsonl").read_bytes()
    started = time.monotonic()
    result = _fanvla("demo", "--quick", "--out", str(out))
    assert "reusing the initial model" in result.stdout
    assert (out / "eval-sft" / "results.jsonl").read_bytes() == before  # no trial scored twice
    assert time.monotonic() - started < first_s


def test_demo_refuses_an_out_folder_made_with_another_configuration(quick_demo, tmp_path):
    out, _, _ = quick_demo
    other = tmp_path / "hardware.yaml"
    other.write_text((Path(__file__).resolve().parents[2] / "hardware.yaml").read_text()
                     .replace("rate_hz: 10.0", "rate_hz: 5.0", 1))
    result = subprocess.run([sys.executable, "-m", "fanvla", "demo", "--quick", "--out", str(out), "--config",
                             str(other)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "differs from this demo's configuration" in result.stderr


def test_quick_sweep_on_the_demo_stores_writes_every_cell(quick_demo, tmp_path):
    out, _, _ = quick_demo
    stores = [str(p) for p in sorted(out.glob("demos-*.zarr"))]
    sweep = tmp_path / "sweep"
    _fanvla("sweep", "--quick", "--out", str(sweep), "--data", *stores, "--alphas", "0,0.05", "--episodes", "3,6",
            "--tasks", "task1", "--trials", "1")
    rows = json.loads((sweep / "sweep.json").read_text())
    assert sorted((r["episodes"], r["alpha"]) for r in rows) == [(3, 0.0), (3, 0.05), (6, 0.0), (6, 0.05)]
    assert all(r["task"] == "task1" and r["trials"] == 1 and 0 <= r["ci_low"] <= r["ci_high"] <= 1 for r in rows)
    assert (sweep / "sweep.png").stat().st_size > 0 and (sweep / "sweep.csv").read_text().count("\n") == 5
    # Each demonstration count pretrains the vision towers on its own demonstrations only.
    assert all((sweep / f"init-vision-{n}" / "config.json").is_file() for n in (3, 6))
    frames = [int(re.search(r"pretraining the vision towers on (\d+) frames",
                            (sweep / "logs" / f"pretrain-init-vision-{n}.log").read_text()).group(1)) for n in (3, 6)]
    assert 0 < frames[0] < frames[1]


def test_a_second_training_seed_reuses_the_first_and_reports_by_seed(quick_demo):
    """``--seeds 2`` on the finished one-seed demo: seed 0's recordings, models and trials are reused as they are;
    seed 1 gets its own initialisation, vision pretraining, training and evaluation on the same trial situations;
    the report pools and stratifies by seed."""
    out, _, _ = quick_demo
    before = {m: (out / f"eval-{m}" / "results.jsonl").read_bytes() for m in ("sft", "fan-sft")}
    result = _fanvla("demo", "--quick", "--seeds", "2", "--out", str(out))
    assert "reusing the initial model" in result.stdout
    for method in ("sft", "fan-sft"):
        assert (out / f"eval-{method}" / "results.jsonl").read_bytes() == before[method]
        trained = json.loads((out / f"train-{method}-seed1" / "final" / "fanvla.json").read_text())
        assert trained["training_config"]["seed"] == 1
        assert trained["training_config"]["init"] == str(out / "init-vision-seed1")
        first = {(r["task"], r["trial"]): r["scene"] for r in RunStore.read(out / f"eval-{method}").records()}
        second = {(r["task"], r["trial"]): r["scene"] for r in RunStore.read(out / f"eval-{method}-seed1").records()}
        assert first == second and len(second) == 2 * len(TASKS)  # the same trial situations
    numbers = json.loads((out / "report" / "results.json").read_text())
    assert numbers["seeds"]["seeds"] == 2 and len(numbers["runs"]) == 4
    assert [c["method"] for c in numbers["seeds"]["comparisons"]] == ["OpenVLA-tiny + FAN-SFT"] * len(TASKS)
    assert "## Over training seeds (2 per method)" in (out / "report" / "README.md").read_text()
    assert json.loads((out / "demo.json").read_text())["training_seeds"] == [0, 1]


@pytest.mark.slow  # 6 min on this machine class: the seed machinery is the demo's, tested above without slow
def test_quick_sweep_with_two_training_seeds_pools_them_and_tests_by_seed(quick_demo, tmp_path):
    out, _, _ = quick_demo
    stores = [str(p) for p in sorted(out.glob("demos-*.zarr"))]
    sweep = tmp_path / "sweep-seeds"
    _fanvla("sweep", "--quick", "--out", str(sweep), "--data", *stores, "--alphas", "0,0.05", "--episodes", "3",
            "--tasks", "task1", "--trials", "2", "--seeds", "2")
    numbers = json.loads((sweep / "sweep.json").read_text())
    assert sorted((r["alpha"], r["training_seed"]) for r in numbers["per_seed"]) == [(0.0, 0), (0.0, 1), (0.05, 0),
                                                                                      (0.05, 1)]
    assert [(r["alpha"], r["seeds"], r["trials"]) for r in numbers["pooled"]] == [(0.0, 2, 4), (0.05, 2, 4)]
    (test,) = numbers["stratified"]
    assert test["seeds"] == [0, 1] and 0.0 < test["exact_p"] <= 1.0
    assert (sweep / "cells" / "n3-a0.05-seed1" / "train" / "final" / "fanvla.json").is_file()
    assert (sweep / "init-vision-3-seed1" / "config.json").is_file()
    assert (sweep / "sweep.csv").read_text().count("\n") == 3  # pooled rows


def test_quick_oft_demo_on_the_demo_recordings_trains_chunk_policies_and_runs_them_open_loop(quick_demo, tmp_path):
    """``fanvla demo --model oft`` on the same recordings and initialisation: OpenVLA-OFT + SFT and + FAN-SFT,
    served and evaluated on the four tasks, each chunk run open loop for its K steps."""
    out, _, _ = quick_demo
    oft = tmp_path / "oft"
    stores = [str(p) for p in sorted(out.glob("demos-*.zarr"))]
    result = _fanvla("demo", "--quick", "--model", "oft", "--chunk", "4", "--out", str(oft), "--data", *stores,
                     "--init", str(out / "init-vision"))
    assert "nothing to record" in result.stdout and not list(oft.glob("demos-*.zarr"))
    summary = json.loads((oft / "demo.json").read_text())
    assert summary["model"] == {"model": "oft", "chunk": 4, "proprio": True, "wrist": False}
    for method in ("sft", "fan-sft"):
        trained = json.loads((oft / f"train-{method}" / "final" / "fanvla.json").read_text())
        assert trained["chunk_size"] == 4 and trained["oft"]["use_proprio"] and trained["state_dim"] == 13
        assert trained["training_config"]["init"] == str(out / "init-vision")
        run = RunStore.read(oft / f"eval-{method}")
        manifest = json.loads((oft / f"eval-{method}" / "run.json").read_text())
        assert manifest["execution"]["mode"] == "chunk" and manifest["execution"]["open_loop_steps"] == 4
        for task in TASKS:
            for record in run.records(task):  # at most one prediction per chunk of 4 ticks
                assert 1 <= record["summary"]["answers_received"] <= -(-record["episode"]["steps"] // 4)
    table = (oft / "report" / "README.md").read_text()
    assert "OpenVLA-OFT-tiny + SFT" in table and "OpenVLA-OFT-tiny + FAN-SFT" in table
