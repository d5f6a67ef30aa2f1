"""``fanvla collect info | view | merge | filter`` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from collect.store import EpisodeStore
from fanvla.cli import build_parser, main
from tests.collect.store_testing import REPO_ROOT, assert_episode_intact, record_episode, small_schema


@pytest.fixture
def demos(tmp_path):
    path = tmp_path / "demos.zarr"
    with EpisodeStore.create(path, small_schema()) as store:
        for seed, steps in enumerate([12, 8, 10]):
            record_episode(store, seed, steps)
    return path


def test_collect_is_registered():
    help_text = build_parser().format_help()
    assert "collect" in help_text


def test_info_text_and_json(demos, capsys):
    assert main(["collect", "info", str(demos)]) == 0
    text = capsys.readouterr().out
    assert "3 episodes, 30 frames (3.0 s at 10 Hz)" in text and "put the red cube into the box" in text
    assert main(["collect", "info", str(demos), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with EpisodeStore.open(demos) as store:
        noop = int(store.noop_mask().sum())
    assert (summary["episodes"], summary["frames"], summary["noop_frames"]) == (3, 30, noop)
    assert summary["noop_percent"] == round(100 * noop / 30, 2)
    assert summary["per_object"] == {"blue_prism": 1, "green_cylinder": 1, "red_cube": 1}
    assert summary["per_instruction"]["put the green cylinder into the box"] == {"episodes": 1, "frames": 8}
    assert summary["duration_s"] == 3.0 and summary["recorded_duration_s"] == 3.0


def test_info_in_a_fresh_process(demos):
    result = subprocess.run([sys.executable, "-m", "fanvla", "collect", "info", str(demos), "--json"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["frames"] == 30


def test_errors_are_one_clear_line(tmp_path, demos, capsys):
    assert main(["collect", "info", str(tmp_path / "nope.zarr")]) == 2
    assert "no episode store at" in capsys.readouterr().err
    assert main(["collect", "view", str(demos), "--episode", "7", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "episode 7 does not exist" in capsys.readouterr().err
    assert main(["collect", "filter", str(demos), "--joint-eps-rad", "-1", "--gripper-eps", "0"]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err


def test_view_writes_video_with_overlay_and_plot(demos, tmp_path, capsys):
    out = tmp_path / "views" / "ep.mp4"
    assert main(["collect", "view", str(demos), "--episode", "1", "--out", str(out)]) == 0
    assert "8 frames" in capsys.readouterr().out
    frames = [frame for frame in imageio.get_reader(out)]
    assert len(frames) == 8 and frames[0].shape == (480, 640, 3)  # 24x32 scaled up for a legible overlay
    assert frames[0][:20].mean() != frames[0][200:220].mean()  # the overlay band differs from the image
    with Image.open(out.with_suffix(".png")) as plot:
        assert plot.format == "PNG" and plot.size[0] >= 600


def test_view_shows_depth_beside_colour(tmp_path):
    path = tmp_path / "depth.zarr"
    with EpisodeStore.create(path, small_schema(record_depth=True)) as store:
        record_episode(store, 0, 3)
    assert main(["collect", "view", str(path), "--episode", "-1", "--out", str(tmp_path / "d.mp4"),
                 "--plot", str(tmp_path / "d_plot.png")]) == 0
    # colour (24x32) and depth side by side, scaled up together: twice as wide as colour alone
    assert next(iter(imageio.get_reader(tmp_path / "d.mp4"))).shape == (240, 640, 3)
    assert (tmp_path / "d_plot.png").stat().st_size > 0


def test_merge_copies_episodes_and_refuses_incompatible_stores(demos, tmp_path, capsys):
    second = tmp_path / "more.zarr"
    with EpisodeStore.create(second, small_schema()) as store:
        record_episode(store, 3, 6)
    merged = tmp_path / "all.zarr"
    assert main(["collect", "merge", str(merged), str(demos), str(second)]) == 0
    assert "4 episodes, 36 frames from 2 stores" in capsys.readouterr().out
    with EpisodeStore.open(merged) as store, EpisodeStore.open(demos) as source:
        for index, (seed, steps) in enumerate([(0, 12), (1, 8), (2, 10), (3, 6)]):
            assert_episode_intact(store, index, seed, steps)
        assert store.episode_meta(3)["merged_from"]["episode"] == 0
        assert store.raw_image_chunk("color", 5) == source.raw_image_chunk("color", 5)  # copied, not re-encoded
        np.testing.assert_array_equal(store.noop_mask()[:30], source.noop_mask())
    other = tmp_path / "other.zarr"
    with EpisodeStore.create(other, small_schema(**{"recording.rate_hz": 5.0})) as store:
        record_episode(store, 0, 3)
    assert main(["collect", "merge", str(tmp_path / "bad.zarr"), str(demos), str(other)]) == 2
    assert "recording.rate_hz: 10 in the store, 5 now" in capsys.readouterr().err
    assert main(["collect", "merge", str(merged), str(demos)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_filter_recomputes_the_mask(demos, capsys):
    assert main(["collect", "filter", str(demos), "--joint-eps-deg", "60", "--gripper-eps", "1"]) == 0
    assert "30 of 30 frames are no-ops" in capsys.readouterr().out
    with EpisodeStore.open(demos) as store:
        assert store.noop_mask().all() and store.noop_record["gripper_eps"] == 1.0
    # Thresholds not given come from hardware.yaml.
    assert main(["collect", "filter", str(demos), "--joint-eps-deg", "0"]) == 0
    assert "0 of 30 frames are no-ops" in capsys.readouterr().out
    with EpisodeStore.open(demos) as store:
        assert store.noop_record["gripper_eps"] == small_schema().noop.gripper_eps
