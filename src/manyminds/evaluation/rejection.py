"""Prediction rejection: how much answer quality rises when the most uncertain answers are refused.

With ``n`` answers, uncertainties ``u`` (higher = less certain) and qualities ``q`` (higher = better,
e.g. 0/1 correctness), sort the answers by ascending ``u`` and let ``q_(1), ..., q_(n)`` be their
qualities in that order. Keeping the ``m`` most certain answers gives the mean quality
``Q(m) = (1/m) sum_{t<=m} q_(t)``. Rejecting ``0, 1, ..., R-1`` answers (``R = int(max_rejection * n)``)::

    A(u, q)   = (1/R) sum_{m = n-R+1}^{n} Q(m)                      (prediction-rejection area)
    A_oracle  = A(-q, q)                                            (best answers kept first)
    A_random  = mean(q)                                             (expected A under a random order)
    PRR       = (A(u, q) - A_random) / (A_oracle - A_random)        (prediction rejection ratio)

PRR is 1 for an oracle uncertainty, 0 in expectation for a random one, negative when the most
uncertain answers are the best (Malinin et al., 2017; lm-polygraph, Fadeeva et al., 2023). PRR is
unchanged by an affine rescaling ``a q + b`` (``a > 0``) of the qualities; ``A`` is in units of ``q``.

Ties in ``u`` are averaged: ``A`` is its expected value over a uniformly random order of tied
answers, i.e. every position of a tie group carries the group's mean quality. (lm-polygraph's
``PredictionRejectionArea`` keeps the order ``numpy.argsort`` happens to return and min-max
rescales ``q`` to [0, 1] first; both agree with :func:`prediction_rejection_area` when ``u`` has
no ties and ``q`` already spans [0, 1]. :mod:`manyminds.polygraph` compares the two.)

    >>> prediction_rejection_area([0.1, 0.9, 0.5], [1, 0, 1])      # order q = 1, 1, 0
    0.8888888888888888
    >>> prediction_rejection_ratio([0.1, 0.9, 0.5], [1, 0, 1])     # an oracle ranking
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["prediction_rejection_area", "prediction_rejection_ratio", "rejection_curve"]


def _checked(uncertainty, quality) -> tuple[np.ndarray, np.ndarray]:
    u, q = np.asarray(uncertainty, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    if u.ndim != 1 or u.shape != q.shape or u.size == 0:
        raise ValueError(f"uncertainty and quality must be non-empty 1-d sequences of one length, "
                         f"got {u.shape} and {q.shape}")
    if not (np.isfinite(u).all() and np.isfinite(q).all()):
        raise ValueError("uncertainty and quality must be finite; drop the answers without a score first")
    return u, q


def rejection_curve(uncertainty: Sequence[float], quality: Sequence[float]) -> np.ndarray:
    """Mean quality of the ``m`` most certain answers, ``Q(m)`` for ``m = 1 .. n`` -> ``[n]`` float64.

    ``Q(n)`` (nothing rejected) is ``mean(q)``; ``Q(m)`` is what is left after rejecting the ``n - m``
    most uncertain answers. Tied uncertainties share their mean quality (the module docstring).
    """
    u, q = _checked(uncertainty, quality)
    order = np.argsort(u, kind="stable")
    u_sorted, q_sorted = u[order], q[order]
    # tie groups: positions [starts[g], starts[g+1]) share one uncertainty
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    sizes = np.diff(np.r_[starts, u.size])
    group_mean = np.add.reduceat(q_sorted, starts) / sizes
    expected = np.repeat(group_mean, sizes)                                 # [n]: E[q at position t]
    return np.cumsum(expected) / np.arange(1, u.size + 1)


def prediction_rejection_area(uncertainty: Sequence[float], quality: Sequence[float],
                              max_rejection: float = 1.0) -> float:
    """Area under the prediction-rejection curve, ``A(u, q) = (1/R) sum_{m=n-R+1}^{n} Q(m)``.

    Args:
        uncertainty: ``[n]``, higher = less certain.
        quality: ``[n]``, higher = better (e.g. 0/1 correctness).
        max_rejection: largest share of answers rejected, in (0, 1]; ``R = int(max_rejection * n)``
            rejection levels ``0 .. R-1`` (lm-polygraph's ``PredictionRejectionArea(max_rejection)``).
    """
    u, _ = _checked(uncertainty, quality)
    if not 0.0 < max_rejection <= 1.0:
        raise ValueError(f"max_rejection must be in (0, 1], got {max_rejection}")
    rejections = int(max_rejection * u.size)
    if rejections < 1:
        raise ValueError(f"max_rejection={max_rejection} rejects no answer of {u.size}; raise it or add answers")
    curve = rejection_curve(uncertainty, quality)
    return float(curve[u.size - rejections:].mean())


def prediction_rejection_ratio(uncertainty: Sequence[float], quality: Sequence[float],
                               max_rejection: float = 1.0) -> float:
    """``PRR = (A(u, q) - A_random) / (A_oracle - A_random)`` (the module docstring).

    ``A_random = mean(q)`` exactly (lm-polygraph estimates it from 1000 random orders). Returns
    ``nan`` when every quality is equal: no ranking can then beat a random one.
    """
    _, q = _checked(uncertainty, quality)
    area = prediction_rejection_area(uncertainty, quality, max_rejection)
    oracle = prediction_rejection_area(-q, q, max_rejection)
    random = float(q.mean())
    if np.isclose(oracle, random, rtol=0.0, atol=1e-15 * max(1.0, abs(random))):
        return float("nan")
    return (area - random) / (oracle - random)
