"""Policies under test: a policy server (URL) and a checkpoint folder run by the closed-loop runner, identified
by the checkpoint fingerprint; a run refuses another checkpoint, also one swapped in behind the same URL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_protocols.launch import RunOptions, run_evaluation
from eval_protocols.results import RUN_FILE, RunDirError, RunStore
from eval_protocols.task_spec import resolve_tasks
from robot.execution import ExecutionConfig
from robot.injected_latency import LatencySpec


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on a loaded 2-core machine run many times faster on one torch thread (tests/policy/conftest.py)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny checkpoints: ``b`` is ``a`` with one weight tensor changed (another fingerprint, same shapes)."""
    from safetensors.torch import load_file, save_file

    from policy.tiny import build_tiny

    root = tmp_path_factory.mktemp("checkpoints")
    first = build_tiny(root / "a", preset="test", seed=0)
    second = Path(shutil.copytree(first, root / "b"))
    weights = load_file(second / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, second / "model.safetensors", metadata={"format": "pt"})
    return first, second


def _server(model_dir, port: int = 0):
    from policy.inference import InferenceEngine
    from policy.server import PolicyServer, create_app

    engine = InferenceEngine.load(model_dir, threads=1)
    return PolicyServer(create_app(engine), port=port).start(), engine.checkpoint_id


def test_remote_and_local_checkpoints_are_evaluated_and_identified(tmp_path, hardware_config, task_file, checkpoints):
    tasks = resolve_tasks(str(task_file(name="brief", max_duration_s=1)), hardware_config.scene)
    run_dir = tmp_path / "run"
    server, checkpoint_id = _server(checkpoints[0])
    try:
        progress = run_evaluation(hardware_config, RunOptions("sim", server.url, tasks, 1, 0, run_dir))
    finally:
        server.stop()
    assert progress["brief"]["scored"] == 1
    policy = json.loads((run_dir / RUN_FILE).read_text())["policy"]
    assert policy["kind"] == "remote" and policy["id"] == checkpoint_id and policy["fingerprint"].startswith("sha256:")
    (record,) = RunStore.read(run_dir).records()
    assert record["policy_id"] == checkpoint_id and record["summary"]["actions_received"] >= 1
    # the same weights loaded in-process are the same policy: the run resumes (nothing left to do)
    again = run_evaluation(hardware_config, RunOptions("sim", str(checkpoints[0]), tasks, 1, 0, run_dir, threads=1))
    assert again == progress
    with pytest.raises(RunDirError, match=r"(?s)refusing to mix.*policy: the run evaluated 'a'.*'b'"):
        run_evaluation(hardware_config, RunOptions("sim", str(checkpoints[1]), tasks, 1, 0, run_dir, threads=1))


@pytest.mark.slow  # two tiny-model servers in turn: ~20 s on a loaded machine
def test_a_checkpoint_swapped_behind_the_url_mid_run_is_not_scored(tmp_path, hardware_config, task_file,
                                                                   checkpoints):
    tasks = resolve_tasks(str(task_file(name="brief", max_duration_s=1)), hardware_config.scene)
    run_dir = tmp_path / "run"
    server, first_id = _server(checkpoints[0])
    servers = [server]

    def swap(report) -> None:  # after the first scored trial, another checkpoint answers on the same port
        servers[0].stop()
        servers[0] = _server(checkpoints[1], port=server.port)[0]

    try:
        with pytest.raises(RunDirError, match=rf"(?s)answered as b@.*this run evaluates {first_id}.*not scored"):
            run_evaluation(hardware_config, RunOptions("sim", server.url, tasks, 2, 0, run_dir), on_trial=swap)
    finally:
        servers[0].stop()
    assert [r["trial"] for r in RunStore.read(run_dir).records()] == [0]


def test_a_chunk_checkpoint_runs_its_chunks_open_loop_unless_told_otherwise(tmp_path, hardware_config, task_file):
    """An OpenVLA-OFT checkpoint (K = 8) evaluated without --execution runs in chunk mode, K steps per request."""
    from policy.tiny import build_tiny
    from tests.policy.server_testing import GENTLE_STATS
    from tests.policy.test_oft_serving import PROPRIO_STATS

    model_dir = build_tiny(tmp_path / "oft", preset="test-oft", seed=3,
                           norm_stats={"jaka_sim": {"action": GENTLE_STATS, "proprio": PROPRIO_STATS}})
    tasks = resolve_tasks(str(task_file(name="brief", max_duration_s=2)), hardware_config.scene)
    progress = run_evaluation(hardware_config, RunOptions("sim", str(model_dir), tasks, 1, 0, tmp_path / "run",
                                                          threads=1))
    assert progress["brief"]["scored"] == 1
    execution = json.loads((tmp_path / "run" / RUN_FILE).read_text())["execution"]
    assert execution["mode"] == "chunk" and execution["open_loop_steps"] == 8
    (record,) = RunStore.read(tmp_path / "run").records()
    summary = record["summary"]
    assert summary["answers_received"] == 3 and summary["actions_received"] == summary["commands_sent"] == 20
    # --execution sync asks every tick and runs the first step of each chunk; without --execution, an injected latency
    # keeps the chunk checkpoint's own mode
    progress = run_evaluation(hardware_config, RunOptions("sim", str(model_dir), tasks, 1, 0, tmp_path / "latency",
                                                          threads=1, mode_from_policy=True,
                                                          execution=ExecutionConfig("sync", LatencySpec(300))))
    execution = json.loads((tmp_path / "latency" / RUN_FILE).read_text())["execution"]
    assert execution["mode"] == "chunk" and execution["open_loop_steps"] == 8
    assert execution["policy_latency_ms"] == "300"
    progress = run_evaluation(hardware_config, RunOptions("sim", str(model_dir), tasks, 1, 0, tmp_path / "sync",
                                                          threads=1, execution=ExecutionConfig("sync")))
    (record,) = RunStore.read(tmp_path / "sync").records()
    assert record["summary"]["answers_received"] == record["summary"]["actions_received"] == 20
