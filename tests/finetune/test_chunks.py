"""OpenVLA-OFT finetuning: chunk targets and their padding, the per-position losses, a run to a chunk policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune import distributed
from finetune.chunks import chunk_rows, chunk_targets
from finetune.config import FinetuneError, TrainConfig
from finetune.data import SampleTable, load_training_data
from finetune.losses import action_token_ids_in_bin_order, compute_loss, fan_sft_regularizer
from finetune.metrics import read_metrics
from finetune.model_setup import load_initial_model
from finetune.trainer import train
from tests.finetune.store_factory import INSTRUCTIONS


def _table(episode_lengths: list[int]) -> SampleTable:
    episode = np.concatenate([np.full(n, e) for e, n in enumerate(episode_lengths)])
    frame = np.concatenate([np.arange(n) * 2 for n in episode_lengths])  # no-op frames skipped in between
    actions = np.arange(len(episode) * 7, dtype=np.float64).reshape(-1, 7)
    zeros = np.zeros(len(episode), dtype=np.int64)
    return SampleTable(zeros, frame, episode, zeros, actions)


def test_a_chunk_is_the_next_k_samples_of_the_episode_padded_with_its_final_action():
    table = _table([5, 3, 1])
    rows = chunk_rows(table, 4)
    assert rows.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 4], [3, 4, 4, 4], [4, 4, 4, 4],
                             [5, 6, 7, 7], [6, 7, 7, 7], [7, 7, 7, 7], [8, 8, 8, 8]]
    targets = chunk_targets(table, 4)
    assert targets.actions.shape == (9, 4, 7)
    np.testing.assert_array_equal(targets.actions[2, 3], table.actions[4])  # episode 0's final action, repeated
    np.testing.assert_array_equal(targets.actions[6], table.actions[[6, 7, 7, 7]])
    assert targets.padded.tolist()[2] == [False, False, False, True]
    assert targets.padded.tolist()[5] == [False, False, False, True]
    assert targets.padded[8].tolist() == [False] + [True] * 3
    assert targets.padded.sum() == 1 + 2 + 3 + 1 + 2 + 3 + 3
    assert chunk_rows(table, 1).tolist() == [[i] for i in range(9)]  # K = 1: OpenVLA's samples


def test_samples_out_of_episode_order_are_refused():
    table = _table([3, 3])
    shuffled = table.subset(np.array([0, 1, 3, 2, 4, 5]))
    with pytest.raises(FinetuneError, match="ordered by episode"):
        chunk_rows(shuffled, 2)
    with pytest.raises(FinetuneError, match="chunk"):
        chunk_rows(table, 0)


def _config(store: Path, init: Path, out: Path, **changes) -> TrainConfig:
    base = {"data": (str(store),), "init": str(init), "out": str(out), "steps": 40, "batch_size": 8, "full": True,
            "lr": 2e-3, "val_fraction": 0.34, "val_every": 20, "save_every": 0, "progress": False,
            "tensorboard": False, "model": "oft", "chunk": 3, "proprio": True}
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("method", ["fan-sft", "sft"])
def test_an_oft_run_learns_and_exports_a_chunk_policy(method, demo_store, tiny_init, tmp_path):
    from policy.oft import OpenVLAOFT
    from policy.openvla import OpenVLA

    result = train(_config(demo_store, tiny_init, tmp_path / "run", method=method))
    train_curve = read_metrics(tmp_path / "run" / "metrics" / "train.csv")
    val_curve = read_metrics(tmp_path / "run" / "metrics" / "val.csv")
    assert train_curve["loss"][-5:].mean() < 0.8 * train_curve["loss"][:5].mean()
    assert val_curve["accuracy"][-1] > val_curve["accuracy"][0] + 0.1
    if method == "fan-sft":  # the same regulariser, per position: reg = alpha * mean KL over all K x 7 positions
        np.testing.assert_allclose(train_curve["reg"], 0.05 * train_curve["fan_kl"], rtol=1e-4, atol=1e-7)
    for name in ("l1_dx_mm", "accuracy_gripper", "entropy_nats_dx", "spread_bins_gripper"):  # per action dimension
        assert np.isfinite(val_curve[name]).all(), name
    model = OpenVLA.from_pretrained(result.model_dir)
    assert isinstance(model, OpenVLAOFT) and model.oft.chunk_size == 3 and model.oft.use_proprio
    statistics = model.norm_stats["demos"]
    assert statistics.proprio.dim == 13 and statistics.action.dim == 7
    document = json.loads((result.model_dir / "fanvla.json").read_text())
    assert document["state_dim"] == 13 and document["chunk_size"] == 3 and document["oft"]["use_proprio"]
    image = np.full((48, 64, 3), 120, dtype=np.uint8)
    prediction = model.predict_action([image], INSTRUCTIONS[:1], center_crop=True, states=[np.zeros(13)])
    assert prediction.actions.shape == (1, 3, 7) and np.isfinite(prediction.actions).all()


def test_every_loss_acts_per_position_on_the_k_times_7_action_tokens(demo_store, tiny_init, tmp_path):
    """A chunk batch through the run's loss step gives exactly ``finetune.losses`` on the n = K x 7 rows that
    predict the action tokens (plus EOS for the cross-entropy): FAN-SFT's regulariser is the mean of the per-position
    KL, each position's computed alone."""
    from finetune.model_kind import ActionChunks
    from finetune.trainer import _Run, resolve_device

    config = _config(demo_store, tiny_init, tmp_path / "run", method="fan-sft", augment=False).with_defaults()
    run = _Run(config, distributed.context_from_env(), resolve_device("cpu"))

    data = load_training_data(config.data, config.action_space, config.val_fraction)
    kind = ActionChunks(config)
    model = kind.prepare_model(load_initial_model(config, torch.device("cpu"), run.held), data)
    run.kind = kind
    prepared = run._prepare(model, data)
    batch = prepared.builder_train.evaluation_batch(np.arange(4))
    n = 3 * 7
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != -100).sum(dim=1).tolist() == [n + 1] * 4
    step = kind.loss_step(model, config, data, torch.device("cpu"), False)
    result = step(model.eval(), batch)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"],
                       proprio=batch["proprio"], logits_to_keep=n + 2).logits
    labels = batch["labels"][:, -(n + 2):]
    ids = action_token_ids_in_bin_order(model.action_tokenizer)
    expected = compute_loss("fan-sft", logits, labels, ids)
    torch.testing.assert_close(result.loss.total, expected.total)
    per_position = torch.stack([fan_sft_regularizer(logits[:, j, ids]) for j in range(n)])
    # (reg = total - ce in float32: cancellation leaves ~1e-7 of the ~2.5 total)
    torch.testing.assert_close(result.loss.reg, 0.05 * per_position.mean(), rtol=0, atol=1e-6)


def test_lora_trains_the_new_proprio_projector_in_full_and_merges_it(demo_store, tiny_init, tmp_path):
    from safetensors.torch import load_file

    from policy.oft import OFTSettings, to_oft
    from policy.openvla import OpenVLA

    result = train(_config(demo_store, tiny_init, tmp_path / "run", full=False, lora_rank=4, steps=4, val_every=0,
                           lr=5e-3))
    adapter = json.loads((result.model_dir / "lora_adapter" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["proprio_projector"]
    assert not any(name.startswith("proprio_projector") for name in adapter["target_modules"])
    initial = to_oft(OpenVLA.from_pretrained(tiny_init), OFTSettings(chunk_size=3, use_proprio=True), seed=0)
    trained = load_file(str(result.model_dir / "model.safetensors"))
    assert not torch.equal(trained["proprio_projector.fc2.weight"], initial.proprio_projector.fc2.weight)
    assert trained["proprio_projector.fc1.weight"].shape == (64, 13)


def test_oft_options_are_checked(demo_store, tiny_init, tmp_path):
    with pytest.raises(FinetuneError, match="--model oft"):
        train(_config(demo_store, tiny_init, tmp_path / "a", model="openvla"))
    with pytest.raises(FinetuneError, match="--chunk"):
        train(_config(demo_store, tiny_init, tmp_path / "b", chunk=0))
    with pytest.raises(FinetuneError, match="wrist_color"):
        train(_config(demo_store, tiny_init, tmp_path / "c", wrist=True, steps=1))
