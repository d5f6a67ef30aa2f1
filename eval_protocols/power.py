"""What a comparison could have detected: exact power of the report's tests, and the minimum detectable difference.

"Not significant" at 30 trials an arm often only means "too few trials". For each comparison the report states
the smallest difference in success rate that the run had an 80% chance to declare significant, computed at the
observed base rate:

- unpaired (two runs, Fisher's exact test): arm a's rate is the base rate p0; arm b's rate is p0 + delta; the power
  is the exact probability, over Binomial(n_a, p0) x Binomial(n_b, p0 + delta), of the tables Fisher's test rejects
  at the significance level. The minimum detectable difference is the smallest |delta| on a 0.1-point grid with
  power >= 80%, upwards and downwards (None where even 0% or 100% is not enough: too few trials).
- paired (an A/B run, McNemar's exact test): at the observed rate of discordant pairs psi, a difference delta means
  B-only pairs at rate (psi + delta) / 2 and A-only pairs at (psi - delta) / 2 (|delta| <= psi); the power sums over
  the number of discordant pairs D ~ Binomial(n, psi) and B's share of them, Binomial(D, (psi + delta) / (2 psi)).

Power curves of exact tests are not monotone in delta (the tests are discrete): "smallest delta on the grid" is
what is reported, and it is what a planner would read off the curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from eval_protocols.paired_stats import mcnemar_exact_two_sided
from eval_protocols.stats import DEFAULT_SIGNIFICANCE, StatsInputError, fisher_exact_two_sided

DEFAULT_POWER = 0.8
GRID_STEP = 0.001  # rates searched for the minimum detectable difference (0.1 percentage point)


def _binomial_pmf(n: int, rates: np.ndarray) -> np.ndarray:
    """(len(rates), n + 1): P(k successes of n) for each rate (exact at rates 0 and 1)."""
    k = np.arange(n + 1)
    coefficients = np.array([math.comb(n, int(i)) for i in k], dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        pmf = coefficients * np.where(k == 0, 1.0, rates ** k) * np.where(k == n, 1.0, (1 - rates) ** (n - k))
    return pmf


@lru_cache(maxsize=64)
def fisher_rejection_region(n_a: int, n_b: int, significance: float) -> np.ndarray:
    """(n_a + 1, n_b + 1) booleans: the tables (successes a, successes b) Fisher's two-sided test rejects."""
    region = np.zeros((n_a + 1, n_b + 1), dtype=bool)
    for x_a in range(n_a + 1):
        for x_b in range(n_b + 1):
            region[x_a, x_b] = fisher_exact_two_sided(x_a, n_a, x_b, n_b) < significance
    region.setflags(write=False)
    return region


def fisher_power(n_a: int, n_b: int, rate_a: float, rate_b: float | np.ndarray,
                 significance: float = DEFAULT_SIGNIFICANCE) -> float | np.ndarray:
    """Exact probability that Fisher's test rejects at ``significance`` when the true rates are rate_a, rate_b."""
    _check_trials(n_a, n_b)
    rates_b = np.atleast_1d(np.asarray(rate_b, dtype=np.float64))
    _check_rates(rate_a, rates_b)
    region = fisher_rejection_region(n_a, n_b, significance).astype(np.float64)
    power = (_binomial_pmf(n_a, np.array([rate_a])) @ region @ _binomial_pmf(n_b, rates_b).T)[0]
    return float(power[0]) if np.ndim(rate_b) == 0 else power


@dataclass(frozen=True)
class DetectableDifference:
    """The smallest differences (rate_b - rate_a, as fractions) detectable with ``power`` at ``base_rate``."""

    base_rate: float
    down: float | None  # negative: the smallest decrease detectable; None: no decrease is (too few trials)
    up: float | None  # positive: the smallest increase detectable; None: no increase is
    power: float
    significance: float
    test: str  # "fisher" | "mcnemar"

    def describe(self) -> str:
        """``-27 / +22 pts`` (or ``none / +22 pts``)."""
        def points(value: float | None) -> str:
            return "none" if value is None else f"{round(100 * value):+d}"

        return f"{points(self.down)} / {points(self.up)} pts"

    def to_dict(self) -> dict[str, object]:
        return {"base_rate": self.base_rate, "down": self.down, "up": self.up, "power": self.power,
                "significance": self.significance, "test": self.test}


def minimum_detectable_difference(n_a: int, n_b: int, base_rate: float, significance: float = DEFAULT_SIGNIFICANCE,
                                  power: float = DEFAULT_POWER) -> DetectableDifference:
    """Fisher's test, a with ``n_a`` trials at ``base_rate``, b with ``n_b`` trials (see the module docstring)."""
    _check_trials(n_a, n_b)
    _check_rates(base_rate, np.array([base_rate]))
    _check_level("power", power)
    _check_level("significance", significance)
    grid = np.round(np.arange(0.0, 1.0 + GRID_STEP / 2, GRID_STEP), 6)
    powers = fisher_power(n_a, n_b, base_rate, grid, significance)
    return DetectableDifference(base_rate, _first(grid, powers, base_rate, power, -1),
                                _first(grid, powers, base_rate, power, +1), power, significance, "fisher")


@lru_cache(maxsize=64)
def mcnemar_rejection_region(pairs: int, significance: float) -> np.ndarray:
    """(pairs + 1, pairs + 1) booleans: [discordant D, B-only k] rejected by McNemar's exact test (k <= D)."""
    region = np.zeros((pairs + 1, pairs + 1), dtype=bool)
    for discordant in range(pairs + 1):
        for only_b in range(discordant + 1):
            region[discordant, only_b] = mcnemar_exact_two_sided(discordant - only_b, only_b) < significance
    region.setflags(write=False)
    return region


def mcnemar_power(pairs: int, discordant_rate: float, difference: float | np.ndarray,
                  significance: float = DEFAULT_SIGNIFICANCE) -> float | np.ndarray:
    """Exact power of McNemar's test with ``pairs`` pairs, discordant at ``discordant_rate``, and rate_b - rate_a =
    ``difference`` (|difference| <= discordant_rate; an array gives one power each)."""
    _check_trials(pairs, pairs)
    differences = np.atleast_1d(np.asarray(difference, dtype=np.float64))
    if not 0.0 <= discordant_rate <= 1.0 or np.any(np.abs(differences) > discordant_rate + 1e-12):
        raise StatsInputError(f"need 0 <= discordant rate <= 1 and |difference| <= discordant rate, got "
                              f"{discordant_rate} and {difference}")
    power = np.zeros(differences.shape)
    if discordant_rate > 0.0:
        shares_b = np.clip((discordant_rate + differences) / (2 * discordant_rate), 0.0, 1.0)
        region = mcnemar_rejection_region(pairs, significance).astype(np.float64)
        count_pmf = _binomial_pmf(pairs, np.array([discordant_rate]))[0]
        for discordant in range(1, pairs + 1):
            power += count_pmf[discordant] * (_binomial_pmf(discordant, shares_b) @ region[discordant, :discordant + 1])
    return float(power[0]) if np.ndim(difference) == 0 else power


def paired_minimum_detectable_difference(pairs: int, discordant_rate: float,
                                         significance: float = DEFAULT_SIGNIFICANCE,
                                         power: float = DEFAULT_POWER) -> DetectableDifference:
    """McNemar's test at the observed discordant rate (the test is symmetric: down = -up)."""
    _check_level("power", power)
    _check_level("significance", significance)
    steps = np.arange(1, int(np.floor(discordant_rate / GRID_STEP + 1e-9)) + 1)
    differences = np.round(np.minimum(discordant_rate, steps * GRID_STEP), 6)
    hits = np.flatnonzero(mcnemar_power(pairs, discordant_rate, differences, significance) >= power) \
        if differences.size else np.array([], dtype=int)
    up = float(differences[hits[0]]) if hits.size else None
    return DetectableDifference(discordant_rate, None if up is None else -up, up, power, significance, "mcnemar")


def _first(grid: np.ndarray, powers: np.ndarray, base: float, target: float, direction: int) -> float | None:
    """The smallest |delta| along ``direction`` with power >= target (grid points are absolute rates)."""
    candidates = grid > base + 1e-12 if direction > 0 else grid < base - 1e-12
    hits = np.flatnonzero(candidates & (powers >= target))
    if hits.size == 0:
        return None
    index = hits[0] if direction > 0 else hits[-1]
    return round(float(grid[index] - base), 6)


def _check_trials(n_a: int, n_b: int) -> None:
    for name, value in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise StatsInputError(f"{name} must be a positive int, got {value!r}")


def _check_rates(rate_a: float, rates_b: np.ndarray) -> None:
    if not 0.0 <= rate_a <= 1.0 or np.any((rates_b < 0.0) | (rates_b > 1.0)) or np.any(~np.isfinite(rates_b)):
        raise StatsInputError(f"success rates must lie in [0, 1], got {rate_a} and {rates_b}")


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise StatsInputError(f"{name} must be between 0 and 1, got {value}")
