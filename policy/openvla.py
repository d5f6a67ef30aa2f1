"""OpenVLA: fused ViT backbone -> 3-layer GELU projector -> causal LM, weight-compatible with openvla-7b.

The multimodal sequence is ``[embed(BOS), projected patches, embed(rest of the prompt)]``: the image is inserted
right after the first token, exactly as upstream, and ``logits`` keep that layout
(B, 1 + n_patches + (L - 1), vocab). Batches may be right-padded (training) or left-padded (batched inference):
the patches go after each row's first attended token and position ids count attended tokens only, so a padded
row computes what it would compute alone. Without padding this is upstream's arithmetic exactly.

Everything a policy needs travels with the model: ``tokenizer`` (may be None for weights-only directories such as
the reference fixture), ``norm_stats`` (per unnorm_key), ``image_settings`` and ``action_tokenizer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from policy.action_tokenizer import ActionTokenizer
from policy.config import OpenVLAConfig
from policy.language_model import DEFAULT_ATTN_IMPLEMENTATION, build_language_model
from policy.normalization import DatasetStatistics
from policy.processing import ImageSettings, preprocess_image
from policy.prompt import IGNORE_INDEX, encode_prompt
from policy.vit import FusedMLPProjector, FusedVisionBackbone


@dataclass
class OpenVLAOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    patch_features: torch.Tensor | None = None
    projected_patch_embeddings: torch.Tensor | None = None


@dataclass
class MultimodalInputs:
    embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


def _insert_after(sequence: torch.Tensor, anchor: int, inserted: torch.Tensor) -> torch.Tensor:
    return torch.cat([sequence[: anchor + 1], inserted, sequence[anchor + 1 :]], dim=0)


def insert_image_tokens(text_embeds: torch.Tensor, patches: torch.Tensor, attention_mask: torch.Tensor | None,
                        labels: torch.Tensor | None) -> MultimodalInputs:
    """Insert the projected patches after each row's first attended token (BOS); see the module docstring."""
    batch, length = text_embeds.shape[:2]
    n_patches = patches.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=text_embeds.device)
    attention_mask = attention_mask.to(torch.long)
    if (attention_mask.sum(dim=1) == 0).any():
        raise ValueError("a row of attention_mask is all zeros: every sequence needs at least its BOS token")
    anchors = attention_mask.argmax(dim=1).tolist()  # first attended position = BOS (0 unless left-padded)
    patch_mask = torch.ones(n_patches, dtype=torch.long, device=text_embeds.device)
    patch_labels = torch.full((n_patches,), IGNORE_INDEX, dtype=torch.long, device=text_embeds.device)
    rows = range(batch)
    embeds = torch.stack([_insert_after(text_embeds[i], anchors[i], patches[i]) for i in rows])
    mask = torch.stack([_insert_after(attention_mask[i], anchors[i], patch_mask) for i in rows])
    new_labels = None
    if labels is not None:
        new_labels = torch.stack([_insert_after(labels[i], anchors[i], patch_labels) for i in rows])
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return MultimodalInputs(embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=new_labels)


class OpenVLA(nn.Module):
    """The model; parameter names are those of ``OpenVLAForActionPrediction`` (see docs/policy.md)."""

    def __init__(self, config: OpenVLAConfig, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> None:
        super().__init__()
        self.config = config
        vision_backbone = FusedVisionBackbone(config.featurizer, config.fused_featurizer)
        language_model = build_language_model(config.text_config, attn_implementation)
        llm_dim = language_model.config.get_text_config().hidden_size
        # Registration order = upstream state_dict order: vision_backbone, projector, language_model.
        self.vision_backbone = vision_backbone
        self.projector = FusedMLPProjector(vision_backbone.embed_dim, llm_dim)
        self.language_model = language_model
        self.action_tokenizer = ActionTokenizer(config.vocab_end, config.n_action_bins)
        self.image_settings = ImageSettings(image_size=config.image_size)
        self.norm_stats: dict[str, DatasetStatistics] = {}
        self.tokenizer = None
        # The dtype activations flow in when it differs from the weights' (bf16 weights computed in float32 on a
        # device without bf16 arithmetic, policy.precision); None = the weights' dtype.
        self.compute_dtype: torch.dtype | None = None
        self.source_dir: Path | None = None  # the directory it was loaded from (tokenizer files are copied from it)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=torch.float32, device: str | torch.device = "cpu",
                        attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION, reserve_bytes: int = 0) -> OpenVLA:
        """Load an openvla-7b-style directory (safetensors only; ``dtype``: a torch dtype, a --dtype choice or a
        ``policy.precision.Precision``; see ``policy.checkpoint.load_openvla``)."""
        from policy.checkpoint import load_openvla

        return load_openvla(path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                            reserve_bytes=reserve_bytes)

    def save_pretrained(self, path: str | Path, max_shard_bytes: int | None = None, overwrite: bool = False,
                        dtype: torch.dtype | None = None) -> Path:
        """Write the checkpoint directory; ``max_shard_bytes`` None = transformers' 5 GB shards; ``dtype`` None =
        the weights' own dtype."""
        from policy.checkpoint import DEFAULT_MAX_SHARD_BYTES, save_openvla

        return save_openvla(self, path, max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
                            overwrite=overwrite, dtype=dtype)

    # ------------------------------------------------------------------------------------------------ basics
    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype inputs (pixels, patch features) are cast to: the compute dtype."""
        return self.compute_dtype or self.dtype

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in the backward pass instead of keeping them: per decoder layer of the language
        model (transformers' own mechanism, non-reentrant so frozen inputs under LoRA still get gradients) and per
        block of both vision towers."""
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.vision_backbone.gradient_checkpointing = True

    @property
    def pad_token_id(self) -> int:
        pad = self.config.raw.get("pad_token_id", self.config.text_config.get("pad_token_id"))
        return int(pad if pad is not None else self.config.vocab_end)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def lora_target_modules(self) -> list[str]:
        """Every ``nn.Linear`` except the LM head: what peft's ``"all-linear"`` selects on upstream's
        (PreTrainedModel) OpenVLA. On this plain ``nn.Module`` peft's shorthand would also wrap ``lm_head``."""
        head = self.get_output_embeddings()
        return [name for name, module in self.named_modules() if isinstance(module, nn.Linear) and module is not head]

    # ----------------------------------------------------------------------------------------------- forward
    def image_embeddings(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(patch features, projected patch embeddings) for pixel_values (B, 6, S, S)."""
        patch_features = self.vision_backbone(pixel_values.to(device=self.device, dtype=self.input_dtype))
        return patch_features, self.projector(patch_features)

    def multimodal_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          projected_patches: torch.Tensor, labels: torch.Tensor | None = None) -> MultimodalInputs:
        if input_ids.ndim != 2 or input_ids.shape[0] != projected_patches.shape[0]:
            raise ValueError(f"input_ids must be (B, L) with B = {projected_patches.shape[0]} images, "
                             f"got {tuple(input_ids.shape)}")
        text_embeds = self.get_input_embeddings()(input_ids.to(self.device))
        mask = None if attention_mask is None else attention_mask.to(self.device)
        return insert_image_tokens(text_embeds, projected_patches, mask,
                                   None if labels is None else labels.to(self.device))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, patch_features: torch.Tensor | None = None,
                logits_to_keep: int = 0) -> OpenVLAOutput:
        """``patch_features``: the vision towers' output (B, patches, width) computed earlier, instead of
        ``pixel_values`` (finetuning with frozen towers reuses them; ``finetune.features``).
        ``logits_to_keep``: only the logits of the last N positions (0 = all), as transformers' models."""
        if (pixel_values is None) == (patch_features is None):
            raise ValueError("OpenVLA needs either pixel_values (B, 6, S, S) or patch_features (B, patches, width) "
                             "for every sequence, not both")
        if patch_features is None:
            patch_features, projected = self.image_embeddings(pixel_values)
        else:
            patch_features = patch_features.to(device=self.device, dtype=self.input_dtype)
            projected = self.projector(patch_features)
        inputs = self.multimodal_inputs(input_ids, attention_mask, projected, labels)
        output = self.language_model(inputs_embeds=inputs.embeds, attention_mask=inputs.attention_mask,
                                     position_ids=inputs.position_ids, labels=inputs.labels, use_cache=False,
                                     output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep)
        return OpenVLAOutput(logits=output.logits, loss=output.loss, hidden_states=output.hidden_states,
                             patch_features=patch_features, projected_patch_embeddings=projected)

    # ---------------------------------------------------------------------------------------------- policies
    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray, center_crop: bool = False) -> torch.Tensor:
        """uint8 images (one (H, W, 3) or several) -> pixel_values (B, 6, S, S) with this model's settings."""
        batch = [images] if isinstance(images, np.ndarray) and images.ndim == 3 else list(images)
        return torch.stack([preprocess_image(image, settings=self.image_settings, center_crop=center_crop)
                            for image in batch])

    def encode_instructions(self, instructions: Sequence[str] | str) -> list[list[int]]:
        if self.tokenizer is None:
            raise ValueError("this model directory has no tokenizer files (tokenizer.json / tokenizer_config.json): "
                             "text instructions cannot be encoded; pass token ids to predict_action_from_ids")
        texts = [instructions] if isinstance(instructions, str) else list(instructions)
        return [encode_prompt(self.tokenizer, text) for text in texts]

    def predict_action(self, images: Sequence[np.ndarray] | np.ndarray, instructions: Sequence[str] | str,
                       unnorm_key: str | None = None, center_crop: bool = False, temperature: float = 0.0,
                       generator: torch.Generator | None = None, use_cache: bool = True):
        """Actions for B images and B instructions (greedy unless ``temperature`` > 0); see ``ActionPrediction``.
        ``use_cache=False`` recomputes the whole sequence for every action token (a benchmark baseline)."""
        pixel_values = self.preprocess(images, center_crop)
        prompt_ids = self.encode_instructions(instructions)
        if len(prompt_ids) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {len(prompt_ids)} instructions")
        return self.predict_action_from_ids(prompt_ids, pixel_values, unnorm_key, temperature, generator, use_cache)

    def predict_action_from_ids(self, prompt_ids: Sequence[Sequence[int]], pixel_values: torch.Tensor,
                                unnorm_key: str | None = None, temperature: float = 0.0,
                                generator: torch.Generator | None = None, use_cache: bool = True):
        """Like ``predict_action`` from ready prompt ids (BOS ... ``Out:`` ``▁``, as ``encode_prompt`` makes them)."""
        from policy.generation import predict_from_ids

        return predict_from_ids(self, prompt_ids, pixel_values, unnorm_key, temperature, generator, use_cache)
