"""Intervals checked against textbook values and normal theory, not against our own output."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import bootstrap_mean_ci, wilson_ci


def test_wilson_matches_the_formula():
    # Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    k, n, z = 8, 10, sps.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9)
    assert hi == pytest.approx(centre + half, abs=1e-9)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # the textbook example


def test_wilson_edges():
    lo, hi = wilson_ci(0, 20)
    assert lo == 0 and 0.15 < hi < 0.17  # 0.1611: a useful bound even with no successes
    assert wilson_ci(20, 20)[1] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in wilson_ci(0, 0))


def test_bootstrap_agrees_with_normal_theory_for_large_n():
    x = np.random.default_rng(1).normal(0.6, 0.2, size=2000)
    lo, hi = bootstrap_mean_ci(x)
    t_lo, t_hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert lo == pytest.approx(t_lo, abs=0.002) and hi == pytest.approx(t_hi, abs=0.002)


def test_bootstrap_is_seeded_and_guards_small_samples():
    x = [0.1, 0.5, 0.9, 0.4, 0.7]
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([0.5]))
    assert bootstrap_mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
