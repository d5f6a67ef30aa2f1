from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from policy.openvla import OpenVLA
from policy.prompt import build_training_example, collate_training_batch
from policy.tiny import PRESETS, build_tiny, build_tiny_model, resolve_preset, sincos_position_grid
from policy.tiny_tokenizer import train_tiny_tokenizer
from tests.policy.conftest import random_images


def test_config_records_the_preset_sizes(tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    preset = PRESETS["test"]
    assert config["image_sizes"] == [preset.image_size] * 2
    dino = config["vit_overrides"]["vit_large_patch14_reg4_dinov2.lvd142m"]
    assert (dino["embed_dim"], dino["depth"], dino["patch_size"], dino["img_size"]) == (32, 3, 14, 56)
    assert config["fanvla_tiny_preset"]["name"] == "test"
    preprocessor = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert preprocessor["input_sizes"] == [[3, 56, 56], [3, 56, 56]]


def test_overrides_change_the_model_and_are_validated(tmp_path):
    model = build_tiny_model("test", overrides={"image_size": "84", "llm_layers": 1})
    assert model.vision_backbone.num_patches == 36 and model.image_settings.image_size == 84
    assert model.language_model.config.num_hidden_layers == 1
    with pytest.raises(ValueError, match="unknown preset fields"):
        resolve_preset("test", {"nope": 1})
    with pytest.raises(ValueError, match="unknown tiny preset"):
        resolve_preset("huge")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_tiny_model("test", overrides={"image_size": 50})


def test_demo_preset_shape():
    demo = PRESETS["demo"]
    assert demo.num_patches == 64 and demo.image_size in (112, 128)


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_tiny_model(seed=1), build_tiny_model(seed=1), build_tiny_model(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.projector.fc1.weight, c.projector.fc1.weight)
    assert not torch.equal(a.language_model.lm_head.weight, c.language_model.lm_head.weight)


def test_sincos_position_grid_encodes_row_and_column():
    grid = sincos_position_grid(3, 8)  # 9 patches; channels: sin(row), cos(row), sin(col), cos(col), 2 each
    assert grid.shape == (9, 8)
    np.testing.assert_allclose(grid[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)  # patch (0, 0)
    np.testing.assert_allclose(grid[1, :4], grid[0, :4])  # same row, next column: the row half is unchanged
    np.testing.assert_allclose(grid[1, 4], np.sin(1.0), rtol=1e-6)  # column 1 at the highest frequency
    np.testing.assert_allclose(grid[3, 0], np.sin(1.0), rtol=1e-6)  # row 1
    assert len({row.tobytes() for row in grid}) == 9  # every patch position is distinct
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_grid(3, 6)


def test_position_embedding_init_follows_the_preset():
    sincos = build_tiny_model("test")
    towers = [sincos.vision_backbone.featurizer, sincos.vision_backbone.fused_featurizer]
    for tower in towers:
        expected = sincos_position_grid(tower.spec.grid_size, tower.spec.embed_dim)
        np.testing.assert_array_equal(tower.pos_embed[0].detach().numpy(), expected)
    random = build_tiny_model("test", overrides={"pos_embed_init": "random"})
    pos = random.vision_backbone.featurizer.pos_embed
    assert 0 < float(pos.detach().std()) < 0.05 and not torch.equal(pos, towers[0].pos_embed)
    with pytest.raises(ValueError, match="pos_embed_init must be"):
        build_tiny_model("test", overrides={"pos_embed_init": "learned"})
    with pytest.raises(ValueError, match="pos_embed_init must be"):
        replace(PRESETS["test"], pos_embed_init="learned")  # a preset built in code is checked too


def test_build_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("data")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "data"


def test_tokenizer_layout():
    tokenizer, vocab_end = train_tiny_tokenizer(["stack the red block on the blue block"])
    assert vocab_end % 64 == 0
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, vocab_end)
    assert tokenizer.convert_ids_to_tokens([vocab_end - 1, vocab_end - 256]) == ["<action_0>", "<action_255>"]
    assert "▁stack" in tokenizer.convert_ids_to_tokens(tokenizer.encode("stack the block"))
    unseen = tokenizer.encode("zap 7 QQ!")
    assert tokenizer.unk_token_id not in unseen
    assert all(token < vocab_end - 256 for token in unseen)


def _batch(model, size: int, seed: int):
    rng = np.random.default_rng(seed)
    targets = rng.uniform(-1, 1, size=(size, 7))
    examples = [build_training_example(model.tokenizer, "pick up the red block", model.action_tokenizer.encode(t))
                for t in targets]
    images = random_images(size, seed=seed)
    return collate_training_batch(examples, model.pad_token_id), model.preprocess(images)


def test_trains_in_float32_on_cpu():
    model = build_tiny_model("test", seed=0).train()
    batch, pixel_values = _batch(model, 4, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(**batch, pixel_values=pixel_values).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    feature_block = model.vision_backbone.featurizer.blocks[1].attn.qkv.weight
    assert feature_block.grad is not None and feature_block.grad.abs().sum() > 0
    assert model.vision_backbone.featurizer.blocks[2].attn.qkv.weight.grad is None  # after the feature block


def test_peft_lora_wraps_plain_linears():
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model("test", seed=0)
    targets = model.lora_target_modules()
    assert "language_model.lm_head" not in targets and "projector.fc1" in targets
    assert "language_model.model.layers.0.self_attn.q_proj" in targets
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=targets,
                                                  init_lora_weights="gaussian"))
    batch, pixel_values = _batch(model, 2, seed=1)
    peft_model(**batch, pixel_values=pixel_values).loss.backward()
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    all_linear = get_peft_model(build_tiny_model("test"), LoraConfig(r=4, target_modules="all-linear"))
    assert any("lora_A" in n for n, _ in all_linear.named_modules())


def test_tiny_model_directory_loads_like_the_real_one(tiny_model_dir):
    model = OpenVLA.from_pretrained(tiny_model_dir)
    assert set(model.norm_stats) == {"untrained"}
    prediction = model.predict_action(random_images(1)[0], "pick up the red block")
    assert prediction.actions.shape == (1, 7)


def test_build_with_instructions_and_statistics(tmp_path, openvla_fixtures):
    stats = json.loads((openvla_fixtures / "tiny" / "dataset_statistics.json").read_text())
    out = build_tiny(tmp_path / "m", instructions=["grasp the tomato"], norm_stats=stats)
    model = OpenVLA.from_pretrained(out)
    assert set(model.norm_stats) == {"fixture"}
    assert model.norm_stats["fixture"].action.mask.tolist() == [True] * 6 + [False]
    assert "▁tomato" in model.tokenizer.convert_ids_to_tokens(model.tokenizer.encode("grasp the tomato"))
    typed = build_tiny_model(norm_stats=model.norm_stats)
    assert typed.norm_stats == model.norm_stats
