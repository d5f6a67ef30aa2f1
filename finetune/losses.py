"""Training losses: plain SFT, FAN-SFT and the label-smoothing baseline (docs/method.md explains them).

Sequence convention (the one every function here uses): ``logits`` (B, S, V) and ``labels`` (B, S) cover
the SAME sequence, causal-LM style: the logits at position i predict the label at position i + 1, and
labels are ``IGNORE_INDEX`` (-100) except on the supervised tokens (the action tokens and EOS).
OpenVLA's logits also cover the image patches inserted after BOS; pass the text labels through
``align_labels_to_multimodal`` first so both tensors have the multimodal length.

Action logits are indexed in BIN order: bin 0 is the most negative action value, bin 255 the most
positive. The caller passes the action-token ids in that order: ``action_token_ids_in_bin_order(tokenizer)``
with the ``ActionTokenizer`` of policy/action_tokenizer.py, the one owner of the id <-> bin rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policy.action_tokenizer import ActionTokenizer

IGNORE_INDEX = -100
N_ACTION_BINS = 256
OPENVLA_NUM_PATCHES = 256
DEFAULT_FAN_ALPHA = 0.05  # the paper's value for OpenVLA SFT (a sweep over 1e-4..2.0)
DEFAULT_LABEL_SMOOTHING_EPSILON = 0.05  # the paper's best of {0.05, 0.1, 0.2}
# The FAN target's variance floor, in the bin-index metric: one bin width squared (see docs/method.md).
FAN_VARIANCE_FLOOR_BINS2 = 1.0
METHODS = ("sft", "fan-sft", "label-smoothing")


class LossInputError(ValueError):
    """Logits, labels or action-token ids that do not fit together; the message says which and why."""


@dataclass(frozen=True)
class FanDiagnostics:
    """Per-sample, per-dimension shape of the policy's action distributions, all (B, D) and detached.

    ``spread_bins`` is the policy's spread around its own mode, sqrt(sum_j pi_j (j - mode)^2), in bins;
    ``target_sigma_bins`` is the standard deviation the FAN target uses (the spread floored at one bin).
    """

    entropy_nats: torch.Tensor
    spread_bins: torch.Tensor
    target_sigma_bins: torch.Tensor
    mode_prob: torch.Tensor
    mode_bin: torch.Tensor

    def per_dimension(self) -> dict[str, list[float]]:
        """Batch means per action dimension, as plain floats for logging and plots."""
        fields = ("entropy_nats", "spread_bins", "target_sigma_bins", "mode_prob")
        return {name: getattr(self, name).float().mean(dim=0).tolist() for name in fields}


@dataclass(frozen=True)
class LossOutput:
    """``total`` is what to backpropagate; ``total == ce + reg`` for every method (``ce``, ``reg`` are detached).

    ``ce`` is the plain one-hot cross-entropy on the supervised tokens (comparable across methods);
    ``reg`` is the method's extra term as it enters ``total`` (0 for SFT, alpha * mean KL for FAN-SFT,
    the smoothing's contribution for label smoothing). ``fan_kl`` is the unweighted mean KL(pi || q)
    when diagnostics are computed (for every method: it shows how far SFT drifts from the FAN target).
    """

    total: torch.Tensor
    ce: torch.Tensor
    reg: torch.Tensor
    diagnostics: FanDiagnostics | None = None
    fan_kl: torch.Tensor | None = None


@dataclass(frozen=True)
class ActionLogits:
    """Action-token logits gathered from the LM output: ``logits`` (B, D, n_bins) in bin order, with the
    demonstrated bin of each dimension in ``target_bins`` (B, D)."""

    logits: torch.Tensor
    target_bins: torch.Tensor


# --------------------------------------------------------------------------------------------------
# Sequence alignment and supervised rows
# --------------------------------------------------------------------------------------------------


def align_labels_to_multimodal(labels: torch.Tensor, n_patches: int = OPENVLA_NUM_PATCHES) -> torch.Tensor:
    """Insert ``n_patches`` ignored labels right after BOS, where OpenVLA inserts the image patches.

    The result has the length of the multimodal sequence, so logits and labels line up position by
    position (the last patch's logits then predict the first text token after BOS, as upstream).
    """
    if labels.ndim != 2:
        raise LossInputError(f"labels must be (batch, seq_len), got shape {tuple(labels.shape)}")
    ignored = labels.new_full((labels.shape[0], n_patches), IGNORE_INDEX)
    return torch.cat([labels[:, :1], ignored, labels[:, 1:]], dim=1)


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 3 or labels.ndim != 2:
        raise LossInputError(f"expected logits (B, S, V) and labels (B, S); got {tuple(logits.shape)} "
                             f"and {tuple(labels.shape)}")
    if logits.shape[:2] != labels.shape:
        gap = logits.shape[1] - labels.shape[1]
        hint = (f" The logits are {gap} positions longer: if that is the image patches, align the labels "
                f"with align_labels_to_multimodal(labels, n_patches={gap}).") if gap > 0 else ""
        raise LossInputError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not cover the "
                             f"same (batch, sequence) positions.{hint}")


def _at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are upcast (log-softmax over 32k entries needs it); float64 stays float64."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


class _SupervisedRowStats(torch.autograd.Function):
    """What every loss here needs from the rows that predict a supervised label, in float32 (float64 stays
    float64): logsumexp over the vocabulary, the target's logit, and the action-token logits (bin order).

    One fused op so that the gradient reaches ``logits`` through ONE full-size buffer: composing
    slicing and indexing in autograd would zero-fill a (B, S, V) buffer per op, which is what
    dominates the cost of the loss (bench/fan_loss_bench.py).
    """

    @staticmethod
    def forward(ctx, logits, flat_rows, targets, ids):
        vocab_size = logits.shape[-1]
        rows = _at_least_float32(logits.reshape(-1, vocab_size).index_select(0, flat_rows))  # ~8 rows per sample
        lse = torch.logsumexp(rows, dim=-1)
        target_logit = rows.gather(1, targets.unsqueeze(1)).squeeze(1)
        action_columns = rows.index_select(1, ids)
        ctx.save_for_backward(rows, lse, flat_rows, targets, ids)
        ctx.logits_shape, ctx.logits_dtype = logits.shape, logits.dtype
        return lse, target_logit, action_columns

    @staticmethod
    def backward(ctx, grad_lse, grad_target, grad_actions):
        rows, lse, flat_rows, targets, ids = ctx.saved_tensors
        grad_rows = torch.exp(rows - lse.unsqueeze(1)) * grad_lse.unsqueeze(1)  # d lse / d z = softmax
        grad_rows.scatter_add_(1, targets.unsqueeze(1), grad_target.unsqueeze(1))
        grad_rows.index_add_(1, ids, grad_actions)
        grad = torch.zeros(ctx.logits_shape, dtype=ctx.logits_dtype, device=rows.device)
        grad.view(-1, ctx.logits_shape[-1]).index_copy_(0, flat_rows, grad_rows.to(ctx.logits_dtype))
        return grad, None, None, None


@dataclass(frozen=True)
class _SupervisedTokens:
    """One entry per supervised label, row-major over (sample, position); float32 (or float64) statistics."""

    lse: torch.Tensor  # (N,) logsumexp of the predicting logits over the whole vocabulary
    target_logit: torch.Tensor  # (N,)
    action_columns: torch.Tensor  # (N, n_bins) logits of the action tokens, bin order
    row_bins: torch.Tensor  # (N,) bin of the target label, -1 if it is not an action token (EOS)
    sample_index: torch.Tensor  # (N,) batch index

    @property
    def nll(self) -> torch.Tensor:
        return self.lse - self.target_logit


def _supervised_tokens(logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor) -> _SupervisedTokens:
    _check_logits_labels(logits, labels)
    _, seq_len, vocab_size = logits.shape
    targets = labels[:, 1:]  # the logits at position i predict the label at i + 1
    mask = targets != IGNORE_INDEX
    if not bool(mask.any()):
        raise LossInputError("no supervised label in the batch (every label is -100): check the label masking "
                             "and that the action tokens are inside the sequence")
    chosen = targets[mask]
    if int(chosen.min()) < 0 or int(chosen.max()) >= vocab_size:
        raise LossInputError(f"label ids must lie in [0, {vocab_size}) or be {IGNORE_INDEX}; got range "
                             f"[{int(chosen.min())}, {int(chosen.max())}]")
    sample_index, position = torch.nonzero(mask, as_tuple=True)
    flat_rows = sample_index * seq_len + position
    row_bins = _bin_of_token(ids, vocab_size)[chosen] if ids.numel() else torch.full_like(chosen, -1)
    lse, target_logit, action_columns = _SupervisedRowStats.apply(logits, flat_rows, chosen, ids)
    return _SupervisedTokens(lse, target_logit, action_columns, row_bins, sample_index)


def _bin_of_token(ids_in_bin_order: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Lookup table token id -> bin index (-1 for non-action tokens), validating the id list."""
    if ids_in_bin_order.ndim != 1 or ids_in_bin_order.numel() < 2:
        raise LossInputError(f"action_token_ids_in_bin_order must be a 1-D list of the action-token ids in bin "
                             f"order, got shape {tuple(ids_in_bin_order.shape)}")
    if int(ids_in_bin_order.min()) < 0 or int(ids_in_bin_order.max()) >= vocab_size:
        raise LossInputError(f"action-token ids must lie in [0, {vocab_size}) (the logits' vocabulary); got "
                             f"[{int(ids_in_bin_order.min())}, {int(ids_in_bin_order.max())}]")
    if torch.unique(ids_in_bin_order).numel() != ids_in_bin_order.numel():
        raise LossInputError("action_token_ids_in_bin_order contains repeated ids")
    table = torch.full((vocab_size,), -1, dtype=torch.long, device=ids_in_bin_order.device)
    table[ids_in_bin_order] = torch.arange(ids_in_bin_order.numel(), device=ids_in_bin_order.device)
    return table


def action_token_ids_in_bin_order(tokenizer: ActionTokenizer, device: torch.device | str = "cpu") -> torch.Tensor:
    """The tokenizer's action ids in bin (value) order, as the long tensor the losses take."""
    return torch.as_tensor(tokenizer.action_token_ids, dtype=torch.long, device=device)


def _as_id_tensor(ids, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(ids, dtype=torch.long, device=device)


def _action_logits(tokens: _SupervisedTokens, batch_size: int) -> ActionLogits:
    is_action = tokens.row_bins >= 0
    counts = torch.bincount(tokens.sample_index[is_action], minlength=batch_size)
    action_dims = int(counts[0])
    if action_dims == 0 or bool((counts != action_dims).any()):
        raise LossInputError(f"every sample must have the same, non-zero number of action-token labels; counts per "
                             f"sample: {counts.tolist()} (check the label masking and the action-token ids)")
    gathered = tokens.action_columns[is_action]  # (B * D, n_bins), bin order
    return ActionLogits(gathered.view(batch_size, action_dims, -1),
                        tokens.row_bins[is_action].view(batch_size, action_dims))


def extract_action_logits(logits: torch.Tensor, labels: torch.Tensor, action_token_ids_in_bin_order) -> ActionLogits:
    """Per-dimension action logits (B, D, n_bins) in bin order, from full-vocabulary LM logits.

    The rows are the positions that PREDICT each action-token label (one before it), the columns the
    action-token ids reordered into bin order. Returned in float32, or float64 for float64 logits (gradients
    flow back to ``logits``).
    """
    ids = _as_id_tensor(action_token_ids_in_bin_order, logits.device)
    return _action_logits(_supervised_tokens(logits, labels, ids), logits.shape[0])


# --------------------------------------------------------------------------------------------------
# FAN regulariser
# --------------------------------------------------------------------------------------------------


def _log_policy(action_logits: torch.Tensor) -> torch.Tensor:
    if action_logits.ndim < 1 or action_logits.shape[-1] < 2:
        raise LossInputError(f"action logits must end with the bin axis, got shape {tuple(action_logits.shape)}")
    log_pi = torch.log_softmax(_at_least_float32(action_logits), dim=-1)
    # A -inf logit gives log pi = -inf and 0 * inf = nan in the KL; clamping keeps those terms at 0.
    return log_pi.clamp_min(torch.finfo(log_pi.dtype).min)


@torch.no_grad()
def _fan_target(log_pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log q, mode bin, unfloored variance), all constants for autograd (the stop-gradient)."""
    pi = log_pi.exp()
    bin_index = torch.arange(pi.shape[-1], dtype=pi.dtype, device=pi.device)
    mode = pi.argmax(dim=-1, keepdim=True)
    squared_distance = (bin_index - mode.to(pi.dtype)) ** 2
    variance = (pi * squared_distance).sum(dim=-1, keepdim=True)
    log_q = torch.log_softmax(-squared_distance / (2.0 * variance.clamp_min(FAN_VARIANCE_FLOOR_BINS2)), dim=-1)
    return log_q, mode.squeeze(-1), variance.squeeze(-1)


def _fan_kl(log_pi: torch.Tensor) -> torch.Tensor:
    log_q, _, _ = _fan_target(log_pi)
    return (log_pi.exp() * (log_pi - log_q)).sum(dim=-1)


def fan_sft_regularizer(action_logits: torch.Tensor) -> torch.Tensor:
    """Mean over batch and action dimensions of KL(pi_d || q_d); ``action_logits`` (..., n_bins) in bin order.

    pi_d = softmax over the bins; q_d = discretised Gaussian on the bin indices centred on pi_d's mode
    with variance sum_j pi_d(j) (j - mode)^2, floored at 1 (one bin width squared); q_d is a constant
    for the gradient. Computed in float32 for bf16/fp16/fp32 inputs, float64 for float64.
    """
    return _fan_kl(_log_policy(action_logits)).mean()


@torch.no_grad()
def fan_diagnostics(action_logits: torch.Tensor) -> FanDiagnostics:
    """Entropy, spread around the mode, target sigma and mode probability per sample and dimension."""
    log_pi = _log_policy(action_logits.detach())
    pi = log_pi.exp()
    _, mode, variance = _fan_target(log_pi)
    return FanDiagnostics(
        entropy_nats=-(pi * log_pi).sum(dim=-1),
        spread_bins=variance.sqrt(),
        target_sigma_bins=variance.clamp_min(FAN_VARIANCE_FLOOR_BINS2).sqrt(),
        mode_prob=pi.gather(-1, mode.unsqueeze(-1)).squeeze(-1),
        mode_bin=mode,
    )


# --------------------------------------------------------------------------------------------------
# Cross-entropy variants and the single entry point
# --------------------------------------------------------------------------------------------------


def supervised_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised labels (token-weighted, as Hugging Face's LM loss)."""
    no_ids = torch.empty(0, dtype=torch.long, device=logits.device)
    return _supervised_tokens(logits, labels, no_ids).nll.mean()


def _smoothed_cross_entropy(tokens: _SupervisedTokens, epsilon: float) -> torch.Tensor:
    """Action-token targets become (1 - eps) one-hot + eps uniform over the action tokens; the probability is
    still the full-vocabulary softmax. EOS (not an action) keeps its one-hot target."""
    uniform_over_actions = tokens.lse - tokens.action_columns.mean(dim=1)  # mean_a of -log p(a)
    smoothed = (1.0 - epsilon) * tokens.nll + epsilon * uniform_over_actions
    return torch.where(tokens.row_bins >= 0, smoothed, tokens.nll).mean()


def _check_weight(name: str, value: float, upper: float | None = None) -> None:
    if not value >= 0.0 or (upper is not None and value > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise LossInputError(f"{name} must be {bound}, got {value}")


def compute_loss(
    method: str,
    logits: torch.Tensor,
    labels: torch.Tensor,
    action_token_ids_in_bin_order,
    alpha: float = DEFAULT_FAN_ALPHA,
    epsilon: float = DEFAULT_LABEL_SMOOTHING_EPSILON,
    with_diagnostics: bool = True,
) -> LossOutput:
    """The training loss of ``method`` ("sft", "fan-sft", "label-smoothing") for one batch.

    ``logits`` (B, S, V) and ``labels`` (B, S) follow the module's sequence convention. ``alpha`` is used
    by fan-sft only, ``epsilon`` by label-smoothing only. Diagnostics never carry gradients.
    """
    if method not in METHODS:
        raise LossInputError(f"unknown loss method {method!r}; valid methods: {', '.join(METHODS)}")
    _check_weight("alpha", alpha)
    _check_weight("epsilon", epsilon, upper=1.0)
    ids = _as_id_tensor(action_token_ids_in_bin_order, logits.device)
    tokens = _supervised_tokens(logits, labels, ids)
    needs_actions = method == "fan-sft" or with_diagnostics
    actions = _action_logits(tokens, logits.shape[0]) if needs_actions else None
    ce = tokens.nll.mean()
    total = _smoothed_cross_entropy(tokens, epsilon) if method == "label-smoothing" else ce

    fan_kl = None
    if method == "fan-sft":
        fan_kl = fan_sft_regularizer(actions.logits)
        total = ce + alpha * fan_kl
    elif with_diagnostics:
        with torch.no_grad():
            fan_kl = fan_sft_regularizer(actions.logits)
    diagnostics = fan_diagnostics(actions.logits) if with_diagnostics else None
    if fan_kl is not None:
        fan_kl = fan_kl.detach()
    return LossOutput(total=total, ce=ce.detach(), reg=(total - ce).detach(), diagnostics=diagnostics,
                      fan_kl=fan_kl)
