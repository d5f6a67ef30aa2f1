"""Sequential stopping for a paired A/B comparison: stop a task early when its evidence is decisive.

Looking at a running comparison after every pair and stopping at the first p < 0.05 inflates the error rate far
beyond 5%. This is an exact group-sequential test on the *discordant* pairs (McNemar's setting): under "no
difference" every discordant pair favours B with probability 1/2, independently of everything else, so the
running score S_d = (B-only pairs) - (A-only pairs) after d discordant pairs is a fair +-1 random walk, whatever the
success rates are and however the concordant pairs fall.

The design for at most N pairs and a two-sided level alpha:

- early boundary b_d = ceil(c * sqrt(d)) (Pocock's shape on the walk: the same nominal evidence at every look),
  with c the smallest constant whose crossing probability within N discordant pairs is <= ``early_alpha``
  (computed exactly by dynamic programming over the walk); the comparison stops for a difference as soon as
  |S_d| >= b_d;
- final critical value k_D for when all N pairs ran with D discordant ones: the smallest k with
  P(crossing before D) + P(no crossing before D, |S_D| >= k) <= alpha, again exact; so for *every* D the
  probability of a false "difference" is <= alpha, hence also overall (the looks are at every d, because d grows
  by at most one per pair);
- curtailment: the comparison also stops, as "no significant difference", as soon as no continuation of the
  remaining pairs could reach a boundary (this only removes paths that cannot reject: it costs no error rate).

``tests/eval/test_sequential.py`` checks the error rate by simulating tens of thousands of comparisons with no
true difference, and the trials saved when there is one (the figures are in docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import numpy as np

from eval_protocols.stats import DEFAULT_SIGNIFICANCE, StatsInputError

DEFAULT_EARLY_FRACTION = 0.7  # share of alpha the early looks may spend; the final look gets the rest
_NEVER = 10 ** 9  # a boundary that cannot be reached


class Outcome(StrEnum):
    CONTINUE = "continue"
    A_BETTER = "a better"  # stopped (early or at the end): significant, A succeeds more often
    B_BETTER = "b better"
    NO_DIFFERENCE = "no significant difference"  # at the end, or curtailed: no boundary is reachable any more


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    pairs: int  # pairs seen
    discordant: int
    score: int  # only_b - only_a
    reason: str

    @property
    def stop(self) -> bool:
        return self.outcome is not Outcome.CONTINUE

    def to_dict(self) -> dict[str, object]:
        return {"outcome": self.outcome.value, "pairs": self.pairs, "discordant": self.discordant,
                "score": self.score, "reason": self.reason}


def _step(distribution: np.ndarray) -> np.ndarray:
    """One fair +-1 step of the walk (index = S + N)."""
    stepped = np.zeros_like(distribution)
    stepped[1:] += 0.5 * distribution[:-1]
    stepped[:-1] += 0.5 * distribution[1:]
    return stepped


def _crossing(max_pairs: int, boundary: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cumulative probability of having crossed by d (d = 0..N) and the walk's distribution at d on the paths that
    have not (unnormalised), under no difference."""
    scores = np.abs(np.arange(-max_pairs, max_pairs + 1))
    alive = np.zeros(2 * max_pairs + 1)
    alive[max_pairs] = 1.0
    crossed, alive_at = [0.0], [alive]
    for d in range(1, max_pairs + 1):
        alive = _step(alive)
        hit = scores >= boundary[d]
        crossed.append(crossed[-1] + float(alive[hit].sum()))
        alive = np.where(hit, 0.0, alive)
        alive_at.append(alive)
    return np.array(crossed), alive_at


@dataclass(frozen=True)
class SequentialDesign:
    max_pairs: int
    alpha: float
    early_alpha: float
    constant: float  # c of the early boundary
    boundary: tuple[int, ...]  # b_d, d = 0..N (index 0 unused)
    final: tuple[int, ...]  # k_D, D = 0..N (_NEVER where no D-pair result can be significant)

    @classmethod
    def create(cls, max_pairs: int, alpha: float = DEFAULT_SIGNIFICANCE,
               early_fraction: float = DEFAULT_EARLY_FRACTION) -> SequentialDesign:
        return _design(max_pairs, alpha, early_fraction)

    def exact_error_rates(self) -> np.ndarray:
        """For D = 0..N discordant pairs in all: the exact probability of a false "difference" (each <= alpha)."""
        boundary = np.array(self.boundary)
        crossed, alive_at = _crossing(self.max_pairs, boundary)
        scores = np.abs(np.arange(-self.max_pairs, self.max_pairs + 1))
        rates = [0.0]
        for d in range(1, self.max_pairs + 1):
            at_d = _step(alive_at[d - 1])
            rates.append(crossed[d - 1] + float(at_d[scores >= min(self.final[d], self.boundary[d])].sum()))
        return np.array(rates)

    def decide(self, only_a: int, only_b: int, pairs: int) -> Decision:
        """What to do after ``pairs`` complete pairs with these discordant counts."""
        if not 0 <= only_a + only_b <= pairs <= self.max_pairs:
            raise StatsInputError(f"need 0 <= discordant pairs <= pairs <= {self.max_pairs}, got {only_a} + {only_b} "
                                  f"discordant of {pairs}")
        discordant, score = only_a + only_b, only_b - only_a
        outcome, reason = _decide(self, discordant, score, pairs)
        return Decision(outcome, pairs, discordant, score, reason)

    def simulate(self, successes_a: np.ndarray, successes_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many comparisons at once: (R, N) boolean outcomes of A and B per pair -> (reject, b_better, pairs used),
        applying exactly ``decide``'s rules (vectorised)."""
        a, b = np.asarray(successes_a, bool), np.asarray(successes_b, bool)
        if a.shape != b.shape or a.ndim != 2 or a.shape[1] != self.max_pairs:
            raise StatsInputError(f"need two (R, {self.max_pairs}) arrays, got {a.shape} and {b.shape}")
        score = np.cumsum((b & ~a).astype(np.int64) - (a & ~b), axis=1)
        discordant = np.cumsum(a != b, axis=1)
        boundary, final = np.array(self.boundary), np.array(self.final)
        pairs = np.arange(1, self.max_pairs + 1)
        early = np.abs(score) >= boundary[discordant]
        at_end = (pairs == self.max_pairs) & (np.abs(score) >= final[discordant])
        reachable = _steps_needed(self)[discordant, np.abs(score)] <= self.max_pairs - pairs
        stop = early | at_end | ~reachable | (pairs == self.max_pairs)
        first = stop.argmax(axis=1)  # the last pair always stops
        rows = np.arange(a.shape[0])
        reject = early[rows, first] | at_end[rows, first]
        return reject, reject & (score[rows, first] > 0), first + 1


def _decide(design: SequentialDesign, discordant: int, score: int, pairs: int) -> tuple[Outcome, str]:
    better = Outcome.B_BETTER if score > 0 else Outcome.A_BETTER
    if discordant and abs(score) >= design.boundary[discordant]:
        return better, (f"early boundary: |{score:+d}| >= {design.boundary[discordant]} after {discordant} discordant "
                        f"pairs")
    if pairs == design.max_pairs:
        if discordant and abs(score) >= design.final[discordant]:
            return better, f"final look: |{score:+d}| >= {design.final[discordant]} with {discordant} discordant pairs"
        return Outcome.NO_DIFFERENCE, f"all {pairs} pairs run; |{score:+d}| below the final boundary"
    if _steps_needed(design)[discordant, abs(score)] > design.max_pairs - pairs:
        return Outcome.NO_DIFFERENCE, (f"curtailed: {design.max_pairs - pairs} pairs left cannot reach a boundary "
                                       f"from |{score:+d}| with {discordant} discordant pairs")
    return Outcome.CONTINUE, "continue"


@lru_cache(maxsize=32)
def _steps_needed(design: SequentialDesign) -> np.ndarray:
    """[d, |S|]: the fewest further pairs after which a boundary can be reached (all of them discordant one way);
    a boundary is reachable with ``left`` pairs to go iff this is <= left."""
    n = design.max_pairs
    critical = np.minimum(np.array(design.final), np.array(design.boundary))  # what rejects at each d
    needed = np.full((n + 1, n + 1), _NEVER, dtype=np.int64)
    scores = np.arange(n + 1)
    for d in range(n + 1):
        for j in range(n - d, -1, -1):  # downwards: the smallest j that works is written last
            needed[d] = np.where(scores + j >= critical[d + j], j, needed[d])
    return needed


@lru_cache(maxsize=32)
def _design(max_pairs: int, alpha: float, early_fraction: float) -> SequentialDesign:
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or not 1 <= max_pairs <= 1000:
        raise StatsInputError(f"the number of pairs must be an int in 1..1000, got {max_pairs!r}")
    if not 0.0 < alpha < 1.0 or not 0.0 < early_fraction < 1.0:
        raise StatsInputError(f"alpha and the early fraction must be in (0, 1), got {alpha}, {early_fraction}")
    early_alpha = alpha * early_fraction
    depth = np.sqrt(np.arange(max_pairs + 1, dtype=np.float64))

    def boundary_for(constant: float) -> np.ndarray:
        bounds = np.maximum(1, np.ceil(constant * depth - 1e-9)).astype(np.int64)
        bounds[0] = _NEVER
        return np.where(bounds > np.arange(max_pairs + 1), _NEVER, bounds)  # |S_d| <= d: beyond it is never

    low, high = 0.0, 2.0 * math.sqrt(max_pairs) + 2.0
    for _ in range(60):  # the crossing probability falls as c grows: bisect for the smallest admissible c
        middle = (low + high) / 2
        if _crossing(max_pairs, boundary_for(middle))[0][-1] <= early_alpha:
            high = middle
        else:
            low = middle
    boundary = boundary_for(high)
    crossed, alive_at = _crossing(max_pairs, boundary)
    scores = np.abs(np.arange(-max_pairs, max_pairs + 1))
    final = [_NEVER]
    for d in range(1, max_pairs + 1):
        at_d = _step(alive_at[d - 1])
        critical = _NEVER
        for k in range(1, d + 1):
            if crossed[d - 1] + float(at_d[scores >= min(k, boundary[d])].sum()) <= alpha + 1e-12:
                critical = k
                break
        final.append(critical)
    return SequentialDesign(max_pairs, alpha, early_alpha, high, tuple(int(b) for b in boundary), tuple(final))
