"""Weight compatibility with the released openvla-7b: names and shapes, checked on the meta device (no memory)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from policy.config import parse_config
from policy.openvla import OpenVLA


@pytest.fixture(scope="module")
def manifest(openvla_fixtures) -> dict:
    return json.loads((openvla_fixtures / "openvla7b_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def model_7b(openvla_fixtures) -> OpenVLA:
    config = parse_config(json.loads((openvla_fixtures / "openvla7b_config.json").read_text()))
    with torch.device("meta"):
        return OpenVLA(config)


def test_state_dict_names_shapes_and_order_equal_the_7b_manifest(model_7b, manifest):
    ours = [(name, list(tensor.shape)) for name, tensor in model_7b.state_dict().items()]
    theirs = [(entry["name"], entry["shape"]) for entry in manifest["tensors"]]
    assert len(ours) == manifest["num_tensors"] == 982
    missing = sorted(set(dict(theirs)) - set(dict(ours)))
    extra = sorted(set(dict(ours)) - set(dict(theirs)))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert ours == theirs
    assert sum(t.numel() for t in model_7b.state_dict().values()) == manifest["total_numel"]
    assert all(t.is_meta for t in model_7b.parameters())


def test_7b_architecture_facts(model_7b):
    assert model_7b.vision_backbone.featurizer.feature_block_index == 22
    assert model_7b.vision_backbone.fused_featurizer.feature_block_index == 25
    assert model_7b.vision_backbone.num_patches == 256 and model_7b.vision_backbone.embed_dim == 2176
    llama = model_7b.language_model.config
    assert (llama.hidden_size, llama.num_hidden_layers, llama.rms_norm_eps, llama.vocab_size) == (4096, 32, 1e-6, 32064)
    assert llama.rope_parameters["rope_theta"] == 10000.0 and not llama.tie_word_embeddings
    assert model_7b.action_tokenizer.vocab_end == 32000


def _without_indices(names) -> set[str]:
    return {re.sub(r"\.\d+\.", ".N.", name) for name in names}


def test_tiny_presets_use_the_7b_names(manifest):
    from policy.tiny import build_tiny_model

    reference = _without_indices(entry["name"] for entry in manifest["tensors"])
    for preset in ("test", "demo"):
        model = build_tiny_model(preset)
        assert _without_indices(model.state_dict()) == reference, preset
