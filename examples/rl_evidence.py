"""Evidence for population RL: plain GRPO vs population GRPO (both log-prob modes) vs label-free.

Every method trains the same model for the same number of steps, with the same prompts,
rollouts per step and seeds; only how rollouts are generated/scored differs:

- ``plain``: GRPO (``mind_sigma=0``, which reproduces ``trl.GRPOTrainer`` exactly; tested);
- ``pop-mean``: a fresh mind per rollout, update on the mean model's log-probs (the paper);
- ``pop-mind``: a fresh mind per rollout, log-probs under each rollout's own mind;
- ``label-free``: population GRPO rewarded by agreement with the group's majority answer
  (no labels read).

Reported, over training (from the trainer's logs): reward, fraction of groups with zero reward
variance, distinct final answers per group. After training, on held-out ``arith`` test prompts:
greedy pass@1, pass@k and majority@k of ``k`` temperature samples (and of ``k`` minds), as the mean
± sd over seeds with a 95% interval over problems (:func:`manyminds.evaluation.intervals.condition_intervals`:
Wilson for one seed, else a bootstrap of the seed-averaged per-problem scores), and every method
compared with ``plain`` on the same problems (:func:`~manyminds.evaluation.intervals.paired_comparisons`:
exact McNemar or paired bootstrap). ``results.json`` keeps each run's per-problem outcomes
(``per_problem``), so the intervals and tests can be recomputed from it.
Writes ``results.json``, ``summary.md`` and ``rl_evidence.png`` into ``--out``.

    python examples/rl_evidence.py                       # full setting: 3 seeds
    python examples/rl_evidence.py --seeds 0 --steps 10  # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import PrinterCallback

import manyminds
from manyminds.evaluation import EvalConfig, evaluate
from manyminds.evaluation.core import EvalResult
from manyminds.evaluation.intervals import condition_intervals, paired_comparisons
from manyminds.evaluation.report import comparisons_markdown
from manyminds.evaluation.scoring import ConditionScores
from manyminds.rewards import answer_reward
from manyminds.tasks import load_task
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
from manyminds.zoo import DEFAULT_MODEL

METHODS = {
    "plain": {"mind_sigma": 0.0},
    "pop-mean": {"mind_logprobs": "mean"},
    "pop-mind": {"mind_logprobs": "mind"},
    "label-free": {"label_free": True},
}
CURVES = ["reward", "minds/frac_groups_zero_reward_var", "minds/unique_answers_per_group"]


def train_one(method: str, seed: int, opts, train_rows, out_dir: str):
    model, tok = manyminds.load(opts.model)
    settings = {"mind_sigma": opts.sigma, **METHODS[method]}
    args = PopulationGRPOConfig(
        output_dir=out_dir, max_steps=opts.steps, num_generations=opts.num_generations,
        per_device_train_batch_size=opts.num_generations * opts.prompts_per_step,
        max_completion_length=opts.max_completion_length, learning_rate=opts.lr, temperature=opts.temperature,
        logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False, seed=seed,
        mind_seed=seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **settings)
    rewards = [] if args.label_free else [answer_reward]
    trainer = PopulationGRPOTrainer(model, reward_funcs=rewards, args=args, train_dataset=train_rows,
                                    processing_class=tok)
    trainer.remove_callback(PrinterCallback)  # keep the console to one line per run
    start = time.time()
    trainer.train()
    history = [h for h in trainer.state.log_history if "reward" in h]
    curves = {k: [h.get(k) for h in history] for k in CURVES}
    if args.label_free:  # the label-free run never saw labels; score its rollouts against them for the plot
        curves["reward"] = [None] * len(history)
        curves["majority_agreement"] = [h.get("rewards/majority_vote_reward/mean") for h in history]
    return trainer.model, tok, curves, time.time() - start


def eval_model(model, tok, test_rows, opts, seed) -> EvalResult:
    cfg = EvalConfig(k=opts.k, sigmas=(opts.sigma,), mind_seed=1000 + seed, temperature=opts.temperature,
                     max_new_tokens=opts.max_completion_length, seed=seed)
    return evaluate(model, tok, test_rows, cfg)


def scores(result: EvalResult) -> dict:
    """Keyed by kind ("greedy", "samples", "minds") with the metric names of this script's tables."""
    return {c.kind: {"pass@1": c.pass_at_1, f"pass@{c.k}": c.pass_at_k, f"majority@{c.k}": c.majority_at_k,
                     "unique_answers": c.unique_answers} for c in result.conditions}


def saved_conditions(result: EvalResult) -> list[dict]:
    """Each condition's scores and per-problem outcomes (final answers, 0/1 per draw, majority 0/1):
    the ``per_problem`` entry of ``results.json``, what :func:`rebuild` reads back."""
    keep = ("answers", "correct", "majority_correct")
    return [c.to_dict() | {"per_prompt": [{key: row[key] for key in keep} for row in c.per_prompt]}
            for c in result.conditions]


def rebuild(saved: list[dict]) -> EvalResult:
    """An :class:`~manyminds.evaluation.core.EvalResult` from :func:`saved_conditions` (scores and
    per-problem outcomes; no prompts), enough for the library's intervals and paired tests.

    Each seed here is a different trained model, so greedy answers change with the seed: the greedy
    condition gets kind ``"greedy per model"`` (still found as ``result["greedy"]`` by its name), which
    keeps the library from treating its seed-averaged per-problem score as 0/1.
    """
    conditions = [ConditionScores(**(c | {"kind": "greedy per model"} if c["kind"] == "greedy" else c))
                  for c in saved]
    return EvalResult(config=EvalConfig(k=max(c.k for c in conditions)), conditions=conditions,
                      prompts=[None] * conditions[0].problems)


def columns(k: int) -> dict[str, tuple[str, str]]:
    """Table column -> (condition kind, metric of :mod:`manyminds.evaluation.intervals`)."""
    return {"pass@1 greedy": ("greedy", "pass_at_1"), f"pass@{k}": ("samples", "pass_at_k"),
            f"majority@{k}": ("samples", "majority_at_k"), f"minds majority@{k}": ("minds", "majority_at_k")}


def intervals(results: list[EvalResult], k: int) -> dict[str, tuple[float, float]]:
    """95% interval over problems of each accuracy column, the per-problem scores averaged over the
    seeds of ``results`` (one :class:`EvalResult` per seed; Wilson for one seed)."""
    cis = condition_intervals(results)
    return {col: (cis[results[0][kind].name][metric]["low"], cis[results[0][kind].name][metric]["high"])
            for col, (kind, metric) in columns(k).items()}


def comparisons(results: dict, k: int, baseline: str = "plain") -> list[dict]:
    """Every method against ``baseline`` on each accuracy column, paired on the same problems
    (:func:`~manyminds.evaluation.intervals.paired_comparisons` of the seed-averaged per-problem
    scores). Methods are paired seed by seed, so they need the same number of seeds as ``baseline``."""
    runs = {m: [rebuild(r["per_problem"]) for r in rs] for m, rs in results["runs"].items()
            if rs and all("per_problem" in r for r in rs)}
    if baseline not in runs:
        return []
    rows = []
    for method, evals in runs.items():
        if method == baseline or len(evals) != len(runs[baseline]):
            continue
        for kind, metric in columns(k).values():
            paired = [EvalResult(config=b.config, prompts=b.prompts, conditions=[
                dataclasses.replace(b[kind], name=f"{baseline} ({kind})"),
                dataclasses.replace(m[kind], name=f"{method} ({kind})")]) for b, m in zip(runs[baseline], evals)]
            rows += paired_comparisons(paired, baseline=f"{baseline} ({kind})", metrics=(metric,))
    return rows


def summarize(results: dict, k: int) -> list[dict]:
    rows = []
    for method, runs in results["runs"].items():
        def stat(get, runs=runs):
            vals = [get(r) for r in runs]
            mean = statistics.mean(vals)
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return mean, sd

        def last(curve):
            def get(r):
                vals = [v for v in r["curves"][curve] if v is not None]
                tail = vals[-max(1, len(vals) // 4):]  # mean over the last quarter of training
                return statistics.mean(tail) if tail else float("nan")
            return get

        rows.append({
            "method": method, "seeds": len(runs),
            "pass@1 greedy": stat(lambda r: r["eval"]["greedy"]["pass@1"]),
            f"pass@{k}": stat(lambda r: r["eval"]["samples"][f"pass@{k}"]),
            f"majority@{k}": stat(lambda r: r["eval"]["samples"][f"majority@{k}"]),
            f"minds majority@{k}": stat(lambda r: r["eval"]["minds"][f"majority@{k}"]),
            "zero-var groups (train, last 1/4)": stat(last("minds/frac_groups_zero_reward_var")),
            "unique answers/group (train, last 1/4)": stat(last("minds/unique_answers_per_group")),
            "train min/run": stat(lambda r: r["train_seconds"] / 60),
            "intervals": (intervals([rebuild(run["per_problem"]) for run in runs], k)
                          if all("per_problem" in run for run in runs) else {}),
        })
    return rows


def _cell(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def markdown(rows: list[dict], base: dict, k: int, base_intervals: dict | None = None,
             paired: list[dict] | None = None) -> str:
    """The summary table (accuracies: mean ± sd over seeds [95% CI over problems]) and, when given,
    the paired comparisons with ``plain``."""
    base_intervals = base_intervals or {}
    cols = [c for c in rows[0] if c not in ("method", "seeds", "intervals")]
    lines = [("Accuracies: mean ± sd over seeds [95% CI over problems: Wilson for one seed, else a bootstrap "
              "of the seed-averaged per-problem scores]."), "",
             "| method | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    before = [base["greedy"]["pass@1"], base["samples"][f"pass@{k}"], base["samples"][f"majority@{k}"],
              base["minds"][f"majority@{k}"]]
    lines.append("| before training | - | " + " | ".join(_cell(v, base_intervals.get(c)) for c, v in
                                                        zip(columns(k), before)) + " | - | - | - |")
    for r in rows:
        cells = []
        for c in cols:
            mean, sd = r[c]
            cell = f"{mean:.3f} ± {sd:.3f}" if r["seeds"] > 1 else f"{mean:.3f}"
            interval = r["intervals"].get(c)
            cells.append(cell + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""))
        lines.append(f"| {r['method']} | {r['seeds']} | " + " | ".join(cells) + " |")
    if paired:
        lines += ["", comparisons_markdown(paired, seeds=max(r["seeds"] for r in rows))]
    return "\n".join(lines)


def _line(result: EvalResult, k: int) -> str:
    """One console line: greedy pass@1, pass@k and majority@k of the samples, with 95% intervals."""
    cis = intervals([result], k)
    values = [result["greedy"].pass_at_1, result["samples"].pass_at_k, result["samples"].majority_at_k]
    return ", ".join(f"{c} {_cell(v, cis[c])}" for c, v in zip(list(columns(k))[:3], values))


def plot(results: dict, path: str, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    panels = [("reward", "train reward (answer correct)"),
              ("minds/frac_groups_zero_reward_var", "groups with zero reward variance"),
              ("minds/unique_answers_per_group", "distinct answers per group")]
    for ax, (key, title) in zip(axes, panels):
        for method, runs in results["runs"].items():
            series = [r["curves"].get(key) for r in runs]
            series = [[math.nan if v is None else v for v in s] for s in series if s]
            if not series or all(math.isnan(v) for s in series for v in s):
                continue
            mean = [statistics.mean(vals) for vals in zip(*series)]
            ax.plot(range(1, len(mean) + 1), mean, label=method)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    metrics = ["pass@1 greedy", f"pass@{k}", f"majority@{k}"]
    summary = {r["method"]: r for r in summarize(results, k)}
    width = 0.8 / len(summary)
    for i, (method, r) in enumerate(summary.items()):
        axes[3].bar([j + i * width for j in range(len(metrics))], [r[m][0] for m in metrics], width,
                    yerr=[r[m][1] for m in metrics], label=method)
    axes[3].set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], metrics)
    axes[3].set_title("held-out arith test, after training")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="zoo name or local model folder")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    p.add_argument("--num-generations", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--prompts-per-step", type=int, default=4, help="prompts per step")
    p.add_argument("--max-completion-length", type=int, default=40)
    p.add_argument("--temperature", type=float, default=1.0, help="rollout and evaluation sampling temperature")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (full fine-tuning; 5e-4 wrecks the tiny model in 20 steps)")
    p.add_argument("--sigma", type=float, default=0.02, help="mind noise scale (training and evaluation)")
    p.add_argument("--n-train", type=int, default=400, help="training prompts (arith train split, 2 ops)")
    p.add_argument("--n-test", type=int, default=100, help="held-out prompts (arith test split)")
    p.add_argument("--k", type=int, default=8, help="samples per prompt for pass@k / majority@k")
    p.add_argument("--out", default="runs/rl_evidence")
    opts = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(opts.out, exist_ok=True)
    methods = [m for m in opts.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    seeds = [int(s) for s in opts.seeds.split(",")]
    train_rows = load_task("arith", split="train", n=opts.n_train, seed=0)
    test_rows = load_task("arith", split="test", n=opts.n_test, seed=0)

    base_model, base_tok = manyminds.load(opts.model)
    before = eval_model(base_model, base_tok, test_rows, opts, 0)
    results = {"settings": vars(opts), "before": scores(before), "before_per_problem": saved_conditions(before),
               "runs": {}}
    del base_model
    print(f"before training: {_line(before, opts.k)}", flush=True)
    for method in methods:
        results["runs"][method] = []
        for seed in seeds:
            model, tok, curves, secs = train_one(method, seed, opts, train_rows,
                                                 os.path.join(opts.out, f"{method}-{seed}"))
            result = eval_model(model, tok, test_rows, opts, seed)
            results["runs"][method].append({"seed": seed, "curves": curves, "eval": scores(result),
                                            "per_problem": saved_conditions(result), "train_seconds": secs})
            print(f"{method} seed {seed}: {secs / 60:.1f} min, {_line(result, opts.k)}", flush=True)
            with open(os.path.join(opts.out, "results.json"), "w") as f:
                json.dump(results, f, indent=1)
    results["comparisons"] = comparisons(results, opts.k)
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(summarize(results, opts.k), results["before"], opts.k,
                     intervals([rebuild(results["before_per_problem"])], opts.k), results["comparisons"])
    with open(os.path.join(opts.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    plot(results, os.path.join(opts.out, "rl_evidence.png"), opts.k)
    print(table)
    print(f"wrote {opts.out}/results.json, summary.md, rl_evidence.png")


if __name__ == "__main__":
    main()
