"""Injected policy latency for rehearsals: ``--policy-latency-ms 150`` or ``150+-30``.

A ``LatencySpec`` is a delay added to every answer of a policy (``fanvla eval run``, ``fanvla serve``, the
closed-loop runner), so that a fast local policy in the real-time twin behaves like a 7B model on a
workstation GPU (upstream OpenVLA reports 4-6 Hz, i.e. 170-250 ms per action). ``N`` is a fixed delay of
N ms; ``N+-M`` draws each delay uniformly from [N - M, N + M] ms: a bounded spread, so the worst case is
known. Draws come from a seeded generator, so a lock-step run with injected latency is reproducible. (The
set-up's own delays, measured by ``fanvla robot latency``, are robot/latency.py.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

_SPEC = re.compile(r"^\s*(?P<mean>[0-9]+(?:\.[0-9]*)?)\s*(?:(?:\+-|\+/-|±)\s*(?P<spread>[0-9]+(?:\.[0-9]*)?))?\s*$")
MAX_LATENCY_MS = 60_000.0  # a minute: anything above is a typo, not a rehearsal


class LatencyError(ValueError):
    """A latency specification that cannot be used."""


@dataclass(frozen=True)
class LatencySpec:
    mean_ms: float = 0.0
    spread_ms: float = 0.0  # half-width of the uniform spread

    def __post_init__(self) -> None:
        for name in ("mean_ms", "spread_ms"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise LatencyError(f"policy latency {name} must be a finite number >= 0, got {value}")
        if self.spread_ms > self.mean_ms:
            raise LatencyError(f"policy latency {self}: the spread ({self.spread_ms:g} ms) may not exceed the mean "
                               f"({self.mean_ms:g} ms), a delay cannot be negative")
        if self.mean_ms + self.spread_ms > MAX_LATENCY_MS:
            raise LatencyError(f"policy latency {self}: at most {MAX_LATENCY_MS:g} ms")

    @classmethod
    def parse(cls, text: str | float | int | None) -> LatencySpec:
        """``None``/``"0"`` -> no delay; ``"150"`` -> 150 ms; ``"150+-30"`` -> uniform 120..180 ms."""
        if text is None:
            return cls()
        if isinstance(text, int | float):
            return cls(float(text))
        match = _SPEC.match(str(text))
        if match is None:
            raise LatencyError(f"policy latency {text!r}: expected milliseconds as N (fixed) or N+-M (uniform in "
                               f"[N-M, N+M]), e.g. 150 or 150+-30")
        return cls(float(match["mean"]), float(match["spread"] or 0.0))

    @property
    def enabled(self) -> bool:
        return self.mean_ms > 0

    @property
    def max_s(self) -> float:
        return (self.mean_ms + self.spread_ms) / 1000.0

    def sample_s(self, rng: np.random.Generator) -> float:
        """One delay in seconds (0 when disabled; a fixed delay uses no random numbers)."""
        if self.spread_ms == 0:
            return self.mean_ms / 1000.0
        return float(rng.uniform(self.mean_ms - self.spread_ms, self.mean_ms + self.spread_ms)) / 1000.0

    def __str__(self) -> str:
        return f"{self.mean_ms:g}" + (f"+-{self.spread_ms:g}" if self.spread_ms else "")

    def describe(self) -> dict:
        return {"spec_ms": str(self), "mean_ms": self.mean_ms, "spread_ms": self.spread_ms,
                "distribution": "uniform" if self.spread_ms else "fixed"}
