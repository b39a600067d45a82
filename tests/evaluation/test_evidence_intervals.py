"""The evidence scripts in ``examples/`` report every accuracy with its 95% interval and every AUROC
with its bootstrap interval, computed by :mod:`manyminds.evaluation.stats` (issue 17): their table
functions, called on hand-made results (no model runs here)."""

from __future__ import annotations

import importlib
import json
import random
import sys
from pathlib import Path

import pytest

from manyminds.evaluation import EvalConfig, EvalResult, score_condition
from manyminds.evaluation.stats import auroc, auroc_interval, wilson_interval

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name: str):
    """``examples/<name>.py`` as a module (the examples import each other by bare name)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _pct(lo: float, hi: float) -> str:
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def test_smollm2_verifiable_table_has_wilson_intervals_and_paired_tests():
    v = _example("smollm2_verifiable")
    data = [{"country": f"C{i}", "capital": [f"City{i}"]} for i in range(10)]
    right, wrong = "The capital of C{} is City{}.", "The capital of C{} is Nowhere."
    k = 3
    answers = {  # greedy: 6/10 right; minds: the vote is right on 8/10
        "greedy": [[(right if i < 6 else wrong).format(i, i)] * k for i in range(10)],
        "temperature 0.7": [[right.format(i, i), wrong.format(i), wrong.format(i)] for i in range(10)],
        "minds add 0.01": [[right.format(i, i)] * 2 + [wrong.format(i)] if i < 8 else [wrong.format(i)] * 3
                           for i in range(10)],
    }
    results = {"settings": {"k": k}, "conditions": {n: v.score(g, data, k) for n, g in answers.items()},
               "answers": answers}
    results.update(v.statistics(results, data))
    text = v.table(results)
    greedy = next(line for line in text.splitlines() if line.startswith("| greedy |"))
    assert f"60.0% {_pct(*wilson_interval(6, 10))}" in greedy
    minds = next(line for line in text.splitlines() if line.startswith("| minds add 0.01 |"))
    assert f"80.0% {_pct(*wilson_interval(8, 10))}" in minds  # majority vote of 3
    # the library's values agree with the script's own scorer
    assert results["intervals"]["minds add 0.01"]["majority_at_k"]["value"] == pytest.approx(0.8)
    vs_greedy = [r for r in results["comparisons"] if r["condition"] == "minds add 0.01"
                 and r["baseline"] == "greedy" and r["metric"] == "majority_at_k"]
    assert vs_greedy and vs_greedy[0]["test"] == "mcnemar" and vs_greedy[0]["diff"] == pytest.approx(0.2)
    assert "| minds add 0.01 | greedy | maj@k | +20.0" in text
    json.dumps(results)  # results.json stays writable
    assert results["per_problem"]["greedy"][7]["majority_correct"] == 0.0


def _sft_run(ee, K: int, shift: float, seed: int) -> dict:
    """One hand-made ``analyse_sft`` result: 8 ``@`` prompts, 12 controls."""
    rng = random.Random(seed)
    labels = [1] * 8 + [0] * 12
    ex = {"labels": labels, **{s: [rng.random() + shift * y for y in labels] for s in ee.SCORES},
          "mixture_answer": ["1"] * 20, "mixture_correct": [float(i % 3 != 0) for i in range(20)],
          "member_answers": [["1"] * 20] * K, "member_correct": [[float(i % 2 == 0) for i in range(20)]] * K}
    run = {"responsibilities": {c: [1 / K] * K for c in ("plus", "minus", "none")},
           "per_member": [{"at_as_plus": 0.5, "at_as_minus": 0.5, "control_accuracy": 0.5}] * K,
           "mixture_control_accuracy": 8 / 12, "mean_max_epistemic_conflict": 0.3,
           "mean_max_epistemic_control": 0.1, "per_example": ex,
           **{f"auroc_{s}": auroc(ex[s], labels) for s in ee.SCORES}}
    if K == 1:
        run.update({f"auroc_{s}": None for s in ("max_epistemic", "mean_epistemic", "reference_epistemic",
                                                  "answer_disagreement", "logp_variance")})
    run["intervals"] = ee.sft_intervals(run)
    return run


def test_ensemble_evidence_markdown_has_auroc_and_wilson_intervals(tmp_path):
    ee = _example("ensemble_evidence")
    sft = {"alpha=0.8": _sft_run(ee, 4, 0.8, 0), "single LoRA": _sft_run(ee, 1, 0.2, 1)}
    results = {"sft": sft, "dpo": {}, "sft_comparisons": ee.sft_comparisons(sft, "single LoRA")}
    text = ee.write_markdown(results, tmp_path / "results.md")
    row = next(line for line in text.splitlines() if line.startswith("| alpha=0.8 |"))
    control = [i for i in range(20) if i >= 8]
    hits = sum(float(i % 3 != 0) for i in control)
    lo, hi = wilson_interval(round(hits), len(control))
    assert f"{hits / len(control):.3f} [{lo:.2f}, {hi:.2f}]" in row  # mixture control accuracy
    ex = sft["alpha=0.8"]["per_example"]
    value, (lo, hi) = auroc_interval(ex["max_epistemic"], ex["labels"])
    assert row.split(" | ")[1] == f"{value:.3f} [{lo:.2f}, {hi:.2f}]"  # AUROC max-MI
    # paired against the single LoRA's total entropy on the same examples
    paired = [r for r in results["sft_comparisons"] if r["metric"] == "AUROC max_epistemic vs total_entropy"]
    base = sft["single LoRA"]["per_example"]["total_entropy"]
    assert paired[0]["diff"] == pytest.approx(auroc(ex["max_epistemic"], ex["labels"]) - auroc(base, ex["labels"]))
    assert paired[0]["low"] <= paired[0]["diff"] <= paired[0]["high"]
    assert ee.paired_auroc(base, base, ex["labels"]) == (0.0, (0.0, 0.0), 1.0)
    json.dumps(results)


def test_rl_evidence_summary_has_intervals_over_problems():
    rl = _example("rl_evidence")
    P, k = 15, 4
    gold = [str(i) for i in range(P)]

    def result(n_right: int) -> EvalResult:  # the first n_right problems right, everywhere
        grid = [[f"#### {i}" if i < n_right else f"#### {i + 1}"] * k for i in range(P)]
        conds = [score_condition("greedy", "greedy", [g[:1] for g in grid], gold),
                 score_condition("temperature 1", "samples", grid, gold, temperature=1.0),
                 score_condition("minds sigma=0.02", "minds", grid, gold, sigma=0.02)]
        return EvalResult(config=EvalConfig(k=k), conditions=conds, prompts=gold, answers=gold)

    def run(n_right: int) -> dict:
        r = result(n_right)
        return {"seed": 0, "curves": {c: [0.5] for c in rl.CURVES}, "eval": rl.scores(r),
                "per_problem": rl.saved_conditions(r), "train_seconds": 60.0}

    results = json.loads(json.dumps({"runs": {"plain": [run(6)], "pop-mean": [run(9)]}}))  # via results.json
    results["comparisons"] = rl.comparisons(results, k)
    text = rl.markdown(rl.summarize(results, k), rl.scores(result(3)), k, rl.intervals([result(3)], k),
                       results["comparisons"])
    lo, hi = wilson_interval(9, P)
    row = next(line for line in text.splitlines() if line.startswith("| pop-mean |"))
    assert row.count(f"0.600 [{lo:.3f}, {hi:.3f}]") == 4  # greedy pass@1, pass@k, maj@k, minds maj@k
    lo, hi = wilson_interval(3, P)
    assert f"| before training | - | 0.200 [{lo:.3f}, {hi:.3f}]" in text
    tests = {(r["metric"], r["test"]) for r in results["comparisons"]}
    assert tests == {("pass_at_1", "mcnemar"), ("pass_at_k", "mcnemar"), ("majority_at_k", "mcnemar")}
    assert all(r["diff"] == pytest.approx(0.2) for r in results["comparisons"])
