"""Statistics for evaluation reports: success rates with Wilson intervals, and two-run comparisons.

- Per task: successes / trials, the rate and its Wilson score interval (good coverage at n = 30 and
  at rates near 0 or 1, where the normal "Wald" interval fails).
- Two runs, per task: Fisher's exact test (two-sided, computed exactly from the hypergeometric
  distribution with integer arithmetic) and the difference in rates with Newcombe's hybrid score
  interval (his method 10: built from the two Wilson intervals; it stays inside [-1, 1] and behaves
  well for small n and extreme rates).
- ``format_results_table``: a Markdown table shaped like the paper's Table 3.

Pure functions of the counts: no I/O, no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

DEFAULT_CONFIDENCE = 0.95
DEFAULT_SIGNIFICANCE = 0.05


class StatsInputError(ValueError):
    """Counts that cannot describe a set of trials; the message says which and why."""


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StatsInputError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class TaskOutcome:
    """Successes out of trials for one task of one run."""

    successes: int
    trials: int

    def __post_init__(self) -> None:
        _check_count("successes", self.successes)
        _check_count("trials", self.trials)
        if self.trials < 1 or not 0 <= self.successes <= self.trials:
            raise StatsInputError(f"need 0 <= successes <= trials and trials >= 1, got {self.successes}/{self.trials}")

    @classmethod
    def from_trials(cls, outcomes: Iterable[bool]) -> TaskOutcome:
        """From one success flag per trial."""
        flags = [bool(flag) for flag in outcomes]
        return cls(sum(flags), len(flags))

    @property
    def rate(self) -> float:
        return self.successes / self.trials

    def wilson_interval(self, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
        return wilson_interval(self.successes, self.trials, confidence)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise StatsInputError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    TaskOutcome(successes, trials)  # validates the counts
    z = _z(confidence)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # Exact bounds at 0 and n (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == trials else min(1.0, centre + half_width)
    return low, high


def fisher_exact_two_sided(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> float:
    """Two-sided Fisher exact p-value for the 2x2 table (successes, failures) x (run a, run b).

    Conditioning on the margins, the successes of run a follow a hypergeometric distribution; the
    p-value sums the probabilities of every table no more likely than the observed one. The weights
    C(K, x) C(N - K, n - x) are exact integers, so ties are decided exactly (no tolerance needed).
    """
    TaskOutcome(successes_a, trials_a)
    TaskOutcome(successes_b, trials_b)
    total_successes = successes_a + successes_b
    total_failures = (trials_a - successes_a) + (trials_b - successes_b)

    def weight(x: int) -> int:  # tables with x successes in run a
        return math.comb(total_successes, x) * math.comb(total_failures, trials_a - x)

    observed = weight(successes_a)
    lowest = max(0, trials_a - total_failures)
    highest = min(trials_a, total_successes)
    weights = [weight(x) for x in range(lowest, highest + 1)]
    p_value = Fraction(sum(w for w in weights if w <= observed), sum(weights))
    return float(p_value)


def newcombe_difference_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                                 confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval for rate_a - rate_b (from the two Wilson intervals)."""
    p_a, p_b = successes_a / trials_a, successes_b / trials_b
    low_a, high_a = wilson_interval(successes_a, trials_a, confidence)
    low_b, high_b = wilson_interval(successes_b, trials_b, confidence)
    difference = p_a - p_b
    below = math.sqrt((p_a - low_a) ** 2 + (high_b - p_b) ** 2)
    above = math.sqrt((high_a - p_a) ** 2 + (p_b - low_b) ** 2)
    return max(-1.0, difference - below), min(1.0, difference + above)


@dataclass(frozen=True)
class TaskComparison:
    """Run b against run a on one task; ``difference`` = rate_b - rate_a."""

    task: str
    a: TaskOutcome
    b: TaskOutcome
    difference: float
    difference_interval: tuple[float, float]
    p_value: float
    significant: bool


def compare_task(task: str, a: TaskOutcome, b: TaskOutcome, significance: float = DEFAULT_SIGNIFICANCE,
                 confidence: float = DEFAULT_CONFIDENCE) -> TaskComparison:
    p_value = fisher_exact_two_sided(a.successes, a.trials, b.successes, b.trials)
    interval = newcombe_difference_interval(b.successes, b.trials, a.successes, a.trials, confidence)
    return TaskComparison(task, a, b, b.rate - a.rate, interval, p_value, p_value < significance)


def compare_runs(run_a: Mapping[str, TaskOutcome], run_b: Mapping[str, TaskOutcome],
                 significance: float = DEFAULT_SIGNIFICANCE,
                 confidence: float = DEFAULT_CONFIDENCE) -> list[TaskComparison]:
    """Per-task comparison of run b against run a (baseline), in run a's task order."""
    if set(run_a) != set(run_b):
        raise StatsInputError(f"the runs cover different tasks: {sorted(run_a)} vs {sorted(run_b)}")
    return [compare_task(task, run_a[task], run_b[task], significance, confidence) for task in run_a]


# --------------------------------------------------------------------------------------------------
# Markdown report
# --------------------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{round(100 * value + 1e-9):d}"  # counts / 30 never sit on .5, the epsilon keeps it deterministic


def format_outcome_cell(outcome: TaskOutcome, confidence: float = DEFAULT_CONFIDENCE) -> str:
    """``22/30 (73%, 95% CI 56-86%)``"""
    low, high = outcome.wilson_interval(confidence)
    level = _percent(confidence)
    return (f"{outcome.successes}/{outcome.trials} ({_percent(outcome.rate)}%, {level}% CI "
            f"{_percent(low)}-{_percent(high)}%)")


def format_p_value(p_value: float, significance: float = DEFAULT_SIGNIFICANCE) -> str:
    text = "<0.001" if p_value < 0.001 else f"{p_value:.3f}"
    return f"{text} *" if p_value < significance else text


def _signed_points(value: float) -> str:
    points = round(100 * value + (1e-9 if value >= 0 else -1e-9))
    return f"{points:+d}" if points else "0"


def format_difference_cell(comparison: TaskComparison) -> str:
    """``+33 pts (9 to 53)``: difference in percentage points with its interval."""
    low, high = comparison.difference_interval
    return f"{_signed_points(comparison.difference)} pts ({_signed_points(low)} to {_signed_points(high)})"


def format_results_table(results: Mapping[str, Mapping[str, TaskOutcome]], tasks: Sequence[str] | None = None,
                         baseline: str | None = None, significance: float = DEFAULT_SIGNIFICANCE,
                         confidence: float = DEFAULT_CONFIDENCE) -> str:
    """Markdown table: rows = methods, columns = tasks; then, for every method other than the baseline
    (default: the first), its difference to the baseline and the Fisher exact p-value per task."""
    if not results:
        raise StatsInputError("no results to format")
    methods = list(results)
    baseline = methods[0] if baseline is None else baseline
    if baseline not in results:
        raise StatsInputError(f"baseline {baseline!r} is not one of the methods {methods}")
    tasks = list(tasks) if tasks is not None else list(results[baseline])
    for method, outcomes in results.items():
        missing = [task for task in tasks if task not in outcomes]
        if missing:
            raise StatsInputError(f"method {method!r} has no result for task(s) {missing}")

    level = _percent(confidence)
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method in methods:
        cells = [format_outcome_cell(results[method][task], confidence) for task in tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method in (m for m in methods if m != baseline):
        comparisons = [compare_task(task, results[baseline][task], results[method][task], significance, confidence)
                       for task in tasks]
        lines.append(f"| Δ rate, {method} vs {baseline} ({level}% CI) | "
                     + " | ".join(format_difference_cell(c) for c in comparisons) + " |")
        lines.append(f"| Fisher exact p, {method} vs {baseline} | "
                     + " | ".join(format_p_value(c.p_value, significance) for c in comparisons) + " |")
    notes = (f"Cells: successes/trials (rate, {level}% Wilson interval). Differences in percentage points with "
             f"Newcombe's hybrid score interval. p: two-sided Fisher exact test; * p < {significance:g}. The two "
             f"can disagree near the threshold: Fisher's test conditions on the margins and is conservative.")
    return "\n".join(lines) + "\n\n" + notes + "\n"
