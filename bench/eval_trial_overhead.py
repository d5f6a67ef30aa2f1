"""What an evaluation trial costs on top of its episode, in the lock-step twin.

For the same trials (task1, scripted expert, same seeds), alternating to share the machine's load:
- baseline: twin reset + one bare ``ControlLoop`` episode (no subscribers) — the physics, renders and agent;
- evaluation: ``Evaluation.run_trial`` — the same episode plus the step log (Zarr, JPEG frames), the MP4,
  the settle-and-score, and the fsynced result line.
Prints wall seconds per trial and per step for both, the overhead ratio, and the projected time of a
4 x 30 protocol at the measured per-step cost for expert-length (~130 steps) and time-limit (300 steps) trials.

Run: ``python bench/eval_trial_overhead.py [--trials 4]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from collect.expert import ScriptedExpert
from eval_protocols.evaluation import Evaluation
from eval_protocols.judges import TwinJudge, place_in_twin
from eval_protocols.launch import evaluation_config
from eval_protocols.policies import open_policy
from eval_protocols.results import RunIdentity, RunStore
from eval_protocols.task_spec import resolve_tasks
from fanvla.config import load_hardware_config
from robot.factory import open_robot
from robot.runtime import ControlLoop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    config = evaluation_config(load_hardware_config(), "sim", {})
    (task,) = resolve_tasks("task1", config.scene)
    policy = open_policy("scripted-expert", "sim")
    bare_s, bare_steps, eval_s, eval_steps = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch, open_robot(config, "sim") as robot:
        identity = RunIdentity(policy.identity, "sim", 0, args.trials)
        store = RunStore.open_for_run(Path(scratch) / "run", identity, {task.name: task.describe()}, {})
        evaluation = Evaluation(robot, policy, TwinJudge(robot), store, [task], args.trials, 0)
        loop = ControlLoop(robot, config.recording.rate_hz, config.safety.watchdog_hold_s,
                           config.safety.watchdog_stop_s, [])
        for index in range(args.trials):
            trial = task.trial(evaluation.sampler, 0, index)
            start = time.perf_counter()
            place_in_twin(robot, trial)
            agent = ScriptedExpert(robot.twin, config.recording.period_s, np.random.default_rng(trial.seed))
            result = loop.run_episode(agent, trial.instruction, task.max_duration_s, robot.twin.task_success)
            bare_s.append(time.perf_counter() - start)
            bare_steps.append(result.steps)
            start = time.perf_counter()
            record = evaluation.run_trial(task, trial)
            eval_s.append(time.perf_counter() - start)
            eval_steps.append(record["episode"]["steps"])
        store.close()
    per_step_bare = sum(bare_s) / sum(bare_steps)
    per_step_eval = sum(eval_s) / sum(eval_steps)
    print(f"trials: {args.trials} (task1, scripted expert); steps per trial {np.mean(eval_steps):.0f}")
    print(f"baseline (reset + bare episode): {np.mean(bare_s):.2f} s/trial, {1000 * per_step_bare:.1f} ms/step")
    print(f"evaluation trial (log, video, score): {np.mean(eval_s):.2f} s/trial, {1000 * per_step_eval:.1f} ms/step")
    print(f"ratio evaluation / baseline per step: {per_step_eval / per_step_bare:.2f}")
    for label, steps in (("expert-length trials (130 steps)", 130), ("time-limit trials (300 steps)", 300)):
        print(f"projected 4 x 30 protocol, {label}: {120 * steps * per_step_eval / 60:.1f} min")


if __name__ == "__main__":
    main()
