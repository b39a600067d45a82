"""Intervals and paired tests for per-problem evaluation results.

Every function takes plain per-problem numbers (0/1 correctness, or a per-problem score such as
``c/k``) and returns floats; nothing here knows about models. Problems are the unit of
resampling: two methods evaluated on the same problems are compared *paired*, problem by problem.

    >>> [round(x, 3) for x in wilson_interval(43, 60)]
    [0.592, 0.815]
    >>> mcnemar_exact([1, 1, 0, 1], [0, 1, 0, 0])      # 2 discordant pairs, both one way
    0.5
    >>> diff, (lo, hi), p = paired_bootstrap([1, 1, 0, 1], [0, 1, 0, 0], seed=0)
    >>> diff
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["auroc", "auroc_interval", "bootstrap_interval", "mcnemar_exact", "paired_bootstrap", "wilson_interval"]


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``p = successes / n``.

    With ``z`` the two-sided normal quantile (1.96 at 95%)::

        center = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
        (center - half, center + half)

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at p = 0 or 1.
    The same as ``statsmodels.stats.proportion.proportion_confint(method="wilson")``.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem ``values``.

    Draw ``n_boot`` resamples of the problems with replacement (``numpy.random.default_rng(seed)``),
    take each resample's mean ``m_b``, and return the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of ``{m_b}`` (linear interpolation, numpy's default). The
    same as ``scipy.stats.bootstrap(..., method="percentile")`` up to resampling noise.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("values must be a non-empty 1-d sequence")
    _z(confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))  # [n_boot, P]
    means = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mcnemar_exact(a: Sequence[int | bool], b: Sequence[int | bool]) -> float:
    """Exact McNemar test of paired binary outcomes: two-sided p-value.

    With ``n01`` problems that ``a`` gets wrong and ``b`` right and ``n10`` the reverse, under the null
    (both methods equally accurate) each discordant problem is a fair coin, so with
    ``n = n01 + n10`` and ``m = min(n01, n10)``::

        p = min(1, 2 * P[Binomial(n, 1/2) <= m])

    and ``p = 1`` when there is no discordant pair. The same as
    ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True).pvalue`` and
    ``scipy.stats.binomtest(n10, n, 0.5).pvalue``.
    """
    x, y = _paired(a, b)
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise ValueError("mcnemar_exact needs binary (0/1) outcomes")
    n10 = int(((x == 1) & (y == 0)).sum())
    n01 = int(((x == 0) & (y == 1)).sum())
    n = n10 + n01
    if n == 0:
        return 1.0
    m = min(n10, n01)
    tail = sum(math.comb(n, i) for i in range(m + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000,
                     seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """Paired bootstrap of the difference in means ``mean(a) - mean(b)`` over the same problems.

    Per problem ``d_i = a_i - b_i``; resample the problems with replacement ``n_boot`` times
    (``numpy.random.default_rng(seed)``) and take each resample's mean ``d*_b``. Returns

    - the observed difference ``d = mean(d_i)``;
    - the percentile interval: the ``(1 -/+ confidence) / 2`` quantiles of ``{d*_b}``;
    - a two-sided p-value for ``E[d] = 0`` from the bootstrap distribution shifted to the null
      (``d*_b - d``): ``p = (1 + #{|d*_b - d| >= |d|}) / (1 + n_boot)``.

    When every ``d_i`` is 0 the result is ``(0, (0, 0), 1)``.
    """
    x, y = _paired(a, b)
    _z(confidence)
    d = x - y
    obs = float(d.mean())
    if not np.any(d):
        return 0.0, (0.0, 0.0), 1.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))  # [n_boot, P]
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    # tolerance: a resample equal to the observed value must count despite float rounding
    extreme = int((np.abs(means - obs) >= abs(obs) - 1e-12).sum())
    return obs, (float(lo), float(hi)), (1 + extreme) / (1 + n_boot)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels == 1`` against ``labels == 0``.

    The Mann-Whitney statistic with ties counted one half::

        AUROC = (1 / (n1 n0)) * sum_{i: y=1} sum_{j: y=0} (1[s_i > s_j] + 0.5 * 1[s_i = s_j])

    (= ``sklearn.metrics.roc_auc_score``).
    """
    s, y = _scored(scores, labels)
    pos, neg = s[y], s[~y]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()  # [n1, n0]
    return float(greater / (pos.size * neg.size))


def auroc_interval(scores: Sequence[float], labels: Sequence[int], confidence: float = 0.95, n_boot: int = 2_000,
                   seed: int = 0) -> tuple[float, tuple[float, float]]:
    """:func:`auroc` and its stratified percentile bootstrap interval over examples.

    Each of ``n_boot`` resamples (``numpy.random.default_rng(seed)``) draws the ``n1`` positive and the
    ``n0`` negative examples with replacement separately (so every resample has both classes); the
    interval is the ``(1 -/+ confidence) / 2`` quantiles of the resamples' AUROCs.
    """
    _z(confidence)
    s, y = _scored(scores, labels)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        p, n = pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
        stats[b] = ((p[:, None] > n[None, :]).sum() + 0.5 * (p[:, None] == n[None, :]).sum()) / (p.size * n.size)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return auroc(s, y), (float(lo), float(hi))


def _area(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC of positive scores ``pos`` [n1] against negative scores ``neg`` [n0]."""
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (pos.size * neg.size))


def paired_auroc(scores_a: Sequence[float], scores_b: Sequence[float], labels: Sequence[int],
                 confidence: float = 0.95, n_boot: int = 2_000,
                 seed: int = 0) -> tuple[float, tuple[float, float], float]:
    """``AUROC(a) - AUROC(b)`` of two scores of the same examples, with a paired stratified bootstrap.

    Each of ``n_boot`` resamples (``numpy.random.default_rng(seed)``) draws the ``n1`` positive and the
    ``n0`` negative examples with replacement (as :func:`auroc_interval`) and scores *both* AUROCs on
    the same draw, giving ``d*_b``. Returns the observed difference ``d``, the ``(1 -/+ confidence) / 2``
    quantiles of ``{d*_b}``, and the two-sided p-value of the bootstrap distribution shifted to the
    null, ``p = (1 + #{|d*_b - d| >= |d|}) / (1 + n_boot)`` (as :func:`paired_bootstrap`).
    """
    _z(confidence)
    a, y = _scored(scores_a, labels)
    b, _ = _scored(scores_b, labels)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    obs = _area(a[pos], a[neg]) - _area(b[pos], b[neg])
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        p, n = pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]
        diffs[i] = _area(a[p], a[n]) - _area(b[p], b[n])
    q = (1 - confidence) / 2
    lo, hi = np.quantile(diffs, [q, 1 - q])
    if obs == 0 and not diffs.any():
        return 0.0, (0.0, 0.0), 1.0
    extreme = int((np.abs(diffs - obs) >= abs(obs) - 1e-12).sum())
    return float(obs), (float(lo), float(hi)), (1 + extreme) / (1 + n_boot)


def _scored(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=float), np.asarray(labels)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"scores and labels must be 1-d of one length, got {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError("AUROC needs at least one positive and one negative label")
    return s, y


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired samples must be non-empty 1-d sequences of one length, got {x.shape} and {y.shape}")
    return x, y
