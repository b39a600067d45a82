"""Prediction rejection area and ratio (manyminds.evaluation.rejection) against hand computations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from manyminds.evaluation.rejection import (
    prediction_rejection_area,
    prediction_rejection_ratio,
    rejection_curve,
)


def _area_by_hand(order_q: list, rejections: int) -> Fraction:
    """(1/R) sum_{m=n-R+1}^{n} mean(first m qualities), exactly, for qualities already sorted by certainty."""
    n = len(order_q)
    kept = [Fraction(sum(order_q[:m]), m) for m in range(n - rejections + 1, n + 1)]
    return sum(kept) / rejections


# five answers, distinct uncertainties; by ascending uncertainty the qualities read 1, 0, 1, 1, 0
U = [0.30, 0.10, 0.90, 0.20, 0.50]
Q = [0, 1, 0, 1, 1]
ORDER_Q = [1, 1, 0, 1, 0]   # u = 0.10, 0.20, 0.30, 0.50, 0.90


def test_area_and_ratio_equal_the_hand_computation_in_float64():
    area = _area_by_hand(ORDER_Q, 5)            # (1 + 1 + 2/3 + 3/4 + 3/5) / 5
    assert area == Fraction(1 + 1, 5) + Fraction(2, 15) + Fraction(3, 20) + Fraction(3, 25)
    oracle = _area_by_hand([1, 1, 1, 0, 0], 5)
    random = Fraction(3, 5)
    assert prediction_rejection_area(U, Q) == pytest.approx(float(area), abs=1e-15, rel=0)
    expected = (area - random) / (oracle - random)
    assert prediction_rejection_ratio(U, Q) == pytest.approx(float(expected), abs=1e-15, rel=0)
    assert rejection_curve(U, Q) == pytest.approx([1, 1, 2 / 3, 3 / 4, 3 / 5], abs=1e-15, rel=0)


def test_partial_rejection_averages_only_the_first_levels():
    # max_rejection 0.4 of 5 answers: R = 2 levels, keeping the 4 and the 5 most certain
    assert prediction_rejection_area(U, Q, max_rejection=0.4) == pytest.approx(
        float(_area_by_hand(ORDER_Q, 2)), abs=1e-15, rel=0)
    oracle, random = _area_by_hand([1, 1, 1, 0, 0], 2), Fraction(3, 5)
    expected = (_area_by_hand(ORDER_Q, 2) - random) / (oracle - random)
    assert prediction_rejection_ratio(U, Q, max_rejection=0.4) == pytest.approx(float(expected), abs=1e-15, rel=0)


def test_oracle_is_one_reversed_is_negative_and_constant_quality_is_nan():
    q = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    assert prediction_rejection_ratio(-q, q) == pytest.approx(1.0, abs=1e-15)
    assert prediction_rejection_ratio(q, q) < 0
    assert math.isnan(prediction_rejection_ratio([0.1, 0.2, 0.3], [1, 1, 1]))


def test_ratio_is_invariant_to_an_affine_rescaling_of_quality():
    rng = np.random.default_rng(0)
    u, q = rng.normal(size=40), rng.uniform(size=40)
    assert prediction_rejection_ratio(u, 3.0 * q + 2.0) == pytest.approx(prediction_rejection_ratio(u, q), abs=1e-12)
    assert prediction_rejection_area(u, 3.0 * q + 2.0) == pytest.approx(3.0 * prediction_rejection_area(u, q) + 2.0)


def test_ties_are_averaged_over_every_order_of_the_tied_answers():
    # u ties the first three answers: the area is the mean over their 3! orders
    u, q = [0.5, 0.5, 0.5, 0.9], [1, 0, 0, 1]
    orders = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]  # the permutations, as q
    expected = sum(_area_by_hand(o + [1], 4) for o in orders) / len(orders)
    assert prediction_rejection_area(u, q) == pytest.approx(float(expected), abs=1e-15, rel=0)
    # and the tie-averaged value does not depend on how the tied answers are listed
    assert prediction_rejection_area(u, [0, 0, 1, 1]) == prediction_rejection_area(u, q)


@pytest.mark.parametrize("u, q, match", [
    ([0.1, 0.2], [1], "one length"),
    ([], [], "non-empty"),
    ([0.1, float("nan")], [1, 0], "finite"),
])
def test_bad_input_is_refused(u, q, match):
    with pytest.raises(ValueError, match=match):
        prediction_rejection_ratio(u, q)


def test_max_rejection_out_of_range_is_refused():
    with pytest.raises(ValueError, match="max_rejection"):
        prediction_rejection_area(U, Q, max_rejection=0.0)
    with pytest.raises(ValueError, match="rejects no answer"):
        prediction_rejection_area(U, Q, max_rejection=0.1)
