"""The trial runner in the lock-step twin: placement, honest scoring, logs and videos, resuming, refusals."""

from __future__ import annotations

import json

import imageio_ffmpeg
import numpy as np
import pytest

from collect.store import EpisodeStore
from eval_protocols.judges import TwinJudge
from eval_protocols.launch import RunOptions, evaluation_config, run_evaluation
from eval_protocols.policies import PolicyError
from eval_protocols.results import RESULTS_FILE, RUN_FILE, RunDirError, RunStore
from eval_protocols.task_spec import resolve_tasks
from robot.factory import open_robot
from robot.scene import SceneSampler
from robot.units import rad_to_deg


def _options(run_dir, policy, tasks, trials=1, seed=0, **extra) -> RunOptions:
    return RunOptions("sim", policy, tasks, trials, seed, run_dir, **extra)


def test_the_twin_places_exactly_the_trials_scene(hardware_config):
    (task,) = resolve_tasks("task3", hardware_config.scene)
    config = evaluation_config(hardware_config, "sim", {})
    trial = task.trial(SceneSampler(config), 4, 7)
    with open_robot(config, "sim") as robot:
        TwinJudge(robot).prepare(task, trial, {})
        twin, scene = robot.twin, trial.scene
        assert np.allclose(twin.object_pose()[:2], scene.object_xy_mm, atol=1.0)
        assert np.allclose(twin.box_pose()[:2], scene.box_xy_mm, atol=1e-6)
        assert np.allclose(rad_to_deg(robot.arm.state().joints_rad), rad_to_deg(np.array(scene.start_joints_rad)),
                           atol=0.3)
        assert robot.gripper.state().command == 1.0 and not twin.task_success()


def _video_frames(path) -> tuple[dict, int]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, sum(1 for _ in reader)


def test_scripted_expert_succeeds_and_every_trial_is_logged(tmp_path, hardware_config):
    tasks = resolve_tasks("task2,task4", hardware_config.scene)
    run_dir = tmp_path / "expert"
    seen = []
    progress = run_evaluation(hardware_config, _options(run_dir, "scripted-expert", tasks), on_trial=seen.append)
    assert progress == {"task2": {"trials": 1, "scored": 1, "successes": 1},
                        "task4": {"trials": 1, "scored": 1, "successes": 1}}
    assert [(r.done, r.total) for r in seen] == [(1, 2), (2, 2)]
    manifest = json.loads((run_dir / RUN_FILE).read_text())
    assert manifest["policy"]["fingerprint"].startswith("baseline:scripted-expert@sha256:")
    assert manifest["hardware"]["camera"]["color"]["fps"] == 10 and manifest["backend"] == "sim"
    assert {name: spec["sha256"] for name, spec in manifest["tasks"].items()} == {t.name: t.sha256 for t in tasks}
    sampler = SceneSampler(evaluation_config(hardware_config, "sim", {}))
    for task, record in zip(tasks, RunStore.read(run_dir).records(), strict=True):
        assert record["scored_by"] == "twin" and record["success"] is True
        assert record["details"]["inside_footprint"] and record["details"]["released"]
        assert record["scene"] == task.trial(sampler, 0, 0).scene.to_dict()
        meta, frames = _video_frames(run_dir / record["video"])
        assert meta["codec"] == "h264" and meta["size"] == (320, 240) and frames == record["episode"]["steps"]
        with EpisodeStore.open(run_dir / record["step_log"]) as store:
            assert store.num_episodes == 1 and store.num_frames == record["episode"]["steps"]
            info = store.episode_meta(0)
            assert (info["task"], info["trial"], info["seed"]) == (task.name, 0, record["seed"])
            joints = store.array("joints_rad")[:]
            assert np.allclose(joints[0], record["scene"]["start_joints_rad"], atol=np.radians(0.3))
        assert not list((run_dir / record["video"]).parent.glob(".*partial*"))


def test_random_policy_fails_honestly_and_a_finished_run_resumes_to_nothing(tmp_path, hardware_config, task_file):
    tasks = resolve_tasks(str(task_file(name="short", max_duration_s=4)), hardware_config.scene)
    run_dir = tmp_path / "random"
    progress = run_evaluation(hardware_config, _options(run_dir, "random", tasks, trials=2))
    assert progress == {"short": {"trials": 2, "scored": 2, "successes": 0}}
    for record in RunStore.read(run_dir).records():
        assert record["episode"]["status"] == "timeout" and record["episode"]["steps"] == 40
        assert not record["details"]["inside_footprint"] and record["note"].startswith("not inside footprint")
    results = (run_dir / RESULTS_FILE).read_bytes()
    again = []
    run_evaluation(hardware_config, _options(run_dir, "random", tasks, trials=2), on_trial=again.append)
    assert again == [] and (run_dir / RESULTS_FILE).read_bytes() == results
    with pytest.raises(RunDirError, match=r"policy: the run evaluated 'random'.*'scripted-expert'"):
        run_evaluation(hardware_config, _options(run_dir, "scripted-expert", tasks, trials=2))
    with pytest.raises(RunDirError, match="trials: the run has 2, this command asks for 3"):
        run_evaluation(hardware_config, _options(run_dir, "random", tasks, trials=3))
    assert (run_dir / RESULTS_FILE).read_bytes() == results


def test_sim_only_baseline_and_bad_policy_are_refused_before_anything_moves(tmp_path, hardware_config):
    tasks = resolve_tasks("task1", hardware_config.scene)
    with pytest.raises(PolicyError, match="runs only with --backend sim"):
        run_evaluation(hardware_config, RunOptions("real", "scripted-expert", tasks, 1, 0, tmp_path / "a"))
    with pytest.raises(PolicyError, match="neither an http"):
        run_evaluation(hardware_config, _options(tmp_path / "b", "no-such-policy", tasks))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
