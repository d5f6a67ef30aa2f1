"""Policies for the real-time execution tests: answers known in advance, so a log shows what moved the arm."""

from __future__ import annotations

import numpy as np

from policy.agent import PolicyOutput, PolicySpec

STEP_MM = 3.0  # every action moves the TCP +3 mm in x (30 mm/s at 10 Hz) with the gripper open
ACTION = np.array([STEP_MM, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])


class ConstantPolicy:
    """An in-process ``policy.agent.Policy`` answering ``ACTION`` at once (``chunk`` > 1: a chunk of them)."""

    def __init__(self, chunk: int = 1) -> None:
        self.chunk = chunk
        self.calls = 0

    def describe(self) -> PolicySpec:
        return PolicySpec("ee_delta", f"constant-x{self.chunk}", "jaka_sim", chunk_size=self.chunk)

    def predict(self, images, instructions, states=None, timeout_s=None) -> PolicyOutput:
        self.calls += 1
        actions = np.tile(ACTION, (len(images), self.chunk, 1))
        return PolicyOutput(actions if self.chunk > 1 else actions[:, 0], f"constant-x{self.chunk}")

    def close(self) -> None:
        pass


class TiledChunks:
    """A remote single-action policy answering chunks: its action repeated ``chunk`` times (a stand-in for an
    OpenVLA-OFT server, so that chunk execution can meet a real server that dies)."""

    def __init__(self, policy, chunk: int) -> None:
        self.policy, self.chunk = policy, chunk

    def describe(self) -> PolicySpec:
        spec = self.policy.describe()
        return PolicySpec(spec.action_space, spec.checkpoint_id, spec.unnorm_key, spec.state_dim, spec.image_size,
                          self.chunk)

    def predict(self, images, instructions, states=None, timeout_s=None) -> PolicyOutput:
        output = self.policy.predict(images, instructions, states, timeout_s)
        return PolicyOutput(np.repeat(output.actions[:, None], self.chunk, axis=1), output.checkpoint_id,
                            output.server_timing)

    def close(self) -> None:
        self.policy.close()
