"""The tiny model trained on a store recorded in the twin by the real recorder (scripted teleop), per method."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.config import TrainConfig
from finetune.metrics import read_metrics
from finetune.trainer import train
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow  # records episodes in the MuJoCo twin (rendering 640 x 480 frames)

EPISODES = 4


@pytest.fixture(scope="module")
def twin_store(tmp_path_factory) -> Path:
    if importlib.util.find_spec("collect.recorder") is None:
        pytest.skip("recorder not available")
    out = tmp_path_factory.mktemp("twin") / "twin.zarr"
    command = [sys.executable, "-m", "fanvla", "collect", "record", "--backend", "sim", "--teleop", "scripted",
               "--episodes", str(EPISODES), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MUJOCO_GL": "egl", "LP_NUM_THREADS": "1"}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, f"recording failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def twin_init(twin_store, tmp_path_factory) -> Path:
    from collect.store import EpisodeStore
    from policy.tiny import build_tiny

    with EpisodeStore.open(twin_store) as store:
        assert store.num_episodes == EPISODES
        instructions = sorted({meta["instruction"] for meta in store.episodes_meta()})
    return build_tiny(tmp_path_factory.mktemp("twin_init") / "tiny", preset="test", instructions=instructions)


@pytest.mark.parametrize("method", ["fan-sft", "sft", "label-smoothing"])
def test_tiny_model_learns_from_twin_recordings(method, twin_store, twin_init, tmp_path):
    out = tmp_path / method
    result = train(TrainConfig(data=(str(twin_store),), init=str(twin_init), out=str(out), method=method, steps=60,
                               batch_size=16, full=True, lr=2e-3, val_fraction=0.25, val_every=30, save_every=0,
                               progress=False, tensorboard=False))
    train_curve = read_metrics(out / "metrics" / "train.csv")
    val_curve = read_metrics(out / "metrics" / "val.csv")
    assert train_curve["loss"][-5:].mean() < 0.8 * train_curve["loss"][:5].mean()
    assert val_curve["step"].tolist() == [0, 30, 60]
    assert val_curve["ce"][-1] < val_curve["ce"][0] - 0.5
    assert val_curve["accuracy"][-1] > val_curve["accuracy"][0] + 0.05
    assert result.model_dir.is_dir()
