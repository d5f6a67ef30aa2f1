"""`fanvla policy init-random`: the openvla-7b preset's config, and the writer on a small geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fanvla.cli import main
from policy.checkpoint import INDEX_FILE
from policy.interop import MODEL_AUTO_MAP
from policy.llama_tokenizer import require_tokenizer_dir
from policy.openvla import OpenVLA
from policy.random_init import openvla_7b_config, write_random_checkpoint
from policy.safetensors_io import read_header


def test_the_7b_preset_is_the_released_config(openvla_fixtures):
    released = json.loads((openvla_fixtures / "openvla7b_config.json").read_text())
    assert openvla_7b_config() == released


@pytest.fixture(scope="module")
def small_config(openvla_fixtures) -> dict:
    """The reference fixture's geometry (224 px, tiny towers and Llama): the 7B's layout at a small size."""
    config = json.loads((openvla_fixtures / "tiny" / "config.json").read_text())
    config["norm_stats"] = None
    return config


def test_writes_upstreams_layout_with_the_init_rules(small_config, tmp_path):
    tokenizer = require_tokenizer_dir()
    out = write_random_checkpoint(tmp_path / "model", small_config, torch.bfloat16, seed=3, tokenizer_dir=tokenizer,
                                  max_shard_bytes=3_000_000)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and all({e.dtype for e in read_header(out / s).entries.values()} == {torch.bfloat16}
                                    for s in shards)
    assert json.loads((out / "config.json").read_text())["auto_map"] == MODEL_AUTO_MAP
    assert (out / "tokenizer.json").read_bytes() == (tokenizer / "tokenizer.json").read_bytes()
    assert json.loads((out / "random_init.json").read_text())["seed"] == 3
    model = OpenVLA.from_pretrained(out, dtype=torch.float32)
    state = model.state_dict()
    norm = state["language_model.model.norm.weight"]
    assert torch.equal(norm, torch.ones_like(norm))
    assert not state["projector.fc1.bias"].any()
    scale = state["vision_backbone.featurizer.blocks.0.ls1.scale_factor"]
    assert torch.allclose(scale, torch.full_like(scale, 1e-5), rtol=1e-2)
    weights = state["language_model.model.layers.0.mlp.up_proj.weight"]
    assert abs(float(weights.std()) - 0.02) < 0.002 and abs(float(weights.mean())) < 0.002
    assert not torch.equal(weights, state["language_model.model.layers.0.mlp.gate_proj.weight"])
    again = write_random_checkpoint(tmp_path / "again", small_config, torch.bfloat16, seed=3, tokenizer_dir=tokenizer,
                                    max_shard_bytes=3_000_000)
    assert all((out / s).read_bytes() == (again / s).read_bytes() for s in shards)  # same seed, same bytes
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    prediction = model.predict_action([image], ["put the red cube into the box"])
    assert prediction.actions.shape == (1, 7) and np.isfinite(prediction.actions).all()


def test_cli_refuses_a_non_empty_directory_and_predicts_with_timing(small_config, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["policy", "init-random", "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    out = write_random_checkpoint(tmp_path / "model", small_config, torch.bfloat16,
                                  tokenizer_dir=require_tokenizer_dir())
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(image)
    assert main(["policy", "predict", str(out), "--image", str(image), "--instruction", "lift the cup", "--json",
                 "--repeat", "2", "--no-kv-cache"]) == 0
    timing = json.loads(capsys.readouterr().out)["timing"]
    assert timing["weights_dtype"] == "bfloat16" and len(timing["calls_s"]) == 2 and timing["kv_cache"] is False
    assert main(["policy", "predict", str(out), "--image", str(image), "--instruction", "x", "--repeat", "0"]) == 2
