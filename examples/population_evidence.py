"""Evidence for the B-Trans claim on the default model.

The paper's qualitative claim: as sigma grows, the population's answers become more diverse,
each mind's accuracy holds up to a point, and a majority vote across minds beats single
samples. This script measures all three on the ``arith`` test split and prints, for each
claim, whether the numbers support it, whatever they are.

Every accuracy comes with its 95% interval over problems and every comparison with a paired test on
the same problems (:mod:`manyminds.evaluation.intervals`: Wilson / bootstrap intervals, exact McNemar /
paired bootstrap). ``evidence.json`` keeps the per-problem outcomes (``per_problem``), so the tests can
be rerun.

    python examples/population_evidence.py                      # ~5-10 min on 2 busy CPU cores
    python examples/population_evidence.py --problems 100 --minds 16 --out-dir evidence
"""

from __future__ import annotations

import argparse
import json
from itertools import pairwise
from pathlib import Path

import torch

import manyminds
from manyminds.evaluation import EvalConfig, evaluate
from manyminds.evaluation.intervals import (
    comparisons_vs_baselines,
    condition_intervals,
    per_problem,
)
from manyminds.evaluation.report import (
    comparisons_markdown,
    conditions_markdown,
    intervals_markdown,
    plot_sweep,
    write_plot,
)
from manyminds.evaluation.stats import paired_bootstrap
from manyminds.tasks import load_task
from manyminds.zoo import DEFAULT_MODEL


def statistics(result, confidence: float = 0.95) -> dict:
    """95% intervals of every condition's pass@1 / pass@k / maj@k and the paired comparisons with greedy
    and (minds) with temperature sampling, on the same problems (the library's evaluation path)."""
    return {"confidence": confidence, "intervals": condition_intervals(result, confidence),
            "comparisons": comparisons_vs_baselines(result, confidence)}


def per_problem_outcomes(result) -> dict:
    """``{condition: [{"answers", "correct", "majority_correct"} per problem]}``: what the paired tests
    resample (``evidence.json``)."""
    return {c.name: [{key: row.get(key) for key in ("answers", "correct", "majority_correct")}
                     for row in c.per_prompt] for c in result.conditions}


def _ci(entry: dict) -> str:
    return f"{entry['value']:.1%} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def _test(row: dict) -> str:
    """``+5.0 [+1.2, +9.0] pts, p=0.031 (mcnemar)``: a paired difference in points."""
    p = "<0.001" if row["p"] < 0.001 else f"{row['p']:.3f}"
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}] pts, p={p} ({row['test']})"


def vote_vs_single(result, name: str, confidence: float = 0.95) -> dict:
    """Condition ``name``'s majority vote against its own single answers, paired on the problems:
    ``d_p = 1[majority correct]_p - c_p / k``, paired bootstrap (the single answers' score is not 0/1)."""
    diff, (lo, hi), p = paired_bootstrap(per_problem(result, name, "majority_at_k")[0],
                                         per_problem(result, name, "pass_at_1")[0], confidence)
    return {"diff": diff, "low": lo, "high": hi, "p": p, "test": "paired bootstrap"}


def judge(result, stats: dict) -> dict[str, str]:
    """The claims and what the numbers say about each, with intervals and paired tests."""
    results, cis = result.conditions, stats["intervals"]
    greedy = next(r for r in results if r.name == "greedy")
    temp = next(r for r in results if r.name.startswith("temperature"))
    pops = [r for r in results if r.kind == "minds"]
    div = [(r.semantic_diversity if r.semantic_diversity is not None else r.distinct_2) for r in pops]
    div_name = "semantic diversity" if pops[0].semantic_diversity is not None else "distinct-2"

    rises = all(b >= a for a, b in pairwise(div))
    rises_overall = div[-1] > div[0]
    holds = [r.sigma for r in pops if r.pass_at_1 >= greedy.pass_at_1 - 0.05]
    vote_beats = [f"{r.sigma:g} ({_test(vote_vs_single(result, r.name, stats['confidence']))})"
                  for r in pops if r.majority_at_k > r.pass_at_1]
    best = max(pops, key=lambda r: r.majority_at_k)
    vs_temp = next((row for row in stats["comparisons"] if row["condition"] == best.name
                    and row["baseline"] == temp.name and row["metric"] == "majority_at_k"), None)
    return {
        f"{div_name} rises with sigma": f"{'monotone' if rises else ('overall, not monotone' if rises_overall else 'no')}: "
                                        + ", ".join(f"{r.sigma:g}->{d:.3f}" for r, d in zip(pops, div)),
        "per-mind accuracy holds (within 5 points of greedy) up to sigma":
            f"{max(holds):g}" if holds else "never",
        "majority vote beats the minds' single answers at sigma": ", ".join(vote_beats) or "none",
        "best majority vote across minds vs temperature sampling":
            f"minds sigma={best.sigma:g}: {_ci(cis[best.name]['majority_at_k'])} vs {temp.name}: majority "
            f"{_ci(cis[temp.name]['majority_at_k'])}, single sample {_ci(cis[temp.name]['pass_at_1'])}; greedy "
            f"{_ci(cis[greedy.name]['pass_at_1'])}" + (f"; paired: {_test(vs_temp)}" if vs_temp else ""),
    }


def report(result, stats: dict, claims: dict[str, str]) -> str:
    """``evidence.md``: the scores, their intervals, the paired differences and the claims."""
    return (conditions_markdown(result.conditions) + "\n\n"
            + intervals_markdown(stats["intervals"], stats["confidence"]) + "\n\n"
            + comparisons_markdown(stats["comparisons"], stats["confidence"]) + "\n\n"
            + "\n".join(f"- {c}: {v}" for c, v in claims.items()) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--problems", type=int, default=60)
    parser.add_argument("--minds", type=int, default=8)
    parser.add_argument("--sigmas", default="0.005,0.01,0.02,0.05,0.1,0.2,0.4")
    parser.add_argument("--temperature", type=float, default=0.7, help="the sampling-alone baseline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-semantic", action="store_true", help="skip all-MiniLM-L6-v2 diversity")
    parser.add_argument("--out-dir", type=Path, default=Path("population-evidence"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]

    model, tokenizer = manyminds.load(args.model)
    data = load_task("arith", split="test", n=args.problems, seed=args.seed)
    config = EvalConfig(k=args.minds, sigmas=sigmas, mind_seed=args.seed, temperature=args.temperature,
                        seed=args.seed, semantic=not args.no_semantic)
    result = evaluate(model, tokenizer, data, config,
                      progress=lambda name, done, total: done == 0 and print(f"  {name}: {total} rows", flush=True))
    results = result.conditions
    stats = statistics(result)
    claims = judge(result, stats)
    text = report(result, stats, claims)
    print()
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "evidence.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "results": [r.to_dict() for r in results],
         **stats, "claims": claims, "per_problem": per_problem_outcomes(result)}, indent=2))
    (args.out_dir / "evidence.md").write_text(text)
    print(write_plot(plot_sweep, results, path=args.out_dir / "sigma_sweep.png"))
    print(f"wrote {args.out_dir}/evidence.json, evidence.md")


if __name__ == "__main__":
    main()
