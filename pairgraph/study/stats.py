"""The statistics behind the report's verdicts: closeness in pooled standard deviations (when an arm
gets more seeds) and the paper's checkpoint rule (one evaluation step for all seeds of an arm)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


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
