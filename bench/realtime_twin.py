"""Does the real-time twin keep real time with a local tiny policy in the loop?

The real-time twin steps its physics on a 125 Hz thread, renders the evaluation camera (colour only, one frame per
control tick) on another, and the closed loop runs at 10 Hz. For the same wall time each, in the same run:

- baseline: the loop with an agent that only holds (no policy compute);
- sync: a demo-preset tiny OpenVLA (random weights, ~0.1 mm actions) run in the loop's thread, as in lock-step;
- async: the same policy on the execution's worker thread (robot/execution.py).

Prints per case: control ticks and late ticks (started more than 20 ms late), physics cycles and late cycles
(started more than 1.6 ms late), the policy's answer time, and the late fractions against the baseline. Late
physics cycles mean the twin itself fell behind wall time: CPU contention (other processes, or the policy's
compute), not the control loop; the load average is printed with them. A sync tick that waits for a policy
slower than 20 ms stretches (robot/execution.py), so sync runs fewer ticks in the same time without being late.

Run: ``python bench/realtime_twin.py [--seconds 10] [--config hardware.yaml]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from eval_protocols.evaluation import sim_eval_overrides
from fanvla.config import load_hardware_config
from policy.agent import LocalPolicy
from policy.runner import ClosedLoopRunner, EpisodeRunner
from policy.tiny import build_tiny
from robot.execution import ExecutionConfig, ExecutionMode
from robot.factory import open_robot
from robot.runtime import AgentOutput

# Actions of at most 0.1 mm a step: the arm stays put, so every case runs the whole time without a limit in the way.
STILL = np.array([0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 1.0])
STILL_STATS = {"q01": (-STILL * [1, 1, 1, 1, 1, 1, 0]).tolist(), "q99": STILL.tolist(), "mask": [True] * 6 + [False],
               "mean": [0.0] * 7, "std": [1.0] * 7, "min": (-STILL).tolist(), "max": STILL.tolist()}


class HoldAgent:
    def reset(self, instruction: str) -> None:
        pass

    def act(self, observation) -> AgentOutput:
        return AgentOutput(None)


def measure(robot, runner, seconds: float) -> dict:
    before = robot.twin.physics_timing()
    load = os.getloadavg()[0]
    result = runner.run_episode("put the red cube into the box", max_duration_s=seconds)
    after = robot.twin.physics_timing()
    summary = result.summary
    return {"ticks": result.steps, "late_ticks": result.episode.late_ticks, "cycles": after.ticks - before.ticks,
            "late_cycles": after.late_ticks - before.late_ticks,
            "answer_ms": 1000 * (summary.get("latency_p50_s") or 0.0), "load": (load + os.getloadavg()[0]) / 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per case (default 10)")
    parser.add_argument("--config", default=None, help="hardware.yaml (default: the repository's)")
    args = parser.parse_args()
    config = load_hardware_config(args.config)
    config = config.with_overrides(sim_eval_overrides(config))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny(Path(tmp) / "tiny", preset="demo", seed=0, norm_stats={"jaka_sim": {"action": STILL_STATS}})
        policy = LocalPolicy.load(model, threads=1)
        with open_robot(config, "sim", seed=0, realtime=True) as robot:
            robot.twin.reset_scene()
            robot.clock.sleep(1.0)  # the renderer is created on the first frame
            cases = {
                "baseline (hold, no policy)": EpisodeRunner(robot, HoldAgent(), "hold", hold_after_s=60,
                                                            stop_after_s=120),
                "sync: tiny policy in the loop": ClosedLoopRunner(robot, policy),
                "async: tiny policy on a worker": ClosedLoopRunner(
                    robot, policy, execution=ExecutionConfig(ExecutionMode.ASYNC)),
            }
            results = {}
            for name, runner in cases.items():
                robot.twin.reset_scene()
                results[name] = measure(robot, runner, args.seconds)
    color = config.camera.color
    print(f"real-time twin, {args.seconds:g} s per case; camera {color.width}x{color.height} colour at {color.fps} "
          f"frames/s, control {config.recording.rate_hz:g} Hz, physics {1 / config.robot.servo_period_s:g} Hz")
    base = results["baseline (hold, no policy)"]
    for name, r in results.items():
        late = r["late_ticks"] / max(1, r["ticks"])
        late_cycles = r["late_cycles"] / max(1, r["cycles"])
        ratio = (f"  (vs baseline: late ticks x{late / max(base['late_ticks'] / max(1, base['ticks']), 1e-9):.2f}, "
                 f"late cycles x{late_cycles / max(base['late_cycles'] / max(1, base['cycles']), 1e-9):.2f})"
                 if r is not base else "")
        print(f"  {name:31s} ticks {r['ticks']:4d} late {r['late_ticks']:3d} ({100 * late:4.1f}%) | physics cycles "
              f"{r['cycles']:5d} late {r['late_cycles']:4d} ({100 * late_cycles:4.1f}%) | answer p50 "
              f"{r['answer_ms']:5.1f} ms | load {r['load']:.1f}{ratio}")


if __name__ == "__main__":
    main()
