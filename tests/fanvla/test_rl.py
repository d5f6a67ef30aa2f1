"""``fanvla rl --quick`` end to end (the real CLI in a child process): training in the twin, checkpoints, metrics,
the evaluation through the trial runner, a servable final policy, resuming; and ``fanvla rl compare`` (slow)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from eval_protocols.task_spec import BUILTIN_TASKS_DIR
from finetune.checkpointing import list_checkpoints


def _fanvla(*args: str, expect: int = 0, timeout_s: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl", "LP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "fanvla", *args], capture_output=True, text=True, env=env,
                            timeout=timeout_s)
    assert result.returncode == expect, \
        f"fanvla {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "run"
    _fanvla("rl", "--quick", "--out", str(out))
    return out


def test_quick_run_trains_checkpoints_evaluates_and_exports(quick_run: Path) -> None:
    rows = _rows(quick_run / "metrics" / "train.csv")
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert [int(r["env_steps"]) for r in rows] == [12, 24]
    for row in rows:
        assert 0.0 <= float(row["width_norm"]) <= 1.0 and float(row["fan_kl"]) > 0
        assert float(row["episodes"]) == 2  # two scenes, 6-tick episodes, 6 ticks per update
    assert [path.name for path in list_checkpoints(quick_run)] == ["step-00000001", "step-00000002"]
    (evaluation,) = _rows(quick_run / "metrics" / "eval.csv")
    assert int(evaluation["step"]) == 2 and float(evaluation["success_task1"]) in (0.0, 1.0)
    assert (quick_run / "evals" / "update-0002" / "eval" / "results.jsonl").is_file()
    assert (quick_run / "curves.png").stat().st_size > 10_000
    assert any((quick_run / "tensorboard").iterdir())
    document = json.loads((quick_run / "final" / "fanvla.json").read_text())
    assert document["method"] == "fan-ppo" and document["alpha"] == 1.0 and document["sigma_normalized_units"] == 0.3
    assert document["rl"]["updates"] == 2 and document["rl_config"]["lora_rank"] == 32
    summary = json.loads((quick_run / "rl_summary.json").read_text())
    assert summary["updates"] == 2 and summary["env_steps"] == 24


def test_the_final_policy_is_served_as_any_checkpoint(quick_run: Path) -> None:
    from policy.agent import LocalPolicy

    policy = LocalPolicy.load(quick_run / "final")  # what `fanvla serve` loads
    output = policy.predict([np.zeros((240, 424, 3), np.uint8)], ["put the red cube into the box"])
    assert output.actions.shape == (1, 7) and np.isfinite(output.actions).all()
    assert policy.describe().action_space == "ee_delta"


def test_resume_continues_and_refuses_another_method(quick_run: Path) -> None:
    refused = _fanvla("rl", "--quick", "--out", str(quick_run), "--resume", "--method", "ppo", "--steps", "36",
                      expect=2)
    assert "cannot resume" in refused.stderr and "method" in refused.stderr
    _fanvla("rl", "--quick", "--out", str(quick_run), "--resume", "--steps", "36")
    rows = _rows(quick_run / "metrics" / "train.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and int(rows[-1]["env_steps"]) == 36
    assert json.loads((quick_run / "final" / "fanvla.json").read_text())["rl"]["updates"] == 3


def test_bad_options_are_named(tmp_path: Path) -> None:
    result = _fanvla("rl", "--quick", "--out", str(tmp_path / "x"), "--method", "ppo", "--alpha", "0.5", expect=2)
    assert "--alpha and --sigma belong to --method fan-ppo" in result.stderr
    result = _fanvla("rl", "--out", str(tmp_path / "y"), expect=2)
    assert "--init" in result.stderr


@pytest.mark.slow
def test_compare_runs_both_methods_and_reports(tmp_path: Path, quick_run: Path) -> None:
    data = yaml.safe_load((BUILTIN_TASKS_DIR / "task1.yaml").read_text())
    task = tmp_path / "task1.yaml"
    task.write_text(yaml.safe_dump({**data, "max_duration_s": 2.0}))
    out = tmp_path / "compare"
    result = _fanvla("rl", "compare", "--init", str(quick_run / "init"), "--out", str(out), "--seeds", "0",
                     "--envs", "2", "--workers", "0", "--steps", "12", "--max-episode-steps", "6", "--minibatch", "6",
                     "--tasks", str(task), "--eval-tasks", str(task), "--eval-trials", "1", "--threshold", "0.5",
                     "--camera", "config", timeout_s=900)
    assert "PPO vs FAN-PPO" in result.stdout
    summary = json.loads((out / "compare.json").read_text())
    assert [row["run"] for row in summary["runs"]] == ["PPO seed 0", "FAN-PPO seed 0"]
    assert (out / "report" / "README.md").is_file() and (out / "curves.png").is_file()
    assert "| start (--init) | - | - | 0.00 | - |" in (out / "README.md").read_text()
    assert summary["start_evaluation"] == {"task1": 0.0}
    assert "start (--init)" in (out / "report" / "README.md").read_text()
