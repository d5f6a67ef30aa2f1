"""The policy as a control-loop agent: observation -> policy (remote or in-process) -> arm command.

``PolicyAgent`` implements ``robot.runtime.Agent``. Each tick it sends the colour image and instruction (and,
if asked, the robot state) to a ``Policy``, converts the predicted action into a command with
``policy.action_space.command_from_action`` in the checkpoint's action space, and returns it. A checkpoint that
reads the robot state or a wrist image (OpenVLA-OFT, ``PolicySpec.needs_state`` / ``needs_wrist``) gets them
with every request. An action that
arrives later than ``max_action_age_s`` after its observation (robot clock), or none at all (timeout, server
down, server error), yields *no* command: the loop holds the arm and its watchdog takes over. Nothing is ever
cached, so a stale action is never replayed.

A policy that predicts action chunks (``actions`` of shape (B, K, 7), OpenVLA-OFT) gives a command and a plan of
K - 1 more (``AgentOutput.plan``), each relative to the one before, for the loop's chunk execution
(robot/execution.py), which also judges each step's age.

Two policies: ``RemotePolicy`` (``policy.client``, no torch needed) and ``LocalPolicy`` (an in-process
``policy.inference.InferenceEngine``; torch is imported only when one is built).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from policy.action_space import ACTION_DIM, action_space, command_from_action
from policy.client import (
    PolicyClient,
    PolicyProtocolError,
    PolicyServerError,
    PolicyTimeoutError,
    PolicyUnavailableError,
)
from robot.clock import Clock
from robot.runtime import AgentOutput, Observation

if TYPE_CHECKING:
    from policy.inference import InferenceEngine

log = logging.getLogger(__name__)

# The optional state sent with each observation: measured joints, measured TCP pose, gripper opening.
STATE_LAYOUT = ("joints_rad (6)", "tcp_pose (6: x_mm, y_mm, z_mm, rx_rad, ry_rad, rz_rad)", "gripper opening (1)")
STATE_DIM = 13
# With a simulated clock no robot time passes while the policy thinks, so a slow answer is not stale; the
# request still gets a (real-time) limit so that a hung server cannot hang the episode.
SIMULATED_CLOCK_TIMEOUT_S = 10.0
# Failures that mean "no action this tick" (the watchdog handles them); anything else is a configuration
# error (wrong token, a request the server refuses) and ends the episode.
TRANSIENT_POLICY_ERRORS = (PolicyTimeoutError, PolicyUnavailableError, PolicyServerError, PolicyProtocolError)


class PolicyChangedError(RuntimeError):
    """The server answered with another checkpoint than the one the episode started with."""


@dataclass(frozen=True)
class PolicySpec:
    """What the robot side must know about the checkpoint it runs."""

    action_space: str
    checkpoint_id: str
    unnorm_key: str
    state_dim: int | None = None
    image_size: int | None = None
    chunk_size: int | None = None  # actions per prediction; None or 1: single actions (OpenVLA), K: chunks (OFT)
    needs_state: bool = False  # the checkpoint reads the robot state (OpenVLA-OFT with proprio)
    needs_wrist: bool = False  # the checkpoint reads the wrist camera's image too

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> PolicySpec:
        """From the server's ``GET /metadata`` (the same fields ``InferenceEngine.metadata`` produces)."""
        try:
            inputs = metadata.get("inputs") or {}
            return cls(action_space=str(metadata["action_space"]["name"]),
                       checkpoint_id=str(metadata["checkpoint"]["id"]), unnorm_key=str(metadata["unnorm_key"]),
                       state_dim=metadata.get("state_dim"), image_size=metadata.get("image_size"),
                       chunk_size=metadata.get("chunk_size"), needs_state=bool(inputs.get("state", False)),
                       needs_wrist=bool(inputs.get("wrist_image", False)))
        except (KeyError, TypeError, AttributeError) as error:
            raise PolicyProtocolError(f"the server's metadata lacks {error}: is it a fanvla policy server?") from None


@dataclass(frozen=True)
class PolicyOutput:
    actions: np.ndarray  # (B, 7), or (B, K, 7) for action chunks: float64 in the checkpoint's action space
    checkpoint_id: str
    server_timing: dict[str, float] = field(default_factory=dict)  # seconds: decode, queue, inference, total
    bin_probs: np.ndarray | None = None


class Policy(Protocol):
    def describe(self) -> PolicySpec: ...

    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                states: Sequence[np.ndarray] | None = None, timeout_s: float | None = None) -> PolicyOutput:
        """``wrist_images=`` is passed too (as a keyword) to a policy whose spec says ``needs_wrist``."""


class RemotePolicy:
    """A policy server reached through ``PolicyClient``."""

    def __init__(self, client: PolicyClient, unnorm_key: str | None = None) -> None:
        self.client, self.unnorm_key = client, unnorm_key

    @classmethod
    def connect(cls, url: str, *, token_file: str | Path | None = None, **client_options: Any) -> RemotePolicy:
        return cls(PolicyClient(url, token_file=token_file, **client_options))

    def describe(self) -> PolicySpec:
        """Asks ``GET /metadata`` each time (once per episode): a restarted server may serve another checkpoint."""
        metadata = self.client.metadata()
        spec = PolicySpec.from_metadata(metadata)
        if self.unnorm_key is None:
            return spec
        if self.unnorm_key not in metadata.get("unnorm_keys", []):
            raise ValueError(f"unnorm_key '{self.unnorm_key}' is not served by {self.client.url}; it has "
                             f"{metadata.get('unnorm_keys')}")
        return replace(spec, unnorm_key=self.unnorm_key)

    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                states: Sequence[np.ndarray] | None = None, timeout_s: float | None = None,
                wrist_images: Sequence[np.ndarray] | None = None) -> PolicyOutput:
        if len(images) == 1:
            reply = self.client.act(images[0], instructions[0], None if states is None else states[0],
                                    unnorm_key=self.unnorm_key, timeout_s=timeout_s,
                                    wrist_image=None if wrist_images is None else wrist_images[0])
        else:
            reply = self.client.act_batch(images, instructions, states, unnorm_key=self.unnorm_key,
                                          timeout_s=timeout_s, wrist_images=wrist_images)
        return PolicyOutput(reply.actions, reply.checkpoint_id, reply.timing, reply.bin_probs)

    def close(self) -> None:
        self.client.close()


class LocalPolicy:
    """The model in this process (no network). ``timeout_s`` cannot interrupt a forward pass and is ignored."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.engine = engine

    @classmethod
    def load(cls, model_dir: str | Path, **engine_options: Any) -> LocalPolicy:
        from policy.inference import InferenceEngine

        return cls(InferenceEngine.load(model_dir, **engine_options))

    def describe(self) -> PolicySpec:
        deployment, engine = self.engine.deployment, self.engine
        return PolicySpec(deployment.action_space.name.value, deployment.checkpoint_id, deployment.unnorm_key,
                          engine.input_limits()["state_dim"], engine.model.image_settings.image_size,
                          engine.chunk_size, engine.requires_state, engine.reads_wrist)

    def predict(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                states: Sequence[np.ndarray] | None = None, timeout_s: float | None = None,
                wrist_images: Sequence[np.ndarray] | None = None) -> PolicyOutput:
        prediction = self.engine.predict(images, instructions, states=states, wrist_images=wrist_images)
        return PolicyOutput(prediction.actions, self.engine.checkpoint_id,
                            {"queue_s": prediction.queue_s, "inference_s": prediction.inference_s})

    def close(self) -> None:
        pass


def robot_state(observation: Observation) -> np.ndarray:
    """The state vector of ``STATE_LAYOUT`` for an observation; the gripper opening as the recorder stores it
    (measured where the gripper reports it, else the applied command), so a policy reads what it was trained on."""
    gripper = observation.gripper
    opening = gripper.width if gripper.width is not None else gripper.command
    return np.concatenate([observation.arm.joints_rad, observation.arm.tcp_pose, [opening]]).astype(np.float64)


class PolicyAgent:
    """``robot.runtime.Agent`` driven by a ``Policy``; see the module docstring for what happens when it is late."""

    def __init__(self, policy: Policy, clock: Clock, max_action_age_s: float, *, send_state: bool = False,
                 simulated_timeout_s: float = SIMULATED_CLOCK_TIMEOUT_S, expect_chunks: bool = False) -> None:
        if max_action_age_s <= 0:
            raise ValueError(f"max_action_age_s must be > 0, got {max_action_age_s}")
        self.policy, self.clock, self.max_action_age_s = policy, clock, max_action_age_s
        self.send_state, self.simulated_timeout_s = send_state, simulated_timeout_s
        self.expect_chunks = expect_chunks  # chunk execution: refuse a policy that predicts single actions
        self.spec: PolicySpec | None = None

    def reset(self, instruction: str) -> None:
        """Ask the policy what it is (once per episode: a restarted server with another checkpoint is caught)."""
        spec = self.policy.describe()
        action_space(spec.action_space)  # refuses an unknown action space before the arm moves
        if (self.send_state or spec.needs_state) and spec.state_dim not in (None, STATE_DIM):
            raise ValueError(f"the checkpoint expects a {spec.state_dim}-D state; this agent sends {STATE_DIM} "
                             f"values ({', '.join(STATE_LAYOUT)})")
        if self.expect_chunks and (spec.chunk_size or 1) < 2:
            raise ValueError(f"chunk execution needs a policy that predicts action chunks (OpenVLA-OFT); "
                             f"{spec.checkpoint_id} predicts single actions: use --execution sync or async")
        self.spec = spec

    def act(self, observation: Observation) -> AgentOutput:
        if self.spec is None:
            raise RuntimeError("PolicyAgent.act before reset(instruction)")
        started = time.perf_counter()
        timeout_s = self._request_timeout_s(observation)
        info: dict[str, Any] = {"checkpoint_id": self.spec.checkpoint_id}
        if timeout_s <= 0:
            return AgentOutput(None, info={**info, "stale": True, "latency_s": 0.0})
        inputs: dict[str, Any] = {}
        if self.spec.needs_wrist:
            if observation.wrist is None:
                raise ValueError(f"{self.spec.checkpoint_id} reads a wrist camera, but the robot has none: add "
                                 f"cameras.wrist to hardware.yaml")
            inputs["wrist_images"] = [observation.wrist.color]
        states = [robot_state(observation)] if self.send_state or self.spec.needs_state else None
        try:
            output = self.policy.predict([observation.frame.color], [observation.instruction], states,
                                         timeout_s=timeout_s, **inputs)
        except TRANSIENT_POLICY_ERRORS as error:
            log.warning("no action at step %d: %s", observation.step, error)
            return AgentOutput(None, info={**info, "agent_error": f"{type(error).__name__}: {error}",
                                           "latency_s": time.perf_counter() - started})
        if output.checkpoint_id != self.spec.checkpoint_id:
            raise PolicyChangedError(f"the policy now serves {output.checkpoint_id}, the episode started with "
                                     f"{self.spec.checkpoint_id}; restart the episode deliberately")
        chunk = self._chunk(output.actions[0])
        action = chunk[0]
        age_s = self.clock.now_s() - observation.time_s
        info.update(latency_s=time.perf_counter() - started, server_timing=dict(output.server_timing), action=action,
                    action_age_s=age_s)
        if len(chunk) > 1:
            info["action_chunk"] = chunk
        elif age_s > self.max_action_age_s:  # (a chunk's steps are judged one by one by the chunk execution)
            info["stale"] = True
            return AgentOutput(None, info=info)  # dropped, and never reused later
        commands = [command_from_action(action, observation.arm, self.spec.action_space)]
        for step_action in chunk[1:]:  # each step from where the one before leaves the arm
            previous = commands[-1]
            state = replace(observation.arm, tcp_pose=previous.tcp_pose) if previous.is_pose \
                else replace(observation.arm, joints_rad=previous.joints_rad)
            commands.append(command_from_action(step_action, state, self.spec.action_space))
        return AgentOutput(commands[0], info=info, plan=tuple(commands[1:]))

    def _chunk(self, predicted: np.ndarray) -> np.ndarray:
        """(K, 7) actions of one prediction (K = 1 for a single action)."""
        actions = np.asarray(predicted, dtype=np.float64)
        chunk = actions[None] if actions.ndim == 1 else actions
        if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != ACTION_DIM:
            raise ValueError(f"the policy predicts actions of shape {actions.shape}; the {self.spec.action_space} "
                             f"action space needs {ACTION_DIM} values (or a chunk of shape (K, {ACTION_DIM}))")
        return chunk

    def _request_timeout_s(self, observation: Observation) -> float:
        """Real-time budget of this request: what is left of the action's allowed age (robot clock)."""
        if self.clock.is_simulated:
            return self.simulated_timeout_s
        return self.max_action_age_s - (self.clock.now_s() - observation.time_s)
