from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from policy.checkpoint import INDEX_FILE, CheckpointError
from policy.openvla import OpenVLA
from tests.policy.conftest import random_images


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "copy")


def test_sharded_round_trip_is_exact(tiny_model, tmp_path):
    out = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_bytes=200_000)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / shard).is_file() for shard in shards)
    reloaded = OpenVLA.from_pretrained(out)
    original = tiny_model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    images = random_images(2, seed=5)
    a = tiny_model.predict_action(images, ["pick up the red block", "lift the cup"])
    b = reloaded.predict_action(images, ["pick up the red block", "lift the cup"])
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.bin_probs, b.bin_probs)
    assert reloaded.tokenizer.encode("pick up") == tiny_model.tokenizer.encode("pick up")


def test_loads_in_bfloat16(tiny_model_dir):
    model = OpenVLA.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    prediction = model.predict_action(random_images(1), ["pick up the red block"])
    assert prediction.actions.shape == (1, 7) and np.isfinite(prediction.actions).all()


def test_missing_statistics_are_refused(model_copy):
    (model_copy / "dataset_statistics.json").unlink()
    config = json.loads((model_copy / "config.json").read_text())
    config["norm_stats"] = None
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"no normalisation statistics \(dataset_statistics.json is missing"):
        OpenVLA.from_pretrained(model_copy)


def test_config_norm_stats_are_the_fallback_and_the_file_wins(model_copy):
    stats = json.loads((model_copy / "dataset_statistics.json").read_text())
    (model_copy / "dataset_statistics.json").unlink()
    assert set(OpenVLA.from_pretrained(model_copy).norm_stats) == set(stats)
    (model_copy / "dataset_statistics.json").write_text(json.dumps({"finetuned": next(iter(stats.values()))}))
    assert set(OpenVLA.from_pretrained(model_copy).norm_stats) == {"finetuned"}


def _rewrite_weights(directory, mutate):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    mutate(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_mismatched_shape_names_the_tensor(model_copy):
    name = "projector.fc2.weight"
    _rewrite_weights(model_copy, lambda t: t.update({name: torch.zeros(t[name].shape[0] + 1, t[name].shape[1])}))
    with pytest.raises(CheckpointError, match=r"mismatched shapes: projector\.fc2\.weight: checkpoint \[65, 256\], "
                                              r"model \[64, 256\]"):
        OpenVLA.from_pretrained(model_copy)


def test_missing_and_unexpected_tensors_are_named(model_copy):
    def mutate(tensors):
        tensors["vision_backbone.featurizer.extra"] = tensors.pop("vision_backbone.featurizer.reg_token")

    _rewrite_weights(model_copy, mutate)
    with pytest.raises(CheckpointError) as info:
        OpenVLA.from_pretrained(model_copy)
    assert "missing from the checkpoint: vision_backbone.featurizer.reg_token" in str(info.value)
    assert "unexpected tensors in the checkpoint: vision_backbone.featurizer.extra" in str(info.value)


def test_pickle_weights_are_refused(model_copy):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match=r"pickle-based weights.*refused"):
        OpenVLA.from_pretrained(model_copy)


def test_missing_shard_and_missing_config_are_reported(tiny_model, tmp_path):
    out = tiny_model.save_pretrained(tmp_path / "sharded", max_shard_bytes=200_000)
    (out / "model-00002-of-{:05d}.safetensors".format(len(list(out.glob("model-*"))))).unlink()
    with pytest.raises(CheckpointError, match="shards that are missing"):
        OpenVLA.from_pretrained(out)
    (out / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json does not exist"):
        OpenVLA.from_pretrained(out)


def test_image_size_must_match_the_towers(model_copy):
    config = json.loads((model_copy / "preprocessor_config.json").read_text())
    config["input_sizes"] = [[3, 64, 64], [3, 64, 64]]
    (model_copy / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"resizes to 64 px but the vision towers .* take 56 px"):
        OpenVLA.from_pretrained(model_copy)


def test_save_does_not_overwrite_weights_by_accident(tiny_model, model_copy):
    with pytest.raises(CheckpointError, match="already holds weights"):
        tiny_model.save_pretrained(model_copy)
    tiny_model.save_pretrained(model_copy, overwrite=True, max_shard_bytes=200_000)
    assert not (model_copy / "model.safetensors").exists() and (model_copy / INDEX_FILE).is_file()
    OpenVLA.from_pretrained(model_copy)


def test_checkpoint_files_have_the_upstream_layout(tiny_model_dir, openvla_fixtures):
    files = {path.name for path in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "dataset_statistics.json", "preprocessor_config.json",
            "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    ours = json.loads((tiny_model_dir / "config.json").read_text())
    upstream = json.loads((openvla_fixtures / "openvla7b_config.json").read_text())
    assert set(upstream) - {"hf_llm_id", "transformers_version"} <= set(ours)
    assert ours["text_config"]["vocab_size"] - ours["pad_to_multiple_of"] == ours["pad_token_id"]


def test_tied_embeddings_are_saved_once_and_tied_again(tmp_path):
    from policy.config import parse_config
    from policy.tiny import resolve_preset, tiny_config_dict, untrained_norm_stats

    raw = tiny_config_dict(resolve_preset("test"), vocab_end=512, preset_name="tied")
    raw["text_config"]["tie_word_embeddings"] = True
    model = OpenVLA(parse_config(raw))
    model.norm_stats = untrained_norm_stats()
    out = model.save_pretrained(tmp_path / "tied")
    with safe_open(out / "model.safetensors", framework="pt") as handle:
        names = set(handle.keys())
    assert "language_model.model.embed_tokens.weight" in names and "language_model.lm_head.weight" not in names
    reloaded = OpenVLA.from_pretrained(out).language_model
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert torch.equal(reloaded.lm_head.weight, model.language_model.lm_head.weight)
