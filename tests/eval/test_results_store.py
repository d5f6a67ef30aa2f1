"""RUN_DIR's results store: append-only scores, crash-torn lines, refusal to mix policies or task versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_protocols.results import RESULTS_FILE, RUN_FILE, RunDirError, RunIdentity, RunStore

EXPERT = {"kind": "baseline", "name": "scripted-expert", "id": "scripted-expert", "fingerprint": "baseline:e@1"}
OTHER = {"kind": "remote", "name": "fan-sft", "id": "fan-sft@abc", "fingerprint": "sha256:abc"}
TASKS = {"task1": {"name": "task1", "sha256": "a" * 64, "file": "task1.yaml"}}


def _open(run_dir, policy=EXPERT, tasks=TASKS, seed=0, trials=30, backend="sim"):
    return RunStore.open_for_run(run_dir, RunIdentity(policy, backend, seed, trials), tasks, {"software_version": "x"})


def _record(trial, success=True, task="task1"):
    return {"task": task, "trial": trial, "success": success, "note": f"trial {trial}"}


def test_scores_survive_reopening_and_are_never_replaced(tmp_path):
    with _open(tmp_path) as store:
        store.append(_record(0))
        store.append(_record(2, success=False))
        with pytest.raises(RunDirError, match="task1 trial 0 is already scored"):
            store.append(_record(0, success=False))
    manifest = json.loads((tmp_path / RUN_FILE).read_text())
    assert manifest["policy"] == EXPERT and manifest["tasks"] == TASKS and manifest["trials"] == 30
    with _open(tmp_path) as store:
        assert store.is_scored("task1", 0) and store.is_scored("task1", 2) and not store.is_scored("task1", 1)
        assert [r["trial"] for r in store.records()] == [0, 2]
        assert store.record("task1", 0)["success"] is True
    assert (tmp_path / RESULTS_FILE).read_text().count("\n") == 2


def test_another_policy_is_refused_naming_both_fingerprints(tmp_path):
    _open(tmp_path).close()
    with pytest.raises(RunDirError) as caught:
        _open(tmp_path, policy=OTHER)
    message = str(caught.value)
    assert "refusing to mix" in message and "baseline:e@1" in message and "sha256:abc" in message
    assert "'scripted-expert'" in message and "'fan-sft'" in message


@pytest.mark.parametrize(("change", "expected"), [
    ({"seed": 1}, "seed: the run has 0, this command asks for 1"),
    ({"trials": 10}, "trials: the run has 30, this command asks for 10"),
    ({"backend": "real"}, "backend: the run has 'sim', this command asks for 'real'"),
    ({"tasks": {"task1": {"name": "task1", "sha256": "b" * 64, "file": "edited/task1.yaml"}}},
     "task task1: the task file changed"),
])
def test_changed_settings_are_refused_saying_what_differs(tmp_path, change, expected):
    _open(tmp_path).close()
    with pytest.raises(RunDirError, match="refusing to mix") as caught:
        _open(tmp_path, **change)
    assert expected in str(caught.value)


def test_new_tasks_join_an_existing_run(tmp_path):
    _open(tmp_path).close()
    more = {**TASKS, "task2": {"name": "task2", "sha256": "c" * 64, "file": "task2.yaml"}}
    with _open(tmp_path, tasks=more) as store:
        assert sorted(store.manifest["tasks"]) == ["task1", "task2"]
    assert sorted(json.loads((tmp_path / RUN_FILE).read_text())["tasks"]) == ["task1", "task2"]


def test_a_line_torn_by_a_crash_is_moved_aside_and_its_trial_is_unscored(tmp_path):
    with _open(tmp_path) as store:
        store.append(_record(0))
    path = tmp_path / RESULTS_FILE
    intact = path.read_bytes()
    with open(path, "ab") as handle:
        handle.write(b'{"task": "task1", "trial": 1, "succ')  # the process died mid-write
    assert len(RunStore.read(tmp_path).records()) == 1  # a reader ignores it and changes nothing
    assert path.read_bytes().endswith(b'"succ')
    with _open(tmp_path) as store:
        assert store.is_scored("task1", 0) and not store.is_scored("task1", 1)
        store.append(_record(1))
    assert path.read_bytes().startswith(intact)
    assert (tmp_path / f"{RESULTS_FILE}.torn-0").read_bytes() == b'{"task": "task1", "trial": 1, "succ'
    assert [r["trial"] for r in RunStore.read(tmp_path).records()] == [0, 1]


def test_a_hand_edited_duplicate_or_garbage_line_is_reported(tmp_path):
    with _open(tmp_path) as store:
        store.append(_record(0))
    path = tmp_path / RESULTS_FILE
    path.write_text(path.read_text() * 2)
    with pytest.raises(RunDirError, match="scores task1 trial 0 twice"):
        RunStore.read(tmp_path)
    path.write_text("not json\n")
    with pytest.raises(RunDirError, match="line 1 is not JSON"):
        RunStore.read(tmp_path)


OPEN_IN_ANOTHER_PROCESS = """
import sys
from eval_protocols.results import RunDirError, RunIdentity, RunStore
try:
    RunStore.open_for_run(sys.argv[1], RunIdentity({"fingerprint": "baseline:e@1"}, "sim", 0, 30), {}, {}).close()
    print("opened")
except RunDirError as error:
    print(error)
"""


def test_two_runners_cannot_write_one_run_dir(tmp_path):
    with _open(tmp_path):
        answer = subprocess.run([sys.executable, "-c", OPEN_IN_ANOTHER_PROCESS, str(tmp_path)], capture_output=True,
                                text=True, timeout=120, cwd=Path(__file__).resolve().parents[2]).stdout
    assert f"another 'fanvla eval run' (pid {os.getpid()}) is evaluating into" in answer
    _open(tmp_path).close()  # the lock went with its holder


def test_reading_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunDirError, match=r"not an evaluation run: no run\.json"):
        RunStore.read(tmp_path)
    (tmp_path / RUN_FILE).write_text('{"format": "something-else"}')
    with pytest.raises(RunDirError, match="not a fanvla evaluation run file"):
        RunStore.read(tmp_path)


def test_read_only_view_refuses_to_append(tmp_path):
    _open(tmp_path).close()
    with pytest.raises(RunDirError, match="read-only"):
        RunStore.read(tmp_path).append(_record(0))
