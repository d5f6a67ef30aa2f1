"""Report statistics against hand-derived values, published examples and scipy."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from scipy import stats as scipy_stats

from eval_protocols.stats import (
    StatsInputError,
    TaskOutcome,
    compare_runs,
    fisher_exact_two_sided,
    format_outcome_cell,
    format_results_table,
    newcombe_difference_interval,
    wilson_interval,
)

TASKS = ["Task-1", "Task-2", "Task-3", "Task-4"]
PAPER_SFT = dict(zip(TASKS, [19, 7, 7, 1], strict=True))
PAPER_FAN = dict(zip(TASKS, [22, 12, 17, 7], strict=True))


def paper_runs() -> dict[str, dict[str, TaskOutcome]]:
    return {"OpenVLA + SFT": {t: TaskOutcome(s, 30) for t, s in PAPER_SFT.items()},
            "OpenVLA + FAN-SFT": {t: TaskOutcome(s, 30) for t, s in PAPER_FAN.items()}}


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Wilson score method.
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_published_examples(successes: int, trials: int, low: float, high: float) -> None:
    got_low, got_high = wilson_interval(successes, trials)
    assert got_low == pytest.approx(low, abs=6e-5) and got_high == pytest.approx(high, abs=6e-5)


def test_wilson_interval_by_hand_for_22_of_30() -> None:
    z = 1.959963984540054
    p, n = 22 / 30, 30
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert wilson_interval(22, 30) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(30, 30)[1] == 1.0 and wilson_interval(0, 30)[0] == 0.0
    wider = wilson_interval(22, 30, confidence=0.99)
    assert wider[0] < centre - half and wider[1] > centre + half


def test_fisher_p_values_of_the_papers_table_3() -> None:
    # Task-4 by hand: margins 8 successes / 52 failures, 30 per arm; P(x) = C(30, x) C(30, 8 - x) / C(60, 8).
    # Tables at least as extreme as x = 1 are x in {0, 1, 7, 8}; by symmetry p = 2 (P(0) + P(1)).
    task4 = 2 * Fraction(math.comb(30, 8) + 30 * math.comb(30, 7), math.comb(60, 8))
    assert fisher_exact_two_sided(1, 30, 7, 30) == pytest.approx(float(task4), rel=1e-12)
    assert float(task4) == pytest.approx(0.052315, abs=1e-6)
    expected = {"Task-1": 0.57956, "Task-2": 0.26684, "Task-3": 0.016855, "Task-4": 0.052315}
    comparisons = compare_runs(paper_runs()["OpenVLA + SFT"], paper_runs()["OpenVLA + FAN-SFT"])
    for comparison in comparisons:
        assert comparison.p_value == pytest.approx(expected[comparison.task], rel=1e-4)
        reference = scipy_stats.fisher_exact([[PAPER_SFT[comparison.task], 30 - PAPER_SFT[comparison.task]],
                                              [PAPER_FAN[comparison.task], 30 - PAPER_FAN[comparison.task]]])
        assert comparison.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    # Only Task-3 (7 vs 17) is significant at 0.05; Task-4 (1 vs 7) narrowly is not.
    assert [c.task for c in comparisons if c.significant] == ["Task-3"]


def test_fisher_matches_scipy_on_every_small_table() -> None:
    for n_a, n_b in [(5, 5), (4, 9), (10, 3)]:
        for s_a, s_b in itertools.product(range(n_a + 1), range(n_b + 1)):
            ours = fisher_exact_two_sided(s_a, n_a, s_b, n_b)
            theirs = scipy_stats.fisher_exact([[s_a, n_a - s_a], [s_b, n_b - s_b]]).pvalue
            assert ours == pytest.approx(min(theirs, 1.0), rel=1e-9, abs=1e-15), (s_a, n_a, s_b, n_b)


def test_fisher_of_identical_runs_is_one_and_symmetric() -> None:
    assert fisher_exact_two_sided(12, 30, 12, 30) == pytest.approx(1.0)
    assert fisher_exact_two_sided(3, 30, 20, 30) == fisher_exact_two_sided(20, 30, 3, 30)


@pytest.mark.parametrize(
    ("a", "b", "low", "high"),
    # Newcombe (1998), "Interval estimation for the difference between independent proportions", method 10.
    [((56, 70), (48, 80), 0.0524, 0.3339), ((9, 10), (3, 10), 0.1705, 0.8090), ((5, 56), (0, 29), -0.0381, 0.1926)],
)
def test_newcombe_interval_matches_published_examples(a, b, low: float, high: float) -> None:
    got_low, got_high = newcombe_difference_interval(*a, *b)
    assert got_low == pytest.approx(low, abs=6e-5) and got_high == pytest.approx(high, abs=6e-5)


def test_comparison_difference_is_b_minus_a_with_its_interval() -> None:
    comparison = compare_runs({"t": TaskOutcome(7, 30)}, {"t": TaskOutcome(17, 30)})[0]
    assert comparison.difference == pytest.approx(10 / 30)
    low, high = comparison.difference_interval
    assert low < comparison.difference < high
    assert (low, high) == pytest.approx(newcombe_difference_interval(17, 30, 7, 30))
    assert low > 0  # the interval excludes zero where Fisher's test is significant


def test_table_shaped_like_the_papers_table_3() -> None:
    table = format_results_table(paper_runs())
    lines = table.splitlines()
    assert lines[0] == "| method | Task-1 | Task-2 | Task-3 | Task-4 |"
    assert lines[2].startswith("| OpenVLA + SFT | 19/30 (63%, 95% CI 46-78%) | 7/30 (23%, 95% CI 12-41%) |")
    assert lines[3].startswith("| OpenVLA + FAN-SFT | 22/30 (73%, 95% CI 56-86%) |")
    assert "+33 pts (+9 to +53)" in lines[4]
    assert lines[5] == "| Fisher exact p, OpenVLA + FAN-SFT vs OpenVLA + SFT | 0.580 | 0.267 | 0.017 * | 0.052 |"
    assert "* p < 0.05" in table
    assert format_results_table(paper_runs()) == table  # a pure function of the numbers


def test_table_with_a_chosen_baseline_and_task_order() -> None:
    runs = paper_runs()
    runs["label smoothing"] = {t: TaskOutcome(s, 30) for t, s in zip(TASKS, [20, 9, 8, 2], strict=True)}
    table = format_results_table(runs, tasks=["Task-4", "Task-1"], baseline="OpenVLA + FAN-SFT")
    assert table.splitlines()[0] == "| method | Task-4 | Task-1 |"
    assert "Fisher exact p, OpenVLA + SFT vs OpenVLA + FAN-SFT" in table
    assert "Fisher exact p, label smoothing vs OpenVLA + FAN-SFT" in table
    assert "vs OpenVLA + FAN-SFT | " in table and "OpenVLA + FAN-SFT vs" not in table


def test_cells_for_extreme_rates() -> None:
    assert format_outcome_cell(TaskOutcome(0, 30)) == "0/30 (0%, 95% CI 0-11%)"
    assert format_outcome_cell(TaskOutcome(30, 30)) == "30/30 (100%, 95% CI 89-100%)"
    assert TaskOutcome.from_trials([True, False, True]) == TaskOutcome(2, 3)


@pytest.mark.parametrize("counts", [(31, 30), (-1, 30), (0, 0), (1.0, 30), (True, 3)])
def test_impossible_counts_are_refused(counts) -> None:
    with pytest.raises(StatsInputError):
        TaskOutcome(*counts)


def test_table_refuses_missing_tasks_and_unknown_baseline() -> None:
    runs = paper_runs()
    del runs["OpenVLA + FAN-SFT"]["Task-2"]
    with pytest.raises(StatsInputError, match="Task-2"):
        format_results_table(runs)
    with pytest.raises(StatsInputError, match="baseline"):
        format_results_table(paper_runs(), baseline="PPO")
