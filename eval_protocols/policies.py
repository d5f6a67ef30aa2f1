"""The policy under test: a policy server, a checkpoint in this process, or a baseline agent.

``open_policy(spec, robot)`` turns the ``--policy`` argument into a ``PolicyUnderTest``:

- ``http(s)://...``: a running ``fanvla serve`` (``policy.agent.RemotePolicy``); identity from its /metadata.
- a directory: a checkpoint loaded in this process (``policy.agent.LocalPolicy``); identity from its
  fingerprint (``fanvla.json`` or the weights' hash).
- ``scripted-expert`` (sim only): ``collect.expert.ScriptedExpert`` planning from the twin's privileged state.
- ``random`` (sim or real): ``RandomAgent``, uniformly random TCP steps and gripper flips.

Policies run through ``policy.runner.ClosedLoopRunner``; baseline agents through its base, ``EpisodeRunner``: the
same control loop with the same step log and summary, so every trial is logged alike. Each trial gets a fresh runner
(its own step-log store) and, for baselines, an agent seeded by the trial seed, so a sim trial is reproducible.

Every runner executes answers as the run's ``ExecutionConfig`` says (robot/execution.py: sync, async or chunk, with
injected latency drawn from the trial seed). In chunk mode the scripted expert answers with K-step plans
(``collect.expert_plan.PlanningExpert``); a checkpoint must predict chunks; the random baseline has none.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from collect.store import EpisodeStore
from policy.runner import ClosedLoopRunner, EpisodeRunner
from robot.execution import ExecutionConfig, ExecutionMode
from robot.runtime import Agent, AgentOutput, Observation, Subscriber
from robot.safety import Command

log = logging.getLogger(__name__)

BASELINES = ("scripted-expert", "random")
SIM_ONLY_BASELINES = ("scripted-expert",)
SYNC_WITHOUT_LATENCY = ExecutionConfig()  # sync, no injected latency: what every run did before execution modes
DEFAULT_EXPERT_CHUNK_STEPS = 8  # the scripted expert's plan in chunk mode: 0.8 s at 10 Hz (OpenVLA-OFT's K = 8)


class PolicyError(ValueError):
    """The --policy argument cannot be used (unknown name, unreachable server, sim-only baseline at the robot)."""


def _source_hash(*modules: Any) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())
    return "sha256:" + digest.hexdigest()


class RandomAgent:
    """Random TCP steps within ``step_mm`` / ``step_deg`` per axis and a gripper that flips with ``flip_probability``
    per tick: a policy that knows nothing, so its success rate says how often the scorer is fooled by chance."""

    def __init__(self, rng: np.random.Generator, step_mm: float = 12.0, step_deg: float = 4.0,
                 flip_probability: float = 0.05) -> None:
        self.rng, self.step_mm, self.step_rad = rng, step_mm, np.radians(step_deg)
        self.flip_probability = flip_probability
        self.gripper = 1.0

    def reset(self, instruction: str) -> None:
        self.gripper = 1.0

    def act(self, observation: Observation) -> AgentOutput:
        delta = np.concatenate([self.rng.uniform(-self.step_mm, self.step_mm, 3),
                                self.rng.uniform(-self.step_rad, self.step_rad, 3)])
        if self.rng.random() < self.flip_probability:
            self.gripper = 1.0 - self.gripper
        target = np.asarray(observation.arm.tcp_pose, dtype=np.float64) + delta
        return AgentOutput(Command.to_pose(target, self.gripper), info={"action": np.append(delta, self.gripper)})


class PolicyUnderTest(ABC):
    """What a run evaluates; ``identity["fingerprint"]`` decides whether two runs evaluated the same thing."""

    identity: dict[str, Any]
    execution: ExecutionConfig = SYNC_WITHOUT_LATENCY

    def trial_execution(self, trial_seed: int) -> ExecutionConfig:
        """The run's execution, its injected latencies drawn from the trial seed (a lock-step trial repeats)."""
        return replace(self.execution, latency_seed=trial_seed)

    @abstractmethod
    def runner(self, robot, step_log: EpisodeStore | None, subscribers: Sequence[Subscriber], trial_seed: int):
        """A runner with ``run_episode(instruction, max_duration_s, is_success, meta) -> ClosedLoopResult``."""

    def close(self) -> None:  # noqa: B027 - most policies hold nothing to release
        """Release connections or models."""


class BaselineUnderTest(PolicyUnderTest):
    def __init__(self, name: str, make_agent: Callable[[Any, int], Agent], source_modules: Sequence[Any],
                 execution: ExecutionConfig = SYNC_WITHOUT_LATENCY, details: dict[str, Any] | None = None) -> None:
        self.make_agent, self.execution = make_agent, execution
        self.identity = {"kind": "baseline", "name": name, "id": name,
                         "fingerprint": f"baseline:{name}@{_source_hash(*source_modules)}", **(details or {})}

    def runner(self, robot, step_log, subscribers, trial_seed):
        return EpisodeRunner(robot, self.make_agent(robot, trial_seed), self.identity["name"], step_log=step_log,
                             subscribers=subscribers, execution=self.trial_execution(trial_seed))


class CheckpointUnderTest(PolicyUnderTest):
    """A ``policy.agent.Policy`` (remote or local) run by ``ClosedLoopRunner``."""

    def __init__(self, policy, identity: dict[str, Any], execution: ExecutionConfig = SYNC_WITHOUT_LATENCY) -> None:
        self.policy, self.identity, self.execution = policy, identity, execution

    def runner(self, robot, step_log, subscribers, trial_seed):
        return ClosedLoopRunner(robot, self.policy, step_log=step_log, subscribers=subscribers,
                                execution=self.trial_execution(trial_seed))

    def close(self) -> None:
        self.policy.close()

    def default_execution(self, base: ExecutionConfig) -> ExecutionConfig:
        """``base`` (the run's latency and age bound), in OpenVLA-OFT's execution for a checkpoint that predicts
        K-action chunks: chunk mode, each chunk run open loop for its K steps before the next is asked for (the
        paper's setting); ``base`` as it is for single actions."""
        chunk_size = self.policy.describe().chunk_size or 1
        if chunk_size < 2:
            return base
        return replace(base, mode=ExecutionMode.CHUNK, open_loop_steps=chunk_size)


def _expert_agent(robot, seed: int) -> Agent:
    from collect.expert import ScriptedExpert

    return ScriptedExpert(robot.twin, robot.config.recording.period_s, np.random.default_rng(seed))


def _random_agent(robot, seed: int) -> Agent:
    return RandomAgent(np.random.default_rng(seed))


def _planning_expert(chunk_steps: int) -> Callable[[Any, int], Agent]:
    def make(robot, seed: int) -> Agent:
        from collect.expert_plan import PlanningExpert

        return PlanningExpert(_expert_agent(robot, seed), chunk_steps)

    return make


def _baseline(spec: str, backend: str, execution: ExecutionConfig, chunk_steps: int) -> PolicyUnderTest:
    if spec in SIM_ONLY_BASELINES and backend != "sim":
        raise PolicyError(f"--policy {spec} plans from the twin's privileged state and runs only with --backend sim")
    import collect.expert
    import eval_protocols.policies

    chunked = execution.mode is ExecutionMode.CHUNK
    if spec == "random":
        if chunked:
            raise PolicyError("--policy random answers with single actions; chunk execution needs action chunks "
                              "(scripted-expert plans them; use --execution sync or async for random)")
        return BaselineUnderTest(spec, _random_agent, [eval_protocols.policies], execution)
    if not chunked:
        return BaselineUnderTest(spec, _expert_agent, [collect.expert], execution)
    if chunk_steps < 1:
        raise PolicyError(f"--chunk-steps must be >= 1, got {chunk_steps}")
    import collect.expert_plan

    return BaselineUnderTest(spec, _planning_expert(chunk_steps), [collect.expert, collect.expert_plan], execution,
                             {"chunk_steps": chunk_steps})


def open_policy(spec: str, backend: str, *, token_file: str | None = None, unnorm_key: str | None = None,
                device: str = "cpu", threads: int | None = None, dtype: str = "auto",
                execution: ExecutionConfig = SYNC_WITHOUT_LATENCY,
                chunk_steps: int = DEFAULT_EXPERT_CHUNK_STEPS) -> PolicyUnderTest:
    """The ``--policy`` argument as a ``PolicyUnderTest`` (see the module docstring); ``dtype``: the weights of a
    checkpoint folder (policy.precision); ``chunk_steps``: the scripted expert's plan length in chunk execution."""
    if spec in BASELINES:
        return _baseline(spec, backend, execution, chunk_steps)
    if spec.startswith(("http://", "https://")):
        policy = _remote(spec, token_file, unnorm_key)
        policy.execution = execution
        return policy
    path = Path(spec)
    if path.is_dir():
        policy = _local(path, unnorm_key, device, threads, dtype)
        policy.execution = execution
        return policy
    raise PolicyError(f"--policy {spec!r} is neither an http(s):// URL of a 'fanvla serve', an existing checkpoint "
                      f"directory, nor a baseline ({', '.join(BASELINES)})")


def _remote(url: str, token_file: str | None, unnorm_key: str | None) -> PolicyUnderTest:
    from policy.agent import RemotePolicy
    from policy.client import PolicyClientError

    policy = RemotePolicy.connect(url, token_file=token_file)
    policy.unnorm_key = unnorm_key
    try:
        metadata = policy.client.metadata()
        checkpoint = metadata["checkpoint"]
        identity = {"kind": "remote", "url": url, "name": checkpoint["name"], "id": checkpoint["id"],
                    "fingerprint": checkpoint["fingerprint"],
                    "fingerprint_method": checkpoint.get("fingerprint_method"),
                    "action_space": metadata.get("action_space", {}).get("name"),
                    "unnorm_key": unnorm_key or metadata.get("unnorm_key"),
                    "server_software_version": metadata.get("software_version"),
                    **({"server_injected_latency_ms": metadata["injected_latency"]["spec_ms"]}
                       if metadata.get("injected_latency") else {})}
    except PolicyClientError as error:
        policy.close()
        raise PolicyError(f"cannot reach the policy server at {url}: {error}") from None
    except (KeyError, TypeError):
        policy.close()
        raise PolicyError(f"{url}/metadata does not describe a checkpoint: is it a 'fanvla serve'?") from None
    return CheckpointUnderTest(policy, identity)


def _local(path: Path, unnorm_key: str | None, device: str, threads: int | None, dtype: str) -> PolicyUnderTest:
    from policy.agent import LocalPolicy

    try:
        policy = LocalPolicy.load(path, unnorm_key=unnorm_key, device=device, threads=threads, dtype=dtype)
    except (OSError, ValueError) as error:
        raise PolicyError(f"cannot load the checkpoint {path}: {error}") from None
    deployment = policy.engine.deployment
    identity = {"kind": "local", "path": str(path.resolve()), "name": deployment.checkpoint_name,
                "id": deployment.checkpoint_id, "fingerprint": deployment.fingerprint,
                "fingerprint_method": deployment.fingerprint_method,
                "action_space": deployment.action_space.name.value, "unnorm_key": deployment.unnorm_key}
    return CheckpointUnderTest(policy, identity)
