from __future__ import annotations

import pytest
import torch

from policy.vit import FusedVisionBackbone, VisionTransformer, ViTSpec

DINO = ViTSpec(embed_dim=16, depth=3, num_heads=2, mlp_ratio=4.0, patch_size=4, img_size=16, class_token=True,
               num_register_tokens=4, layer_scale=True)
SIGLIP = ViTSpec(embed_dim=24, depth=3, num_heads=2, mlp_ratio=3.7362, patch_size=4, img_size=16, attn_pool=True)


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def test_features_are_patch_tokens_of_the_second_to_last_block():
    tower = _randomise(VisionTransformer(DINO)).eval()
    images = torch.randn(2, 3, 16, 16)
    features = tower(images)
    assert features.shape == (2, 16, 16)
    x = torch.cat([tower.cls_token.expand(2, -1, -1), tower.reg_token.expand(2, -1, -1),
                   tower.patch_embed(images) + tower.pos_embed], dim=1)
    for block in tower.blocks[:2]:
        x = block(x)
    torch.testing.assert_close(features, x[:, 5:])
    # the last block is not part of the features
    with torch.no_grad():
        tower.blocks[2].mlp.fc1.weight.add_(1.0)
    torch.testing.assert_close(tower(images), features)


def test_attention_pool_is_invariant_to_token_order():
    tower = _randomise(VisionTransformer(SIGLIP)).eval()
    tokens = torch.randn(2, 16, 24)
    pooled = tower.attn_pool(tokens)
    assert pooled.shape == (2, 24)
    torch.testing.assert_close(tower.attn_pool(tokens[:, torch.randperm(16)]), pooled, atol=1e-5, rtol=1e-5)
    assert tower.pooled(torch.randn(1, 3, 16, 16)).shape == (1, 24)
    with pytest.raises(ValueError, match="no attention-pool"):
        VisionTransformer(DINO).pooled(torch.randn(1, 3, 16, 16))


def test_fused_backbone_concatenates_dino_first():
    backbone = _randomise(FusedVisionBackbone(DINO, SIGLIP)).eval()
    pixels = torch.randn(1, 6, 16, 16)
    features = backbone(pixels)
    assert features.shape == (1, 16, 40)
    torch.testing.assert_close(features[..., :16], backbone.featurizer(pixels[:, :3]))
    torch.testing.assert_close(features[..., 16:], backbone.fused_featurizer(pixels[:, 3:]))
    with pytest.raises(ValueError, match=r"\(B, 6, S, S\)"):
        backbone(torch.randn(1, 3, 16, 16))


def test_specs_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        ViTSpec(embed_dim=10, depth=3, num_heads=3, mlp_ratio=4.0)
    with pytest.raises(ValueError, match="same image size"):
        FusedVisionBackbone(DINO, ViTSpec(embed_dim=24, depth=3, num_heads=2, mlp_ratio=4.0, patch_size=8,
                                          img_size=16))
    with pytest.raises(ValueError, match="depth must be"):
        ViTSpec(embed_dim=8, depth=1, num_heads=2, mlp_ratio=4.0)
