"""What a run trains: OpenVLA's single actions (``SingleActions``) or OpenVLA-OFT's action chunks (``ActionChunks``).

The trainer (``finetune.trainer``) and ``fanvla finetune export`` ask the run's kind how to turn the loaded model
and the data into training inputs, which loss step to run, and what the exported checkpoint must say about its
inputs. The losses themselves (``finetune.losses``) are the same for both: an OFT sample is OpenVLA's training
example with K x 7 action tokens, and every formula acts per position.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from finetune.batches import BatchBuilder, SplitArrays, tokenize_actions
from finetune.config import FinetuneError, TrainConfig
from finetune.data import IMAGE_KEY, SampleTable, TrainingData
from finetune.losses import FanDiagnostics, LossOutput
from finetune.metrics import MetricSums, batch_metrics
from finetune.steps import MODEL_INPUTS, LossStep
from policy.openvla import OpenVLA

log = logging.getLogger(__name__)


class SingleActions:
    """OpenVLA: one action (7 tokens, then ``</s>``) per frame."""

    image_keys: tuple[str, ...] = (IMAGE_KEY,)
    caches_features = True  # the frozen towers' outputs may be computed once per frame (finetune.features)

    def prepare_model(self, model: OpenVLA, data: TrainingData) -> OpenVLA:
        return model

    def split_arrays(self, model: OpenVLA, data: TrainingData, table: SampleTable, frames: dict[str, np.ndarray],
                     features: np.ndarray | None) -> SplitArrays:
        tokens = tokenize_actions(table.actions, data.stats, model.action_tokenizer)
        return SplitArrays(frames[IMAGE_KEY], tokens, table.actions, table.instruction, features)

    builder_class: type[BatchBuilder] = BatchBuilder

    def loss_step(self, model: OpenVLA, config: TrainConfig, data: TrainingData, device: torch.device,
                  bf16: bool) -> LossStep:
        return LossStep(model, config.method, config.alpha, config.epsilon, data.stats, data.spec, device, bf16)

    def export_fields(self) -> dict:
        """Added to the checkpoint's fanvla.json."""
        return {}


class ChunkLossStep(LossStep):
    """``LossStep`` over K x 7 action tokens (the proprio input passed on); the metrics are computed per action,
    (B, K x 7) -> (B x K, 7), so that accuracy, L1 and the FAN diagnostics stay per action dimension."""

    model_inputs = (*MODEL_INPUTS, "proprio")

    def metrics(self, loss: LossOutput, predicted: torch.Tensor, targets: torch.Tensor,
                actions: torch.Tensor) -> MetricSums:
        dims = actions.shape[-1]
        diagnostics = loss.diagnostics
        if diagnostics is not None:
            diagnostics = FanDiagnostics(**{field.name: getattr(diagnostics, field.name).reshape(-1, dims)
                                            for field in dataclasses.fields(diagnostics)})
        return batch_metrics(dataclasses.replace(loss, diagnostics=diagnostics), predicted.reshape(-1, dims),
                             targets.reshape(-1, dims), actions.reshape(-1, dims), self.action_tokenizer, self.stats,
                             self.spec)


class ActionChunks(SingleActions):
    """OpenVLA-OFT (policy/oft.py): (frame, next K actions) samples (``finetune.chunks``), optional proprio and
    wrist frame."""

    def __init__(self, config: TrainConfig) -> None:
        from finetune.chunks import WRIST_IMAGE_KEY
        from policy.oft import OFTSettings

        self.settings = OFTSettings(chunk_size=config.chunk, num_images=2 if config.wrist else 1,
                                    use_proprio=config.proprio)
        self.seed = config.seed
        self.image_keys = (IMAGE_KEY, WRIST_IMAGE_KEY) if config.wrist else (IMAGE_KEY,)
        self.caches_features = not config.wrist  # cached features are the main frame's only
        self.proprio_stats = None

    def prepare_model(self, model: OpenVLA, data: TrainingData) -> OpenVLA:
        """The model as OpenVLA-OFT with the run's settings; with proprio, the training split's state statistics
        become the data's ``proprio`` statistics (what the checkpoint normalises the robot state with)."""
        from finetune.chunks import check_wrist_frames, proprio_statistics, read_states
        from policy.oft import to_oft

        if self.settings.uses_wrist:
            check_wrist_frames(data)
        if self.settings.use_proprio:
            self.proprio_stats = proprio_statistics(read_states(data.store_paths, data.train))
            data.proprio_stats = self.proprio_stats
        try:
            return to_oft(model, self.settings, seed=self.seed)
        except ValueError as error:
            raise FinetuneError(f"--init: {error}; use --chunk/--proprio/--wrist as the model was made, or start "
                                f"from a plain OpenVLA") from None

    def split_arrays(self, model: OpenVLA, data: TrainingData, table: SampleTable, frames: dict[str, np.ndarray],
                     features: np.ndarray | None) -> SplitArrays:
        from finetune.chunks import WRIST_IMAGE_KEY, chunk_split, chunk_targets, read_states

        states = read_states(data.store_paths, table) if self.settings.use_proprio and len(table) else None
        split = chunk_split(table, self.settings.chunk_size, data.stats, model.action_tokenizer, frames[IMAGE_KEY],
                            features, states, self.proprio_stats, frames.get(WRIST_IMAGE_KEY))
        padded = chunk_targets(table, self.settings.chunk_size).padded
        log.info("%d samples of K = %d actions; %d of %d chunk positions repeat their episode's final action",
                 len(table), self.settings.chunk_size, int(padded.sum()), padded.size)
        return split

    @property
    def builder_class(self) -> type[BatchBuilder]:
        from finetune.chunks import ChunkBatchBuilder

        return ChunkBatchBuilder

    def loss_step(self, model: OpenVLA, config: TrainConfig, data: TrainingData, device: torch.device,
                  bf16: bool) -> LossStep:
        return ChunkLossStep(model, config.method, config.alpha, config.epsilon, data.stats, data.spec, device, bf16)

    def export_fields(self) -> dict:
        from policy.oft import PROPRIO_DIM

        return {"chunk_size": self.settings.chunk_size, "oft": self.settings.to_dict(),
                **({"state_dim": PROPRIO_DIM} if self.settings.use_proprio else {})}


def model_kind(config: TrainConfig) -> SingleActions:
    return ActionChunks(config) if config.model == "oft" else SingleActions()
