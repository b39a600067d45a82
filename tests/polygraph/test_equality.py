"""lm-polygraph 0.7.0's estimators and PRR on a manyminds Population == manyminds' own numbers, to 1e-9.

Eight tiny-arith problems, each answered greedily by six minds. Every estimator used here reads only
statistics manyminds computes (no NLI / embedding model, nothing downloaded).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
import pytest

if os.environ.get("MANYMINDS_REQUIRE_POLYGRAPH") != "1":
    pytest.importorskip("lm_polygraph")

from lm_polygraph.estimators import (
    EigValLaplacian,
    EPSrmi,
    EPStu,
    LexicalSimilarity,
    MaximumSequenceProbability,
    MonteCarloNormalizedSequenceEntropy,
    MonteCarloSequenceEntropy,
    NumSemSets,
    SemanticEntropy,
)
from lm_polygraph.ue_metrics import PredictionRejectionArea

from manyminds.evaluation.rejection import prediction_rejection_area, prediction_rejection_ratio
from manyminds.metrics import majority_vote, unique_answers
from manyminds.polygraph import (
    draw_samples,
    polygraph_prr,
    polygraph_stats,
    run_estimators,
    stat_calculator,
)
from manyminds.population import Population
from manyminds.tasks import extract_answer

from .conftest import SIGMA

MINDS = 6
TOL = 1e-9


@pytest.fixture(scope="module")
def population(tiny_arith):
    return Population(tiny_arith[0], sigma=SIGMA, seed=0)


@pytest.fixture(scope="module")
def drawn(population, tiny_arith, arith):
    """Samples, their statistics (own-mind log-probs), the minds' answers and majority correctness."""
    prompts, references = arith
    s = draw_samples(population, tiny_arith[1], prompts, ids=MINDS, max_new_tokens=40)
    answers = [[extract_answer(t) for t in row] for row in s.texts]
    correct = np.array([float(majority_vote(a) == r) for a, r in zip(answers, references)])
    assert 0 < correct.sum() < len(correct)  # both outcomes: a PRR is defined
    return s, polygraph_stats(s, "own"), answers, correct


@pytest.fixture(scope="module")
def estimates(drawn):
    _, stats, _, _ = drawn
    estimators = [NumSemSets(), EigValLaplacian(similarity_score="NLI_score", affinity="entail"),
                  SemanticEntropy(), SemanticEntropy(class_probability_estimation="frequency"),
                  MonteCarloSequenceEntropy(), MonteCarloNormalizedSequenceEntropy(), EPStu(), EPSrmi(),
                  LexicalSimilarity("rougeL")]
    return run_estimators(estimators, stats)


def _classes(s, answers):
    """Per prompt, the class key of each sample: its final answer, else its text (no answer extracted)."""
    return [[a if a is not None else "text:" + t.strip() for a, t in zip(row, texts)]
            for row, texts in zip(answers, s.texts)]


def test_number_of_semantic_sets_is_the_number_of_distinct_answers(drawn, estimates):
    s, _, answers, _ = drawn
    unparsed = [len({t.strip() for a, t in zip(row, texts) if a is None}) for row, texts in zip(answers, s.texts)]
    ours = np.array([unique_answers(row) + u for row, u in zip(answers, unparsed)], dtype=float)
    assert len(set(ours)) > 1  # the minds agree on some problems and not on others
    np.testing.assert_allclose(estimates["NumSemSets"], ours, rtol=0, atol=TOL)
    # with 0/1 entailment the Laplacian's eigenvalue sum counts the same classes
    np.testing.assert_allclose(estimates["EigValLaplacian_NLI_score_entail"], ours, rtol=0, atol=TOL)


def test_semantic_entropies_equal_the_formulas_on_our_samples(drawn, estimates):
    s, stats, answers, _ = drawn
    logp = np.array(stats["sample_log_probs"])                                     # [N, K]
    frequency, summed = [], []
    for keys, lp in zip(_classes(s, answers), logp):
        counts = Counter(keys)
        # -(1/K) sum_j log(n_c(j) / K): the plug-in entropy of the answers
        frequency.append(-sum(n / MINDS * math.log(n / MINDS) for n in counts.values()))
        # -(1/K) sum_j log sum_{l in c(j)} p(y_l)
        class_lp = {c: np.logaddexp.reduce(lp[[k == c for k in keys]]) for c in counts}
        summed.append(-np.mean([class_lp[k] for k in keys]))
    np.testing.assert_allclose(estimates["SemanticEntropyEmpirical"], frequency, rtol=0, atol=TOL)
    np.testing.assert_allclose(estimates["SemanticEntropy"], summed, rtol=0, atol=TOL)


def test_sequence_entropies_equal_minus_the_mean_own_mind_log_likelihood(drawn, estimates):
    s, stats, _, _ = drawn
    own = np.einsum("njj->nj", s.logps)                                            # log p_j(y_ij)
    np.testing.assert_allclose(estimates["MonteCarloSequenceEntropy"], -own.mean(1), rtol=0, atol=TOL)
    lengths = np.array([[len(t) for t in row] for row in stats["sample_tokens"]])  # eos not counted
    np.testing.assert_allclose(estimates["MonteCarloNormalizedSequenceEntropy"], -(own / lengths).mean(1),
                               rtol=0, atol=TOL)


def test_ensemble_sequence_measures_equal_the_formulas_on_the_cross_scores(drawn, estimates):
    s, _, _, _ = drawn
    lp = s.logps                                                                   # [N, K scorers, K answers]
    # lm-polygraph takes log K of an integer tensor, i.e. in float32 (log 6 off by 2e-8): so do we here
    log_k = float(np.log(np.float32(MINDS)))
    mix = np.logaddexp.reduce(lp, axis=1) - log_k                                  # log (1/K) sum_k p_k(y_j)
    w = np.exp(mix) / np.exp(mix).sum(1, keepdims=True)                            # weights over answers
    np.testing.assert_allclose(estimates["EPStu"], -(np.exp(mix) * w).sum(1), rtol=0, atol=TOL)
    rmi = ((mix[:, None, :] - lp) * w[:, None, :]).sum(-1).mean(1)                 # mean_k sum_j w_j log(p/p_k)
    np.testing.assert_allclose(estimates["EPSrmi"], rmi, rtol=0, atol=TOL)


def test_lexical_similarity_runs_offline(estimates):
    lexical = estimates["LexicalSimilarity_rougeL"]
    assert np.isfinite(lexical).all() and (lexical <= 0).all() and (lexical >= -1).all()


@pytest.mark.parametrize("name", ["MonteCarloSequenceEntropy", "SemanticEntropy", "EPSrmi"])
def test_prr_equals_ours(drawn, estimates, name):
    _, _, _, correct = drawn
    u = estimates[name]
    assert np.unique(u).size == u.size  # no ties: lm-polygraph's argsort order is then the only order
    assert PredictionRejectionArea()(u, correct) == pytest.approx(prediction_rejection_area(u, correct),
                                                                  abs=TOL, rel=0)
    ours = prediction_rejection_ratio(u, correct)
    assert polygraph_prr(u, correct) == pytest.approx(ours, abs=TOL, rel=0)
    assert polygraph_prr(u, correct, max_rejection=0.5) == pytest.approx(
        prediction_rejection_ratio(u, correct, max_rejection=0.5), abs=TOL, rel=0)
    # lm-polygraph's UEManager estimates the random baseline from 1000 shuffles
    assert polygraph_prr(u, correct, random="sampled") == pytest.approx(ours, abs=0.1)


@pytest.mark.parametrize("name", ["MonteCarloSequenceEntropy", "EPSrmi"])
def test_prr_equals_ours_for_a_graded_quality(drawn, estimates, arith, name):
    # the share of minds that are right, on a scale lm-polygraph min-max rescales and PRR ignores
    _, _, answers, _ = drawn
    share = np.array([np.mean([a == r for a in row]) for row, r in zip(answers, arith[1])])
    assert len(set(share)) > 1
    quality = 5.0 * share + 2.0
    u = estimates[name]
    assert np.unique(u).size == u.size
    assert polygraph_prr(u, quality) == pytest.approx(prediction_rejection_ratio(u, quality), abs=TOL, rel=0)


def test_stat_calculator_gives_the_same_statistics(population, tiny_arith, arith, drawn):
    s, stats, _, _ = drawn
    calc = stat_calculator(population, tiny_arith[1], ids=MINDS)
    assert set(calc.meta_info()[0]) == set(stats) and calc.meta_info()[1] == []
    out = calc({}, arith[0][:2], None, max_new_tokens=40)
    assert out["sample_texts"] == s.texts[:2]
    # another batch, other padding: float32 rounding differs, the wiring does not
    np.testing.assert_allclose(out["sample_log_probs"], stats["sample_log_probs"][:2], rtol=0, atol=1e-4)


def test_an_estimator_needing_a_statistic_we_do_not_compute_is_refused(drawn):
    _, stats, _, _ = drawn
    with pytest.raises(ValueError, match="needs greedy_log_likelihoods"):
        run_estimators([MaximumSequenceProbability()], stats)
