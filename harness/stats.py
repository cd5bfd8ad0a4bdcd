"""Confidence intervals and paired comparisons for the numbers the harness reports.

Pure functions over per-sample scores. Every variant is scored on the same samples, so comparisons
are paired: the bootstrap resamples samples (the same indices for both variants), never two
independent standard errors.

- `bootstrap_ci`: percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13), or BCa (ch.
  14, through scipy) as an option.
- `wilson_ci`: Wilson score interval for a proportion (Wilson 1927).
- `paired_diff_ci`: paired bootstrap of the mean difference, with the bootstrap p-value of "no
  difference" (twice the smaller tail share of resampled differences beyond 0).
- `mcnemar`: exact McNemar test for paired pass/fail (a two-sided binomial test on the discordant
  pairs; McNemar 1947).
- `holm`: Holm's step-down adjustment when several variants are compared with one baseline (Holm 1979).

Resampling is vectorised with numpy and done in chunks of resamples, so memory stays bounded:
10,000 resamples of 10,000 samples would be 800 MB of int64 indices at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

# At most this many resample indices in memory at once (int64: 32 MB).
CHUNK_INDICES = 4_000_000


def wilson_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; well-behaved at 0 and n successes, unlike the normal
    approximation. n == 0 gives (nan, nan)."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `n_resamples` resamples (with replacement) of the rows of x, in chunks.

    x may be 1-D (one variable) or 2-D (n samples × k variables resampled together, e.g. several
    variants on the same samples): the result is (n_resamples,) or (n_resamples, k). Each chunk
    draws its resample indices, turns them into per-sample counts (bincount) and takes the means
    as one matrix product, counts @ x / n: the same numbers as indexing, at BLAS speed."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    per_chunk = max(1, CHUNK_INDICES // n)
    out = np.empty((n_resamples,) + x.shape[1:], dtype=float)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        c = stop - start
        idx = rng.integers(0, n, size=(c, n))
        idx += (np.arange(c) * n)[:, None]  # row r's indices land in row r's block of counts
        counts = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n)
        out[start:stop] = counts @ x / n
    return out


def _percentile_interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(scores: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0,
                 method: str = "percentile") -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of `scores` (independent samples assumed).

    method "percentile" (vectorised here) or "bca" (bias-corrected and accelerated, via
    scipy.stats.bootstrap). Fewer than 2 samples: (nan, nan). All scores equal: (value, value)."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    if method == "bca":
        res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="BCa",
                              random_state=np.random.default_rng(seed), vectorized=True,
                              batch=max(1, CHUNK_INDICES // x.size))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)
    if method != "percentile":
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    return _percentile_interval(bootstrap_means(x, n_resamples, seed), confidence)


def paired_diff_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                   seed: int = 0) -> tuple[float, float, float, float]:
    """(mean(a - b), low, high, p_value) for per-sample scores of two variants on the same samples.

    Paired percentile bootstrap of the mean difference; the p-value is the two-sided bootstrap
    p-value of "no difference", 2 × min(share of resampled differences ≤ 0, share ≥ 0), capped at 1,
    so p < 1 − confidence exactly when 0 lies outside the interval."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_.shape != b_.shape:
        raise ValueError(f"paired scores need the same samples: got {a_.size} and {b_.size}")
    d = a_ - b_
    if d.size < 2:
        return (float(d.mean()) if d.size else math.nan), math.nan, math.nan, math.nan
    diff = float(d.mean())
    if np.all(d == d[0]):
        return diff, diff, diff, (1.0 if diff == 0 else 0.0)
    boot = bootstrap_means(d, n_resamples, seed)
    lo, hi = _percentile_interval(boot, confidence)
    p = min(1.0, 2 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
    return diff, lo, hi, p


def mcnemar(a_pass: Sequence[bool], b_pass: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for paired pass/fail: a binomial test with p = 1/2 on the
    pairs where exactly one variant passed. No discordant pair: 1.0."""
    a_, b_ = np.asarray(a_pass, dtype=bool), np.asarray(b_pass, dtype=bool)
    if a_.shape != b_.shape:
        raise ValueError(f"paired pass/fail needs the same samples: got {a_.size} and {b_.size}")
    only_a = int(np.sum(a_ & ~b_))
    only_b = int(np.sum(~a_ & b_))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): controls the family-wise error
    rate when several variants are each compared with one baseline."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return [float(x) for x in out]
