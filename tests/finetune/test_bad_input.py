"""Bad input is refused with a clear message before any training step (and nothing is overwritten)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from finetune.config import FinetuneError, TrainConfig
from finetune.trainer import train
from tests.finetune.store_factory import empty_store, write_store


def _config(store: Path, init: Path, out: Path, **changes) -> TrainConfig:
    base = {"data": (str(store),), "init": str(init), "out": str(out), "steps": 2, "batch_size": 4, "full": True,
            "progress": False, "tensorboard": False, "val_every": 0, "save_every": 0}
    return TrainConfig(**{**base, **changes})


def _nothing_trained(out: Path) -> bool:
    return not (out / "metrics").exists() and not (out / "checkpoints").exists() and not (out / "final").exists()


def test_empty_store(tmp_path, tiny_init):
    store = empty_store(tmp_path / "empty.zarr")
    with pytest.raises(FinetuneError, match=r"empty\.zarr has no saved episodes: record demonstrations"):
        train(_config(store, tiny_init, tmp_path / "run"))
    assert _nothing_trained(tmp_path / "run")


def test_only_noop_frames(tmp_path, tiny_init):
    store = write_store(tmp_path / "still.zarr", episodes=2, steps=5, still=True)
    with pytest.raises(FinetuneError, match=r"no-op step.*--no-skip-noops"):
        train(_config(store, tiny_init, tmp_path / "run"))
    assert _nothing_trained(tmp_path / "run")


def test_action_dimension_mismatch_with_the_model(tmp_path, demo_store):
    from policy.normalization import ActionStats, DatasetStatistics
    from policy.tiny import build_tiny
    from tests.finetune.store_factory import INSTRUCTIONS

    six = ActionStats(q01=-np.ones(6), q99=np.ones(6), mask=np.ones(6, bool), mean=np.zeros(6), std=np.ones(6),
                      min=-np.ones(6), max=np.ones(6))
    init = build_tiny(tmp_path / "six", preset="test", instructions=INSTRUCTIONS,
                      norm_stats={"six_dof": DatasetStatistics(action=six)})
    with pytest.raises(FinetuneError, match=r"action dimension mismatch: .* 6-D actions .* has 7"):
        train(_config(demo_store, init, tmp_path / "run"))
    assert _nothing_trained(tmp_path / "run")


def test_unknown_method_is_refused_before_touching_anything(tmp_path, demo_store, tiny_init):
    with pytest.raises(FinetuneError, match="--method 'dpo' is unknown; choose one of sft, fan-sft, label-smoothing"):
        train(_config(demo_store, tiny_init, tmp_path / "run", method="dpo"))
    assert not (tmp_path / "run").exists()


def test_several_bad_options_are_listed_together(tmp_path, demo_store, tiny_init):
    with pytest.raises(FinetuneError) as error:
        train(_config(demo_store, tiny_init, tmp_path / "run", steps=0, alpha=-1.0, action_space="cartesian"))
    message = str(error.value)
    assert "--steps must be >= 1" in message and "--alpha must be >= 0" in message
    assert "--action-space 'cartesian' is unknown; choose one of ee_delta, joint_delta" in message


def test_unencodable_instruction_and_missing_model(tmp_path, tiny_init):
    store = write_store(tmp_path / "umlaut.zarr", episodes=2, steps=4, instructions=("put the cube in the böx",))
    with pytest.raises(FinetuneError, match="cannot encode the instruction 'put the cube in the böx'"):
        train(_config(store, tiny_init, tmp_path / "run"))
    with pytest.raises(FinetuneError, match=r"--init .*nowhere: not a directory"):
        train(_config(store, tmp_path / "nowhere", tmp_path / "run2"))


def test_existing_run_needs_resume_and_resume_needs_the_same_arithmetic(tmp_path, demo_store, tiny_init):
    out = tmp_path / "run"
    train(_config(demo_store, tiny_init, out, steps=2, save_every=1))
    with pytest.raises(FinetuneError, match="already holds a finetuning run; pass --resume"):
        train(_config(demo_store, tiny_init, out, steps=2))
    with pytest.raises(FinetuneError, match=r"cannot resume .*method: 'fan-sft' in the saved run, 'sft' now"):
        train(_config(demo_store, tiny_init, out, steps=4, resume=True, method="sft"))
    with pytest.raises(FinetuneError, match=r"batch per micro-step: 4 samples in the saved run, 8 now"):
        train(_config(demo_store, tiny_init, out, steps=4, resume=True, batch_size=8))
