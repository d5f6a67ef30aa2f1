"""Paired comparisons: two policies run on the same trial situations (``fanvla eval ab``).

When both policies face every situation, the evidence about their difference is in the *discordant* pairs:
situations one policy solved and the other did not. Pairs both solved or both failed say how hard the situation
was, not which policy is better. McNemar's exact test conditions on the number of discordant pairs: under "no
difference" each one goes either way with probability 1/2, so the count of B-only successes among them is
Binomial(discordant, 1/2). Pairing removes the situation-to-situation variance that Fisher's unpaired test
(``eval_protocols.stats``) must carry, so it detects smaller differences at the same number of trials.

Pure functions of the counts; exact rational arithmetic, so ties and symmetric tails are decided exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from eval_protocols.stats import StatsInputError, _check_count


@dataclass(frozen=True)
class PairedCounts:
    """The 2x2 table of paired outcomes: how many situations each combination of (A, B) outcomes had."""

    both: int  # A and B succeeded
    only_a: int  # A succeeded, B failed
    only_b: int  # B succeeded, A failed
    neither: int

    def __post_init__(self) -> None:
        for name in ("both", "only_a", "only_b", "neither"):
            if _check_count(name, getattr(self, name)) < 0:
                raise StatsInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pairs < 1:
            raise StatsInputError("a paired comparison needs at least one pair")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[bool, bool]]) -> PairedCounts:
        """From (success of A, success of B) per situation."""
        counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
        for a, b in pairs:
            counts[(bool(a), bool(b))] += 1
        return cls(counts[(True, True)], counts[(True, False)], counts[(False, True)], counts[(False, False)])

    @property
    def pairs(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def discordant(self) -> int:
        return self.only_a + self.only_b

    @property
    def successes_a(self) -> int:
        return self.both + self.only_a

    @property
    def successes_b(self) -> int:
        return self.both + self.only_b

    @property
    def difference(self) -> float:
        """rate_b - rate_a (the same as (only_b - only_a) / pairs)."""
        return (self.only_b - self.only_a) / self.pairs


def mcnemar_exact_two_sided(only_a: int, only_b: int) -> float:
    """McNemar's exact (conditional binomial) two-sided p-value from the discordant counts.

    p = sum of Binomial(n, 1/2) probabilities no larger than the observed one, n = only_a + only_b: twice the smaller
    tail, capped at 1 (the distribution is symmetric). No discordant pair: p = 1.
    """
    for name, value in (("only_a", only_a), ("only_b", only_b)):
        if _check_count(name, value) < 0:
            raise StatsInputError(f"{name} must be >= 0, got {value}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    observed = math.comb(n, only_a)
    weights = [math.comb(n, k) for k in range(n + 1)]
    return float(min(Fraction(1), Fraction(sum(w for w in weights if w <= observed), 2 ** n)))


@dataclass(frozen=True)
class PairedComparison:
    task: str
    counts: PairedCounts
    mcnemar_p: float
    significant: bool

    @property
    def difference(self) -> float:
        return self.counts.difference


def compare_paired(task: str, counts: PairedCounts, significance: float = 0.05) -> PairedComparison:
    p_value = mcnemar_exact_two_sided(counts.only_a, counts.only_b)
    return PairedComparison(task, counts, p_value, p_value < significance)
