"""One batch through the model: forward, the method's loss (``finetune.losses``), metrics; and validation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from finetune.losses import IGNORE_INDEX, LossOutput, action_token_ids_in_bin_order, compute_loss
from finetune.metrics import MetricSums, batch_metrics, predicted_action_tokens
from policy.action_space import ActionSpaceSpec
from policy.normalization import ActionStats
from policy.openvla import OpenVLA

# The image comes as pixel_values, or as patch_features when the frozen towers' outputs were computed once.
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "patch_features")


@dataclass
class BatchResult:
    loss: LossOutput
    metrics: MetricSums
    samples: int


class LossStep:
    """Forward + loss + metrics for one batch, with the run's method, weights, precision and device."""

    model_inputs: tuple[str, ...] = MODEL_INPUTS  # the batch entries the model's forward takes

    def __init__(self, model: OpenVLA, method: str, alpha: float, epsilon: float, stats: ActionStats,
                 spec: ActionSpaceSpec, device: torch.device, bf16: bool) -> None:
        self.method, self.alpha, self.epsilon = method, alpha, epsilon
        self.action_tokenizer = model.action_tokenizer
        self.action_ids = action_token_ids_in_bin_order(model.action_tokenizer, device)
        self.stats, self.spec, self.device, self.bf16 = stats, spec, device, bf16

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def __call__(self, module: nn.Module, batch: dict[str, torch.Tensor]) -> BatchResult:
        inputs = {name: batch[name].to(self.device, non_blocking=True) for name in self.model_inputs if name in batch}
        keep = supervised_window(batch["labels"])
        with self.autocast():
            output = module(**inputs, logits_to_keep=keep)
        logits = output.logits
        labels = batch["labels"].to(self.device)[:, -keep:]
        loss = compute_loss(self.method, logits, labels, self.action_ids, alpha=self.alpha, epsilon=self.epsilon)
        with torch.no_grad():
            predicted, targets = predicted_action_tokens(logits.detach(), labels, self.action_tokenizer)
            metrics = self.metrics(loss, predicted, targets, batch["actions"])
        return BatchResult(loss=loss, metrics=metrics, samples=int(labels.shape[0]))

    def metrics(self, loss: LossOutput, predicted: torch.Tensor, targets: torch.Tensor,
                actions: torch.Tensor) -> MetricSums:
        return batch_metrics(loss, predicted, targets, actions, self.action_tokenizer, self.stats, self.spec)


def supervised_window(labels: torch.Tensor) -> int:
    """How many positions at the end of the sequence the loss needs logits for: from the one before the first
    supervised label (its logits predict it) to the end. The image patches sit after BOS, before every
    supervised token, so this count is the same in the text and in the multimodal sequence; computing the
    language model's head only there saves most of its cost (the prompt and 64+ patches need no logits)."""
    supervised = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if len(supervised) == 0:
        return labels.shape[1]  # compute_loss explains the problem
    return labels.shape[1] - int(supervised[0]) + 1


@torch.no_grad()
def evaluate(step: LossStep, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> MetricSums:
    """Sums of the metrics over this process's validation batches (the caller reduces across ranks)."""
    was_training = model.training
    model.eval()
    sums = MetricSums()
    try:
        for batch in batches:
            sums.merge(step(model, batch).metrics)
    finally:
        model.train(was_training)
    return sums
