"""OpenVLA-OFT with discrete action tokens: a chunk of K actions decoded in parallel, in one forward pass.

The same OpenVLA (towers, projector, Llama, lm_head) reads a longer sequence; its layout, as upstream openvla-oft's
discrete-token variant builds it::

    [BOS] [main image patches] [wrist image patches]? [proprio token]? [prompt ... "Out:" "▁"] [e_1 ... e_n] [</s>]

- ``e_1 .. e_n`` (n = K x 7) are *empty action positions*: their input embeddings are zero (openvla-oft zeroes them
  too), so nothing about the answer is fed in; only their rotary positions tell them apart.
- Attention is causal everywhere except inside the block ``e_1 .. e_n``, where every position sees every other
  (``action_block_attention``). The prompt and the image never see the block (causal), and the block never sees
  the trailing ``</s>``.
- The logits keep the causal-LM shift every loss of ``finetune.losses`` assumes: the logits at the position before
  each slot predict it ("▁" predicts a_1, e_j predicts a_(j+1), e_n predicts ``</s>``). One forward therefore gives
  the n = K x 7 distributions over the 256 bins at once, from the rows "▁", e_1 .. e_(n-1); the training labels are
  OpenVLA's own layout with n action tokens instead of 7 (``policy.prompt.build_training_example``).
- The optional second image (a wrist camera) goes through the same towers and projector; its patches follow the
  main image's (openvla-oft's ``num_images_in_input`` = 2: pixel values stack 6 channels per image).
- The optional proprio input (the robot state of ``policy.agent.STATE_LAYOUT``, 13 values, q01/q99-normalised with
  the checkpoint's ``proprio`` statistics) becomes one token through ``proprio_projector`` (fc1 -> GELU -> fc2, the
  parameter names of openvla-oft's ``ProprioProjector``), placed after the image patches as openvla-oft does.

A checkpoint is an OpenVLA directory whose config.json has a ``fanvla_oft`` block (``OFTSettings``) and, with
proprio, the ``proprio_projector.*`` tensors (docs/policy.md has the mapping to openvla-oft's files). ``to_oft``
turns a loaded OpenVLA (e.g. openvla-7b) into this model for finetuning.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from policy.config import OpenVLAConfig, parse_config
from policy.language_model import DEFAULT_ATTN_IMPLEMENTATION
from policy.openvla import OpenVLA, OpenVLAOutput, insert_image_tokens

OFT_CONFIG_KEY = "fanvla_oft"
DEFAULT_CHUNK_SIZE = 8  # the paper's (and openvla-oft's LIBERO) chunk: 8 actions, executed open loop
MAX_CHUNK_SIZE = 64
PROPRIO_DIM = 13  # policy.agent.STATE_LAYOUT: joints (6), TCP pose (6), gripper opening (1)
ACTION_DIM = 7


@dataclass(frozen=True)
class OFTSettings:
    """config.json's ``fanvla_oft`` block; openvla-oft's names in brackets."""

    chunk_size: int = DEFAULT_CHUNK_SIZE  # K actions per prediction (NUM_ACTIONS_CHUNK)
    action_dim: int = ACTION_DIM  # (ACTION_DIM)
    num_images: int = 1  # 2 = third-person + wrist camera (num_images_in_input)
    use_proprio: bool = False  # (use_proprio)
    proprio_dim: int = PROPRIO_DIM  # (PROPRIO_DIM)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}, got {self.chunk_size}")
        if self.action_dim != ACTION_DIM:
            raise ValueError(f"action_dim must be {ACTION_DIM} (6 motion deltas + gripper), got {self.action_dim}")
        if self.num_images not in (1, 2):
            raise ValueError(f"num_images must be 1 (third-person camera) or 2 (+ wrist camera), got {self.num_images}")
        if self.proprio_dim < 1:
            raise ValueError(f"proprio_dim must be >= 1, got {self.proprio_dim}")

    @property
    def n_action_tokens(self) -> int:
        return self.chunk_size * self.action_dim

    @property
    def uses_wrist(self) -> bool:
        return self.num_images == 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = OFT_CONFIG_KEY) -> OFTSettings:
        if not isinstance(data, dict):
            raise ValueError(f"{where} must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None

    @classmethod
    def of_config(cls, config: OpenVLAConfig) -> OFTSettings | None:
        """The settings in a parsed config.json, None for a plain OpenVLA."""
        block = config.raw.get(OFT_CONFIG_KEY)
        return None if block is None else cls.from_dict(block, f"config.json {OFT_CONFIG_KEY}")


class ProprioProjector(nn.Module):
    """The robot state (B, proprio_dim) -> one LLM token (B, llm_dim): fc1 -> GELU -> fc2 (openvla-oft's names)."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


# -------------------------------------------------------------------------------------------------------- masks
def action_block(attention_mask: torch.Tensor, n_actions: int, trailing: int = 1) -> torch.Tensor:
    """(B, S) bool: the ``n_actions`` attended positions that end ``trailing`` positions before each row's last
    attended one (the block sits at the end of every sequence, before ``</s>``; rows may be left- or right-padded)."""
    mask = attention_mask.to(torch.long)
    length = mask.shape[1]
    index = torch.arange(length, device=mask.device)
    last = (index * mask).amax(dim=1, keepdim=True)  # the largest attended index per row
    start = last - trailing - n_actions + 1
    if bool((start < 1).any()):  # position 0 of a row's own tokens is BOS at the least
        raise ValueError(f"a sequence is too short for {n_actions} action positions and {trailing} trailing token(s) "
                         f"after its prompt")
    return (index >= start) & (index < start + n_actions) & mask.bool()


def action_block_attention(attention_mask: torch.Tensor, block: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The (B, 1, S, S) additive attention mask: causal over attended keys, and bidirectional inside ``block``.

    Query i may see key j when j is attended and (j <= i, or both lie in the block). A query always sees itself, so
    padding rows stay finite. Additive (0 / dtype's min) so that eager and SDPA attention read it alike."""
    attended = attention_mask.bool()
    length = attended.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attended.device).tril()
    allowed = (causal[None] | (block[:, :, None] & block[:, None, :])) & attended[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=attended.device)[None]
    additive = torch.zeros(allowed.shape, dtype=dtype, device=attended.device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


# -------------------------------------------------------------------------------------------------------- model
class OpenVLAOFT(OpenVLA):
    """OpenVLA reading images (+ proprio) and a prompt, answering a K x 7 chunk of action tokens in one forward."""

    def __init__(self, config: OpenVLAConfig, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> None:
        super().__init__(config, attn_implementation)
        settings = OFTSettings.of_config(config)
        if settings is None:
            raise ValueError(f"config.json has no '{OFT_CONFIG_KEY}' block: not an OpenVLA-OFT model")
        self.oft = settings
        if settings.use_proprio:  # registered after language_model: last in the state dict
            self.proprio_projector = ProprioProjector(self.llm_dim, settings.proprio_dim)

    @property
    def llm_dim(self) -> int:
        return self.language_model.config.get_text_config().hidden_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens inserted after BOS: every image's patches and the proprio token."""
        return self.oft.num_images * self.vision_backbone.num_patches + int(self.oft.use_proprio)

    def lora_target_modules(self) -> list[str]:
        """As OpenVLA's, without the proprio projector: it is new, so it is trained in full (``trained_in_full``)."""
        return [name for name in super().lora_target_modules() if not name.startswith("proprio_projector")]

    def trained_in_full(self) -> list[str]:
        """Modules a LoRA run trains in full (peft ``modules_to_save``): the freshly initialised proprio projector."""
        return ["proprio_projector"] if self.oft.use_proprio else []

    # ------------------------------------------------------------------------------------------ inputs
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 6 x num_images, S, S) -> patch features (B, num_images x patches, width), image by
        image through the same towers (one tower call for all images)."""
        images = self.oft.num_images
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 6 * images:
            raise ValueError(f"this OFT model reads {images} image(s): pixel_values must be (B, {6 * images}, S, S), "
                             f"got {tuple(pixel_values.shape)}")
        batch = pixel_values.shape[0]
        stacked = pixel_values.reshape(batch * images, 6, *pixel_values.shape[2:])
        features = self.vision_backbone(stacked.to(device=self.device, dtype=self.input_dtype))
        return features.reshape(batch, images * features.shape[1], features.shape[2])

    def prefix_tokens(self, patch_features: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """Projected patches of every image, then the proprio token: what goes after BOS."""
        expected = self.oft.num_images * self.vision_backbone.num_patches
        if patch_features.ndim != 3 or patch_features.shape[1] != expected:
            raise ValueError(f"patch features must be (B, {expected}, width) for {self.oft.num_images} image(s), got "
                             f"{tuple(patch_features.shape)}")
        tokens = self.projector(patch_features.to(device=self.device, dtype=self.input_dtype))
        if not self.oft.use_proprio:
            if proprio is not None:
                raise ValueError("this OFT model has no proprio input; do not pass proprio")
            return tokens
        dim = self.oft.proprio_dim
        if proprio is None or proprio.ndim != 2 or tuple(proprio.shape) != (tokens.shape[0], dim):
            shape = None if proprio is None else tuple(proprio.shape)
            raise ValueError(f"this OFT model reads the normalised robot state: proprio must be (B, {dim}) with "
                             f"B = {tokens.shape[0]}, got {shape}")
        weight = self.proprio_projector.fc1.weight
        state = self.proprio_projector(proprio.to(device=weight.device, dtype=weight.dtype))
        return torch.cat([tokens, state.to(tokens.dtype)[:, None]], dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, patch_features: torch.Tensor | None = None,
                logits_to_keep: int = 0, proprio: torch.Tensor | None = None) -> OpenVLAOutput:
        """``input_ids`` (B, L): prompt, n = K x 7 placeholder ids (any: their embeddings are zeroed) and ``</s>``
        (``build_training_example`` with n action ids is exactly that). Logits keep the multimodal layout of
        ``OpenVLA.forward``; ``logits_to_keep`` = n + 2 gives the rows from "▁" to ``</s>``."""
        if (pixel_values is None) == (patch_features is None):
            raise ValueError("OpenVLA-OFT needs either pixel_values or patch_features for every sequence, not both")
        if patch_features is None:
            patch_features = self.vision_features(pixel_values)
        prefix = self.prefix_tokens(patch_features, proprio)
        if input_ids.ndim != 2 or input_ids.shape[0] != prefix.shape[0]:
            raise ValueError(f"input_ids must be (B, L) with B = {prefix.shape[0]} images, got "
                             f"{tuple(input_ids.shape)}")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.to(self.device)
        text_block = action_block(mask, self.oft.n_action_tokens)
        text_embeds = self.get_input_embeddings()(input_ids.to(self.device))
        text_embeds = text_embeds.masked_fill(text_block[..., None], 0.0)  # empty action positions
        inputs = insert_image_tokens(text_embeds, prefix.to(text_embeds.dtype), mask,
                                     None if labels is None else labels.to(self.device))
        block = action_block(inputs.attention_mask, self.oft.n_action_tokens)
        attention = action_block_attention(inputs.attention_mask, block, inputs.embeds.dtype)
        output = self.language_model(inputs_embeds=inputs.embeds, attention_mask=attention,
                                     position_ids=inputs.position_ids, labels=inputs.labels, use_cache=False,
                                     output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep)
        return OpenVLAOutput(logits=output.logits, loss=output.loss, hidden_states=output.hidden_states,
                             patch_features=patch_features, projected_patch_embeddings=prefix)

    # ---------------------------------------------------------------------------------------- policies
    def preprocess_views(self, images, wrist_images=None, center_crop: bool = False) -> torch.Tensor:
        """pixel_values (B, 6 x num_images, S, S): each main image, then its wrist image (same preprocessing)."""
        pixels = self.preprocess(images, center_crop)
        if not self.oft.uses_wrist:
            if wrist_images is not None:
                raise ValueError("this OFT model reads one camera; it was not trained with a wrist image")
            return pixels
        if wrist_images is None:
            raise ValueError("this OFT model was trained with a wrist camera: pass wrist_images (one per image)")
        wrist = self.preprocess(wrist_images, center_crop)
        if wrist.shape[0] != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {wrist.shape[0]} wrist images")
        return torch.cat([pixels, wrist], dim=1)

    def predict_action(self, images, instructions, unnorm_key: str | None = None, center_crop: bool = False,
                       temperature: float = 0.0, generator: torch.Generator | None = None, use_cache: bool = True,
                       states=None, wrist_images=None):
        """A (B, K, 7) chunk per image and instruction (``policy.oft_decoding.ChunkPrediction``); ``states``: the
        raw (B, 13) robot states (normalised here with the checkpoint's proprio statistics), needed with proprio;
        ``wrist_images``: one uint8 image per observation, needed with a wrist camera. ``use_cache`` is unused
        (one forward: nothing to cache)."""
        from policy.oft_decoding import predict_chunk

        pixel_values = self.preprocess_views(images, wrist_images, center_crop)
        prompt_ids = self.encode_instructions(instructions)
        if len(prompt_ids) != pixel_values.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {len(prompt_ids)} instructions")
        return predict_chunk(self, prompt_ids, pixel_values, unnorm_key, states, temperature, generator)

    def predict_action_from_ids(self, prompt_ids, pixel_values, unnorm_key: str | None = None,
                                temperature: float = 0.0, generator: torch.Generator | None = None,
                                use_cache: bool = True, states=None):
        from policy.oft_decoding import predict_chunk

        return predict_chunk(self, prompt_ids, pixel_values, unnorm_key, states, temperature, generator)


def build_openvla(config: OpenVLAConfig, attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION) -> OpenVLA:
    """The model class a config.json describes: ``OpenVLAOFT`` with a ``fanvla_oft`` block, else ``OpenVLA``."""
    if OFTSettings.of_config(config) is not None:
        return OpenVLAOFT(config, attn_implementation)
    return OpenVLA(config, attn_implementation)


def to_oft(model: OpenVLA, settings: OFTSettings, seed: int = 0) -> OpenVLAOFT:
    """``model`` as OpenVLA-OFT with ``settings``: the same modules (no copy), plus a proprio projector initialised
    from ``seed`` (torch's default Linear init, as openvla-oft's) when the settings use proprio. An OFT model is
    returned as it is when its settings agree, refused otherwise."""
    if isinstance(model, OpenVLAOFT):
        if model.oft != settings:
            raise ValueError(f"the model is already OpenVLA-OFT with {model.oft.to_dict()}, not {settings.to_dict()}")
        return model
    raw = copy.deepcopy(model.config.raw)
    raw[OFT_CONFIG_KEY] = settings.to_dict()
    attn = model.language_model.config._attn_implementation or DEFAULT_ATTN_IMPLEMENTATION
    with torch.device("meta"):
        oft = OpenVLAOFT(parse_config(raw, "OpenVLA-OFT settings"), attn)
    oft.vision_backbone, oft.projector, oft.language_model = model.vision_backbone, model.projector, \
        model.language_model
    if settings.use_proprio:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            oft.proprio_projector = ProprioProjector(oft.llm_dim, settings.proprio_dim)
        oft.proprio_projector.to(model.device)
    for name in ("norm_stats", "tokenizer", "image_settings", "compute_dtype", "source_dir", "name_or_path"):
        if hasattr(model, name):
            setattr(oft, name, getattr(model, name))
    return oft.train(model.training)
