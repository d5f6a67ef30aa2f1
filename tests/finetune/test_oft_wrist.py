"""The wrist camera end to end: recorded in the twin, trained on by ``--model oft --wrist --proprio``, served, and
sent by the runner with every request (what the chunk policy predicted is what it predicts from the logged views)."""

from __future__ import annotations

import numpy as np
import pytest

from collect.session import RecordingSession, SessionOptions
from collect.store import EpisodeStore
from finetune.config import TrainConfig
from finetune.trainer import train
from tests.collect.record_testing import SMALL_WRIST, small_config

CHUNK = 4


@pytest.fixture(scope="module")
def wrist_config():
    return small_config(**SMALL_WRIST)


@pytest.fixture(scope="module")
def wrist_store(wrist_config, tmp_path_factory):
    path = tmp_path_factory.mktemp("wrist") / "demos.zarr"
    options = SessionOptions(backend="sim", teleop="scripted", episodes=2, store=path, seed=4)
    assert RecordingSession(wrist_config, options).run().saved == 2
    return path


@pytest.fixture(scope="module")
def wrist_policy(wrist_config, wrist_store, tmp_path_factory):
    from policy.tiny import build_tiny

    root = tmp_path_factory.mktemp("wrist-run")
    instructions = [wrist_config.scene.instruction_for(name) for name in sorted(wrist_config.scene.objects)]
    init = build_tiny(root / "init", preset="test", seed=0, instructions=instructions)
    config = TrainConfig(data=(str(wrist_store),), init=str(init), out=str(root / "run"), steps=3, batch_size=4,
                         full=True, lr=1e-3, val_fraction=0.0, val_every=0, save_every=0, progress=False,
                         tensorboard=False, model="oft", chunk=CHUNK, proprio=True, wrist=True)
    return train(config).model_dir


def test_a_wrist_run_trains_on_the_recorded_wrist_frames(wrist_policy, wrist_store):
    from policy.openvla import OpenVLA

    model = OpenVLA.from_pretrained(wrist_policy)
    assert model.oft.uses_wrist and model.oft.use_proprio and model.oft.chunk_size == CHUNK
    with EpisodeStore.open(wrist_store) as store:
        episode = store.read_episode(0)
    state = np.concatenate([episode["joints_rad"][0], episode["tcp_pose"][0], [episode["gripper_state"][0]]])
    views = dict(images=[episode["color"][0]], instructions=[store.episode_meta(0)["instruction"]], states=[state])
    with_wrist = model.predict_action(**views, wrist_images=[episode["wrist_color"][0]])
    other_wrist = model.predict_action(**views, wrist_images=[episode["wrist_color"][-1]])
    assert with_wrist.actions.shape == (1, CHUNK, 7)
    assert np.abs(with_wrist.bin_probs - other_wrist.bin_probs).max() > 1e-6  # the wrist view is read


def test_the_runner_sends_the_wrist_frame_with_every_request(wrist_policy, wrist_config, tmp_path):
    from policy.client import PolicyClient, PolicyRequestError
    from policy.inference import InferenceEngine
    from policy.runner import ClosedLoopRunner
    from policy.step_log import step_log_schema
    from robot.execution import ExecutionConfig, ExecutionMode
    from robot.factory import open_robot
    from robot.runtime import EpisodeStatus
    from tests.policy.server_testing import running_server

    engine = InferenceEngine.load(wrist_policy, threads=1)
    instruction = wrist_config.scene.instruction_for("red_cube")
    execution = ExecutionConfig(ExecutionMode.CHUNK, open_loop_steps=CHUNK)
    with open_robot(wrist_config, "sim", seed=5) as robot, running_server(engine) as server, \
            PolicyClient(server.url, timeout_s=30) as client:
        assert client.metadata()["inputs"] == {"state": True, "wrist_image": True}
        with pytest.raises(PolicyRequestError, match="wrist camera"):
            client.act(np.zeros((48, 64, 3), np.uint8), instruction, np.zeros(13))
        from policy.agent import RemotePolicy

        robot.twin.reset_scene()
        store = EpisodeStore.open_or_create(tmp_path / "log.zarr",
                                            step_log_schema(robot.config, robot.camera.intrinsics))
        runner = ClosedLoopRunner(robot, RemotePolicy(client), step_log=store, execution=execution)
        result = runner.run_episode(instruction, max_duration_s=1.2)
        store.close()
    assert result.status == EpisodeStatus.TIMEOUT and result.steps == 12
    episode = EpisodeStore.open(tmp_path / "log.zarr").read_episode(0)
    assert episode["exec_chunk_index"].tolist() == [i % CHUNK for i in range(12)]
    for source in (0, CHUNK):  # each chunk is what the model predicts from that tick's logged views and state
        state = np.concatenate([episode["joints_rad"][source], episode["tcp_pose"][source],
                                [episode["gripper_state"][source]]])
        expected = engine.predict([episode["color"][source]], [instruction], states=[state],
                                  wrist_images=[episode["wrist_color"][source]]).actions[0]
        np.testing.assert_allclose(episode["action"][source:source + CHUNK], expected, atol=1e-9)
