"""OpenVLA-OFT behind the real server: chunks in the same envelope, the robot state required, the runner executing
chunks open loop in the twin with every command's chunk and index logged."""

from __future__ import annotations

import numpy as np
import pytest

from collect.store import EpisodeStore
from policy.agent import LocalPolicy, RemotePolicy
from policy.client import PolicyClient, PolicyRequestError
from policy.inference import InferenceEngine
from policy.runner import ClosedLoopRunner
from policy.step_log import step_log_schema
from robot.execution import ExecutionConfig, ExecutionMode
from robot.factory import open_robot
from robot.runtime import EpisodeStatus
from tests.policy.server_testing import GENTLE_STATS, INSTRUCTION, rgb, running_server

CHUNK = 8
# The robot state of the twin lies well inside these: joints (rad), TCP (mm, rad), gripper opening.
PROPRIO_LOW = [-3.2] * 6 + [0.0, -400.0, -50.0, -3.2, -3.2, -3.2] + [0.0]
PROPRIO_HIGH = [3.2] * 6 + [500.0, 400.0, 500.0, 3.2, 3.2, 3.2] + [1.0]
PROPRIO_STATS = {"q01": PROPRIO_LOW, "q99": PROPRIO_HIGH, "mean": [0.0] * 13, "std": [1.0] * 13,
                 "min": PROPRIO_LOW, "max": PROPRIO_HIGH}


@pytest.fixture(scope="module")
def oft_engine(tmp_path_factory):
    from policy.tiny import build_tiny

    model_dir = build_tiny(tmp_path_factory.mktemp("oft") / "oft", preset="test-oft", seed=3,
                           norm_stats={"jaka_sim": {"action": GENTLE_STATS, "proprio": PROPRIO_STATS}})
    return InferenceEngine.load(model_dir, threads=1)


STATE = np.array([0.0, -0.26, -1.22, 0.0, -1.66, 0.0, 264.0, -6.0, 129.0, 3.14, 0.0, 0.0, 1.0])


def test_the_server_answers_a_chunk_in_the_same_envelope(oft_engine):
    with running_server(oft_engine) as server, PolicyClient(server.url, timeout_s=30) as client:
        metadata = client.metadata()
        assert metadata["chunk_size"] == CHUNK and metadata["inputs"] == {"state": True, "wrist_image": False}
        assert metadata["state_dim"] == 13 and metadata["limits"]["requires_state"] is True
        reply = client.act(rgb(), INSTRUCTION, STATE, return_probs=True)
        assert reply.action.shape == (CHUNK, 7) and reply.bin_probs.shape == (1, CHUNK, 7, 256)
        expected = oft_engine.predict([rgb()], [INSTRUCTION], states=[STATE])
        np.testing.assert_array_equal(reply.action, expected.actions[0])
        batch = client.act_batch([rgb(), rgb(seed=1)], [INSTRUCTION, "lift"], [STATE, STATE])
        assert batch.actions.shape == (2, CHUNK, 7)
        np.testing.assert_array_equal(batch.actions[0], reply.action)
        # upstream's json_numpy clients get the (K, 7) array, with the state added to their request
        upstream = client.act_upstream(rgb(), INSTRUCTION, state=STATE)
        assert upstream.shape == (CHUNK, 7)
        np.testing.assert_array_equal(upstream, reply.action)
        with pytest.raises(PolicyRequestError) as missing:
            client.act(rgb(), INSTRUCTION)
        assert missing.value.status == 400 and missing.value.field == "observation.state"
        with pytest.raises(PolicyRequestError) as wrist:
            client.act(rgb(), INSTRUCTION, STATE, wrist_image=rgb())
        assert wrist.value.field == "observation.wrist_image" and "one camera" in wrist.value.message
        with pytest.raises(PolicyRequestError) as short:
            client.act(rgb(), INSTRUCTION, STATE[:7])
        assert short.value.field == "observation.state" and "13" in short.value.message


@pytest.fixture()
def robot(hardware_config):
    with open_robot(hardware_config, "sim", seed=5) as robot:
        robot.twin.reset_scene()
        yield robot


class CountingPolicy(RemotePolicy):
    def __init__(self, client) -> None:
        super().__init__(client)
        self.calls, self.states = 0, []

    def predict(self, images, instructions, states=None, timeout_s=None, **inputs):
        self.calls += 1
        self.states.append(states)
        return super().predict(images, instructions, states, timeout_s, **inputs)


def test_the_runner_executes_each_chunk_open_loop_and_logs_its_source_and_index(oft_engine, robot, tmp_path):
    store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config, robot.camera.intrinsics))
    execution = ExecutionConfig(ExecutionMode.CHUNK, open_loop_steps=CHUNK)
    with running_server(oft_engine) as server, PolicyClient(server.url, timeout_s=30) as client:
        policy = CountingPolicy(client)
        runner = ClosedLoopRunner(robot, policy, step_log=store, execution=execution)
        result = runner.run_episode(INSTRUCTION, max_duration_s=2.0)
    assert result.status == EpisodeStatus.TIMEOUT and result.steps == 20
    assert policy.calls == 3  # one request per K = 8 ticks: steps 0, 8 and 16
    assert all(states is not None and states[0].shape == (13,) for states in policy.states)  # the state was sent
    store.close()
    episode = EpisodeStore.open(tmp_path / "log.zarr").read_episode(0)
    assert episode["command_sent"].all()  # a chunk's steps are fresh for the watchdog, one per tick
    assert episode["exec_chunk_index"].tolist() == [i % CHUNK for i in range(20)]
    assert episode["exec_source_step"].tolist() == [CHUNK * (i // CHUNK) for i in range(20)]
    # Each tick's logged action is that step of its chunk, as the model predicts it for the source observation.
    first = oft_engine.predict([episode["color"][0]], [INSTRUCTION],
                               states=[np.concatenate([episode["joints_rad"][0], episode["tcp_pose"][0],
                                                       [episode["gripper_state"][0]]])]).actions[0]
    np.testing.assert_allclose(episode["action"][:CHUNK], first, atol=1e-9)


def test_an_in_process_chunk_policy_describes_itself(oft_engine):
    spec = LocalPolicy(oft_engine).describe()
    assert spec.chunk_size == CHUNK and spec.needs_state and not spec.needs_wrist and spec.state_dim == 13


def test_temporal_ensembling_logs_the_mean_of_every_chunk_planned_for_the_tick(oft_engine, robot, tmp_path):
    store = EpisodeStore.open_or_create(tmp_path / "log.zarr", step_log_schema(robot.config, robot.camera.intrinsics))
    execution = ExecutionConfig(ExecutionMode.CHUNK, ensemble_decay=0.0)
    with running_server(oft_engine) as server, PolicyClient(server.url, timeout_s=30) as client:
        policy = CountingPolicy(client)
        result = ClosedLoopRunner(robot, policy, step_log=store, execution=execution).run_episode(
            INSTRUCTION, max_duration_s=1.0)
    store.close()
    assert result.steps == 10 and policy.calls == 10  # lock-step: asked every tick
    episode = EpisodeStore.open(tmp_path / "log.zarr").read_episode(0)
    chunks = [oft_engine.predict([episode["color"][s]], [INSTRUCTION],
                                 states=[np.concatenate([episode["joints_rad"][s], episode["tcp_pose"][s],
                                                         [episode["gripper_state"][s]]])]).actions[0]
              for s in range(10)]
    for tick in range(10):  # the chunks of ticks tick-7 .. tick, each at its step for this tick, averaged alike
        planned = [chunks[s][tick - s] for s in range(max(0, tick - CHUNK + 1), tick + 1)]
        np.testing.assert_allclose(episode["action"][tick], np.mean(planned, axis=0), atol=1e-9)
    assert episode["command_sent"].all()
