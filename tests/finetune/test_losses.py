"""compute_loss on LM-shaped logits: SFT equals torch's CE, label smoothing by hand, FAN-SFT wiring, extraction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetune.losses import (
    IGNORE_INDEX,
    METHODS,
    LossInputError,
    action_token_ids_in_bin_order,
    align_labels_to_multimodal,
    compute_loss,
    extract_action_logits,
    fan_sft_regularizer,
    supervised_cross_entropy,
)
from policy.action_tokenizer import ActionTokenizer

# A small vocabulary laid out like Llama's: the 256 action tokens are the last ids before VOCAB_END
# (the tokenizer's reversed rule), followed by padding ids; EOS is id 2.
VOCAB_END = 400
VOCAB = 448
EOS = 2
TOKENIZER = ActionTokenizer(VOCAB_END)
IDS_IN_BIN_ORDER = action_token_ids_in_bin_order(TOKENIZER)


def make_batch(batch: int = 3, seq_len: int = 24, action_dims: int = 7, seed: int = 0):
    """Logits (B, S, V) and labels with the prompt ignored, then D action tokens and EOS, then padding.
    Returns the bin of every action token too (from the tokenizer, not from the loss module)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq_len, VOCAB, generator=gen) * 3.0
    labels = torch.full((batch, seq_len), IGNORE_INDEX)
    actions = torch.rand(batch, action_dims, generator=gen).numpy() * 2.0 - 1.0
    tokens = torch.from_numpy(TOKENIZER.encode(actions))
    for b in range(batch):
        start = 10 + b  # different prompt lengths per sample
        labels[b, start:start + action_dims] = tokens[b]
        labels[b, start + action_dims] = EOS
    return logits, labels, torch.from_numpy(TOKENIZER.token_to_bin(tokens.numpy()))


def test_sft_equals_torch_cross_entropy_on_the_shifted_positions() -> None:
    logits, labels, _ = make_batch()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    out = compute_loss("sft", logits, labels, IDS_IN_BIN_ORDER)
    torch.testing.assert_close(out.total, expected)
    torch.testing.assert_close(supervised_cross_entropy(logits, labels), expected)
    assert out.reg.item() == 0.0
    # Unshifted (logits at i scored against label i) must differ: the shift is really applied.
    unshifted = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    assert abs(unshifted.item() - out.total.item()) > 1e-3


def test_multimodal_alignment_matches_upstream_slicing() -> None:
    n_patches = 5
    text_logits, labels, _ = make_batch(seq_len=20)
    patches = torch.randn(3, n_patches, VOCAB)
    # OpenVLA's logits: BOS, then the patches, then the remaining text positions.
    logits = torch.cat([text_logits[:, :1], patches, text_logits[:, 1:]], dim=1)
    aligned = align_labels_to_multimodal(labels, n_patches=n_patches)
    assert aligned.shape == logits.shape[:2]
    # Upstream scores logits[:, n_patches:-1] against labels[:, 1:].
    upstream = F.cross_entropy(logits[:, n_patches:-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(supervised_cross_entropy(logits, aligned), upstream)
    with pytest.raises(LossInputError, match="align_labels_to_multimodal"):
        compute_loss("sft", logits, labels, IDS_IN_BIN_ORDER)


def test_extract_action_logits_gathers_the_predicting_rows_in_bin_order() -> None:
    logits, labels, bins = make_batch()
    actions = extract_action_logits(logits, labels, IDS_IN_BIN_ORDER)
    assert actions.logits.shape == (3, 7, 256)
    assert torch.equal(actions.target_bins, bins)
    for b in range(3):
        positions = [p for p in range(1, labels.shape[1]) if VOCAB_END - 256 <= labels[b, p] < VOCAB_END]
        for d, p in enumerate(positions):
            for bin_index in (0, 1, 128, 255):
                token = int(TOKENIZER.bin_to_token(bin_index))
                assert actions.logits[b, d, bin_index] == logits[b, p - 1, token]
    # Bin order = value order: the most negative action's token is column 0.
    assert int(TOKENIZER.token_to_bin(TOKENIZER.encode(-1.0))) == 0


def test_label_smoothing_matches_a_hand_computation() -> None:
    logits, labels, _ = make_batch(batch=2, seq_len=18, action_dims=3, seed=4)
    epsilon = 0.1
    log_p = torch.log_softmax(logits.double(), dim=-1).numpy()
    action_ids = IDS_IN_BIN_ORDER.numpy()
    per_token = []
    for b in range(2):
        for p in range(1, 18):
            y = int(labels[b, p])
            if y == IGNORE_INDEX:
                continue
            row = log_p[b, p - 1]
            if y == EOS:
                per_token.append(-row[y])
            else:
                per_token.append(-(1 - epsilon) * row[y] - epsilon * row[action_ids].mean())
    out = compute_loss("label-smoothing", logits, labels, IDS_IN_BIN_ORDER, epsilon=epsilon)
    assert len(per_token) == 8
    assert out.total.item() == pytest.approx(float(np.mean(per_token)), rel=1e-5)
    assert (out.ce + out.reg).item() == pytest.approx(out.total.item(), rel=1e-6)
    no_smoothing = compute_loss("label-smoothing", logits, labels, IDS_IN_BIN_ORDER, epsilon=0.0)
    sft = compute_loss("sft", logits, labels, IDS_IN_BIN_ORDER)
    assert no_smoothing.total.item() == pytest.approx(sft.total.item(), rel=1e-6)


def test_fan_sft_adds_alpha_times_the_regulariser_on_the_action_rows_only() -> None:
    logits, labels, _ = make_batch(seed=5)
    alpha = 0.3
    grads = {}
    outputs = {}
    for method in ("sft", "fan-sft"):
        x = logits.clone().requires_grad_(True)
        outputs[method] = compute_loss(method, x, labels, IDS_IN_BIN_ORDER, alpha=alpha)
        outputs[method].total.backward()
        grads[method] = x.grad
    kl = fan_sft_regularizer(extract_action_logits(logits, labels, IDS_IN_BIN_ORDER).logits)
    assert outputs["fan-sft"].total.item() == pytest.approx(outputs["sft"].total.item() + alpha * kl.item(), rel=1e-6)
    assert outputs["fan-sft"].fan_kl.item() == pytest.approx(kl.item(), rel=1e-6)
    extra = (grads["fan-sft"] - grads["sft"]).abs()
    changed = extra > 1e-9
    assert changed.any()
    # Only rows that predict an action token, and only the 256 action columns, receive the extra gradient.
    predicts_action = torch.zeros_like(labels, dtype=torch.bool)
    predicts_action[:, :-1] = (labels[:, 1:] >= VOCAB_END - 256) & (labels[:, 1:] < VOCAB_END)
    assert not changed[~predicts_action].any()
    action_columns = torch.zeros(VOCAB, dtype=torch.bool)
    action_columns[IDS_IN_BIN_ORDER] = True
    assert not changed[..., ~action_columns].any()


def test_gradient_of_the_fused_op_equals_plain_autograd() -> None:
    # The fused op has a hand-written backward; plain torch ops on the same numbers must give the same gradient.
    # (FAN-SFT's own gradient is checked in test_losses_fan.py.)
    logits, labels, _ = make_batch(batch=2, seq_len=16, action_dims=2, seed=8)
    weights = torch.randn(2, 2, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    epsilon = 0.2

    def ours(z: torch.Tensor) -> torch.Tensor:
        smoothed = compute_loss("label-smoothing", z, labels, IDS_IN_BIN_ORDER, epsilon=epsilon).total
        gathered = (extract_action_logits(z, labels, IDS_IN_BIN_ORDER).logits * weights).sum()
        return smoothed + supervised_cross_entropy(z, labels) + 0.01 * gathered

    def reference(z: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(z[:, :-1], dim=-1)
        targets = labels[:, 1:]
        terms, gathered = [], []
        for b, p in torch.nonzero(targets != IGNORE_INDEX).tolist():
            y = int(targets[b, p])
            if y == EOS:
                terms.append(-log_p[b, p, y])
            else:
                terms.append(-(1 - epsilon) * log_p[b, p, y] - epsilon * log_p[b, p, IDS_IN_BIN_ORDER].mean())
                gathered.append(z[b, p, IDS_IN_BIN_ORDER])
        ce = F.cross_entropy(z[:, :-1].reshape(-1, VOCAB), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return torch.stack(terms).mean() + ce + 0.01 * (torch.stack(gathered).view(2, 2, 256) * weights).sum()

    grads = []
    for fn in (ours, reference):
        x = logits.double().requires_grad_(True)
        fn(x).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_diagnostics_are_reported_for_every_method_and_never_carry_gradients() -> None:
    logits, labels, _ = make_batch()
    x = logits.clone().requires_grad_(True)
    for method in METHODS:
        out = compute_loss(method, x, labels, IDS_IN_BIN_ORDER)
        assert out.diagnostics.entropy_nats.shape == (3, 7)
        assert not out.diagnostics.entropy_nats.requires_grad and not out.fan_kl.requires_grad
        assert out.total.requires_grad
    assert compute_loss("sft", x, labels, IDS_IN_BIN_ORDER, with_diagnostics=False).diagnostics is None


def test_bf16_logits_give_the_float32_loss_of_the_rounded_values() -> None:
    logits, labels, _ = make_batch(seed=6)
    low = (logits * 20).to(torch.bfloat16).requires_grad_(True)
    out = compute_loss("fan-sft", low, labels, IDS_IN_BIN_ORDER)
    out.total.backward()
    reference = compute_loss("fan-sft", low.detach().float(), labels, IDS_IN_BIN_ORDER)
    assert out.total.item() == pytest.approx(reference.total.item(), rel=1e-6)
    assert math.isfinite(out.total.item()) and torch.isfinite(low.grad.float()).all()


def test_unknown_method_lists_the_valid_ones() -> None:
    logits, labels, _ = make_batch()
    with pytest.raises(LossInputError, match="sft, fan-sft, label-smoothing"):
        compute_loss("fan", logits, labels, IDS_IN_BIN_ORDER)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lg, lb, ids: (lg, torch.full_like(lb, IGNORE_INDEX), ids), "no supervised label"),
        (lambda lg, lb, ids: (lg, lb.masked_fill(torch.arange(lb.shape[1]) == 11, IGNORE_INDEX), ids),
         "same, non-zero number of action-token labels"),
        (lambda lg, lb, ids: (lg, lb, ids[:-1].flip(0).repeat(2)), "repeated ids"),
        (lambda lg, lb, ids: (lg, lb, ids + 100), r"must lie in \[0, 448\)"),
        (lambda lg, lb, ids: (lg[..., :300], lb, ids), r"label ids must lie in \[0, 300\)"),
    ],
)
def test_bad_inputs_get_a_clear_error(mutate, message: str) -> None:
    logits, labels, ids = mutate(*make_batch()[:2], IDS_IN_BIN_ORDER)
    with pytest.raises(LossInputError, match=message):
        compute_loss("fan-sft", logits, labels, ids)


def test_negative_alpha_or_epsilon_above_one_is_refused() -> None:
    logits, labels, _ = make_batch()
    with pytest.raises(LossInputError, match="alpha"):
        compute_loss("fan-sft", logits, labels, IDS_IN_BIN_ORDER, alpha=-0.1)
    with pytest.raises(LossInputError, match="epsilon"):
        compute_loss("label-smoothing", logits, labels, IDS_IN_BIN_ORDER, epsilon=1.5)
