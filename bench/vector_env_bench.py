"""Environment steps per second of the vectorised twin (robot/sim/vector_env.py) for N = 1, 8, 32 scenes, against the
single-scene evaluation loop, measured in the same run.

Both drive the same task-1 scenes with the same cheap deterministic agent (a pose delta from the measured state that
sways the arm and toggles the gripper), so the policy's cost is left out and the figure is the environment's:
- baseline: what a trial runs per tick (``eval_protocols.judges.place_in_twin`` + ``robot.runtime.ControlLoop`` in
  the lock-step twin, the software RealSense rendering at the evaluation camera's size, the demo's 424x240);
- vectorised: ``TwinVectorEnv`` with N scenes, rendering at the policy's input size (112 px: the demo model; 224 px:
  OpenVLA-7B), in this process (0 workers) or spread over 2 worker processes (one per core).
Episodes are 40 ticks (4 s) in both, and every episode ends with the scene's settle-and-score (vectorised) or the
trial's reset (baseline), so resets are counted alike.

Run: ``python bench/vector_env_bench.py [--ticks 120] [--sizes 1,8,32]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from eval_protocols.judges import place_in_twin
from eval_protocols.launch import evaluation_config
from eval_protocols.task_spec import resolve_tasks
from fanvla.config import load_hardware_config
from robot.factory import open_robot
from robot.runtime import AgentOutput, ControlLoop
from robot.safety import Command
from robot.sim.vector_env import EnvScene, TwinVectorEnv, VectorEnvSettings, input_render_size

EPISODE_TICKS = 40
DEMO_CAMERA = {"camera.color": {"width": 424, "height": 240, "fps": 15}, "camera.depth.enabled": False,
               "recording.record_depth": False}


def sway(tcp_pose, step: int) -> Command:
    """Deterministic, always-valid motion: +-3 mm / tick in x and z, the gripper closing for half of each cycle."""
    phase = (step // 10) % 2
    delta = np.array([3.0, 0.0, -3.0, 0.0, 0.0, 0.0]) * (1 if phase == 0 else -1)
    return Command.to_pose(np.asarray(tcp_pose) + delta, 1.0 if (step // 20) % 2 == 0 else 0.0)


class SwayAgent:
    def reset(self, instruction: str) -> None:
        self.step = 0

    def act(self, observation) -> AgentOutput:
        self.step += 1
        return AgentOutput(sway(observation.arm.tcp_pose, self.step))


class TaskScenes:
    def __init__(self, task, config) -> None:
        from robot.scene import SceneSampler

        self.task, self.config, self.sampler = task, config, SceneSampler(config)

    def scene(self, env_index: int, episode: int) -> EnvScene:
        name = self.task.objects[episode % len(self.task.objects)]
        spec = self.sampler.sample(1000 * env_index + episode, name, self.task.perturbation)
        return EnvScene(spec, self.task.instruction_for(name, self.config.scene), EPISODE_TICKS, self.task.name)


def baseline(config, task, ticks: int) -> float:
    """env steps/s of the evaluation's single-scene loop (episodes of EPISODE_TICKS, each placed like a trial)."""
    sampler = TaskScenes(task, config)
    steps, elapsed = 0, 0.0
    with open_robot(config, "sim") as robot:
        loop = ControlLoop(robot, config.recording.rate_hz, config.safety.watchdog_hold_s,
                           config.safety.watchdog_stop_s, [])
        episode = 0
        while steps < ticks:
            scene = sampler.scene(0, episode)
            start = time.perf_counter()
            place_in_twin(robot, SimpleNamespace(scene=scene.spec))  # (a Trial's field it reads)
            result = loop.run_episode(SwayAgent(), scene.instruction, EPISODE_TICKS * config.recording.period_s)
            elapsed += time.perf_counter() - start
            steps += result.steps
            episode += 1
    return steps / elapsed


def vectorised(config, task, num_envs: int, workers: int, input_px: int, ticks: int) -> float:
    camera = config.camera.color
    width, height = input_render_size(camera.width, camera.height, input_px)
    settings = VectorEnvSettings(width, height, config.recording.period_s)
    with TwinVectorEnv(config, TaskScenes(task, config), num_envs, settings, workers) as env:
        observation = env.reset()
        env.step([sway(arm.tcp_pose, 0) for arm in observation.arms])  # warm-up: renderers, first uploads
        start = time.perf_counter()
        for step in range(1, ticks + 1):
            observation = env.step([sway(arm.tcp_pose, step) for arm in observation.arms]).observation
        return num_envs * ticks / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=120, help="ticks of every scene per measurement")
    parser.add_argument("--sizes", default="1,8,32")
    args = parser.parse_args()
    config = evaluation_config(load_hardware_config(), "sim", {}).with_overrides(DEMO_CAMERA)
    (task,) = resolve_tasks("task1", config.scene)
    sizes = [int(size) for size in args.sizes.split(",")]
    # Load from other processes changes over minutes on a shared machine: every configuration is measured right
    # after a baseline of its own, and its ratio is to that baseline.
    print(f"baseline: the evaluation loop, 1 scene, camera {config.camera.color.width}x{config.camera.color.height}, "
          f"{max(EPISODE_TICKS, args.ticks // 2)} ticks, measured before each configuration")
    print("vectorised twin: env steps/s (ratio to the baseline measured just before it)")
    ratios = {}
    for input_px in (112, 224):
        for num_envs in sizes:
            for workers in sorted({0, min(2, num_envs)}):
                base = baseline(config, task, max(EPISODE_TICKS, args.ticks // 2))
                ticks = max(20, args.ticks // max(1, num_envs // 4))  # fewer ticks for many scenes
                rate = vectorised(config, task, num_envs, workers, input_px, ticks)
                ratios[(input_px, num_envs, workers)] = rate / base
                print(f"  N = {num_envs:2d}, {workers} worker processes, render {input_px} px: {rate:7.1f}  "
                      f"(baseline {base:5.1f}, x {rate / base:.2f})", flush=True)
    best = max(ratios, key=ratios.get)
    print(f"best: N = {best[1]}, {best[2]} workers, {best[0]} px: x {ratios[best]:.2f} the evaluation loop's env "
          f"steps/s")


if __name__ == "__main__":
    main()
