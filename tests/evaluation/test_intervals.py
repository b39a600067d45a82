"""manyminds.evaluation.intervals / seeds on fixed EvalResults, against statsmodels and scipy.

The per-problem outcomes are rebuilt here from the completions (``#### n`` answers), independently of
the scorer, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from manyminds.evaluation import EvalConfig, EvalResult, score_condition
from manyminds.evaluation.intervals import (
    comparisons_vs_baselines,
    condition_intervals,
    paired_comparisons,
)
from manyminds.evaluation.seeds import mean_conditions, seed_records
from manyminds.evaluation.stats import paired_bootstrap

scipy_stats = pytest.importorskip("scipy.stats")
P, K = 40, 3
GOLD = [str(p) for p in range(P)]


def _grid(rng, p_right: float, k: int) -> list[list[str]]:
    """``[P][k]`` completions, each ``#### gold`` with probability ``p_right`` else one wrong answer
    (the same for every draw, so with ``k = 3`` a vote is never a three-way tie)."""
    return [[f"#### {gold}" if rng.random() < p_right else f"#### {int(gold) + 1}" for _ in range(k)]
            for gold in GOLD]


def _result(seed: int = 0) -> EvalResult:
    rng = np.random.default_rng(seed)
    greedy = score_condition("greedy", "greedy", _grid(np.random.default_rng(99), 0.55, 1), GOLD)
    temp = score_condition("temperature 1", "samples", _grid(rng, 0.5, K), GOLD, temperature=1.0)
    minds = score_condition("minds sigma=0.1", "minds", _grid(rng, 0.75, K), GOLD, sigma=0.1)
    config = EvalConfig(k=K, sigmas=(0.1,), seed=seed, mind_seed=seed)
    return EvalResult(config=config, conditions=[greedy, temp, minds], prompts=[f"q{p}" for p in range(P)],
                      answers=GOLD)


def _outcomes(cond) -> tuple[np.ndarray, np.ndarray]:
    """Independently of the scorer: per problem, the share of correct draws and whether the most
    frequent answer (ties: the first one reached) is the gold one."""
    share, majority = [], []
    for rec, gold in zip(cond.per_prompt, GOLD):
        answers = [c.split("####")[1].strip() for c in rec["completions"]]
        share.append(sum(a == gold for a in answers) / len(answers))
        majority.append(float(max(answers, key=answers.count) == gold))
    return np.array(share, dtype=np.float64), np.array(majority, dtype=np.float64)


def test_intervals_match_statsmodels_wilson_and_scipy_bootstrap():
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    result = _result()
    cis = condition_intervals(result, confidence=0.9)
    for cond in result.conditions:
        share, majority = _outcomes(cond)
        entry = cis[cond.name]["majority_at_k"]
        lo, hi = proportion.proportion_confint(int(majority.sum()), P, alpha=0.1, method="wilson")
        assert entry["method"] == "wilson" and (entry["low"], entry["high"]) == pytest.approx((lo, hi), abs=1e-12)
        assert entry["value"] == pytest.approx(majority.mean(), abs=1e-12) == pytest.approx(cond.majority_at_k)
        any_right = (share > 0).astype(float)
        lo, hi = proportion.proportion_confint(int(any_right.sum()), P, alpha=0.1, method="wilson")
        assert (cis[cond.name]["pass_at_k"]["low"], cis[cond.name]["pass_at_k"]["high"]) == \
            pytest.approx((lo, hi), abs=1e-12)
    # greedy accuracy (one draw) is a proportion of problems: Wilson; pass@1 of 3 draws a mean of c/3: bootstrap
    assert cis["greedy"]["pass_at_1"]["method"] == "wilson"
    boot = cis["minds sigma=0.1"]["pass_at_1"]
    share = _outcomes(result["minds sigma=0.1"])[0]
    assert boot["method"] == "bootstrap" and boot["value"] == pytest.approx(share.mean(), abs=1e-12)
    ref = scipy_stats.bootstrap((share,), np.mean, confidence_level=0.9, n_resamples=20_000, method="percentile",
                                random_state=np.random.default_rng(1)).confidence_interval
    assert boot["low"] == pytest.approx(ref.low, abs=0.015) and boot["high"] == pytest.approx(ref.high, abs=0.015)


def test_paired_comparison_matches_statsmodels_mcnemar_and_a_paired_bootstrap():
    tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    result = _result()
    rows = {(r["condition"], r["metric"]): r for r in paired_comparisons(result, "greedy")}
    _, greedy = _outcomes(result["greedy"])
    for name in ("temperature 1", "minds sigma=0.1"):
        share, majority = _outcomes(result[name])
        table = [[int(((majority == 1) & (greedy == 1)).sum()), int(((majority == 1) & (greedy == 0)).sum())],
                 [int(((majority == 0) & (greedy == 1)).sum()), int(((majority == 0) & (greedy == 0)).sum())]]
        row = rows[(name, "majority_at_k")]
        assert row["test"] == "mcnemar" and row["baseline"] == "greedy"
        assert row["p"] == pytest.approx(tables.mcnemar(table, exact=True).pvalue, abs=1e-12)
        assert row["diff"] == pytest.approx(majority.mean() - greedy.mean(), abs=1e-12)
        d = share - greedy
        row = rows[(name, "pass_at_1")]
        assert row["test"] == "bootstrap" and row["diff"] == pytest.approx(d.mean(), abs=1e-12)
        ref = scipy_stats.bootstrap((d,), np.mean, n_resamples=20_000, method="percentile",
                                    random_state=np.random.default_rng(1)).confidence_interval
        assert row["low"] == pytest.approx(ref.low, abs=0.02) and row["high"] == pytest.approx(ref.high, abs=0.02)
    # the minds are clearly better than greedy here; the test sees it, and its p is the paired one
    minds = rows[("minds sigma=0.1", "majority_at_k")]
    assert minds["diff"] > 0.15 and minds["p"] < 0.05
    # minds vs temperature sampling: only the minds condition, against "temperature 1"
    vs_temp = [r for r in comparisons_vs_baselines(result) if r["baseline"] == "temperature 1"]
    assert {r["condition"] for r in vs_temp} == {"minds sigma=0.1"} and len(vs_temp) == 2


def test_seeds_average_inside_problems_and_switch_to_the_bootstrap():
    runs = [_result(0), _result(1), _result(2)]
    name = "minds sigma=0.1"
    majority = np.array([_outcomes(r[name])[1] for r in runs])  # [S, P]
    share = np.array([_outcomes(r[name])[0] for r in runs])
    cis = condition_intervals(runs)
    entry = cis[name]["majority_at_k"]
    assert entry["method"] == "bootstrap" and entry["value"] == pytest.approx(majority.mean(), abs=1e-12)
    assert entry["seed_sd"] == pytest.approx(majority.mean(axis=1).std(ddof=1), abs=1e-12)
    assert cis["greedy"]["majority_at_k"]["method"] == "wilson"  # greedy decoding: no seed changes it
    row = next(r for r in paired_comparisons(runs, "samples", kinds=("minds",)) if r["metric"] == "pass_at_1")
    temp = np.array([_outcomes(r["temperature 1"])[0] for r in runs]).mean(axis=0)
    diff, (lo, hi), p = paired_bootstrap(share.mean(axis=0), temp)
    assert row["test"] == "bootstrap" and (row["diff"], row["low"], row["high"], row["p"]) == \
        pytest.approx((diff, lo, hi, p), abs=1e-12)
    maj = next(r for r in paired_comparisons(runs, "greedy") if r["condition"] == name)
    assert maj["metric"] == "majority_at_k" and maj["test"] == "bootstrap"  # seed-averaged: not 0/1
    means = mean_conditions(runs)
    assert means[2].majority_at_k == pytest.approx(np.mean([r[name].majority_at_k for r in runs]))
    assert means[2].majority_at_k == pytest.approx(entry["value"])
    rows = seed_records(runs)
    assert len(rows) == 3 * P and [r["seed"] for r in rows[::P]] == [0, 1, 2]
    assert rows[P]["mind_seed"] == 1 and rows[P]["conditions"][name]["correct"] == \
        runs[1][name].per_prompt[0]["correct"]


def test_bad_input_is_refused():
    result = _result()
    with pytest.raises(ValueError, match="confidence must be in"):
        condition_intervals(result, confidence=1.0)
    with pytest.raises(ValueError, match="same conditions and problems"):
        other = _result()
        other.conditions = other.conditions[:2]
        condition_intervals([result, other])
