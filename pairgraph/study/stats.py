"""The statistics behind the report's verdicts: Welch t intervals of differences (the verdicts), closeness in
pooled standard deviations (when an arm gets more seeds) and the paper's checkpoint rule (one evaluation
step for all seeds of an arm)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats


def pooled_sd(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The pooled standard deviation of two samples (ddof 1 each); None with fewer than 3 values in all."""
    if len(a) < 2 or len(b) < 2:
        return None
    ss = (len(a) - 1) * statistics.variance(a) + (len(b) - 1) * statistics.variance(b)
    return math.sqrt(ss / (len(a) + len(b) - 2))


def is_close(arm: Sequence[float], baseline: Sequence[float], below: float) -> bool | None:
    """|mean(arm) − mean(baseline)| < ``below`` pooled s.d.; None when there are too few values to say."""
    sd = pooled_sd(arm, baseline)
    if sd is None:
        return None
    return abs(statistics.fmean(arm) - statistics.fmean(baseline)) < below * sd


def paper_rule(curves: Sequence[dict[int, tuple[float, float]]]) -> tuple[int, list[float]] | None:
    """The paper's checkpoint rule over an arm's seeds: the evaluation step with the lowest seed-averaged
    validation loss, and each seed's validation metric there. ``curves``: per seed, step → (loss, metric),
    the evaluation steps every seed has. None when the seeds share no evaluation step."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    best = min(steps, key=lambda s: (statistics.fmean(c[s][0] for c in curves), s))
    return best, [c[best][1] for c in curves]


#: the confidence level of every interval the report prints
LEVEL = 0.95
#: seeds per arm behind the paper's standard errors (§4.3: 5 seeds), for the Welch interval of its Δ
PAPER_SEEDS = 5


@dataclass(frozen=True)
class Delta:
    """A difference of two means with its Welch t interval (``lo``/``hi`` None with under 2 values a side)."""

    d: float
    lo: float | None = None
    hi: float | None = None
    df: float | None = None

    @property
    def resolved(self) -> bool:
        """Does the interval exclude 0?"""
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def welch(a: tuple[float, float | None, int], b: tuple[float, float | None, int], level: float = LEVEL) -> Delta:
    """mean(a) − mean(b) with its Welch t interval, from two (mean, standard error, n) statistics.

    Welch–Satterthwaite degrees of freedom; with 3–5 seeds a side they are 2–8, so the interval is
    t-wide, not normal-wide (2 s.e. would cover only about 82–92 %). Equal zero spreads give a
    zero-width interval with df = n_a + n_b − 2."""
    d = a[0] - b[0]
    (_, se_a, n_a), (_, se_b, n_b) = a, b
    if se_a is None or se_b is None or n_a < 2 or n_b < 2:
        return Delta(d)
    va, vb = se_a**2, se_b**2
    if va + vb == 0:
        return Delta(d, d, d, float(n_a + n_b - 2))
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = float(scipy_stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(va + vb)
    return Delta(d, d - half, d + half, df)
