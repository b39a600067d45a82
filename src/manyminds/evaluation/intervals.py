"""Intervals and paired tests of an evaluation's conditions, over problems (and seeds).

Input: one :class:`~manyminds.evaluation.EvalResult`, or one per seed (``runs[s]``, the same
problems in the same order; :func:`~manyminds.evaluation.seeds.evaluate_seeds`). Per condition and
metric the per-problem scores form an array ``x[s, p]``:

- ``pass_at_1``: ``c_sp / k`` (share of the ``k`` draws that are correct);
- ``pass_at_k``: unbiased pass@k with ``n = k`` draws, i.e. ``1[c_sp > 0]``;
- ``majority_at_k``: ``1[majority answer is correct]`` (greedy: ``1[the answer is correct]``).

The point estimate is ``mean_{s,p} x[s, p]`` (= the mean over seeds of each seed's score). The
interval of level ``confidence`` is

- **Wilson** (:func:`~manyminds.evaluation.stats.wilson_interval`) on ``sum_p x[p]`` successes
  of ``P`` problems when the per-problem score is binary: one seed (or a greedy condition, which no
  seed changes) and pass@k / maj@k / pass@1 with ``k = 1``;
- otherwise a **percentile bootstrap over problems** of the seed-averaged per-problem score
  ``xbar_p = mean_s x[s, p]`` (:func:`~manyminds.evaluation.stats.bootstrap_interval`; 10,000
  resamples, seeded). Seeds are averaged inside each problem, so the interval covers problem
  sampling; the seed-to-seed spread is reported beside it (``seed_sd``: standard deviation over
  seeds of each seed's score, ``ddof = 1``).

A comparison of condition ``a`` with a baseline ``b`` on the same problems (:func:`paired_comparisons`)
uses ``d_p = xbar_p(a) - xbar_p(b)``: the difference ``mean_p d_p``, its paired percentile bootstrap
interval (:func:`~manyminds.evaluation.stats.paired_bootstrap`), and a two-sided p-value: the
**exact McNemar** test (:func:`~manyminds.evaluation.stats.mcnemar_exact`) when both sides are binary
per problem, else the paired bootstrap's.

    >>> cis = condition_intervals(result)                 # {name: {metric: {value, low, high, method}}}
    >>> paired_comparisons(result, baseline="greedy")[0]  # {condition, baseline, metric, diff, low, high, p, test}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from manyminds.metrics import pass_at_k

from .stats import (
    _z,
    auroc_interval,
    bootstrap_interval,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)

__all__ = ["METRICS", "comparisons_vs_baselines", "condition_intervals", "ensemble_intervals", "is_binary",
           "matched_temperatures", "paired_comparisons", "per_problem"]

METRICS = ("pass_at_1", "pass_at_k", "majority_at_k")
N_BOOT = 10_000


def _runs(result) -> list:
    """``[EvalResult]`` from one result or a sequence of per-seed results (checked: same problems)."""
    runs = list(result) if isinstance(result, (list, tuple)) else [result]
    if not runs:
        raise ValueError("no evaluation results: pass an EvalResult or a list of them, one per seed")
    names = [c.name for c in runs[0].conditions]
    for r in runs[1:]:
        if [c.name for c in r.conditions] != names or r.n_prompts != runs[0].n_prompts:
            raise ValueError("per-seed results must have the same conditions and problems; evaluate each seed "
                             "with the same dataset and settings")
    return runs


def per_problem(result, name: str, metric: str) -> np.ndarray:
    """``x[s, p]``: condition ``name``'s per-problem ``metric`` for each seed ``s`` (see the module
    docstring); ``[S, P]`` float64."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    rows = []
    for run in _runs(result):
        cond = run[name]
        if not cond.per_prompt or "correct" not in cond.per_prompt[0]:
            raise ValueError(f"condition {name!r} has no per-problem correctness; evaluate with an 'answer' column")
        if metric == "pass_at_1":
            rows.append([sum(r["correct"]) / len(r["correct"]) for r in cond.per_prompt])
        elif metric == "pass_at_k":
            rows.append([pass_at_k(len(r["correct"]), int(sum(r["correct"])), cond.k) for r in cond.per_prompt])
        else:
            rows.append([float(r["majority_correct"]) for r in cond.per_prompt])
    return np.asarray(rows, dtype=np.float64)


def is_binary(result, name: str, metric: str) -> bool:
    """Whether condition ``name``'s seed-averaged per-problem ``metric`` is 0/1 by construction: one
    seed (or greedy decoding, which no seed changes) and a binary metric (pass@k, maj@k, or pass@1
    of one draw)."""
    runs = _runs(result)
    cond = runs[0][name]
    return (len(runs) == 1 or cond.kind == "greedy") and (metric != "pass_at_1" or cond.k == 1)


def condition_intervals(result, confidence: float = 0.95, n_boot: int = N_BOOT,
                        seed: int = 0) -> dict[str, dict[str, dict]]:
    """Point estimate and interval of every condition's pass@1, pass@k and maj@k.

    Returns ``{condition name: {metric: {"value", "low", "high", "method", "seed_sd"}}}`` with
    ``method`` ``"wilson"`` or ``"bootstrap"`` (see the module docstring for when each is used) and
    ``seed_sd`` the standard deviation over seeds of the per-seed score (``None`` for one seed).
    """
    _z(confidence)
    runs = _runs(result)
    out: dict[str, dict[str, dict]] = {}
    for cond in runs[0].conditions:
        out[cond.name] = {}
        for metric in METRICS:
            x = per_problem(runs, cond.name, metric)  # [S, P]
            xbar = x.mean(axis=0)  # [P]
            if is_binary(runs, cond.name, metric):
                lo, hi = wilson_interval(round(float(xbar.sum())), xbar.size, confidence)
                method = "wilson"
            else:
                lo, hi = bootstrap_interval(xbar, confidence, n_boot=n_boot, seed=seed)
                method = "bootstrap"
            sd = float(x.mean(axis=1).std(ddof=1)) if len(runs) > 1 else None
            out[cond.name][metric] = {"value": float(xbar.mean()), "low": lo, "high": hi, "method": method,
                                      "seed_sd": sd}
    return out


def paired_comparisons(result, baseline: str = "greedy", metrics: Sequence[str] = ("majority_at_k", "pass_at_1"),
                       kinds: Sequence[str] | None = None, confidence: float = 0.95, n_boot: int = N_BOOT,
                       seed: int = 0) -> list[dict]:
    """Every other condition (of ``kinds``, default all) against ``baseline`` (a condition name or kind,
    e.g. ``"greedy"`` or ``"samples"``), problem by problem.

    Per condition and metric: ``{"condition", "baseline", "metric", "diff", "low", "high", "p", "test",
    "problems"}`` with ``diff = mean_p (xbar_p(a) - xbar_p(b))``, ``(low, high)`` its paired percentile
    bootstrap interval, and ``p`` from the exact McNemar test (``test = "mcnemar"``) when both sides are
    binary per problem, else from the paired bootstrap (``test = "bootstrap"``).
    """
    _z(confidence)
    runs = _runs(result)
    base = runs[0][baseline]
    rows = []
    for cond in runs[0].conditions:
        if cond.name == base.name or (kinds is not None and cond.kind not in kinds):
            continue
        for metric in metrics:
            a = per_problem(runs, cond.name, metric).mean(axis=0)
            b = per_problem(runs, base.name, metric).mean(axis=0)
            diff, (lo, hi), p = paired_bootstrap(a, b, confidence, n_boot=n_boot, seed=seed)
            test = "bootstrap"
            if is_binary(runs, cond.name, metric) and is_binary(runs, base.name, metric):
                p, test = mcnemar_exact(a, b), "mcnemar"
            rows.append({"condition": cond.name, "baseline": base.name, "metric": metric, "diff": diff,
                         "low": lo, "high": hi, "p": p, "test": test, "problems": int(a.size)})
    return rows


def matched_temperatures(result) -> dict[str, dict[str, str]]:
    """For each minds condition, the temperature condition closest to it in diversity (mean unique
    answers per problem) and in per-answer accuracy (pass@1), both averaged over seeds:
    ``{minds name: {"diversity": temperature name, "accuracy": temperature name}}`` (empty when
    there is no temperature condition). Ties go to the first temperature of the plan."""
    runs = _runs(result)
    names = [c.name for c in runs[0].conditions]

    def mean(name, attr):
        return float(np.mean([getattr(r[name], attr) for r in runs]))

    temps = [c.name for c in runs[0].conditions if c.kind == "samples"]
    if not temps:
        return {}
    out = {}
    for name in names:
        if runs[0][name].kind != "minds":
            continue
        out[name] = {match: min(temps, key=lambda t: abs(mean(t, attr) - mean(name, attr)))
                     for match, attr in (("diversity", "unique_answers"), ("accuracy", "pass_at_1"))}
    return out


def comparisons_vs_baselines(result, confidence: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> list[dict]:
    """Every condition vs greedy, and every minds condition vs temperature sampling (when present).

    With one temperature, minds are compared with it. With a temperature sweep, each minds condition
    is compared with the temperature closest to it in diversity and with the one closest in
    per-answer accuracy (:func:`matched_temperatures`; rows carry ``"match"``), which is the question
    "do minds beat sampling at equal diversity / equal accuracy?" on the sweep's grid."""
    runs = _runs(result)
    kinds = {c.kind for c in runs[0].conditions}
    rows = []
    if "greedy" in kinds:
        rows += paired_comparisons(runs, "greedy", confidence=confidence, n_boot=n_boot, seed=seed)
    if "samples" in kinds and "minds" in kinds:
        temps = [c for c in runs[0].conditions if c.kind == "samples"]
        if len(temps) == 1:
            return rows + paired_comparisons(runs, "samples", kinds=("minds",), confidence=confidence,
                                             n_boot=n_boot, seed=seed)
        for name, matched in matched_temperatures(runs).items():
            for temp in dict.fromkeys(matched.values()):
                match = "+".join(m for m, t in matched.items() if t == temp)
                for row in paired_comparisons(runs, temp, kinds=("minds",), confidence=confidence,
                                              n_boot=n_boot, seed=seed):
                    if row["condition"] == name:
                        rows.append(row | {"match": match})
    return rows


def ensemble_intervals(result, labels: Sequence[int] | None = None, confidence: float = 0.95,
                       seed: int = 0) -> dict[str, dict]:
    """Intervals of what ``manyminds uncertainty`` prints for an
    :class:`~manyminds.evaluation.ensemble.EnsembleEvaluation`: ``{summary key: {"value", "low",
    "high", "method"}}``.

    - ``mixture_accuracy``, ``majority_accuracy``, ``member_<k>_accuracy``: Wilson over prompts;
    - ``auroc_<score>`` against ``labels`` (both classes present): stratified percentile bootstrap
      over examples (:func:`~manyminds.evaluation.stats.auroc_interval`).
    """
    _z(confidence)
    out: dict[str, dict] = {}
    accuracies = {"mixture_accuracy": result.mixture_correct, "majority_accuracy": result.majority_correct}
    accuracies |= {f"member_{k}_accuracy": row for k, row in enumerate(result.member_correct)}
    for key, correct in accuracies.items():
        if correct:
            lo, hi = wilson_interval(round(float(sum(correct))), len(correct), confidence)
            out[key] = {"value": sum(correct) / len(correct), "low": lo, "high": hi, "method": "wilson"}
    if labels is not None and 0 < sum(labels) < len(labels):
        for name in ("epistemic", "max_epistemic", "disagreement", "reference_epistemic", "logp_variance"):
            values = getattr(result, name)
            if values:
                value, (lo, hi) = auroc_interval(values, labels, confidence, seed=seed)
                out[f"auroc_{name}"] = {"value": value, "low": lo, "high": hi, "method": "bootstrap"}
    return out
