"""Intervals checked against textbook values and normal theory, not against our own output."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import bootstrap_ci, wilson_ci


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
    lo, hi = bootstrap_ci(x)
    t_lo, t_hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert lo == pytest.approx(t_lo, abs=0.002) and hi == pytest.approx(t_hi, abs=0.002)


def test_bootstrap_is_seeded_and_guards_small_samples():
    x = [0.1, 0.5, 0.9, 0.4, 0.7]
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


# --- issue 4: bootstrap_ci, paired differences, McNemar, Holm -------------------------------------

from harness import stats as H  # noqa: E402


def test_percentile_bootstrap_agrees_with_scipy():
    x = np.random.default_rng(2).beta(2, 5, size=300)
    ours = H.bootstrap_ci(x, n_resamples=20_000, seed=1)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile",
                        random_state=np.random.default_rng(9)).confidence_interval
    # Different random streams: agreement within Monte Carlo error of the 2.5% and 97.5% quantiles.
    assert ours[0] == pytest.approx(ref.low, abs=0.003) and ours[1] == pytest.approx(ref.high, abs=0.003)


def test_bca_option_runs_through_scipy_and_leans_with_skew():
    x = np.random.default_rng(3).exponential(1.0, size=60)
    lo, hi = H.bootstrap_ci(x, method="bca", seed=0)
    ref = sps.bootstrap((x,), np.mean, method="BCa", n_resamples=10_000,
                        random_state=np.random.default_rng(0)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert (lo, hi) != H.bootstrap_ci(x, seed=0)  # not the percentile interval
    assert hi - x.mean() > x.mean() - lo  # right-skewed data: the interval reaches further up
    with pytest.raises(ValueError, match="percentile' or 'bca"):
        H.bootstrap_ci(x, method="studentised")


def test_resampling_in_chunks_changes_nothing(monkeypatch):
    x = np.random.default_rng(4).random(1000)
    whole = H.bootstrap_means(x, 3000, seed=5)
    monkeypatch.setattr(H, "CHUNK_INDICES", 7_000)  # 7 resamples per chunk
    assert np.allclose(H.bootstrap_means(x, 3000, seed=5), whole, rtol=0, atol=1e-12)


def test_resample_means_are_means_of_index_resamples():
    """The counts-matrix shortcut gives exactly what indexing with the same indices gives."""
    x = np.random.default_rng(6).random((50, 3))  # 50 samples, 3 variants resampled together
    got = H.bootstrap_means(x, 200, seed=8)
    idx = np.random.default_rng(8).integers(0, 50, size=(200, 50))
    assert np.allclose(got, x[idx].mean(axis=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("draw", [
    lambda rng, n: rng.beta(2, 5, n),            # scores in [0, 1], skewed
    lambda rng, n: rng.binomial(1, 0.3, n),      # pass/fail
], ids=["beta", "bernoulli"])
def test_interval_covers_the_true_mean_94_to_96_percent_of_the_time(draw):
    """4,000 simulated experiments of 200 samples: Monte Carlo error of the coverage is 0.34 points,
    so the 94–96% band is about ±3 standard errors. Seeded, hence deterministic."""
    true_mean = {0: 2 / 7, 1: 0.3}
    rng = np.random.default_rng(11)
    reps, n, covered = 4000, 200, 0
    kind = 0 if draw(np.random.default_rng(0), 5).dtype == float else 1
    for r in range(reps):
        lo, hi = H.bootstrap_ci(draw(rng, n), n_resamples=1000, seed=r)
        covered += lo <= true_mean[kind] <= hi
    assert 0.94 <= covered / reps <= 0.96


def test_paired_test_false_alarm_rate_is_4_to_6_percent_when_variants_are_equal():
    """Two equal variants on shared samples of varying difficulty: p < 0.05 in 4–6% of 4,000
    experiments (Monte Carlo error 0.34 points). McNemar, exact, stays at or below 5%."""
    rng = np.random.default_rng(12)
    reps, n = 4000, 200
    boot_alarms = mcnemar_alarms = 0
    for r in range(reps):
        difficulty = rng.beta(2, 2, n)  # the same samples for both variants
        a = rng.random(n) < difficulty
        b = rng.random(n) < difficulty
        boot_alarms += H.paired_diff_ci(a.astype(float), b.astype(float), n_resamples=1000, seed=r)[3] < 0.05
        mcnemar_alarms += H.mcnemar(a, b) < 0.05
    assert 0.04 <= boot_alarms / reps <= 0.06
    assert mcnemar_alarms / reps <= 0.05 + 3 * 0.0034


def test_paired_diff_sees_a_real_difference_and_is_consistent_with_its_interval():
    rng = np.random.default_rng(5)
    base = rng.beta(2, 3, 300)
    better = np.clip(base + rng.normal(0.05, 0.1, 300), 0, 1)
    diff, lo, hi, p = H.paired_diff_ci(better, base)
    assert diff == pytest.approx(float(np.mean(better - base)))
    assert 0 < lo < diff < hi and p < 0.001
    # Pairing matters: the unpaired (Welch) interval of the same difference is far wider.
    welch = sps.ttest_ind(better, base, equal_var=False).confidence_interval()
    assert (hi - lo) < 0.5 * (welch.high - welch.low)
    # The p-value and the interval tell the same story at every level.
    for conf in (0.9, 0.99, 0.999):
        d, l_, h_, p_ = H.paired_diff_ci(better[:40], base[:40], confidence=conf, seed=1)
        assert (l_ > 0 or h_ < 0) == (p_ < 1 - conf)


def test_paired_diff_edges():
    assert H.paired_diff_ci([1, 1, 1], [1, 1, 1]) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="same samples"):
        H.paired_diff_ci([1, 0], [1, 0, 1])
    assert all(math.isnan(v) for v in H.paired_diff_ci([1.0], [0.0])[1:])


@pytest.mark.parametrize("only_a, only_b, both, neither", [
    (10, 2, 50, 38), (0, 0, 5, 5), (1, 0, 3, 3), (25, 25, 0, 0), (3, 17, 60, 20), (0, 9, 0, 1),
])
def test_mcnemar_matches_statsmodels_exact(only_a, only_b, both, neither):
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    table = [[both, only_a], [only_b, neither]]
    assert H.mcnemar(a, b) == pytest.approx(sm_mcnemar(table, exact=True).pvalue, abs=1e-12)


def test_mcnemar_textbook_value():
    # 10 vs 2 discordant pairs: P = 2 · P(X ≤ 2), X ~ Bin(12, 1/2) = 2 · 79/4096 = 0.03857.
    a = [True] * 10 + [False] * 2
    b = [False] * 10 + [True] * 2
    assert H.mcnemar(a, b) == pytest.approx(2 * 79 / 4096)


@pytest.mark.parametrize("p", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.5], [0.04], [0.01, 0.01, 0.9], []])
def test_holm_matches_statsmodels(p):
    from statsmodels.stats.multitest import multipletests

    expected = list(multipletests(p, method="holm")[1]) if p else []
    assert H.holm(p) == pytest.approx(expected)
