"""B-Trans zero-shot diversity on a real LM: SmolLM2-135M-Instruct, open-ended prompts.

The paper's claim (arXiv 2512.25063): minds are "diverse yet coherent". For each of the bundled
open-ended prompts (``examples/data/smollm2_open_prompts.json``: stories, names, descriptions,
advice), ``k`` answers are drawn per condition (greedy; temperature sampling; minds at several
sigma, additive incl. the paper's 0.02, and multiplicative), and scored on both axes:

- diversity, per prompt over its ``k`` answers, averaged over prompts: semantic diversity (mean
  pairwise cosine distance of all-MiniLM-L6-v2 embeddings, the paper's measure), distinct-1/2
  (unique / total word n-grams) and self-BLEU (lower = more diverse);
- coherence: mean token log-likelihood of each answer under the unperturbed model (higher = more
  like what the model itself would say), and the share of empty answers.

    python examples/smollm2_diversity.py --quick      # smoke run: 6 prompts, k=3, 3 conditions
    python examples/smollm2_diversity.py              # full: see docs/real-lm.md for the run time

Writes ``<out>/results.json`` (all answers included), ``<out>/results.md`` and the plot
``<out>/smollm2_diversity.png`` (diversity vs coherence).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from smollm2_common import (
    DATA,
    Clock,
    answer_logliks,
    chat,
    draw,
    load_model,
    new_results,
    parse_conditions,
    write_json,
    write_results,
)

FULL = "greedy,temp:0.7,add:0.01,add:0.02,add:0.05,mult:0.05"
QUICK = "greedy,temp:1.0,add:0.02"


def load_prompts(path: Path = DATA / "smollm2_open_prompts.json") -> list[dict]:
    """The bundled open-ended prompts: ``[{"kind": ..., "prompt": ...}]`` (52 of them)."""
    return json.loads(path.read_text())


def spread(items: list, n: int | None) -> list:
    """``n`` of ``items`` at evenly spaced positions (all of them for ``0``/``None``)."""
    if not n or n >= len(items):
        return list(items)
    if n < 1:
        raise ValueError(f"--prompts must be >= 1, got {n}")
    return [items[i * len(items) // n] for i in range(n)]


def score(prompts: list, groups: list[list[str]], coherence: list[float], semantic: bool) -> dict:
    """Diversity (per prompt, averaged) and coherence of ``groups`` ``[n_prompts][k]``."""
    from manyminds.metrics import distinct_n, mean_semantic_diversity, self_bleu

    n = len(groups)
    finite = [c for c in coherence if not math.isnan(c)]
    row = {
        "distinct_1": sum(distinct_n(g, 1) for g in groups) / n,
        "distinct_2": sum(distinct_n(g, 2) for g in groups) / n,
        "self_bleu": sum(self_bleu(g) for g in groups) / n,
        "coherence": sum(finite) / len(finite) if finite else math.nan,
        "empty_share": sum(not a.strip() for g in groups for a in g) / sum(len(g) for g in groups),
        "unique_answers": sum(len(set(g)) for g in groups) / n,
    }
    row["semantic_diversity"] = mean_semantic_diversity(groups) if semantic else None
    return row


def table(results: dict) -> str:
    lines = [("| condition | semantic diversity | distinct-1 | distinct-2 | self-BLEU | unique / k "
              "| coherence (mean token log-lik) | empty answers |"), "|" + "---|" * 8]
    k = results["settings"]["k"]
    for name, r in results["conditions"].items():
        sem = "-" if r["semantic_diversity"] is None else f"{r['semantic_diversity']:.3f}"
        d1 = "-" if r["distinct_1"] is None else f"{r['distinct_1']:.3f}"  # None: not recorded (merged runs)
        uniq = "-" if r["unique_answers"] is None else f"{r['unique_answers']:.2f}"
        lines.append(f"| {name} | {sem} | {d1} | {r['distinct_2']:.3f} | {r['self_bleu']:.3f} | "
                     f"{uniq} / {k} | {r['coherence']:.3f} | {r['empty_share']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    key = "semantic_diversity" if all(r["semantic_diversity"] is not None
                                      for r in results["conditions"].values()) else "distinct_2"
    styles = {"greedy": ("k", "s"), "temperature": ("tab:orange", "^"), "minds add": ("tab:blue", "o"),
              "minds mult": ("tab:green", "D"), "minds weight": ("tab:purple", "v")}
    for family, (color, marker) in styles.items():
        names = [n for n in results["conditions"] if n.startswith(family)]
        if not names:
            continue
        xs = [results["conditions"][n][key] for n in names]
        ys = [results["conditions"][n]["coherence"] for n in names]
        ax.plot(xs, ys, color=color, marker=marker, label=family, lw=1)
        for n, x, y in zip(names, xs, ys):
            label = "greedy" if family == "greedy" else ("T=" if family == "temperature" else "σ=") + n.split()[-1]
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 if family != "temperature" else -12),
                        fontsize=8)
    ax.set_xlabel(f"{key.replace('_', ' ')} (higher = more diverse)")
    ax.set_ylabel("coherence: mean token log-lik under the plain model")
    s = results["settings"]
    ax.set_title(f"SmolLM2-135M-Instruct, {s['n_prompts']} open-ended prompts x {s['k']} answers")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 prompts, k=3, " + QUICK)
    parser.add_argument("--conditions", default=None, help=f"comma-separated (default: {FULL})")
    parser.add_argument("--prompts", type=int, default=26,
                        help="use N of the bundled prompts, evenly spaced so every kind is kept (0 = all)")
    parser.add_argument("--k", type=int, default=3, help="answers per prompt and condition")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="mind population seed and sampling seed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-semantic", action="store_true", help="skip all-MiniLM-L6-v2 diversity")
    parser.add_argument("--out", type=Path, default=Path("smollm2-diversity"))
    parser.add_argument("--replot", type=Path, default=None,
                        help="only redraw table and plot from a results.json (e.g. of a stopped run) into --out")
    args = parser.parse_args(argv)
    if args.replot is not None:
        results = json.loads(args.replot.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(table(results))
        plot(results, args.out / "smollm2_diversity.png")
        print(table(results))
        return
    if args.quick:
        args.conditions, args.prompts, args.k = args.conditions or QUICK, 6, 3
    if args.k < 2:
        parser.error("--k must be >= 2 (diversity compares answers to the same prompt)")
    conditions = parse_conditions(args.conditions or FULL)

    clock = Clock()
    model, tokenizer = load_model(args.threads)
    data = spread(load_prompts(), args.prompts)
    prompts = [chat(d["prompt"]) for d in data]
    results = new_results(args, clock, n_prompts=len(prompts))
    for cond in conditions:
        t0 = time.time()
        groups = draw(model, tokenizer, prompts, cond, args.k, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      batch_size=args.batch_size)
        flat_prompts = [p for p, g in zip(prompts, groups) for _ in g]
        coherence = answer_logliks(model, tokenizer, flat_prompts, [a for g in groups for a in g])
        results["conditions"][cond.name] = score(prompts, groups, coherence, semantic=not args.no_semantic)
        results["answers"][cond.name] = groups
        r = results["conditions"][cond.name]
        sem = "-" if r["semantic_diversity"] is None else f"{r['semantic_diversity']:.3f}"
        print(f"{cond.name}: semantic {sem}  distinct-2 {r['distinct_2']:.3f}  self-BLEU {r['self_bleu']:.3f}  "
              f"coherence {r['coherence']:.3f}  empty {r['empty_share']:.1%}  ({clock.lap(cond.name, t0)} s)",
              flush=True)
        print(f"    e.g. {data[0]['prompt']!r} -> {groups[0][:2]!r}", flush=True)
        write_json(args.out / "results.json", results)  # after every condition: a stopped run keeps its numbers
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "smollm2_diversity.png")
    write_results(args.out, results, clock, table(results), "smollm2_diversity.png")


if __name__ == "__main__":
    main()
