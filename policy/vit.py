"""Vision transformers in plain torch whose parameter names are timm's, so OpenVLA's weights load unchanged.

Two flavours appear in openvla-7b, both described by a ``ViTSpec``:

- DINOv2 with registers (``vit_large_patch14_reg4_dinov2.lvd142m``): class token + 4 register tokens, position
  embeddings for the patches only (added *before* the prefix tokens are prepended), LayerScale after attention
  and MLP (parameter ``scale_factor``: OpenVLA renames timm's ``gamma``);
- SigLIP (``vit_so400m_patch14_siglip_224``): no prefix tokens, no LayerScale, an attention-pool (MAP) head.

Blocks are pre-norm: ``x += ls1 * attn(norm1(x))``, ``x += ls2 * mlp(norm2(x))``; LayerNorm eps 1e-6; fused
qkv with bias; exact (erf) GELU for both towers (OpenVLA passes ``act_layer=None``). OpenVLA reads the output of
the second-to-last block, without the final norm, patch tokens only; the last block, the final ``norm`` and the
MAP head are in the checkpoint but unused by the policy (``pooled`` runs them for completeness).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class ViTSpec:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int = 14
    img_size: int = 224
    class_token: bool = False
    num_register_tokens: int = 0
    layer_scale: bool = False
    attn_pool: bool = False

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 (features come from the second-to-last block), got {self.depth}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.num_register_tokens

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    def with_overrides(self, overrides: dict) -> ViTSpec:
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown ViT fields {sorted(unknown)}; known: {sorted(asdict(self))}")
        return replace(self, **overrides)


# The two towers of openvla-7b, by their timm ids (architecture facts of those ids).
KNOWN_VIT_SPECS: dict[str, ViTSpec] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTSpec(
        embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, class_token=True, num_register_tokens=4,
        layer_scale=True),
    "vit_so400m_patch14_siglip_224": ViTSpec(
        embed_dim=1152, depth=27, num_heads=16, mlp_ratio=3.7362, attn_pool=True),
}


class PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.embed_dim, kernel_size=spec.patch_size, stride=spec.patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D), row-major patches


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, tokens, width = x.shape
    return x.reshape(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        heads = [_split_heads(t, self.num_heads) for t in (q, k, v)]
        return self.proj(_merge_heads(F.scaled_dot_product_attention(*heads)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, spec.mlp_hidden)
        self.ls2 = LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's MAP head: one learned latent query attends over all tokens, then a residual MLP."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.num_heads = spec.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, spec.mlp_hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.q(self.latent.expand(tokens.shape[0], -1, -1))
        key, value = self.kv(tokens).chunk(2, dim=-1)
        heads = [_split_heads(t, self.num_heads) for t in (query, key, value)]
        pooled = self.proj(_merge_heads(F.scaled_dot_product_attention(*heads)))
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


class VisionTransformer(nn.Module):
    """One ViT tower; ``forward`` returns the patch tokens of block ``depth - 2`` (what OpenVLA uses)."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        if spec.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if spec.num_register_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, spec.num_register_tokens, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, dim))
        self.patch_embed = PatchEmbed(spec)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        if spec.attn_pool:
            self.attn_pool = AttentionPoolLatent(spec)
        self.gradient_checkpointing = False  # recompute each block's activations in backward (training only)

    @property
    def feature_block_index(self) -> int:
        return self.spec.depth - 2

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, self.spec.img_size, self.spec.img_size)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"this tower takes images of shape (B, {expected}), got {tuple(images.shape)}")
        patches = self.patch_embed(images) + self.pos_embed
        prefix = [token.expand(images.shape[0], -1, -1) for token in self._prefix_tokens()]
        return torch.cat([*prefix, patches], dim=1) if prefix else patches

    def _prefix_tokens(self) -> list[torch.Tensor]:
        tokens = []
        if self.spec.class_token:
            tokens.append(self.cls_token)
        if self.spec.num_register_tokens:
            tokens.append(self.reg_token)
        return tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._embed(images)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks[: self.feature_block_index + 1]:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x[:, self.spec.num_prefix_tokens :]

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The tower's own image embedding (all blocks, final norm, MAP head); not used by OpenVLA."""
        if not self.spec.attn_pool:
            raise ValueError("this tower has no attention-pool head")
        x = self._embed(images)
        for block in self.blocks:
            x = block(x)
        return self.attn_pool(self.norm(x))


class FusedVisionBackbone(nn.Module):
    """DINOv2 on channels 0:3 and SigLIP on channels 3:6; patch features concatenated, DINOv2 first."""

    def __init__(self, featurizer_spec: ViTSpec, fused_spec: ViTSpec) -> None:
        super().__init__()
        if featurizer_spec.num_patches != fused_spec.num_patches or featurizer_spec.img_size != fused_spec.img_size:
            raise ValueError(f"the two towers must see the same image size and patch grid: {featurizer_spec.img_size}"
                             f"px/{featurizer_spec.num_patches} patches vs {fused_spec.img_size}px/"
                             f"{fused_spec.num_patches} patches")
        self.featurizer = VisionTransformer(featurizer_spec)
        self.fused_featurizer = VisionTransformer(fused_spec)

    @property
    def gradient_checkpointing(self) -> bool:
        return self.featurizer.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.featurizer.gradient_checkpointing = self.fused_featurizer.gradient_checkpointing = enabled

    @property
    def num_patches(self) -> int:
        return self.featurizer.spec.num_patches

    @property
    def embed_dim(self) -> int:
        return self.featurizer.spec.embed_dim + self.fused_featurizer.spec.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 6:
            raise ValueError(f"pixel_values must be (B, 6, S, S) (two normalisations stacked), got "
                             f"{tuple(pixel_values.shape)}")
        first, second = torch.split(pixel_values, [3, 3], dim=1)
        return torch.cat([self.featurizer(first), self.fused_featurizer(second)], dim=2)


class FusedMLPProjector(nn.Module):
    """``fc1 (Dv -> 4 Dv) -> GELU -> fc2 (4 Dv -> H) -> GELU -> fc3 (H -> H)`` (OpenVLA's fused-gelu-mlp)."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act = nn.GELU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(features)))))
