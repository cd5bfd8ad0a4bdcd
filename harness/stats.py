"""Confidence intervals for the numbers the harness reports. Pure functions over lists of scores.

Thin for now, on scipy: a percentile bootstrap for means of scores in [0, 1] and the Wilson score
interval for pass/fail proportions. Paired comparisons between variants build on the same per-sample
scores (every variant is scored on the same samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927); well-behaved at 0 and n successes,
    unlike the normal approximation. n == 0 gives (nan, nan)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_mean_ci(scores: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling with replacement, seeded).

    Assumes the samples are independent draws. With fewer than 2 samples there is no interval:
    (nan, nan). When every score is equal, every resample has the same mean: (value, value)."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                          method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
