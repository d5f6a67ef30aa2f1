"""What ``fanvla rl`` and ``fanvla rl compare`` compute around the training: the training scenes (the evaluation's
tasks, never its trials), steps to a success threshold, and the interval across seeds."""

from __future__ import annotations

import numpy as np
import pytest

from eval_protocols.task_spec import resolve_tasks, trial_seed
from fanvla.config import load_hardware_config
from fanvla.rl import TaskScenes, training_scene_seed
from fanvla.rl_compare import mean_interval, steps_to_threshold
from tests.conftest import REPO_ROOT


def test_training_scenes_follow_the_tasks_but_never_repeat_an_evaluation_trial() -> None:
    hardware = load_hardware_config()
    tasks = resolve_tasks("task1,task3", hardware.scene)
    source = TaskScenes(tasks, hardware, seed=0, num_envs=2, max_episode_steps=130)
    scenes = [source.scene(i, k) for k in range(3) for i in range(2)]  # global episodes 0..5
    assert [s.label for s in scenes] == ["task1", "task3"] * 3  # round robin over the tasks
    assert [s.spec.object_name for s in scenes[::2]] == list(tasks[0].objects)  # each task's objects in turn
    assert all(s.instruction == hardware.scene.instruction_for(s.spec.object_name) for s in scenes)
    assert all(s.max_steps == 130 for s in scenes)  # 25 s tasks at 10 Hz allow 250 ticks; the run caps at 130
    assert source.scene(1, 2) == scenes[5]  # deterministic
    assert TaskScenes(tasks, hardware, seed=1, num_envs=2, max_episode_steps=130).scene(0, 0).spec != scenes[0].spec
    evaluation_seeds = {trial_seed(task, run, trial) for task in ("task1", "task3") for run in range(3)
                        for trial in range(30)}
    training_seeds = {training_scene_seed(task, run, index) for task in ("task1", "task3") for run in range(3)
                      for index in range(1000)}
    assert not evaluation_seeds & training_seeds


def test_a_task_shorter_than_the_episode_cap_bounds_its_episodes() -> None:
    hardware = load_hardware_config()
    (task,) = resolve_tasks("task1", hardware.scene)
    short = TaskScenes([task], hardware, seed=0, num_envs=1, max_episode_steps=1000)
    expected = int(task.max_duration_s / hardware.recording.period_s + 1e-9)
    assert short.scene(0, 0).max_steps == expected


def test_steps_to_threshold_needs_a_full_window() -> None:
    train = {"env_steps": np.array([100.0, 200, 300, 400]), "rollout_success_window": np.array([1.0, 0.5, 0.9, 1.0]),
             "window_full": np.array([0.0, 1, 1, 1])}
    assert steps_to_threshold(train, 0.9) == 300  # the 1.0 at 100 steps came from a window of too few episodes
    assert steps_to_threshold(train, 0.95) == 400
    train["rollout_success_window"] = np.array([1.0, 0.5, 0.6, 0.7])
    assert steps_to_threshold(train, 0.9) is None
    assert steps_to_threshold({}, 0.9) is None


def test_mean_interval_is_the_student_t_interval() -> None:
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    # sd 1, n 3, t(0.975, 2) = 4.3027 (tables): half width 4.3027 / sqrt(3) = 2.4841
    assert mean == 2.0 and low == pytest.approx(2.0 - 2.4841, abs=1e-4) and high == pytest.approx(4.4841, abs=1e-4)
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)
    assert mean_interval([]) is None


def test_registering_the_rl_commands_imports_no_torch() -> None:
    """`fanvla` on the robot PC must not need torch: the rl commands' options come from torch-free modules."""
    import subprocess
    import sys

    code = "import sys, fanvla.cli as c; c.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
