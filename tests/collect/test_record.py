"""The recorder in the lock-step twin, through the real control loop, drivers and Zarr store."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from collect.errors import IncompatibleStoreError, NotAStoreError, StoreNotFoundError
from collect.noop import NoopThresholds, episode_noop_mask
from collect.recorder import EpisodeRecorder
from collect.schema import recording_schema
from collect.session import RecordingAborted, RecordingSession, SessionOptions
from collect.store import EpisodeStore
from robot.factory import open_robot
from robot.runtime import AgentOutput, ControlLoop, EpisodeStatus, Event, Observation
from robot.safety import Command
from robot.scene import SceneSpec
from tests.collect.record_testing import SMALL_WRIST, Keeper, small_config


class ScriptAgent:
    """Down for a few ticks, silent (the loop holds), gripper closed and still, up, then ``end_event``."""

    def __init__(self, end_event: Event | None = Event.SAVE, silent: range = range(6, 11), ticks: int = 24) -> None:
        self.end_event, self.silent, self.ticks = end_event, silent, ticks

    def reset(self, instruction: str) -> None:
        pass

    def act(self, observation: Observation) -> AgentOutput:
        step = observation.step
        if step in self.silent:
            return AgentOutput(None)
        target = observation.arm.tcp_pose.copy()
        target[2] += -6.0 if step < 6 else (0.0 if step < 16 else 5.0)
        events = frozenset({self.end_event}) if self.end_event and step + 1 >= self.ticks else frozenset()
        return AgentOutput(Command.to_pose(target, gripper=1.0 if step < 12 else 0.0), events)


@pytest.fixture(scope="module")
def depth_config():
    return small_config(**{"camera.depth.enabled": True, "recording.record_depth": True})


@pytest.fixture(scope="module")
def robot(depth_config):
    with open_robot(depth_config, "sim", seed=5) as robot:
        yield robot


def _loop(robot, *subscribers) -> ControlLoop:
    config = robot.config
    return ControlLoop(robot, config.recording.rate_hz, config.safety.watchdog_hold_s, config.safety.watchdog_stop_s,
                       list(subscribers))


def test_episode_reads_back_equal_to_what_the_loop_produced(tmp_path, robot, depth_config):
    robot.twin.reset_scene()
    store = EpisodeStore.create(tmp_path / "demos.zarr", recording_schema(depth_config, robot.camera.intrinsics))
    recorder, keeper = EpisodeRecorder(store), Keeper()
    recorder.prepare({"object": "red_cube", "backend": "sim"})
    result = _loop(robot, recorder, keeper).run_episode(ScriptAgent(), "put the red cube into the box", 10.0)
    assert result.status == EpisodeStatus.COMPLETED and result.steps == 24
    assert recorder.last_outcome.saved and recorder.last_outcome.index == 0
    store.close()

    with EpisodeStore.open(tmp_path / "demos.zarr") as reader:
        episode = reader.read_episode(0)
        assert set(episode) == {*reader.schema.keys, "noop"} and "depth_mm" in episode
        for key in reader.schema.keys:
            expected = keeper.column(key).astype(reader.schema.keys[key].dtype)
            np.testing.assert_array_equal(episode[key], expected, err_msg=key)
        meta = reader.episode_meta(0)
    # while the loop held, the command recorded is the hold target: the measured state, flagged
    held = episode["command_held"]
    assert held.tolist() == [s.sent is None for s in keeper.steps] and held[6:11].all() and held.sum() == 5
    np.testing.assert_array_equal(episode["command_joints_rad"][held], episode["joints_rad"][held])
    # each step keeps its own delays: measured where a command went out, NaN where the arm held
    assert np.all(episode["capture_to_observation_s"] >= 0)
    assert np.isnan(episode["observation_to_command_s"]).tolist() == held.tolist()
    assert np.all(episode["observation_to_command_s"][~held] >= 0)
    # the no-op mask is the rule of collect/noop.py applied to what the loop produced
    thresholds = NoopThresholds.from_config(depth_config)
    expected_noop = episode_noop_mask(keeper.column("joints_rad"), keeper.column("command_joints_rad"),
                                      keeper.column("command_gripper"), keeper.column("gripper_state"), thresholds)
    np.testing.assert_array_equal(episode["noop"], expected_noop)
    assert 0 < episode["noop"].sum() < 24 and not episode["noop"][12]  # the gripper closes at step 12: not a no-op
    assert meta["instruction"] == "put the red cube into the box" and meta["outcome"] == "completed"
    assert meta["steps"] == 24 and meta["late_ticks"] == 0 and meta["frames"] == 24
    frame_numbers = episode["color_frame_number"]
    assert np.all(np.diff(frame_numbers) >= 0) and len(set(frame_numbers.tolist())) >= 22  # fresh frames


def test_only_completed_episodes_are_saved(tmp_path, robot, depth_config):
    robot.twin.reset_scene()
    path = tmp_path / "demos.zarr"
    store = EpisodeStore.create(path, recording_schema(depth_config, robot.camera.intrinsics))
    recorder = EpisodeRecorder(store)
    loop = _loop(robot, recorder)
    outcomes = {}
    for name, agent in (("discard", ScriptAgent(Event.DISCARD, silent=range(0), ticks=5)),
                        ("quit", ScriptAgent(Event.QUIT, silent=range(0), ticks=4)),
                        ("aborted", ScriptAgent(None, silent=range(2, 1000))),
                        ("timeout", ScriptAgent(None, silent=range(0)))):
        loop.run_episode(agent, name, max_duration_s=3.0)
        outcomes[name] = recorder.last_outcome
        assert store.num_episodes == 0 and store.num_frames == 0
    assert outcomes["discard"].status == EpisodeStatus.DISCARDED and "re-record" in outcomes["discard"].reason
    assert outcomes["quit"].status == EpisodeStatus.QUIT
    assert outcomes["aborted"].status == EpisodeStatus.ABORTED and "watchdog" in outcomes["aborted"].reason
    assert outcomes["timeout"].status == EpisodeStatus.TIMEOUT and "ran out of time" in outcomes["timeout"].reason
    assert not any(o.saved for o in outcomes.values())
    loop.run_episode(ScriptAgent(Event.DONE, silent=range(0), ticks=7), "keep", 3.0)
    assert recorder.last_outcome.saved and store.num_episodes == 1 and store.num_frames == 7
    store.close()
    with EpisodeStore.open(path) as reader:  # nothing of the unsaved episodes is visible or left on disk
        assert reader.num_frames == 7 and reader.array("color").shape[0] == 7
        assert reader.episode_meta(0)["instruction"] == "keep"


def _options(tmp_path, **kwargs) -> SessionOptions:
    values = {"backend": "sim", "teleop": "scripted", "episodes": 3, "store": tmp_path / "demos.zarr", "seed": 4}
    return SessionOptions(**{**values, **kwargs})


def test_scripted_session_metadata_balance_and_resume(tmp_path, capsys):
    config = small_config()
    summary = RecordingSession(config, _options(tmp_path)).run()
    assert (summary.saved, summary.episodes_after, summary.discarded) == (3, 3, 0)
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        metas = store.episodes_meta()
        first_three = {key: store.array(key)[:] for key in ("joints_rad", "command_tcp_pose")}
        assert summary.frames == store.num_frames
        assert summary.noop_frames == int(store.noop_mask().sum()) > 0
    assert sorted(m["object"] for m in metas) == sorted(config.scene.objects)  # cycled: one each
    for meta in metas:
        assert meta["backend"] == "sim" and meta["teleop"] == "scripted" and meta["success"] is True
        assert meta["instruction"] == config.scene.instruction_for(meta["object"])
        spec = SceneSpec.from_dict(meta["scene"])
        assert spec.object_name == meta["object"] and isinstance(meta["seed"], int)
        assert meta["duration_s"] == pytest.approx(meta["frames"] / config.recording.rate_hz, abs=0.11)
        assert meta["late_ticks"] == 0 and meta["started_at"] and meta["expert"]["peak_speed_mm_s"] > 0
        assert meta["session_seed"] == 4 and meta["rate_hz"] == config.recording.rate_hz and meta["outcome"]
        assert json.loads(json.dumps(meta)) == meta
    assert "saved 3 episodes" in summary.text()

    resumed = RecordingSession(config, _options(tmp_path, episodes=4)).run()
    assert (resumed.episodes_before, resumed.saved, resumed.episodes_after) == (3, 1, 4)
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        for key, before in first_three.items():
            np.testing.assert_array_equal(store.array(key)[: len(before)], before)
        assert store.episode_meta(3)["object"] == sorted(config.scene.objects)[0]
        assert [m["scene"] for m in store.episodes_meta()[:3]] == [m["scene"] for m in metas]
    again = RecordingSession(config, _options(tmp_path, episodes=4)).run()
    assert again.saved == 0 and "nothing to record" in capsys.readouterr().err


def test_camera_that_stops_mid_episode_aborts_and_keeps_saved_episodes(tmp_path, monkeypatch):
    from collect.episode_writer import EpisodeWriter
    from robot.sim.twin import Twin

    config = small_config()
    original_render, original_commit = Twin.render, EpisodeWriter.commit
    commits, renders_since_commit = [], []

    def commit_and_count(self, *args, **kwargs):
        commits.append(original_commit(self, *args, **kwargs))
        return commits[-1]

    def render_until_broken(self, *args, **kwargs):
        if commits:
            renders_since_commit.append(1)
        if len(renders_since_commit) > 40:  # 40 frames into the second episode
            raise RuntimeError("renderer died")
        return original_render(self, *args, **kwargs)

    monkeypatch.setattr(EpisodeWriter, "commit", commit_and_count)
    monkeypatch.setattr(Twin, "render", render_until_broken)
    with pytest.raises(RecordingAborted) as raised:
        RecordingSession(config, _options(tmp_path, episodes=3, object_name="red_cube")).run()
    message = str(raised.value)
    assert "episode 2 was aborted" in message and "CameraTimeoutError" in message
    assert "1 saved episodes" in message and "re-run the same command" in message
    with EpisodeStore.open(tmp_path / "demos.zarr") as store:
        assert store.num_episodes == 1 and store.episode_meta(0)["success"] is True
        assert store.array("color").shape[0] == store.num_frames


def _tree_digest(path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_store_from_another_configuration_is_refused_naming_the_field(tmp_path):
    EpisodeStore.create(tmp_path / "demos.zarr", recording_schema(small_config())).close()
    before = _tree_digest(tmp_path / "demos.zarr")
    wider = small_config(**{"camera.color.width": 80, "camera.color.height": 60})
    with pytest.raises(IncompatibleStoreError) as raised:
        RecordingSession(wider, _options(tmp_path, episodes=2)).run()
    assert "camera.color.width: 64 in the store, 80 now" in str(raised.value)
    assert "per-step key 'color'" in str(raised.value)
    assert _tree_digest(tmp_path / "demos.zarr") == before  # nothing touched


def test_resume_and_create_semantics(tmp_path):
    with pytest.raises(StoreNotFoundError, match="to resume"):
        RecordingSession(small_config(), _options(tmp_path, require_existing=True)).run()
    assert not (tmp_path / "demos.zarr").exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAStoreError, match=r"no zarr\.json"):
        RecordingSession(small_config(), _options(tmp_path, store=tmp_path / "plain")).run()


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "real"}, "--teleop scripted needs --backend sim"),
    ({"episodes": 0}, "--episodes must be at least 1"),
    ({"object_name": "teapot"}, "unknown object 'teapot'"),
    ({"teleop": "joystick"}, "unknown teleop 'joystick'"),
])
def test_contradictory_options_are_refused_before_anything_opens(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecordingSession(small_config(), _options(tmp_path, **kwargs))
    assert not (tmp_path / "demos.zarr").exists()


def test_the_wrist_camera_is_recorded_as_its_own_image_key_and_read_back(tmp_path):
    """cameras.wrist: a second software RealSense rendering the flange camera, recorded as wrist_color."""
    config = small_config(**SMALL_WRIST)
    schema = recording_schema(config)
    assert schema.keys["wrist_color"].shape == (48, 64, 3) and "wrist_color_timestamp_s" in schema.keys
    assert "wrist_color" not in recording_schema(small_config()).keys  # stores without it keep their keys
    with open_robot(config, "sim", seed=5) as robot:
        assert robot.wrist_camera.serial != robot.camera.serial
        robot.twin.reset_scene()
        store = EpisodeStore.create(tmp_path / "demos.zarr", recording_schema(config, robot.camera.intrinsics))
        recorder, keeper = EpisodeRecorder(store), Keeper()
        result = _loop(robot, recorder, keeper).run_episode(ScriptAgent(), "put the red cube into the box", 10.0)
        assert result.status == EpisodeStatus.COMPLETED and recorder.last_outcome.saved
        store.close()
    with EpisodeStore.open(tmp_path / "demos.zarr") as reader:
        episode = reader.read_episode(0)
        for key in ("wrist_color", "wrist_color_timestamp_s", "wrist_color_frame_number", "color"):
            np.testing.assert_array_equal(episode[key], keeper.column(key).astype(reader.schema.keys[key].dtype),
                                          err_msg=key)
    wrist, scene = episode["wrist_color"], episode["color"]
    assert len(set(episode["wrist_color_frame_number"].tolist())) >= 22  # a fresh wrist frame each tick
    # The camera rides on the flange: its view changes as the arm moves down, and it is not the scene camera's.
    assert np.abs(wrist[5].astype(int) - wrist[0].astype(int)).mean() > 1.0
    assert np.abs(wrist[0].astype(int) - scene[0].astype(int)).mean() > 10.0
    # a store recorded with the wrist camera cannot be resumed without it
    with EpisodeStore.open(tmp_path / "demos.zarr") as reader, pytest.raises(IncompatibleStoreError,
                                                                             match="wrist_color"):
        reader.check_compatible(recording_schema(small_config(), robot.camera.intrinsics))
