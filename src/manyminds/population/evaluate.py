"""Sweep: temperature sampling alone versus populations of minds at several sigmas.

One *condition* answers every problem of a verifiable dataset ``k`` times, either by ``k``
temperature samples of the plain model or by ``k`` minds of a population, and is scored by:

- ``mean_accuracy``: mean correctness of a single answer (= pass@1);
- ``majority_accuracy``: accuracy of the majority-voted answer across the ``k`` answers;
- ``pass_at_k``: unbiased pass@k over the ``k`` answers;
- ``unique_answers``: mean number of distinct final answers per problem;
- ``semantic_diversity``: mean over problems of the mean pairwise cosine distance of
  all-MiniLM-L6-v2 embeddings of the ``k`` completions (B-Trans' measure; ``None`` when the
  ``diversity`` extra is missing);
- ``distinct_2``, ``self_bleu``: lexical diversity (character n-grams, since arithmetic
  completions are short), averaged over problems.

Used by ``manyminds demo`` and ``examples/population_evidence.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from manyminds import metrics

from .decisions import generate_grid
from .population import Population

__all__ = ["ConditionResult", "plot_sweep", "score_condition", "sweep"]


@dataclass
class ConditionResult:
    """Scores of one condition (see the module docstring)."""

    name: str
    sigma: float  # 0 for temperature sampling alone
    temperature: float  # 0 = greedy
    k: int
    problems: int
    mean_accuracy: float
    majority_accuracy: float
    pass_at_k: float
    unique_answers: float
    semantic_diversity: float | None
    distinct_2: float
    self_bleu: float | None
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def score_condition(name: str, sigma: float, temperature: float, grid: list[list[str]],
                    references: Sequence[str], seconds: float = 0.0, semantic: bool = True) -> ConditionResult:
    """Score ``grid[p][j]`` (answer ``j`` to problem ``p``) against ``references[p]``."""
    from manyminds.tasks import extract_answer, normalize_answer

    k = len(grid[0])
    refs = [normalize_answer(str(r)) for r in references]
    answers = [[extract_answer(t) for t in row] for row in grid]
    correct = [[a is not None and a == r for a in row] for row, r in zip(answers, refs)]
    voted = [metrics.majority_vote(row) for row in answers]
    sem = None
    if semantic and k >= 2:
        try:
            sem = metrics.mean_semantic_diversity(grid)
        except ImportError:
            sem = None
    return ConditionResult(
        name=name, sigma=sigma, temperature=temperature, k=k, problems=len(grid),
        mean_accuracy=sum(map(sum, correct)) / (k * len(grid)),
        majority_accuracy=metrics.accuracy(voted, refs),
        pass_at_k=metrics.mean_pass_at_k(correct, k),
        unique_answers=sum(metrics.unique_answers(row) for row in answers) / len(grid),
        semantic_diversity=sem,
        distinct_2=sum(metrics.distinct_n(row, 2, tokenize=list) for row in grid) / len(grid),
        self_bleu=(sum(metrics.self_bleu(row, tokenize=list) for row in grid) / len(grid)) if k >= 2 else None,
        seconds=seconds,
    )


def sweep(model, tokenizer, dataset, sigmas: Sequence[float] = (0.01, 0.02, 0.05, 0.1), k: int = 8,
          temperature: float = 0.7, mind_temperature: float = 0.0, seed: int = 0, max_new_tokens: int = 48,
          batch_size: int = 64, semantic: bool = True, include_greedy: bool = True,
          progress: Callable[[str, int], None] | None = None,
          on_start: Callable[[str, int], None] | None = None) -> list[ConditionResult]:
    """Run every condition on ``dataset`` (columns ``prompt``, ``answer``) and score it.

    Conditions: ``greedy`` (plain model, one answer; with ``include_greedy``), ``temperature``
    (plain model, ``k`` samples at ``temperature``), and one population per sigma (``k`` minds,
    each decoding greedily, or sampling at ``mind_temperature`` when it is > 0).

    Args:
        progress: ``progress(condition name, rows finished)`` after each batch.
        on_start: ``on_start(condition name, total rows)`` before each condition.
    """
    import torch

    prompts = list(dataset["prompt"])
    refs = list(dataset["answer"])
    gen = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "tokenizer": tokenizer}
    results = []

    def run(name, pop, minds, sigma, temp, n_answers):
        if on_start:
            on_start(name, len(prompts) * n_answers)
        kw = dict(gen, do_sample=temp > 0, **({"temperature": temp, "top_k": 0} if temp > 0 else {}))
        torch.manual_seed(seed)  # sampling is reproducible per condition
        start = time.perf_counter()
        grid = generate_grid(pop, prompts, minds, progress=(lambda n: progress(name, n)) if progress else None,
                             **kw)
        seconds = time.perf_counter() - start
        results.append(score_condition(name, sigma, temp, grid, refs, seconds, semantic=semantic))

    plain = Population(model, sigma=0.0, seed=seed)
    if include_greedy:
        run("greedy", plain, [-1], 0.0, 0.0, 1)
    run(f"temperature {temperature:g}", plain, [-1] * k, 0.0, temperature, k)
    for sigma in sigmas:
        pop = Population(model, sigma=float(sigma), seed=seed)
        label = f"minds sigma={sigma:g}" + (f" T={mind_temperature:g}" if mind_temperature > 0 else "")
        run(label, pop, list(range(k)), float(sigma), mind_temperature, k)
    return results


def plot_sweep(results: Sequence[ConditionResult], path) -> None:
    """PNG of semantic diversity (left axis) and per-mind / majority-vote accuracy (right axis)
    against sigma; temperature sampling alone is drawn as dashed horizontal lines.

    Needs matplotlib (``pip install matplotlib``).
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the sweep plot needs matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = [r for r in results if r.sigma > 0]
    temp = next((r for r in results if r.name.startswith("temperature")), None)
    sig = [r.sigma for r in pops]
    fig, ax = plt.subplots(figsize=(7, 5.2))
    acc_ax = ax.twinx()
    if all(r.semantic_diversity is not None for r in pops):
        div_name, div = "semantic diversity", [r.semantic_diversity for r in pops]
        div_temp = temp.semantic_diversity if temp else None
    else:
        div_name, div = "distinct-2 (chars)", [r.distinct_2 for r in pops]
        div_temp = temp.distinct_2 if temp else None
    ax.plot(sig, div, "o-", color="tab:purple", label=f"minds: {div_name}")
    acc_ax.plot(sig, [r.mean_accuracy for r in pops], "s-", color="tab:blue", label="minds: per-mind accuracy")
    acc_ax.plot(sig, [r.majority_accuracy for r in pops], "^-", color="tab:green",
                label="minds: majority-vote accuracy")
    if temp is not None:
        if div_temp is not None:
            ax.axhline(div_temp, ls="--", color="tab:purple", alpha=0.6, label=f"{temp.name}: {div_name}")
        acc_ax.axhline(temp.mean_accuracy, ls="--", color="tab:blue", alpha=0.6, label=f"{temp.name}: accuracy")
        acc_ax.axhline(temp.majority_accuracy, ls=":", color="tab:green", alpha=0.8,
                       label=f"{temp.name}: majority vote")
    ax.set_xscale("log")
    ax.set_xlabel("sigma (noise scale of the minds)")
    ax.set_ylabel(div_name)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + acc_ax.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    k = pops[0].k if pops else (temp.k if temp else 0)
    ax.set_title(f"Population minds vs temperature sampling ({k} answers per problem)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
