"""``fanvla finetune pretrain-vision``: targets from recorded TCP/gripper columns, the stage end to end, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.vision_pretrain import TARGET_NAMES, episode_targets


def _episode(commands: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = len(commands)
    tcp = np.zeros((steps, 6))
    tcp[:, 0] = 300.0 + 10.0 * np.arange(steps)
    tcp[:, 2] = 100.0 - 5.0 * np.arange(steps)
    command = np.asarray(commands, dtype=np.float32)
    state = np.concatenate([[1.0], command[:-1]]).astype(np.float32)  # the fingers follow one step later
    return tcp, command, state


def test_targets_point_at_the_first_close_and_the_following_reopen() -> None:
    tcp, command, state = _episode([1, 1, 0, 0, 0, 1, 1, 0])
    targets = episode_targets(tcp, command, state)
    assert targets.shape == (8, len(TARGET_NAMES))
    np.testing.assert_allclose(targets[:, :3], tcp[:, :3])
    np.testing.assert_allclose(targets[:, 3:6], tcp[2, :3] - tcp[:, :3])  # grasp: step 2, the first close
    np.testing.assert_allclose(targets[:, 6:9], tcp[5, :3] - tcp[:, :3])  # release: step 5, not the later close
    # the object: at the grasp point before the grasp, in the hand while held, at the release point after
    np.testing.assert_allclose(targets[:2, 9:12], targets[:2, 3:6])
    np.testing.assert_array_equal(targets[2:5, 9:12], 0.0)
    np.testing.assert_allclose(targets[5:, 9:12], targets[5:, 6:9])
    np.testing.assert_array_equal(targets[:, 12], state < 0.5)
    assert targets[0, 3] == pytest.approx(20.0) and targets[5, 6] == 0.0


@pytest.mark.parametrize("commands", [[1, 1, 1, 1], [1, 0, 0, 0]], ids=["never-closes", "never-reopens"])
def test_episodes_without_grasp_and_release_have_no_targets(commands: list[float]) -> None:
    assert episode_targets(*_episode(commands)) is None


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fanvla", "finetune", "pretrain-vision", *argv],
                          capture_output=True, text=True, timeout=300)


def test_pretraining_learns_from_frames_and_changes_only_vision_and_projector(demo_store: Path, tiny_init: Path,
                                                                               tmp_path: Path) -> None:
    from policy.openvla import OpenVLA

    out = tmp_path / "pretrained"
    done = _run("--data", str(demo_store), "--init", str(tiny_init), "--out", str(out), "--steps", "200",
                "--batch-size", "16", "--lr", "3e-3", "--threads", "1", "--frame-cache", str(tmp_path / "frames"))
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout)["val_mean_abs_error"]
    # The synthetic store's gripper state follows the square's place in the image (store_factory): an untrained
    # head guesses 0.5 on average.
    assert errors["gripper_closed"] < 0.2, done.stderr
    before, after = OpenVLA.from_pretrained(tiny_init).state_dict(), OpenVLA.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("vision_backbone.", "projector.")) for name in changed)
    assert any(name.startswith("projector.") for name in changed)
    for name in ("tokenizer.json", "config.json", "preprocessor_config.json"):
        assert (out / name).is_file()


def test_refuses_a_non_empty_output_and_keeps_it(demo_store: Path, tiny_init: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = _run("--data", str(demo_store), "--init", str(tiny_init), "--out", str(out), "--steps", "1")
    assert done.returncode != 0
    assert "not empty" in done.stderr
    assert (out / "notes.txt").read_text() == "mine"
