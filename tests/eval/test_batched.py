"""``eval run --batch K`` against the sequential runner: the same trial situations, one independent record, step log
and video per trial, resume of an interrupted batched run, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from collect.store import EpisodeStore
from eval_protocols.batched import BatchedEvaluation
from eval_protocols.launch import RunOptions, run_evaluation
from eval_protocols.results import RunStore
from eval_protocols.task_spec import resolve_tasks
from fanvla.cli import main
from policy.tiny import build_tiny

TRIALS = 5


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(build_tiny(tmp_path_factory.mktemp("tiny") / "model", "test", seed=3))


@pytest.fixture()
def tasks(hardware_config, task_file):
    return resolve_tasks(str(task_file(name="short", max_duration_s=2)), hardware_config.scene)


def _options(run_dir, policy, tasks, batch, **extra) -> RunOptions:
    return RunOptions("sim", policy, tasks, TRIALS, 4, run_dir, threads=1, batch=batch, **extra)


def _records(run_dir):
    return {int(r["trial"]): r for r in RunStore.read(run_dir).records()}


def _step_log(run_dir, record):
    with EpisodeStore.open(run_dir / record["step_log"]) as store:
        return store.episode_meta(0), store.array("joints_rad")[:], store.array("action")[:]


def test_batched_trials_are_the_sequential_trials_each_with_its_own_record(tmp_path, hardware_config, checkpoint,
                                                                            tasks):
    sequential, batched = tmp_path / "sequential", tmp_path / "batched"
    run_evaluation(hardware_config, _options(sequential, checkpoint, tasks, 1))
    seen = []
    # 4 lanes in 2 groups (lanes 0 and 2, 1 and 3) whose forwards and stepping overlap; 5 trials: a lane runs two.
    progress = run_evaluation(hardware_config, _options(batched, checkpoint, tasks, 4), on_trial=seen.append)
    assert progress == {"short": {"trials": TRIALS, "scored": TRIALS, "successes": progress["short"]["successes"]}}
    assert sorted(r.record["trial"] for r in seen) == list(range(TRIALS))
    assert sorted(r.done for r in seen) == list(range(1, TRIALS + 1))
    seq, bat = _records(sequential), _records(batched)
    assert sorted(seq) == sorted(bat) == list(range(TRIALS))
    for trial in range(TRIALS):
        a, b = seq[trial], bat[trial]
        # Same situation: scene, seed, instruction, object.
        for key in ("scene", "seed", "instruction", "object", "policy_id"):
            assert a[key] == b[key], key
        # Independent records: each trial its own step log and video, holding that trial and nothing else.
        assert b["step_log"] == f"trials/short/{trial:03d}/steps.zarr"
        assert (batched / b["video"]).stat().st_size > 0
        _, joints_a, actions_a = _step_log(sequential, a)
        meta_b, joints_b, actions_b = _step_log(batched, b)
        assert (meta_b["trial"], meta_b["seed"]) == (trial, b["seed"])
        assert len(joints_b) == b["episode"]["steps"]
        np.testing.assert_allclose(joints_b[0], b["scene"]["start_joints_rad"], atol=np.radians(0.3))
        # The lock-step twin starts every trial at the same point of the camera's schedule (SimClock.align), so a
        # batched trial sees what the sequential one saw and the policy answers the same, step for step.
        assert (a["episode"]["steps"], a["success"]) == (b["episode"]["steps"], b["success"])
        np.testing.assert_allclose(actions_b, actions_a, atol=1e-5)
        np.testing.assert_allclose(joints_b, joints_a, atol=1e-6)
    assert len({r["step_log"] for r in bat.values()}) == TRIALS


def test_batched_through_a_policy_server_splits_at_its_max_batch(tmp_path, hardware_config, checkpoint, tasks):
    """Three lanes against a server that takes at most 2 observations a request: requests of 2 and 1, and the
    trials are the in-process sequential runner's."""
    from policy.inference import InferenceEngine
    from policy.server_validation import RequestLimits
    from tests.policy.server_testing import running_server

    run_evaluation(hardware_config, _options(tmp_path / "local", checkpoint, tasks, 1))
    engine = InferenceEngine.load(checkpoint, threads=1)
    sizes = []
    predict = engine.predict

    def counting_predict(images, *args, **kwargs):
        sizes.append(len(images))
        return predict(images, *args, **kwargs)

    engine.predict = counting_predict
    with running_server(engine, limits=RequestLimits(max_batch=2), http_threads=1) as server:
        run_evaluation(hardware_config, _options(tmp_path / "served", server.url, tasks, 3))
    assert max(sizes) == 2 and sizes.count(2) > sizes.count(1) > 0
    local, served = _records(tmp_path / "local"), _records(tmp_path / "served")
    for trial in range(TRIALS):
        assert (local[trial]["episode"]["steps"], local[trial]["success"]) == \
            (served[trial]["episode"]["steps"], served[trial]["success"])
        np.testing.assert_allclose(_step_log(tmp_path / "served", served[trial])[2],
                                   _step_log(tmp_path / "local", local[trial])[2], atol=1e-5)


class _Interrupt(KeyboardInterrupt):
    pass


def test_an_interrupted_batched_run_resumes_with_the_unscored_trials_only(tmp_path, hardware_config, checkpoint,
                                                                          tasks):
    run_dir = tmp_path / "run"
    seen = []

    def interrupt(report):
        seen.append(report.record["trial"])
        if len(seen) == 2:
            raise _Interrupt()

    with pytest.raises(_Interrupt):  # 4 lanes in 2 groups: the interrupt stops both
        run_evaluation(hardware_config, _options(run_dir, checkpoint, tasks, 4), on_trial=interrupt)
    scored = set(_records(run_dir))
    assert 2 <= len(scored) < TRIALS  # the lanes still running were cancelled: their trials are not scored
    resumed = []
    run_evaluation(hardware_config, _options(run_dir, checkpoint, tasks, 2), on_trial=resumed.append)
    assert sorted(r.record["trial"] for r in resumed) == sorted(set(range(TRIALS)) - scored)
    assert sorted(_records(run_dir)) == list(range(TRIALS))
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == TRIALS  # nothing scored twice


def test_batch_refusals_name_what_is_wrong(tmp_path, hardware_config, checkpoint, tasks, capsys):
    with pytest.raises(ValueError, match="baseline 'scripted-expert' runs one trial at a time"):
        run_evaluation(hardware_config, _options(tmp_path / "a", "scripted-expert", tasks, 4))
    with pytest.raises(ValueError, match="needs --backend sim without --console"):
        run_evaluation(hardware_config, _options(tmp_path / "b", checkpoint, tasks, 4, console=True))
    with pytest.raises(ValueError, match=r"sim\.realtime is on"):
        run_evaluation(hardware_config, _options(tmp_path / "c", checkpoint, tasks, 4,
                                                 overrides={"sim.realtime": True}))
    assert main(["eval", "run", "--backend", "sim", "--policy", checkpoint, "--batch", "0", "--out",
                 str(tmp_path / "d")]) == 2
    assert "--batch must be an int in 1..64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one lane"):
        BatchedEvaluation([], None, None, None, tasks, 1, 0)
