"""The FAN regulariser against an independent NumPy computation, its stop-gradient and its numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune.losses import fan_diagnostics, fan_sft_regularizer

N_BINS = 256


def numpy_fan_kl(logits: np.ndarray, coords: np.ndarray | None = None, bin_width: float = 1.0) -> np.ndarray:
    """KL(pi || q) per row, float64, written directly from the method notes (docs/method.md)."""
    coords = np.arange(N_BINS, dtype=np.float64) if coords is None else coords
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_pi = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    pi = np.exp(log_pi)
    mu = coords[np.argmax(pi, axis=-1)][..., None]
    var = np.maximum((pi * (coords - mu) ** 2).sum(axis=-1, keepdims=True), bin_width**2)
    log_q = -((coords - mu) ** 2) / (2 * var)  # the maximum is 0 (at mu), so exp() below cannot overflow
    log_q = log_q - np.log(np.exp(log_q).sum(axis=-1, keepdims=True))
    return np.where(pi > 0, pi * (log_pi - log_q), 0.0).sum(axis=-1)


def gaussian_logits(centre_bin: float, sigma_bins: float) -> np.ndarray:
    """Logits whose softmax is the discretised Gaussian (log-density up to a constant, no underflow)."""
    return -((np.arange(N_BINS, dtype=np.float64) - centre_bin) ** 2) / (2 * sigma_bins**2)


def discretised_gaussian(centre_bin: float, sigma_bins: float) -> np.ndarray:
    p = np.exp(gaussian_logits(centre_bin, sigma_bins))
    return p / p.sum()


@pytest.mark.parametrize("scale", [0.3, 3.0, 25.0])
def test_regularizer_matches_numpy_reference(scale: float) -> None:
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((4, 7, N_BINS)) * scale).astype(np.float32)
    expected = numpy_fan_kl(logits).mean()
    got = fan_sft_regularizer(torch.from_numpy(logits)).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_kl_is_non_negative_for_every_dimension() -> None:
    rng = np.random.default_rng(3)
    for scale in (0.01, 1.0, 10.0, 100.0):
        logits = torch.from_numpy((rng.standard_normal((6, 7, N_BINS)) * scale).astype(np.float32))
        per_dim = [fan_sft_regularizer(logits[b, d]).item() for b in range(6) for d in range(7)]
        assert min(per_dim) >= -1e-6


def test_zero_when_policy_already_equals_its_target() -> None:
    # A discretised Gaussian far from the edges has spread sigma^2 around its mode, so q(pi) = pi.
    pi = discretised_gaussian(centre_bin=100, sigma_bins=3.0)
    spread = (pi * (np.arange(N_BINS) - 100) ** 2).sum()
    assert spread == pytest.approx(9.0, rel=1e-9)  # the construction really is a fixed point
    # sigma = 1 bin: the floored variance (one bin width squared) makes it a fixed point as well.
    logits = torch.from_numpy(np.stack([gaussian_logits(100, 3.0), gaussian_logits(40, 1.0)])).float()
    assert fan_sft_regularizer(logits).item() == pytest.approx(0.0, abs=1e-6)
    # The same shape off-centre from its mode (two bumps) is not its own target.
    bimodal = 0.5 * discretised_gaussian(60, 3.0) + 0.5 * discretised_gaussian(90, 3.0)
    bimodal_logits = np.log(np.maximum(bimodal, 1e-300))
    assert fan_sft_regularizer(torch.from_numpy(bimodal_logits).float()).item() > 0.1


def test_affine_bin_metric_gives_the_same_value_and_the_floor_must_be_one_bin_in_that_metric() -> None:
    rng = np.random.default_rng(11)
    # Peaked rows (spread below one bin, so the floor is active) and broad rows.
    logits = np.concatenate([rng.standard_normal((3, N_BINS)) * 30.0, rng.standard_normal((3, N_BINS))])
    normalised = np.linspace(-1.0, 1.0, N_BINS)  # upstream's bin edges, one per token; width 2/255
    width = 2.0 / 255.0
    by_index = numpy_fan_kl(logits)
    by_value = numpy_fan_kl(logits, coords=normalised, bin_width=width)
    np.testing.assert_allclose(by_value, by_index, rtol=1e-9, atol=1e-12)
    got = fan_sft_regularizer(torch.from_numpy(logits).float()).item()
    assert got == pytest.approx(by_value.mean(), rel=1e-4)
    # Flooring at 1.0 in the normalised metric (i.e. 127.5 bins) is a different target: the unit matters.
    wrong_floor = numpy_fan_kl(logits, coords=normalised, bin_width=1.0)
    assert abs(wrong_floor[:3] - by_value[:3]).max() > 0.5


def torch_kl_reference(logits: torch.Tensor, detach_target: bool) -> torch.Tensor:
    log_pi = torch.log_softmax(logits, dim=-1)
    pi = log_pi.exp()
    source = pi.detach() if detach_target else pi
    j = torch.arange(N_BINS, dtype=logits.dtype)
    mode = source.argmax(dim=-1, keepdim=True).to(logits.dtype)
    var = (source * (j - mode) ** 2).sum(-1, keepdim=True).clamp_min(1.0)
    log_q = torch.log_softmax(-((j - mode) ** 2) / (2 * var), dim=-1)
    return (pi * (log_pi - log_q)).sum(-1).mean()


def test_no_gradient_flows_through_the_target() -> None:
    torch.manual_seed(0)
    base = torch.randn(3, 7, N_BINS, dtype=torch.float64) * 2.0

    def grad_of(fn) -> torch.Tensor:
        logits = base.clone().requires_grad_(True)
        fn(logits).backward()
        return logits.grad

    ours = grad_of(fan_sft_regularizer).double()
    constant_target = grad_of(lambda x: torch_kl_reference(x, detach_target=True))
    moving_target = grad_of(lambda x: torch_kl_reference(x, detach_target=False))
    torch.testing.assert_close(ours, constant_target, rtol=1e-4, atol=1e-9)
    assert (moving_target - constant_target).abs().max() > 1e-3 * constant_target.abs().max()

    # Closed form with q constant: dKL/dz_k = pi_k (log pi_k - log q_k - KL), divided by the B * D rows.
    z = base.numpy()
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    mu = np.argmax(pi, -1)[..., None]
    j = np.arange(N_BINS)
    var = np.maximum((pi * (j - mu) ** 2).sum(-1, keepdims=True), 1.0)
    log_q = -((j - mu) ** 2) / (2 * var)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    kl = (pi * (np.log(pi) - log_q)).sum(-1, keepdims=True)
    analytic = pi * (np.log(pi) - log_q - kl) / (3 * 7)
    np.testing.assert_allclose(ours.numpy(), analytic, rtol=1e-4, atol=1e-9)


def test_invariant_to_reversing_the_bin_order_but_not_to_shuffling() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 7, N_BINS) * 4.0
    value = fan_sft_regularizer(logits)
    torch.testing.assert_close(fan_sft_regularizer(logits.flip(-1)), value, rtol=1e-5, atol=1e-7)
    shuffled = logits[..., torch.randperm(N_BINS)]
    assert abs(fan_sft_regularizer(shuffled).item() - value.item()) > 1e-3


def test_extreme_logits_stay_finite_and_exact() -> None:
    logits = torch.full((2, 7, N_BINS), -1e4)
    logits[0, :, 128] = 1e4
    logits[1, :, 0] = 1e4  # a one-hot policy at the edge of the range
    logits.requires_grad_(True)
    value = fan_sft_regularizer(logits)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    # One-hot pi: the variance is floored to 1 bin, so KL = -log q(mode) = log sum_j exp(-(j - mode)^2 / 2).
    centre = np.log(np.exp(-(np.arange(-128, 128) ** 2) / 2).sum())  # ~ log sqrt(2 pi)
    edge = np.log(np.exp(-(np.arange(0, 256) ** 2) / 2).sum())  # the Gaussian is cut at bin 0
    assert value.item() == pytest.approx((centre + edge) / 2, rel=1e-5)

    with_inf = torch.randn(2, 7, N_BINS)
    with_inf[..., :50] = float("-inf")
    with_inf.requires_grad_(True)
    value = fan_sft_regularizer(with_inf)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(with_inf.grad).all()


def test_bf16_logits_are_computed_in_float32() -> None:
    torch.manual_seed(2)
    logits = (torch.randn(4, 7, N_BINS) * 60.0).to(torch.bfloat16).requires_grad_(True)
    value = fan_sft_regularizer(logits)
    value.backward()
    assert value.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(logits.grad.float()).all()
    expected = numpy_fan_kl(logits.detach().float().numpy()).mean()
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_diagnostics_of_peaked_and_flat_distributions() -> None:
    logits = torch.zeros(2, 1, N_BINS)
    logits[0, 0, 17] = 50.0  # practically one-hot at bin 17
    diag = fan_diagnostics(logits)
    assert diag.mode_bin.tolist() == [[17], [0]]
    assert diag.mode_prob[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert diag.entropy_nats[0, 0].item() == pytest.approx(0.0, abs=1e-4)
    assert diag.spread_bins[0, 0].item() == pytest.approx(0.0, abs=1e-3)
    assert diag.target_sigma_bins[0, 0].item() == pytest.approx(1.0)
    assert diag.mode_prob[1, 0].item() == pytest.approx(1 / N_BINS)
    assert diag.entropy_nats[1, 0].item() == pytest.approx(np.log(N_BINS), rel=1e-6)
    # Uniform pi, mode at bin 0 (first maximum): spread^2 = mean of j^2.
    assert diag.spread_bins[1, 0].item() ** 2 == pytest.approx(np.mean(np.arange(N_BINS) ** 2.0), rel=1e-5)
    per_dim = diag.per_dimension()
    assert set(per_dim) == {"entropy_nats", "spread_bins", "target_sigma_bins", "mode_prob"}
    assert len(per_dim["entropy_nats"]) == 1
