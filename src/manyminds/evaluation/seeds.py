"""Repeat an evaluation over seeds: new minds and new sampling streams per seed.

Seed ``i`` of ``S`` runs :func:`~manyminds.evaluation.evaluate` with ``mind_seed + i`` (a fresh draw
of minds ``0..k-1``) and ``seed + i`` (a fresh sampling stream) on the same problems. The means over
seeds (:func:`mean_conditions`) are what the tables print; the intervals average the seeds inside
each problem (:mod:`.intervals`); ``results.jsonl`` holds one row per (seed, problem) (:func:`seed_records`).

    >>> runs = evaluate_seeds(model, tokenizer, rows, EvalConfig(k=4), seeds=3)
    >>> mean_conditions(runs)[0].pass_at_1, len(seed_records(runs)) == 3 * runs[0].n_prompts
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from .core import EvalConfig, EvalResult, build_records, evaluate
from .scoring import ConditionScores

__all__ = ["evaluate_seeds", "mean_conditions", "seed_config", "seed_records"]

_MEANS = ("pass_at_1", "pass_at_k", "majority_at_k", "unique_answers", "answer_rate", "distinct_2", "self_bleu",
          "semantic_diversity")


def seed_config(config: EvalConfig, index: int) -> EvalConfig:
    """Settings of seed ``index``: ``mind_seed + index`` and ``seed + index``, the rest unchanged."""
    return replace(config, mind_seed=config.mind_seed + index, seed=config.seed + index)


def evaluate_seeds(model, tokenizer, dataset, config: EvalConfig | None = None, seeds: int = 1,
                   progress: Callable[[str, int, int], None] | None = None) -> list[EvalResult]:
    """:func:`~manyminds.evaluation.evaluate` for seeds ``0..seeds-1`` (:func:`seed_config`); one
    result per seed. ``progress`` gets condition names suffixed `` (seed i)`` when ``seeds > 1``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1 (1 = a single run), got {seeds}")
    config = config or EvalConfig()
    runs = []
    for i in range(seeds):
        report = progress
        if progress is not None and seeds > 1:
            def report(name, done, total, i=i):
                progress(f"{name} (seed {i})", done, total)
        runs.append(evaluate(model, tokenizer, dataset, seed_config(config, i), progress=report))
    return runs


def mean_conditions(runs: Sequence[EvalResult]) -> list[ConditionScores]:
    """Each condition's scores averaged over seeds (``seconds`` summed; no per-prompt draws); one run's
    conditions as they are."""
    if len(runs) == 1:
        return list(runs[0].conditions)
    out = []
    for i, cond in enumerate(runs[0].conditions):
        per_seed = [r.conditions[i] for r in runs]
        means = {}
        for key in _MEANS:
            values = [getattr(c, key) for c in per_seed]
            means[key] = None if any(v is None for v in values) else sum(values) / len(values)
        out.append(replace(cond, **means, seconds=sum(c.seconds for c in per_seed), per_prompt=[]))
    return out


def seed_records(runs: Sequence[EvalResult]) -> list[dict]:
    """``results.jsonl`` rows: for each seed, one row per problem with ``seed`` and ``mind_seed``
    (what :meth:`EvalResult.records` holds, plus those two keys); seed-major."""
    rows = []
    for run in runs:
        tag = {"seed": run.config.seed, "mind_seed": run.config.mind_seed}
        rows += build_records(run.prompts, run.answers, run.conditions, [tag] * run.n_prompts)
    return rows
