"""Comparisons pooled over strata: two methods, each trained with several seeds, each seed evaluated.

A training seed is a stratum: seed k gives method A ``successes_a``/``trials_a`` and method B
``successes_b``/``trials_b`` on the same trial situations. Pooling the counts into one 2x2 table would let a
lucky seed of one method stand in for the method; a stratified test compares the methods *within* each seed and
adds up the evidence:

- ``cmh_test``: the Cochran-Mantel-Haenszel test (chi-square, 1 degree of freedom, with the usual continuity
  correction) and the Mantel-Haenszel common odds ratio;
- ``exact_stratified_test``: its exact version, the conditional test given every stratum's margins (the sum over
  strata of A's successes has the convolution of the strata's hypergeometric distributions; two-sided p = the
  probability of every total no more likely than the observed one, computed in integers). With one stratum it is
  Fisher's exact test. This is the one reports lead with: counts of 30 are small for a chi-square approximation.

Pure functions of the counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from eval_protocols.stats import StatsInputError, TaskOutcome


@dataclass(frozen=True)
class Stratum:
    """One stratum (a training seed): method A's and method B's outcomes."""

    a: TaskOutcome
    b: TaskOutcome

    @property
    def trials(self) -> int:
        return self.a.trials + self.b.trials

    @property
    def successes(self) -> int:
        return self.a.successes + self.b.successes


@dataclass(frozen=True)
class StratifiedResult:
    statistic: float | None  # CMH chi-square (None for the exact test)
    p_value: float
    odds_ratio: float | None  # Mantel-Haenszel common odds ratio of success, B vs A (None: undefined)
    method: str


def _strata(strata: Sequence[Stratum]) -> list[Stratum]:
    strata = list(strata)
    if not strata:
        raise StatsInputError("a stratified test needs at least one stratum")
    for stratum in strata:
        if not isinstance(stratum, Stratum):
            raise StatsInputError(f"expected Stratum objects, got {type(stratum).__name__}")
    return strata


def mantel_haenszel_odds_ratio(strata: Sequence[Stratum]) -> float | None:
    """sum(b_success * a_failure / n) / sum(a_success * b_failure / n): the common odds ratio of success, B vs A."""
    numerator = denominator = 0.0
    for s in _strata(strata):
        n = s.trials
        numerator += s.b.successes * (s.a.trials - s.a.successes) / n
        denominator += s.a.successes * (s.b.trials - s.b.successes) / n
    if denominator == 0.0:
        return None if numerator == 0.0 else math.inf
    return numerator / denominator


def cmh_test(strata: Sequence[Stratum], continuity: bool = True) -> StratifiedResult:
    """Cochran-Mantel-Haenszel chi-square test of "no difference in any stratum" (1 df)."""
    observed = expected = variance = 0.0
    for s in _strata(strata):
        n, successes = s.trials, s.successes
        observed += s.a.successes
        expected += s.a.trials * successes / n
        if n > 1:
            variance += s.a.trials * s.b.trials * successes * (n - successes) / (n * n * (n - 1))
    if variance == 0.0:  # every stratum all successes or all failures: no information
        return StratifiedResult(0.0, 1.0, mantel_haenszel_odds_ratio(strata), "cmh")
    deviation = abs(observed - expected)
    if continuity:
        deviation = max(0.0, deviation - 0.5)
    statistic = deviation * deviation / variance
    p_value = math.erfc(math.sqrt(statistic / 2.0))  # chi-square(1) survival function
    return StratifiedResult(statistic, min(1.0, p_value), mantel_haenszel_odds_ratio(strata), "cmh")


def _hypergeometric_weights(stratum: Stratum) -> tuple[int, list[int]]:
    """(lowest x, integer weights C(n_a, x) C(n_b, m - x) for x = lowest..highest): A's successes given the margins."""
    n_a, n_b, m = stratum.a.trials, stratum.b.trials, stratum.successes
    lowest, highest = max(0, m - n_b), min(n_a, m)
    return lowest, [math.comb(n_a, x) * math.comb(n_b, m - x) for x in range(lowest, highest + 1)]


def exact_stratified_test(strata: Sequence[Stratum]) -> StratifiedResult:
    """Exact conditional test (see the module docstring); equals Fisher's exact test for one stratum."""
    strata = _strata(strata)
    offset, weights = 0, [1]
    for stratum in strata:
        lowest, stratum_weights = _hypergeometric_weights(stratum)
        combined = [0] * (len(weights) + len(stratum_weights) - 1)
        for i, w in enumerate(weights):
            for j, v in enumerate(stratum_weights):
                combined[i + j] += w * v
        offset, weights = offset + lowest, combined
    observed = weights[sum(s.a.successes for s in strata) - offset]
    p_value = Fraction(sum(w for w in weights if w <= observed), sum(weights))
    return StratifiedResult(None, float(p_value), mantel_haenszel_odds_ratio(strata), "exact conditional")


@dataclass(frozen=True)
class SeedSpread:
    """How much one method's rate moved between training seeds on one task."""

    rates: tuple[float, ...]

    @property
    def low(self) -> float:
        return min(self.rates)

    @property
    def high(self) -> float:
        return max(self.rates)

    @property
    def std(self) -> float | None:
        """Sample standard deviation between seeds (None for a single seed)."""
        if len(self.rates) < 2:
            return None
        mean = sum(self.rates) / len(self.rates)
        return math.sqrt(sum((r - mean) ** 2 for r in self.rates) / (len(self.rates) - 1))


def pooled(outcomes: Sequence[TaskOutcome]) -> TaskOutcome:
    """The seeds' trials counted together (for display; tests use the strata)."""
    if not outcomes:
        raise StatsInputError("nothing to pool")
    return TaskOutcome(sum(o.successes for o in outcomes), sum(o.trials for o in outcomes))
