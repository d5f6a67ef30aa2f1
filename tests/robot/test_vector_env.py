"""The vectorised twin: episodes scored like evaluation trials, auto-reset, the same results in one process and in
worker processes, step limits and the watchdog, optional shaping, and the episode of the scripted expert against
the evaluation's trial runner."""

from __future__ import annotations

import numpy as np
import pytest

from collect.expert import ScriptedExpert
from eval_protocols import judges
from eval_protocols.task_spec import resolve_tasks
from fanvla.config import load_hardware_config
from robot.interfaces import CameraFrame, GripperState
from robot.runtime import Observation
from robot.safety import Command
from robot.scene import SceneSampler
from robot.sim.vector_env import (
    DEFAULT_RESET_WAIT_S,
    DEFAULT_SETTLE_S,
    EnvScene,
    TwinVectorEnv,
    VectorEnvSettings,
    input_render_size,
)

SMALL_CAMERA = {"camera.color": {"width": 424, "height": 240, "fps": 15}, "camera.depth.enabled": False}


@pytest.fixture(scope="module")
def config():
    return load_hardware_config(None).with_overrides(SMALL_CAMERA)


class Scenes:
    """Nominal scenes seeded by (scene, episode); the task-1 trial 0 scene for every episode when ``fixed``."""

    def __init__(self, config, max_steps: int, fixed=None) -> None:
        self.sampler, self.config, self.max_steps, self.fixed = SceneSampler(config), config, max_steps, fixed

    def scene(self, env_index: int, episode: int) -> EnvScene:
        spec = self.fixed or self.sampler.sample(1000 * env_index + episode)
        return EnvScene(spec, self.config.scene.instruction_for(spec.object_name), self.max_steps, f"e{episode}")


def settings(config, **changes) -> VectorEnvSettings:
    return VectorEnvSettings(*input_render_size(424, 240, 56), config.recording.period_s, **changes)


def test_episodes_are_set_up_and_scored_as_evaluation_trials() -> None:
    assert DEFAULT_SETTLE_S == judges.SETTLE_S
    assert DEFAULT_RESET_WAIT_S == judges.FRESH_FRAME_S


def test_render_size_keeps_the_camera_aspect_with_the_input_size_on_the_short_side() -> None:
    assert input_render_size(424, 240, 112) == (198, 112)
    assert input_render_size(640, 480, 224) == (299, 224)
    assert input_render_size(240, 424, 112) == (112, 198)
    with pytest.raises(ValueError):
        input_render_size(424, 240, 0)


def _nudge(observation, step: int) -> list[Command]:
    """Deterministic commands: down and forward, the gripper closing halfway through."""
    delta = np.array([3.0, -1.0, -4.0, 0.0, 0.0, 0.02])
    return [Command.to_pose(arm.tcp_pose + delta, 1.0 if step < 5 else 0.0) for arm in observation.arms]


def _run(config, workers: int, ticks: int = 12):
    env = TwinVectorEnv(config, Scenes(config, max_steps=7), 3, settings(config), workers=workers)
    with env:
        observation = env.reset()
        images, rewards, dones, ends = [observation.images], [], [], []
        for step in range(ticks):
            result = env.step(_nudge(observation, step))
            observation = result.observation
            images.append(observation.images)
            rewards.append(result.rewards)
            dones.append(result.done)
            ends += result.ends
        return np.stack(images), np.stack(rewards), np.stack(dones), ends, observation


def test_worker_processes_give_exactly_what_one_process_gives(config) -> None:
    local = _run(config, workers=0)
    spread = _run(config, workers=2)
    assert local[0].shape == (13, 3, 56, 99, 3) and local[0].dtype == np.uint8
    np.testing.assert_array_equal(local[0], spread[0])
    np.testing.assert_array_equal(local[1], spread[1])
    np.testing.assert_array_equal(local[2], spread[2])
    assert local[3] == spread[3]
    # 7-tick episodes: every scene ended at tick 7 (step limit, no reward) and started its next episode
    assert local[2].sum(axis=0).tolist() == [1, 1, 1] and local[2][6].all()
    assert [(end.env_index, end.episode, end.steps, end.reason, end.success) for end in local[3]] == \
        [(i, 0, 7, "step_limit", False) for i in range(3)]
    assert local[4].instructions == [config.scene.instruction_for(Scenes(config, 7).scene(i, 1).spec.object_name)
                                     for i in range(3)]


def test_without_fresh_commands_the_watchdog_ends_the_episode(config) -> None:
    with TwinVectorEnv(config, Scenes(config, max_steps=100), 1, settings(config)) as env:
        env.reset()
        for _ in range(30):
            result = env.step([None])
            if result.done[0]:
                break
        (end,) = result.ends
        assert end.reason == "watchdog" and not end.success and result.rewards[0] == 0.0
        assert end.steps == round(config.safety.watchdog_stop_s / config.recording.period_s) + 1


def test_bad_input_is_refused(config) -> None:
    with TwinVectorEnv(config, Scenes(config, max_steps=5), 2, settings(config)) as env:
        with pytest.raises(RuntimeError, match="reset"):
            env.step([None, None])
        env.reset()
        with pytest.raises(ValueError, match="one command"):
            env.step([None])
        with pytest.raises(ValueError, match="first_episodes"):
            env.reset([0])
    with pytest.raises(ValueError, match="max_steps"):
        EnvScene(SceneSampler(config).sample(0), "x", 0)


def _expert_episode(config, spec, seed: int, shaping_weight: float = 0.0):
    """The scripted expert (as --policy scripted-expert builds it) drives scene 0 until its episode ends."""
    env = TwinVectorEnv(config, Scenes(config, max_steps=250, fixed=spec), 1,
                        settings(config, shaping_weight=shaping_weight))
    with env:
        observation = env.reset()
        twin = env._local.scenes[0].robot.twin
        expert = ScriptedExpert(twin, config.recording.period_s, np.random.default_rng(seed))
        expert.reset(observation.instructions[0])
        frame = CameraFrame(observation.images[0], 0.0, 0, 0.0)
        rewards = []
        for step in range(250):
            arm = observation.arms[0]
            output = expert.act(Observation(frame, arm, GripperState(1.0, None, 0.0), "", step, arm.timestamp_s))
            result = env.step([output.command])
            rewards.append(float(result.rewards[0]))
            observation = result.observation
            if result.done[0]:
                return result.ends[0], rewards, observation
    raise AssertionError("the expert's episode did not end within 250 ticks")


def test_the_scripted_expert_succeeds_as_in_the_trial_runner(config, tmp_path) -> None:
    """The expert's episode in the env ends at the tick the evaluation's trial runner ends it (one tick apart by
    definition: the runner counts the tick whose observation shows the success, the env the ticks before it)."""
    from eval_protocols.launch import RunOptions, run_evaluation
    from eval_protocols.results import RunStore

    (task,) = resolve_tasks("task1", config.scene)
    trial = task.trial(SceneSampler(config), 0, 0)
    end, rewards, observation = _expert_episode(config, trial.scene, trial.seed)
    assert end.reason == "success" and end.success and rewards[-1] == 1.0 and sum(rewards) == 1.0
    assert observation.images.shape == (1, 56, 99, 3)

    run_evaluation(config, RunOptions("sim", "scripted-expert", [task], 1, 0, tmp_path / "eval"))
    (record,) = RunStore.read(tmp_path / "eval").records()
    assert record["success"] and record["seed"] == trial.seed
    assert record["episode"]["steps"] == end.steps + 1  # lock-step: deterministic, so exactly


def test_grasp_shaping_pays_on_grasping_and_sums_to_the_sparse_reward(config) -> None:
    spec = SceneSampler(config).sample(3)
    end, rewards, _ = _expert_episode(config, spec, seed=3, shaping_weight=0.5)
    assert end.success
    assert 0.5 in rewards  # the tick both fingers first hold the object
    assert sum(rewards) == pytest.approx(1.0)  # potential-based: it telescopes away over an episode
