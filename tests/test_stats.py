"""manyminds.evaluation.stats against scipy.stats / statsmodels on fixed inputs."""

import numpy as np
import pytest

from manyminds.evaluation.stats import (
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("successes,n", [(0, 10), (3, 10), (10, 10), (43, 60), (23, 40), (1, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_wilson_matches_statsmodels(successes, n, confidence):
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    lo, hi = proportion.proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    assert wilson_interval(successes, n, confidence) == pytest.approx((lo, hi), abs=1e-12)


def test_wilson_matches_scipy_binomtest():
    ci = scipy_stats.binomtest(43, 60).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(43, 60) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


PAIRS = [
    ([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], [0, 1, 0, 0, 0, 1, 0, 1, 0, 0]),  # 4 discordant, all one way
    ([1, 0] * 20 + [1] * 10, [0, 1] * 20 + [1] * 10),                 # balanced: p = 1
    ([1] * 12 + [0] * 3 + [1] * 30, [0] * 12 + [1] * 3 + [1] * 30),   # 12 vs 3
]


@pytest.mark.parametrize("a,b", PAIRS)
def test_mcnemar_exact_matches_statsmodels_and_scipy(a, b):
    tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    a_, b_ = np.array(a), np.array(b)
    table = [[int(((a_ == 1) & (b_ == 1)).sum()), int(((a_ == 1) & (b_ == 0)).sum())],
             [int(((a_ == 0) & (b_ == 1)).sum()), int(((a_ == 0) & (b_ == 0)).sum())]]
    expected = tables.mcnemar(table, exact=True).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, abs=1e-12)
    n10, n01 = table[0][1], table[1][0]
    assert mcnemar_exact(a, b) == pytest.approx(scipy_stats.binomtest(n10, n10 + n01, 0.5).pvalue, abs=1e-12)


def test_mcnemar_no_discordant_pairs_and_non_binary():
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([0.5, 1], [1, 0])
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_bootstrap_interval_agrees_with_scipy_percentile():
    x = np.random.default_rng(3).binomial(1, 0.4, size=80).astype(float)
    lo, hi = bootstrap_interval(x, n_boot=20_000, seed=0)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=20_000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    # two independent resamplings of the same distribution: agree up to Monte Carlo noise
    assert lo == pytest.approx(ref.low, abs=0.015) and hi == pytest.approx(ref.high, abs=0.015)
    assert lo < x.mean() < hi
    assert bootstrap_interval(x, seed=5) == bootstrap_interval(x, seed=5)  # seeded


def test_paired_bootstrap_difference_interval_and_p_value():
    rng = np.random.default_rng(0)
    b = rng.binomial(1, 0.4, size=100).astype(float)
    a = np.where(rng.random(100) < 0.25, 1.0, b)  # a = b with some wrongs made right: a >= b
    diff, (lo, hi), p = paired_bootstrap(a, b, n_boot=20_000, seed=0)
    assert diff == pytest.approx(a.mean() - b.mean())
    d = a - b
    ref = scipy_stats.bootstrap((d,), np.mean, n_resamples=20_000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.015) and hi == pytest.approx(ref.high, abs=0.015)
    # a clear improvement: the interval excludes 0 and the p-value is small, as the t-test says too
    assert lo > 0 and p < 0.01 and scipy_stats.ttest_rel(a, b).pvalue < 0.01
    # no difference at all: p = 1; a small noisy difference: large p, close to the paired t-test's
    assert paired_bootstrap(b, b) == (0.0, (0.0, 0.0), 1.0)
    c = b.copy()
    c[:4] = 1 - c[:4]
    _, _, p_small = paired_bootstrap(c, b, n_boot=20_000, seed=0)
    assert p_small > 0.3
    assert p_small == pytest.approx(scipy_stats.ttest_rel(c, b).pvalue, abs=0.25)


def test_auroc_and_its_interval_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    from manyminds.evaluation.stats import auroc, auroc_interval

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(30, int), np.zeros(50, int)]
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties count one half
    assert auroc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    value, (lo, hi) = auroc_interval(scores, labels, n_boot=2_000, seed=0)
    assert value == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
    # reference: sklearn's AUROC on stratified resamples drawn here, independently
    ref_rng = np.random.default_rng(1)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    ref = []
    for _ in range(2_000):
        idx = np.r_[ref_rng.choice(pos, pos.size), ref_rng.choice(neg, neg.size)]
        ref.append(metrics.roc_auc_score(labels[idx], scores[idx]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])), abs=0.02)
    assert lo < value < hi
    with pytest.raises(ValueError, match="one positive and one negative"):
        auroc_interval([0.1, 0.2], [1, 1])


def test_paired_auroc_matches_sklearn_on_shared_resamples():
    metrics = pytest.importorskip("sklearn.metrics")
    from manyminds.evaluation.stats import paired_auroc

    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(40, int), np.zeros(60, int)]
    a = np.round(rng.normal(labels * 1.2, 1.0), 1)  # the better score
    b = np.round(a + rng.normal(0, 1.5, labels.size), 1)  # a noisier copy of it: the two are correlated
    diff, (lo, hi), p = paired_auroc(a, b, labels, n_boot=1_000, seed=0)
    ref_diff = metrics.roc_auc_score(labels, a) - metrics.roc_auc_score(labels, b)
    assert diff == pytest.approx(ref_diff, abs=1e-12)
    # reference: sklearn on paired stratified resamples drawn here, independently
    ref_rng = np.random.default_rng(1)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    ref = []
    for _ in range(1_000):
        idx = np.r_[ref_rng.choice(pos, pos.size), ref_rng.choice(neg, neg.size)]
        ref.append(metrics.roc_auc_score(labels[idx], a[idx]) - metrics.roc_auc_score(labels[idx], b[idx]))
    assert (lo, hi) == pytest.approx(tuple(np.quantile(ref, [0.025, 0.975])), abs=0.02)
    assert 0 < lo < diff < hi and p < 0.05
    # the same score twice: no difference, p = 1; the order of a and b flips the sign only
    assert paired_auroc(a, a, labels) == (0.0, (0.0, 0.0), 1.0)
    flipped, (flo, fhi), fp = paired_auroc(b, a, labels, n_boot=1_000, seed=0)
    assert flipped == pytest.approx(-diff) and (flo, fhi) == pytest.approx((-hi, -lo)) and fp == p
    with pytest.raises(ValueError, match="one length"):
        paired_auroc(a, b[:-1], labels)
