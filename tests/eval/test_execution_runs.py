"""Evaluation runs with an execution mode and injected latency: recorded in run.json, refused on resume when they
differ, shown in the report with every trial's timing."""

from __future__ import annotations

import json

import pytest

from eval_protocols.results import RUN_FILE, RunIdentity
from fanvla.cli import main


def run_args(run_dir, *extra: str) -> list[str]:
    return ["eval", "run", "--backend", "sim", "--policy", "scripted-expert", "--tasks", "task1", "--trials", "2",
            "--out", str(run_dir), *extra]


def test_a_chunked_expert_run_at_300_ms_is_recorded_reported_and_kept_apart(tmp_path, capsys):
    run_dir = tmp_path / "chunk300"
    assert main(run_args(run_dir, "--execution", "chunk", "--policy-latency-ms", "300")) == 0
    out = capsys.readouterr().out
    assert "execution: chunk, injected policy latency 300 ms" in out and "task1: 2/2 successes" in out
    manifest = json.loads((run_dir / RUN_FILE).read_text())
    assert manifest["execution"] == {"mode": "chunk", "policy_latency_ms": "300", "max_action_age_s": 0.35,
                                     "chunk_blend_steps": 0}
    assert manifest["policy"]["chunk_steps"] == 8
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    for record in records:  # lock-step: the injected latency is simulated time, exactly 300 ms (to a servo cycle)
        assert record["summary"]["answer_latency_p50_s"] == pytest.approx(0.3, abs=0.0081)
        assert record["summary"]["commands_sent"] > 0 and "twin_timing" not in record
    # Resuming with another mode or latency would mix trials run differently.
    for extra, message in ((["--execution", "async", "--policy-latency-ms", "300"], "execution mode"),
                           (["--execution", "chunk", "--policy-latency-ms", "200"], "execution policy_latency_ms")):
        assert main(run_args(run_dir, *extra)) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", "report", str(run_dir), "--out", str(tmp_path / "report")]) == 0
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| chunk, +300 ms |" in readme and "## Timing" in readme
    assert readme.count("| 300 / 300 / 30") == 2  # each trial's answer latency p50 / p90 / max (ms)


def test_runs_from_before_execution_modes_count_as_sync_without_latency():
    legacy = {"policy": {"fingerprint": "f"}, "backend": "sim", "seed": 0, "trials": 3}
    assert RunIdentity({"fingerprint": "f"}, "sim", 0, 3).differences(legacy) == []
    asked = RunIdentity({"fingerprint": "f"}, "sim", 0, 3, {"mode": "sync", "policy_latency_ms": "0",
                                                           "max_action_age_s": 0.35})
    assert asked.differences(legacy) == []
    other = RunIdentity({"fingerprint": "f"}, "sim", 0, 3, {"mode": "async", "policy_latency_ms": "0",
                                                           "max_action_age_s": 0.35})
    assert other.differences(legacy) == ["execution mode: the run has 'sync', this command asks for 'async'"]


def test_the_real_backend_defaults_to_async_and_the_twin_to_sync():
    from eval_protocols.launch import DEFAULT_EXECUTION, RunOptions
    from robot.execution import ExecutionMode

    assert DEFAULT_EXECUTION == {"sim": ExecutionMode.SYNC, "real": ExecutionMode.ASYNC}
    assert RunOptions("real", "x", [], 1, 0, None).resolved_execution().mode is ExecutionMode.ASYNC
    assert RunOptions("sim", "x", [], 1, 0, None).resolved_execution().mode is ExecutionMode.SYNC
