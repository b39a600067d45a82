"""Minds and members as lm-polygraph samplers: its uncertainty estimators and PRR on manyminds.

lm-polygraph (``pip install 'manyminds[polygraph]'``, tested with 0.7.0; docs/polygraph.md) scores
an answer's uncertainty from *statistics* (``sample_texts``, ``sample_log_probs``, ...) that its
stat calculators compute from ``samples_n`` temperature samples of one model. Here the samples are
K greedy answers, one per mind of a :class:`~manyminds.population.Population` or per member of an
:class:`~manyminds.ensemble.EnsembleLoRA`, and every sample is scored by every mind (member):

    tokens[i][j]          sampler j's greedy answer y_ij to prompt x_i, up to and including eos
    token_logps[i][s][j]  log p_s(y_ij,t | x_i, y_ij,<t) per token, scorer s in scorer_ids
    logps[i, s, j]        = sum_t token_logps[i][s][j][t] = log p_s(y_ij | x_i)       [N, S, K]

:func:`polygraph_stats` turns them into lm-polygraph's statistics (the dict its estimators read):

- ``sample_texts [N][K]``, ``sample_tokens [N][K][L]`` (eos dropped), ``sample_log_likelihoods
  [N][K][L]`` (eos dropped) and ``sample_log_probs [N][K]`` (eos included): lm-polygraph's
  ``SamplingGenerationCalculator`` conventions. ``log_probs`` chooses the model that scores sample j:
  ``"own"`` (default) its own mind/member ``log p_j(y_ij)``, as lm-polygraph scores a sample
  under the model that drew it; ``"plain"`` the noise-free model (mind ``-1``, the population's
  mean model; for an ensemble its frozen base, adapters off); ``"mixture"`` the K-way mixture
  ``log (1/K) sum_k p_k(y_ij)`` (the ensemble's predictive; no token-level values, so no
  ``sample_log_likelihoods``).
- ``semantic_classes_entail``, ``semantic_matrix_entail`` / ``_contra [N, K, K]``: lm-polygraph
  builds these with a DeBERTa NLI model (a hub download); here two samples entail each other iff
  their final answers are equal (:func:`answer_key`), so NumSemSets, SemanticEntropy, DegMat,
  Eccentricity, EigValLaplacian (``NLI_score``) run offline on answer equality.
- ``ensemble_token_scores``: ``{"ep_token_level_scores" | "pe_token_level_scores": {"log_probas":
  logps[:, members, :]}}`` ``[N, K, K]`` (member k's log-likelihood of sample j), read by the
  sequence-level ensemble estimators ``EPStu``, ``EPSrmi``, ``EPSrmiabs`` (and ``PES*``). lm-polygraph
  0.7.0's own ensemble calculator raises NotImplementedError; its legacy one also divided by length.

:func:`run_estimators` runs lm-polygraph estimators on the statistics, :func:`polygraph_prr` its
prediction-rejection ratio; :func:`manyminds.evaluation.rejection.prediction_rejection_ratio` is
ours (tests/polygraph checks that the numbers agree). :func:`stat_calculator` wraps the sampling
as an lm-polygraph ``StatCalculator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from manyminds.rows import (
    check_context,
    grid_ids,
    group_rows,
    pad_id_of,
    pad_left,
    pad_rows,
    prompt_list,
    repeat_prompts,
    selected_log_probs,
    tokenize_prompts,
)

__all__ = ["LOG_PROBS", "Samples", "answer_key", "draw_samples", "polygraph_prr", "polygraph_stats",
           "run_estimators", "semantic_classes", "stat_calculator"]

LOG_PROBS = ("own", "plain", "mixture")
INSTALL = ("lm-polygraph is not installed: pip install 'manyminds[polygraph]' (lm-polygraph==0.7.0), or run "
           "tests/polygraph/run.sh, which builds .venv-polygraph")


def _lm_polygraph():
    try:
        import lm_polygraph
    except ImportError as e:
        raise ImportError(INSTALL) from e
    return lm_polygraph


# ----------------------------------------------------------------------------- samples


@dataclass
class Samples:
    """K answers per prompt, one per mind or member, each scored by every scorer.

    Attributes:
        prompts: ``[N]`` prompts (strings or conversations).
        ids: ``[K]`` mind / member ids that answered (``-1`` = the plain model).
        scorer_ids: ``[S]`` ids that scored every answer: ``ids``, then ``-1`` when ``plain``.
        tokens: ``[N][K]`` generated token ids, up to and including eos (when one was generated).
        texts: ``[N][K]`` decoded answers (special tokens skipped).
        ended: ``[N][K]`` whether the answer ends with eos.
        token_logps: ``[N][S][K]`` float64 arrays ``[L_ij]``: per-token log-probs of answer j
            under scorer s.
    """

    prompts: list
    ids: list[int]
    scorer_ids: list[int]
    tokens: list[list[list[int]]]
    texts: list[list[str]]
    ended: list[list[bool]]
    token_logps: list[list[list[np.ndarray]]]

    @property
    def logps(self) -> np.ndarray:
        """``[N, S, K]`` float64: ``log p_s(y_ij | x_i)``, summed over the answer's tokens (eos included)."""
        return np.array([[[float(t.sum()) for t in row] for row in prompt] for prompt in self.token_logps])

    def scorer(self, mind: int) -> int:
        """Index into ``scorer_ids`` of ``mind``."""
        if mind not in self.scorer_ids:
            raise ValueError(f"id {mind} did not score these samples (scorers {self.scorer_ids}); "
                             "draw them with plain=True for the plain model")
        return self.scorer_ids.index(mind)


def _router(sampler):
    """(model to run, per-row routing context, default ids) of a Population or an EnsembleLoRA."""
    from manyminds.ensemble import EnsembleLoRA
    from manyminds.population import Population

    if isinstance(sampler, Population):
        return sampler.model, sampler.minds, None
    if isinstance(sampler, EnsembleLoRA):
        return sampler, sampler.members, list(range(sampler.num_members))
    raise TypeError(f"sampler must be a manyminds Population or EnsembleLoRA, got {type(sampler).__name__}")


def _until_eos(row: list[int], eos: int | None) -> list[int]:
    return row[:row.index(eos) + 1] if eos is not None and eos in row else row


@torch.no_grad()
def draw_samples(sampler, tokenizer, prompts, ids: int | Sequence[int] | None = None, plain: bool = False,
                 max_new_tokens: int = 32, batch_size: int = 64, **generate_kwargs) -> Samples:
    """Every prompt answered by every mind (member), every answer scored by every mind (member).

    Generation is greedy unless ``generate_kwargs`` say otherwise (``do_sample=True`` then draws
    from the global RNG). Prompts are tokenised as everywhere in manyminds
    (:func:`manyminds.rows.tokenize_prompts`); answers are scored in one teacher-forced forward per
    batch of (prompt, scorer, answer) rows, right-padded.

    Args:
        sampler: a :class:`~manyminds.population.Population` or an
            :class:`~manyminds.ensemble.EnsembleLoRA`.
        prompts: a prompt or a list of prompts (strings or conversations) ``[N]``.
        ids: minds (members) that answer: a number ``K`` (ids ``0 .. K-1``) or a list; an ensemble
            defaults to all its members. A population needs it.
        plain: also score every answer under the plain model (id ``-1``), for ``log_probs="plain"``.
        max_new_tokens: answer length limit.
        batch_size: rows per ``generate`` / forward call.
    """
    model, route, default = _router(sampler)
    ids = default if ids is None else grid_ids(ids, 1)  # an int K means ids 0..K-1
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("one answer per (prompt, mind): use more minds instead of num_return_sequences")
    prompts = prompt_list(prompts)
    prompt_ids = tokenize_prompts(tokenizer, prompts)                                 # [N] id lists
    config = getattr(getattr(model, "model", model), "config", None)
    check_context(config, [len(p) for p in prompt_ids], max_new_tokens)
    device = next(model.parameters()).device
    pad, eos = pad_id_of(tokenizer), tokenizer.eos_token_id
    generate_kwargs = {"do_sample": False, "pad_token_id": pad, "eos_token_id": eos,
                       "max_new_tokens": max_new_tokens, **generate_kwargs}
    rows = list(zip(repeat_prompts(range(len(prompts)), len(ids)), grid_ids(ids, len(prompts))))  # prompt-major
    answers: list[list[int]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        enc = pad_left([prompt_ids[i] for i, _ in chunk], pad, device)                # [b, T]
        with route([m for _, m in chunk]):
            out = model.generate(**enc, **generate_kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        answers += [_until_eos(r, eos) for r in sequences[:, enc["input_ids"].shape[1]:].tolist()]
    tokens = group_rows(answers, len(ids))                                            # [N][K]
    scorer_ids = ids + ([-1] if plain else [])
    token_logps = _score(model, route, prompt_ids, tokens, scorer_ids, pad, batch_size, device)
    return Samples(prompts=prompts, ids=ids, scorer_ids=scorer_ids, tokens=tokens,
                   texts=[[tokenizer.decode(t, skip_special_tokens=True) for t in row] for row in tokens],
                   ended=[[bool(t) and t[-1] == eos for t in row] for row in tokens], token_logps=token_logps)


def _score(model, route, prompt_ids, tokens, scorer_ids, pad, batch_size, device) -> list:
    """``[N][S][K]`` per-token log-probs of every answer under every scorer (teacher forcing)."""
    rows = [(i, s, j) for i in range(len(tokens)) for s in range(len(scorer_ids)) for j in range(len(tokens[i]))]
    out = [[[None] * len(tokens[i]) for _ in scorer_ids] for i in range(len(tokens))]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        seqs = [prompt_ids[i] + tokens[i][j] for i, _, j in chunk]
        input_ids = pad_rows(seqs, pad).to(device)                                    # [b, T] right-padded
        mask = pad_rows([[1] * len(s) for s in seqs], 0).to(device)
        with route([scorer_ids[s] for _, s, _ in chunk]):
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]    # [b, T-1, V]
        logps = selected_log_probs(logits, input_ids[:, 1:]).double().cpu().numpy()   # [b, T-1]
        for row, (i, s, j) in enumerate(chunk):
            first = len(prompt_ids[i]) - 1  # position that predicts the answer's first token
            out[i][s][j] = logps[row, first:first + len(tokens[i][j])]
    return out


# ----------------------------------------------------------------------------- statistics


def answer_key(text: str) -> str:
    """What two samples must share to be one semantic class: the final ``####`` answer
    (:func:`manyminds.tasks.extract_answer`), else the whole stripped text."""
    from manyminds.tasks import extract_answer

    answer = extract_answer(text)
    return answer if answer is not None else "text:" + text.strip()


def semantic_classes(keys: Sequence[str]) -> tuple[dict[int, int], list[list[int]]]:
    """``(sample -> class, class -> samples)``, classes numbered by first appearance, as lm-polygraph's
    ``SemanticClassesCalculator`` numbers them."""
    index: dict[str, int] = {}
    members: list[list[int]] = []
    sample_to_class = {}
    for j, key in enumerate(keys):
        if key not in index:
            index[key] = len(members)
            members.append([])
        members[index[key]].append(j)
        sample_to_class[j] = index[key]
    return sample_to_class, members


def polygraph_stats(samples: Samples, log_probs: str = "own",
                    answer_key: Callable[[str], str] = answer_key) -> dict:
    """lm-polygraph's statistics of ``samples`` (the module docstring lists them).

    Args:
        log_probs: ``"own"``, ``"plain"`` or ``"mixture"``: the model whose log-likelihood of sample j
            is ``sample_log_probs[i][j]`` (``"plain"`` needs ``draw_samples(..., plain=True)``).
        answer_key: ``text -> key``; samples with equal keys entail each other.
    """
    if log_probs not in LOG_PROBS:
        raise ValueError(f"log_probs must be one of {', '.join(LOG_PROBS)}, got {log_probs!r}")
    N, K = len(samples.tokens), len(samples.ids)
    members = [samples.scorer(m) for m in samples.ids]
    cross = samples.logps[:, members, :]                                              # [N, K, K]
    drop = [[int(e) for e in row] for row in samples.ended]                           # 1 = drop the eos
    stats: dict = {
        "sample_texts": samples.texts,
        "sample_tokens": [[t[:len(t) - d] for t, d in zip(row, dr)] for row, dr in zip(samples.tokens, drop)],
    }
    if log_probs == "mixture":
        # log (1/K) sum_k p_k(y_ij), over the answering minds
        mix = np.logaddexp.reduce(cross, axis=1) - np.log(K)                         # [N, K]
        stats["sample_log_probs"] = mix.tolist()
    else:
        per_sample = (lambda j: members[j]) if log_probs == "own" else (lambda j: samples.scorer(-1))
        chosen = [[samples.token_logps[i][per_sample(j)][j] for j in range(K)] for i in range(N)]
        stats["sample_log_probs"] = [[float(t.sum()) for t in row] for row in chosen]
        stats["sample_log_likelihoods"] = [[t[:len(t) - d].tolist() for t, d in zip(row, dr)]
                                           for row, dr in zip(chosen, drop)]
    keys = [[answer_key(t) for t in row] for row in samples.texts]
    classes = [semantic_classes(row) for row in keys]
    stats["semantic_classes_entail"] = {"sample_to_class": {i: c[0] for i, c in enumerate(classes)},
                                        "class_to_sample": {i: c[1] for i, c in enumerate(classes)}}
    same = np.array([[[float(a == b) for b in row] for a in row] for row in keys]).reshape(N, K, K)
    stats["semantic_matrix_entail"] = same
    stats["semantic_matrix_contra"] = 1.0 - same
    scores = {"log_probas": cross}
    stats["ensemble_token_scores"] = {"ep_token_level_scores": scores, "pe_token_level_scores": scores}
    return stats


# ----------------------------------------------------------------------------- lm-polygraph


def run_estimators(estimators: Sequence, stats: dict) -> dict[str, np.ndarray]:
    """``{str(estimator): [N] float64 uncertainties}`` of lm-polygraph estimators on ``stats``.

    An estimator that needs a statistic ``stats`` lacks (e.g. ``greedy_log_probs``, embeddings, or
    an NLI matrix other than answer equality) is refused before it runs.
    """
    _lm_polygraph()
    out = {}
    for est in estimators:
        missing = [d for d in est.stats_dependencies if d not in stats]
        if missing:
            raise ValueError(f"{est} needs {', '.join(missing)}, which manyminds does not compute; "
                             f"available: {', '.join(sorted(stats))}")
        if est.level != "sequence":
            raise ValueError(f"{est} is a {est.level}-level estimator; only sequence-level ones are supported")
        out[str(est)] = np.asarray(est(stats), dtype=np.float64)
    return out


def polygraph_prr(uncertainty: Sequence[float], quality: Sequence[float], max_rejection: float = 1.0,
                  random: str = "exact") -> float:
    """lm-polygraph's normalized PRR, as its ``UEManager`` reports ``prr_normalized``.

    ``(A - A_random) / (A_oracle - A_random)`` with ``A = PredictionRejectionArea(max_rejection)(u, q)``
    and ``A_oracle`` the same on ``(-q, q)``. ``random="exact"`` takes ``A_random`` = the mean of the
    min-max rescaled qualities (the expectation); ``"sampled"`` takes lm-polygraph's
    ``get_random_scores`` (1000 shuffles; it reseeds numpy's global RNG with 42).
    """
    _lm_polygraph()
    from lm_polygraph.ue_metrics import PredictionRejectionArea
    from lm_polygraph.ue_metrics.ue_metric import get_random_scores, normalize, normalize_metric

    if random not in ("exact", "sampled"):
        raise ValueError(f"random must be 'exact' or 'sampled', got {random!r}")
    u, q = np.asarray(uncertainty, dtype=np.float64), np.asarray(quality, dtype=np.float64)
    metric = PredictionRejectionArea(max_rejection=max_rejection)
    oracle = metric(-q, q)
    rand = float(np.mean(normalize(q))) if random == "exact" else get_random_scores(metric, q)
    return float(normalize_metric(metric(u, q), oracle, rand))


_CALCULATOR = None


def stat_calculator(sampler, tokenizer, ids: int | Sequence[int] | None = None, plain: bool = False,
                    log_probs: str = "own", **draw_kwargs):
    """An lm-polygraph ``StatCalculator`` whose samples are minds (members) of ``sampler``.

    ``calc(dependencies, texts, model=None, max_new_tokens=32)`` draws :func:`draw_samples` for the
    prompts ``texts`` and returns :func:`polygraph_stats`; ``calc.meta_info()`` lists the statistics
    (with ``log_probs="mixture"`` all but ``sample_log_likelihoods``).
    """
    global _CALCULATOR
    _lm_polygraph()
    if _CALCULATOR is None:
        from lm_polygraph.stat_calculators import StatCalculator

        class ManymindsSamplesCalculator(StatCalculator):
            """Sample statistics from the minds of a Population or the members of an EnsembleLoRA."""

            @staticmethod
            def meta_info():
                return ["sample_texts", "sample_tokens", "sample_log_probs", "sample_log_likelihoods",
                        "semantic_classes_entail", "semantic_matrix_entail", "semantic_matrix_contra",
                        "ensemble_token_scores"], []

            def __init__(self, sampler, tokenizer, ids, plain, log_probs, draw_kwargs):
                super().__init__()
                self.sampler, self.tokenizer, self.ids = sampler, tokenizer, ids
                self.plain, self.log_probs, self.draw_kwargs = plain, log_probs, draw_kwargs

            def __call__(self, dependencies, texts, model=None, max_new_tokens: int = 32, **kwargs):
                samples = draw_samples(self.sampler, self.tokenizer, list(texts), self.ids, plain=self.plain,
                                       max_new_tokens=max_new_tokens, **self.draw_kwargs)
                return polygraph_stats(samples, self.log_probs)

        _CALCULATOR = ManymindsSamplesCalculator
    return _CALCULATOR(sampler, tokenizer, ids, plain, log_probs, draw_kwargs)
