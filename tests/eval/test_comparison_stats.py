"""The comparison statistics against scipy or exact enumeration: McNemar (paired), the stratified tests over training
seeds (exact conditional and CMH), the exact power / minimum detectable difference, and the sequential design's
error rate by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from eval_protocols.paired_stats import PairedCounts, compare_paired, mcnemar_exact_two_sided
from eval_protocols.power import (
    fisher_power,
    mcnemar_power,
    minimum_detectable_difference,
    paired_minimum_detectable_difference,
)
from eval_protocols.sequential import Outcome, SequentialDesign
from eval_protocols.stats import StatsInputError, TaskOutcome, fisher_exact_two_sided
from eval_protocols.stratified import (
    SeedSpread,
    Stratum,
    cmh_test,
    exact_stratified_test,
    mantel_haenszel_odds_ratio,
    pooled,
)

# -- McNemar ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("only_a,only_b", [(a, b) for a in range(0, 16) for b in range(0, 16) if a + b > 0])
def test_mcnemar_exact_equals_scipys_two_sided_binomial_test(only_a, only_b):
    expected = sps.binomtest(only_b, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact_two_sided(only_a, only_b) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_paired_counts_from_pairs_and_the_comparison():
    pairs = [(True, True)] * 12 + [(True, False)] * 1 + [(False, True)] * 9 + [(False, False)] * 8
    counts = PairedCounts.from_pairs(pairs)
    assert (counts.both, counts.only_a, counts.only_b, counts.neither) == (12, 1, 9, 8)
    assert (counts.successes_a, counts.successes_b, counts.discordant) == (13, 21, 10)
    assert counts.difference == pytest.approx(8 / 30)
    comparison = compare_paired("task1", counts)
    assert comparison.mcnemar_p == pytest.approx(sps.binomtest(9, 10, 0.5).pvalue)  # 0.0215
    assert comparison.significant
    # The same counts unpaired: Fisher does not see it (the pairing removed the situations' variance).
    assert fisher_exact_two_sided(13, 30, 21, 30) > 0.05
    assert mcnemar_exact_two_sided(0, 0) == 1.0
    with pytest.raises(StatsInputError):
        PairedCounts(0, 0, 0, 0)
    with pytest.raises(StatsInputError):
        mcnemar_exact_two_sided(-1, 3)


# -- stratified ------------------------------------------------------------------------------------------------------


def _stratum(sa: int, na: int, sb: int, nb: int) -> Stratum:
    return Stratum(TaskOutcome(sa, na), TaskOutcome(sb, nb))


def _brute_force_exact_stratified(strata: list[Stratum]) -> float:
    """Enumerate every combination of A's successes per stratum given its margins (scipy's hypergeometric pmf)."""
    per_stratum = []
    for s in strata:
        m = s.successes
        xs = range(max(0, m - s.b.trials), min(s.a.trials, m) + 1)
        per_stratum.append([(x, sps.hypergeom.pmf(x, s.trials, s.a.trials, m)) for x in xs])
    totals: dict[int, float] = {}
    for combination in itertools.product(*per_stratum):
        total = sum(x for x, _ in combination)
        totals[total] = totals.get(total, 0.0) + math.prod(p for _, p in combination)
    observed = totals[sum(s.a.successes for s in strata)]
    return sum(p for p in totals.values() if p <= observed * (1 + 1e-9))


@pytest.mark.parametrize("counts", [(26, 30, 16, 30), (22, 30, 16, 30), (0, 10, 10, 10), (5, 5, 5, 5), (3, 7, 1, 9)])
def test_exact_stratified_with_one_stratum_is_scipys_fisher(counts):
    sa, na, sb, nb = counts
    expected = sps.fisher_exact([[sa, na - sa], [sb, nb - sb]]).pvalue
    assert exact_stratified_test([_stratum(*counts)]).p_value == pytest.approx(expected, rel=1e-9)
    assert exact_stratified_test([_stratum(*counts)]).p_value == pytest.approx(fisher_exact_two_sided(*counts),
                                                                               rel=1e-12)


def test_exact_stratified_matches_enumeration_over_random_strata():
    rng = np.random.default_rng(26)
    for _ in range(40):
        strata = []
        for _ in range(int(rng.integers(2, 4))):
            na, nb = (int(v) for v in rng.integers(3, 13, 2))
            strata.append(_stratum(int(rng.integers(0, na + 1)), na, int(rng.integers(0, nb + 1)), nb))
        assert exact_stratified_test(strata).p_value == pytest.approx(_brute_force_exact_stratified(strata),
                                                                      rel=1e-7, abs=1e-12)


def test_cmh_with_one_stratum_is_n_minus_1_over_n_times_pearson():
    sa, na, sb, nb = 26, 30, 16, 30
    pearson = sps.chi2_contingency([[sa, na - sa], [sb, nb - sb]], correction=False).statistic
    result = cmh_test([_stratum(sa, na, sb, nb)], continuity=False)
    assert result.statistic == pytest.approx(pearson * (na + nb - 1) / (na + nb), rel=1e-12)
    assert result.p_value == pytest.approx(sps.chi2.sf(result.statistic, 1), rel=1e-12)


def test_cmh_agrees_with_the_exact_test_on_large_strata_and_pools_the_evidence():
    strata = [_stratum(140, 200, 124, 200), _stratum(150, 200, 135, 200), _stratum(133, 200, 119, 200)]
    exact, cmh = exact_stratified_test(strata).p_value, cmh_test(strata).p_value
    assert cmh == pytest.approx(exact, rel=0.1)
    # Each seed alone is far from significant; the three together are.
    assert all(exact_stratified_test([s]).p_value > 0.1 for s in strata) and exact < 0.01


def test_stratification_does_not_let_a_lucky_seed_stand_in_for_the_method():
    # Simpson's setup: within every seed B is no better than A, but B's trials sit in the easy seed.
    strata = [_stratum(9, 10, 45, 50), _stratum(10, 50, 2, 10)]
    pooled_a, pooled_b = pooled([s.a for s in strata]), pooled([s.b for s in strata])
    assert fisher_exact_two_sided(pooled_a.successes, pooled_a.trials, pooled_b.successes, pooled_b.trials) < 1e-6
    assert exact_stratified_test(strata).p_value > 0.5
    assert mantel_haenszel_odds_ratio(strata) == pytest.approx(1.0, abs=0.05)


def test_mantel_haenszel_odds_ratio_of_one_stratum_is_the_sample_odds_ratio():
    assert mantel_haenszel_odds_ratio([_stratum(16, 30, 26, 30)]) == pytest.approx((26 * 14) / (16 * 4))
    assert mantel_haenszel_odds_ratio([_stratum(10, 10, 10, 10)]) is None
    assert mantel_haenszel_odds_ratio([_stratum(10, 10, 10, 10), _stratum(0, 10, 5, 10)]) == math.inf


def test_seed_spread_and_refusals():
    spread = SeedSpread((0.9, 0.7, 0.8))
    assert (spread.low, spread.high) == (0.7, 0.9) and spread.std == pytest.approx(0.1)
    assert SeedSpread((0.5,)).std is None
    with pytest.raises(StatsInputError):
        exact_stratified_test([])
    with pytest.raises(StatsInputError):
        pooled([])


# -- power -----------------------------------------------------------------------------------------------------------


def test_fisher_power_equals_enumeration_with_scipy():
    n_a, n_b, rate_a, rate_b = 9, 11, 0.4, 0.85
    expected = sum(sps.binom.pmf(xa, n_a, rate_a) * sps.binom.pmf(xb, n_b, rate_b)
                   for xa in range(n_a + 1) for xb in range(n_b + 1)
                   if sps.fisher_exact([[xa, n_a - xa], [xb, n_b - xb]]).pvalue < 0.05)
    assert fisher_power(n_a, n_b, rate_a, rate_b) == pytest.approx(expected, rel=1e-9)
    # No difference: the power is the test's size, at most the level (Fisher's test is conservative).
    assert 0.0 < fisher_power(30, 30, 0.7, 0.7) <= 0.05


def test_mcnemar_power_equals_enumeration_with_scipy():
    pairs, psi, delta = 12, 0.5, 0.3
    p_b, p_a = (psi + delta) / 2, (psi - delta) / 2
    expected = 0.0
    for only_a in range(pairs + 1):
        for only_b in range(pairs + 1 - only_a):
            if only_a + only_b and sps.binomtest(only_b, only_a + only_b, 0.5).pvalue < 0.05:
                expected += sps.multinomial.pmf([only_a, only_b, pairs - only_a - only_b], pairs,
                                                [p_a, p_b, 1 - psi])
    assert mcnemar_power(pairs, psi, delta) == pytest.approx(expected, rel=1e-9)
    assert mcnemar_power(30, 0.3, 0.0) <= 0.05


def test_minimum_detectable_difference_is_the_smallest_grid_step_with_80_percent_power():
    mdd = minimum_detectable_difference(30, 30, 0.7)
    assert mdd.up is not None and mdd.down is not None and mdd.down < 0 < mdd.up
    assert fisher_power(30, 30, 0.7, 0.7 + mdd.up) >= 0.8
    below = np.round(np.arange(0.7 + 0.001, 0.7 + mdd.up - 0.0005, 0.001), 6)
    assert np.all(fisher_power(30, 30, 0.7, below) < 0.8)
    assert 0.2 <= mdd.up <= 0.3  # the "roughly 23 points" at 30 trials an arm
    assert minimum_detectable_difference(30, 30, 0.95).up is None  # no increase from 95% is detectable at n = 30
    assert minimum_detectable_difference(3, 3, 0.5).describe() == "none / none pts"
    paired = paired_minimum_detectable_difference(30, 0.4)
    assert paired.up == -paired.down and mcnemar_power(30, 0.4, paired.up) >= 0.8
    assert paired.up < minimum_detectable_difference(30, 30, 0.5).up  # pairing detects smaller gaps


# -- sequential ------------------------------------------------------------------------------------------------------


def _paired_outcomes(rng, comparisons: int, pairs: int, rate_a: float, rate_b: float, situation_sd: float):
    """Correlated pairs: every situation has its own difficulty, shared by A and B (what pairing is for)."""
    difficulty = rng.normal(0.0, situation_sd, (comparisons, pairs))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    a = rng.random((comparisons, pairs)) < 1 / (1 + np.exp(-(logit(rate_a) + difficulty)))
    b = rng.random((comparisons, pairs)) < 1 / (1 + np.exp(-(logit(rate_b) + difficulty)))
    return a, b


def test_sequential_design_holds_its_level_exactly_for_every_number_of_discordant_pairs():
    design = SequentialDesign.create(30)
    rates = design.exact_error_rates()
    assert rates.max() <= 0.05 + 1e-12
    assert rates.max() > 0.03  # not a design that never rejects


@pytest.mark.parametrize("base_rate", [0.5, 0.8])
def test_sequential_type_one_error_by_simulation(base_rate):
    design = SequentialDesign.create(30)
    rng = np.random.default_rng(2026 + int(base_rate * 10))
    a, b = _paired_outcomes(rng, 20_000, 30, base_rate, base_rate, 1.0)
    reject, _, used = design.simulate(a, b)
    assert reject.mean() <= 0.05 and used.mean() < 30


def test_peeking_with_a_fixed_test_does_not_hold_the_level_and_the_simulation_sees_it():
    """Stopping at the first McNemar p < 0.05 after every pair: what the sequential design exists to avoid."""
    rng = np.random.default_rng(2031)
    a, b = _paired_outcomes(rng, 20_000, 30, 0.5, 0.5, 0.0)
    score, discordant = np.cumsum(b & ~a, 1) - np.cumsum(a & ~b, 1), np.cumsum(a != b, 1)
    only_b = (discordant + score) // 2
    cache: dict[tuple[int, int], bool] = {}
    for d, k in {(int(d), int(k)) for d, k in zip(discordant.ravel(), only_b.ravel(), strict=True)}:
        cache[(d, k)] = mcnemar_exact_two_sided(d - k, k) < 0.05
    naive = np.vectorize(lambda d, k: cache[(int(d), int(k))])(discordant, only_b).any(axis=1)
    assert naive.mean() > 0.05 + 0.01
    assert SequentialDesign.create(30).simulate(a, b)[0].mean() <= 0.05


def test_sequential_stops_early_when_there_is_a_difference_and_keeps_the_right_direction():
    design = SequentialDesign.create(30)
    rng = np.random.default_rng(7)
    a, b = _paired_outcomes(rng, 20_000, 30, 0.5, 0.9, 1.0)
    reject, b_better, used = design.simulate(a, b)
    fixed = np.array([mcnemar_exact_two_sided(int(x), int(y)) < 0.05
                      for x, y in zip((a & ~b).sum(1), (b & ~a).sum(1), strict=True)])
    assert reject.mean() > 0.8 and fixed.mean() > 0.8
    assert reject.mean() >= fixed.mean() - 0.05  # little power is lost to the early looks
    assert np.all(b_better[reject])
    assert used.mean() < 24  # on average at least 6 of the 30 pairs are saved
    wrong_way = design.simulate(b, a)
    assert not wrong_way[1].any() and wrong_way[0].mean() == reject.mean()


def test_decide_follows_the_same_rules_as_the_vectorised_simulation():
    design = SequentialDesign.create(20)
    rng = np.random.default_rng(3)
    a, b = _paired_outcomes(rng, 300, 20, 0.4, 0.7, 0.8)
    reject, b_better, used = design.simulate(a, b)
    for row in range(len(a)):
        for pairs in range(1, 21):
            only_a = int((a[row, :pairs] & ~b[row, :pairs]).sum())
            only_b = int((b[row, :pairs] & ~a[row, :pairs]).sum())
            decision = design.decide(only_a, only_b, pairs)
            if decision.stop:
                break
        assert pairs == used[row]
        assert (decision.outcome in (Outcome.A_BETTER, Outcome.B_BETTER)) == reject[row]
        assert (decision.outcome is Outcome.B_BETTER) == b_better[row]


def test_design_refuses_bad_input():
    with pytest.raises(StatsInputError):
        SequentialDesign.create(0)
    with pytest.raises(StatsInputError):
        SequentialDesign.create(30, alpha=1.5)
    with pytest.raises(StatsInputError):
        SequentialDesign.create(30).decide(5, 5, 4)
