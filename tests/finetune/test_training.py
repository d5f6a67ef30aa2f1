"""Training runs of the tiny 'test' model on a small store: learning, reproducibility, resume, the final policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from finetune.checkpointing import list_checkpoints
from finetune.config import TrainConfig
from finetune.metrics import read_metrics
from finetune.trainer import train
from tests.finetune.store_factory import INSTRUCTIONS


def _config(store: Path, init: Path, out: Path, **changes) -> TrainConfig:
    base = {"data": (str(store),), "init": str(init), "out": str(out), "steps": 40, "batch_size": 8, "full": True,
            "lr": 2e-3, "val_fraction": 0.34, "val_every": 20, "save_every": 0, "progress": False,
            "tensorboard": False}
    return TrainConfig(**{**base, **changes})


def _curves(run: Path) -> tuple[dict, dict]:
    return read_metrics(run / "metrics" / "train.csv"), read_metrics(run / "metrics" / "val.csv")


@pytest.mark.parametrize("method", ["fan-sft", "sft", "label-smoothing"])
def test_loss_falls_and_validation_accuracy_rises(method, demo_store, tiny_init, tmp_path):
    result = train(_config(demo_store, tiny_init, tmp_path / "run", method=method))
    train_curve, val_curve = _curves(tmp_path / "run")
    assert len(train_curve["step"]) == 40 and val_curve["step"].tolist() == [0, 20, 40]
    assert train_curve["loss"][-5:].mean() < 0.8 * train_curve["loss"][:5].mean()
    assert val_curve["ce"][-1] < val_curve["ce"][0] - 0.5
    assert val_curve["accuracy"][-1] > val_curve["accuracy"][0] + 0.1
    if method == "fan-sft":
        np.testing.assert_allclose(train_curve["reg"], 0.05 * train_curve["fan_kl"], rtol=1e-4, atol=1e-7)
    elif method == "sft":
        assert (train_curve["reg"] == 0).all() and (train_curve["fan_kl"] > 0).all()
    else:
        assert (train_curve["reg"] > 0).any()
    assert result.val_metrics["accuracy"] == pytest.approx(val_curve["accuracy"][-1], rel=1e-5)
    for name in ("l1_dx_mm", "l1_drz_rad", "l1_gripper_opening", "entropy_nats_dx", "spread_bins_gripper",
                 "mode_prob_dz"):
        assert np.isfinite(val_curve[name]).all(), name
    assert not (tmp_path / "run" / "frame_cache").exists()  # the default cache is removed after the run


def test_final_directory_is_a_self_contained_policy(demo_store, tiny_init, tmp_path):
    from policy.deployment import resolve_deployment, weights_fingerprint
    from policy.openvla import OpenVLA

    result = train(_config(demo_store, tiny_init, tmp_path / "run", steps=6, val_every=3, method="sft"))
    final = result.model_dir
    assert final == tmp_path / "run" / "final"
    document = json.loads((final / "fanvla.json").read_text())
    assert document["action_space"]["name"] == "ee_delta" and document["center_crop"] is True
    assert document["unnorm_key"] == "demos" and document["method"] == "sft"
    assert document["training_config"]["steps"] == 6 and document["data"]["train_episodes"] == 4
    assert document["fingerprints"]["weights"] == weights_fingerprint(final)[0] == result.weights_fingerprint
    assert document["fingerprints"]["data"] == f"sha256:{result.data_fingerprint}"
    model = OpenVLA.from_pretrained(final)
    assert list(model.norm_stats) == ["demos"]
    assert model.norm_stats["demos"].action.mask.tolist() == [True] * 6 + [False]
    trained = load_file(str(final / "model.safetensors"))
    initial = load_file(str(tiny_init / "model.safetensors"))
    assert not torch.equal(trained["projector.fc1.weight"], initial["projector.fc1.weight"])
    deployment = resolve_deployment(final, list(model.norm_stats), {"demos": 7})
    assert deployment.center_crop and deployment.unnorm_key == "demos" and deployment.source == "fanvla.json"
    image = np.full((48, 64, 3), 120, dtype=np.uint8)
    prediction = model.predict_action(image, INSTRUCTIONS[0], center_crop=True)
    assert prediction.actions.shape == (1, 7) and np.isfinite(prediction.actions).all()
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["config"]["method"] == "sft" and config["world_size"] == 1


def test_same_seed_same_curve_and_resume_gives_the_uninterrupted_result(demo_store, tiny_init, tmp_path):
    common = {"steps": 8, "val_every": 4, "save_every": 4, "keep_checkpoints": 2, "method": "fan-sft"}
    first = train(_config(demo_store, tiny_init, tmp_path / "a", **common))
    second = train(_config(demo_store, tiny_init, tmp_path / "b", **common))
    curve_a, curve_b = _curves(tmp_path / "a")[0], _curves(tmp_path / "b")[0]
    np.testing.assert_array_equal(curve_a["loss"], curve_b["loss"])
    assert first.weights_fingerprint == second.weights_fingerprint
    other_seed = train(_config(demo_store, tiny_init, tmp_path / "c", seed=1, **common))
    assert not np.array_equal(_curves(tmp_path / "c")[0]["loss"], curve_a["loss"])
    assert other_seed.weights_fingerprint != first.weights_fingerprint

    # Interrupted after step 4: the last checkpoint and the final directory never happened.
    shutil.copytree(tmp_path / "a", tmp_path / "d")
    assert [p.name for p in list_checkpoints(tmp_path / "d")] == ["step-00000004", "step-00000008"]
    shutil.rmtree(tmp_path / "d" / "checkpoints" / "step-00000008")
    shutil.rmtree(tmp_path / "d" / "final")
    resumed = train(_config(demo_store, tiny_init, tmp_path / "d", resume=True, **common))
    assert resumed.resumed_from_step == 4
    final_a = load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    final_d = load_file(str(tmp_path / "d" / "final" / "model.safetensors"))
    assert all(torch.equal(final_a[name], final_d[name]) for name in final_a)
    np.testing.assert_array_equal(_curves(tmp_path / "d")[0]["loss"], curve_a["loss"])
    np.testing.assert_array_equal(_curves(tmp_path / "d")[1]["step"], [0, 4, 8])


def test_lora_merges_into_the_final_weights_and_keeps_the_adapter(demo_store, tiny_init, tmp_path):
    from peft import PeftModel

    from policy.openvla import OpenVLA

    result = train(_config(demo_store, tiny_init, tmp_path / "run", full=False, lora_rank=4, steps=6, val_every=0,
                           lr=5e-3))
    adapter = result.model_dir / "lora_adapter"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 4
    assert "language_model.lm_head" not in adapter_config["target_modules"]
    merged = OpenVLA.from_pretrained(result.model_dir)
    base = OpenVLA.from_pretrained(tiny_init)
    with_adapter = PeftModel.from_pretrained(base, str(adapter))
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    pixels = torch.randn(1, 6, 56, 56)
    with torch.no_grad():
        expected = with_adapter(input_ids=ids, pixel_values=pixels).logits
        got = merged(input_ids=ids, pixel_values=pixels).logits
        untrained = OpenVLA.from_pretrained(tiny_init)(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (got - untrained).abs().max() > 1e-3
    document = json.loads((result.model_dir / "fanvla.json").read_text())
    assert document["finetuning"] == {"lora_rank": 4, "lora_alpha": 4.0, "merged": True, "adapter": "lora_adapter"}


@pytest.mark.parametrize("full", [True, False])
def test_freeze_vision_keeps_the_towers_and_trains_the_rest(full, demo_store, tiny_init, tmp_path):
    changes = {"full": True} if full else {"full": False, "lora_rank": 4, "lr": 5e-3}
    result = train(_config(demo_store, tiny_init, tmp_path / "run", steps=6, val_every=0, freeze_vision=True,
                           **changes))
    before = load_file(str(tiny_init / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    towers = [name for name in before if name.startswith("vision_backbone.")]
    rest = [name for name in before if not name.startswith("vision_backbone.")]
    assert towers and all(torch.equal(before[name], after[name]) for name in towers)
    changed = [name for name in rest if not torch.equal(before[name], after[name])]
    assert any(name.startswith("projector.") for name in changed)
    assert any(name.startswith("language_model.") for name in changed)
    if not full:
        adapter = json.loads((result.model_dir / "lora_adapter" / "adapter_config.json").read_text())
        assert not any("vision_backbone" in name for name in adapter["target_modules"])


def test_frozen_towers_features_computed_once_train_as_the_towers_would(demo_store, tiny_init, tmp_path, monkeypatch,
                                                                        caplog):
    import finetune.trainer

    common = {"steps": 4, "val_every": 2, "method": "fan-sft", "freeze_vision": True, "augment": False}
    with caplog.at_level("INFO", logger="finetune.trainer"):
        cached = train(_config(demo_store, tiny_init, tmp_path / "cached", **common))
    assert "patch features computed once per frame" in caplog.text
    # A memory limit of 0 bytes: the same run with the frozen towers run at every step.
    monkeypatch.setattr(finetune.trainer, "fits_in_memory", lambda *args: (False, 1))
    caplog.clear()
    with caplog.at_level("INFO", logger="finetune.trainer"):
        live = train(_config(demo_store, tiny_init, tmp_path / "live", **common))
    assert "the towers run at every step" in caplog.text
    for curve_cached, curve_live in zip(_curves(tmp_path / "cached"), _curves(tmp_path / "live"), strict=True):
        np.testing.assert_allclose(curve_cached["loss"], curve_live["loss"], rtol=1e-5)
    one, two = (load_file(str(r.model_dir / "model.safetensors")) for r in (cached, live))
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-5, msg=name)


def test_patch_features_given_to_the_model_equal_its_own_towers(tiny_init):
    from finetune.features import compute_patch_features
    from policy.openvla import OpenVLA

    model = OpenVLA.from_pretrained(tiny_init)
    size = model.image_settings.image_size
    frames = np.random.default_rng(0).integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
    features = compute_patch_features(model, frames, size, batch_size=2)
    ids = torch.tensor([[1, 5, 6, 7]] * 3)
    with torch.no_grad():
        from finetune.augment import normalize_pixels, to_unit_float

        expected = model(input_ids=ids, pixel_values=normalize_pixels(to_unit_float(frames), model.image_settings))
        got = model(input_ids=ids, patch_features=torch.from_numpy(features))
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="either pixel_values"):
        model(input_ids=ids)


def test_gradient_accumulation_equals_the_bigger_batch(demo_store, tiny_init, tmp_path):
    common = {"steps": 3, "val_every": 0, "method": "fan-sft"}
    big = train(_config(demo_store, tiny_init, tmp_path / "big", batch_size=8, **common))
    accumulated = train(_config(demo_store, tiny_init, tmp_path / "acc", batch_size=4, grad_accum=2, **common))
    np.testing.assert_allclose(_curves(tmp_path / "acc")[0]["loss"], _curves(tmp_path / "big")[0]["loss"], rtol=1e-5)
    one, two = (load_file(str(r.model_dir / "model.safetensors")) for r in (big, accumulated))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-4, rtol=1e-4, msg=name)


def test_bf16_autocast_without_a_validation_split_and_a_shared_frame_cache(demo_store, tiny_init, tmp_path):
    cache = tmp_path / "frames"
    result = train(_config(demo_store, tiny_init, tmp_path / "run", steps=3, precision="bf16", val_fraction=0.0,
                           frame_cache=str(cache)))
    assert np.isfinite(result.train_metrics["loss"]) and result.val_metrics == {}
    assert not (tmp_path / "run" / "metrics" / "val.csv").exists()
    assert load_file(str(result.model_dir / "model.safetensors"))["projector.fc1.weight"].dtype == torch.float32
    cached = sorted(cache.glob("*.npy"))
    assert len(cached) == 1 and cached[0].name.startswith("train-59px-")  # kept: the user asked for this directory
    stamp = cached[0].stat().st_mtime_ns
    train(_config(demo_store, tiny_init, tmp_path / "again", steps=1, val_fraction=0.0, frame_cache=str(cache)))
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


@pytest.mark.parametrize("method", ["fan-sft", "sft", "label-smoothing"])
def test_logits_only_where_supervised_give_the_full_sequence_loss_and_gradients(method, tiny_init):
    """LossStep computes the head only over the end of the sequence; loss, metrics and gradients equal the
    computation over every position (instructions of different lengths: right padding)."""
    from finetune.losses import align_labels_to_multimodal, compute_loss
    from finetune.steps import LossStep, supervised_window
    from policy.action_space import SPECS, ActionSpace
    from policy.openvla import OpenVLA
    from policy.prompt import build_training_example, collate_training_batch
    from policy.tiny import untrained_norm_stats

    model = OpenVLA.from_pretrained(tiny_init)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 256, size=(3, 7))
    tokens = model.action_tokenizer.vocab_end - 256 + actions
    examples = [build_training_example(model.tokenizer, text, row)
                for text, row in zip([*INSTRUCTIONS, INSTRUCTIONS[0]], tokens, strict=True)]
    batch = collate_training_batch(examples, model.pad_token_id)
    size = model.image_settings.image_size
    batch["pixel_values"] = torch.from_numpy(rng.normal(size=(3, 6, size, size)).astype(np.float32))
    batch["actions"] = torch.zeros(3, 7, dtype=torch.float64)
    assert supervised_window(batch["labels"]) < batch["labels"].shape[1]
    stats = untrained_norm_stats()["untrained"].action
    step = LossStep(model, method, 0.05, 0.1, stats, SPECS[ActionSpace.EE_DELTA], torch.device("cpu"), False)
    result = step(model, batch)
    result.loss.total.backward()
    windowed = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   pixel_values=batch["pixel_values"])
    labels = align_labels_to_multimodal(batch["labels"], output.projected_patch_embeddings.shape[1])
    full = compute_loss(method, output.logits, labels, step.action_ids, alpha=0.05, epsilon=0.1)
    full.total.backward()
    torch.testing.assert_close(result.loss.total, full.total, atol=1e-6, rtol=1e-6)
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(windowed[name], parameter.grad, atol=1e-6, rtol=1e-5, msg=name)
