"""Injected latency specifications: ``N`` and ``N+-M`` milliseconds, bounded, reproducible draws."""

from __future__ import annotations

import numpy as np
import pytest

from robot.injected_latency import LatencyError, LatencySpec


@pytest.mark.parametrize(("text", "mean", "spread"), [
    ("150", 150, 0), (" 150 +- 30 ", 150, 30), ("150+/-30", 150, 30), ("150±30", 150, 30), ("0", 0, 0),
    ("12.5", 12.5, 0), (None, 0, 0), (200, 200, 0)])
def test_parse(text, mean, spread):
    spec = LatencySpec.parse(text)
    assert (spec.mean_ms, spec.spread_ms) == (mean, spread)
    assert LatencySpec.parse(str(spec)) == spec


@pytest.mark.parametrize(("text", "message"), [("fast", "expected milliseconds"), ("-5", "expected milliseconds"),
                                               ("150+-", "expected milliseconds"), ("100+-150", "may not exceed"),
                                               ("1e9", "expected milliseconds"), ("90000", "at most"),
                                               ("nan", "expected milliseconds")])
def test_bad_specifications_are_refused_with_the_reason(text, message):
    with pytest.raises(LatencyError, match=message):
        LatencySpec.parse(text)


def test_draws_stay_in_the_range_and_repeat_for_a_seed():
    spec = LatencySpec.parse("150+-30")

    def draws(seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        return [spec.sample_s(rng) for _ in range(200)]

    first = draws(7)
    assert first == draws(7) and first != draws(8)
    assert min(first) >= 0.12 and max(first) <= 0.18 and max(first) - min(first) > 0.05
    assert spec.max_s == pytest.approx(0.18) and spec.enabled
    assert LatencySpec.parse("150").sample_s(np.random.default_rng(0)) == 0.15
    assert not LatencySpec().enabled and LatencySpec().sample_s(np.random.default_rng(0)) == 0.0
    assert spec.describe() == {"spec_ms": "150+-30", "mean_ms": 150.0, "spread_ms": 30.0, "distribution": "uniform"}
