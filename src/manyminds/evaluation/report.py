"""What people read: an 80-column table, ``results.jsonl`` (one row per prompt), ``results.json``,
``results.md`` and PNGs (accuracy / diversity against sigma; risk-coverage for an ensemble).

matplotlib is optional: without it the PNG is skipped and :func:`write_plot` says so in one line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from manyminds.files import atomic_write_text

__all__ = ["comparisons_markdown", "comparisons_table", "conditions_markdown", "conditions_table",
           "intervals_markdown", "intervals_table", "json_safe", "plot_frontiers", "plot_risk_coverage", "plot_sweep",
           "write_json", "write_jsonl", "write_plot", "write_text"]


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


def _num(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def short_name(name: str) -> str:
    """``minds sigma=0.02`` -> ``minds σ=0.02``, ``temperature 0.7`` -> ``T=0.7`` (table cells)."""
    return name.replace("minds sigma=", "minds σ=").replace("temperature ", "T=")


def conditions_table(conditions, title: str | None = None):
    """A rich ``Table`` of :class:`~manyminds.evaluation.ConditionScores`, readable at 80 columns.

    Columns: condition, k (draws per prompt), pass@1, pass@k, maj@k (majority vote), uniq (distinct
    final answers), dist-2 (character distinct-2) and, when computed, sem (semantic diversity).
    """
    from rich.table import Table

    semantic = any(c.semantic_diversity is not None for c in conditions)
    table = Table(title=title, title_justify="left")
    cols = ["condition", "k", "pass@1", "pass@k", "maj@k", "uniq", "dist-2"] + (["sem"] if semantic else [])
    for col in cols:
        table.add_column(col, justify="left" if col == "condition" else "right", no_wrap=True)
    for c in conditions:
        cells = [short_name(c.name), str(c.k), _pct(c.pass_at_1), _pct(c.pass_at_k), _pct(c.majority_at_k),
                 f"{c.unique_answers:.2f}", _num(c.distinct_2)]
        if semantic:
            cells.append(_num(c.semantic_diversity))
        table.add_row(*cells)
    return table


def conditions_markdown(conditions) -> str:
    """The same scores as a markdown table (all columns; semantic diversity and seconds only where
    some condition has them: scores read back from saved answers have neither)."""
    semantic = any(c.semantic_diversity is not None for c in conditions)
    timed = any(c.seconds > 0 for c in conditions)
    head = (["condition", "answers/problem", "per-mind acc", "majority acc", "pass@k", "unique answers"]
            + (["semantic div."] if semantic else []) + ["distinct-2", "self-BLEU"] + (["s"] if timed else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in conditions:
        cells = ([c.name, str(c.k), _pct(c.pass_at_1), _pct(c.majority_at_k), _pct(c.pass_at_k),
                  f"{c.unique_answers:.2f}"] + ([_num(c.semantic_diversity)] if semantic else [])
                 + [_num(c.distinct_2), _num(c.self_bleu)] + ([f"{c.seconds:.1f}"] if timed else []))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_METRIC_NAMES = {"pass_at_1": "pass@1", "pass_at_k": "pass@k", "majority_at_k": "maj@k"}


def _ci(entry: dict) -> str:
    """``[59.2, 81.5]``: an interval in percent."""
    return f"[{entry['low']:.1%}, {entry['high']:.1%}]".replace("%", "")


def _diff(row: dict) -> str:
    """``+13.3 [+1.7, +25.0]``: a difference and its interval in percentage points."""
    return f"{100 * row['diff']:+.1f} [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def intervals_caption(intervals: dict, confidence: float, seeds: int = 1) -> str:
    """One line: the level and which interval each cell is (:mod:`manyminds.evaluation.intervals`)."""
    over = f" of the per-problem scores averaged over {seeds} seeds" if seeds > 1 else ""
    return (f"{confidence:.0%} intervals in %: Wilson for 0/1 per-problem scores, else a percentile bootstrap "
            f"over problems{over}")


def intervals_table(intervals: dict, confidence: float = 0.95, seeds: int = 1, title: str | None = None):
    """A rich ``Table`` of :func:`~manyminds.evaluation.intervals.condition_intervals`: one row per
    condition, the pass@1 / pass@k / maj@k intervals in percent (fits 80 columns)."""
    from rich.table import Table

    table = Table(title=title or f"{confidence:.0%} intervals", title_justify="left",
                  caption=intervals_caption(intervals, confidence, seeds), caption_justify="left")
    table.add_column("condition", no_wrap=True)
    for metric in ("pass_at_1", "pass_at_k", "majority_at_k"):
        table.add_column(f"{_METRIC_NAMES[metric]} {confidence:.0%} CI", justify="right", no_wrap=True)
    for name, per in intervals.items():
        table.add_row(short_name(name), *(_ci(per[m]) for m in ("pass_at_1", "pass_at_k", "majority_at_k")))
    return table


def comparisons_caption(seeds: int = 1, matched: bool = False) -> str:
    return ("Δ in points, paired on the same problems; p: exact McNemar for 0/1 per-problem outcomes, paired "
            "bootstrap otherwise" + (f" (scores seed-averaged over {seeds} seeds)" if seeds > 1 else "")
            + ("; =div / =acc: the temperature closest in unique answers / in pass@1" if matched else ""))


def _vs(row: dict) -> str:
    """The baseline's cell: ``T=0.7``, or ``T=0.7 =div`` for a temperature matched in diversity."""
    match = row.get("match")
    tags = {"diversity": "=div", "accuracy": "=acc", "diversity+accuracy": "=div,acc"}
    return short_name(row["baseline"]) + (f" {tags.get(match, match)}" if match else "")


def comparisons_table(rows: Sequence[dict], confidence: float = 0.95, seeds: int = 1, title: str | None = None):
    """A rich ``Table`` of :func:`~manyminds.evaluation.intervals.paired_comparisons` rows: condition,
    baseline, metric, ``Δ [CI]`` in points and the p-value (fits 80 columns)."""
    from rich.table import Table

    matched = any(row.get("match") for row in rows)
    table = Table(title=title or "paired differences", title_justify="left",
                  caption=comparisons_caption(seeds, matched), caption_justify="left")
    for col in ("condition", "vs", "metric"):
        table.add_column(col, no_wrap=True)
    table.add_column(f"Δ [{confidence:.0%} CI]", justify="right", no_wrap=True)
    table.add_column("p", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(short_name(row["condition"]), _vs(row), _METRIC_NAMES[row["metric"]], _diff(row), _p(row["p"]))
    return table


def intervals_markdown(intervals: dict, confidence: float = 0.95, seeds: int = 1) -> str:
    """:func:`intervals_table` as markdown, with the method of each interval."""
    head = (f"| condition | pass@1 | {confidence:.0%} CI | pass@k | {confidence:.0%} CI | maj@k | "
            f"{confidence:.0%} CI | method (pass@1, pass@k, maj@k) |")
    lines = [head, "|" + "---|" * 8]
    for name, per in intervals.items():
        cells = [f"{_pct(per[m]['value'])} | {_ci(per[m])}" for m in ("pass_at_1", "pass_at_k", "majority_at_k")]
        methods = ", ".join(per[m]["method"] for m in ("pass_at_1", "pass_at_k", "majority_at_k"))
        lines.append(f"| {name} | {' | '.join(cells)} | {methods} |")
    return intervals_caption(intervals, confidence, seeds) + "\n\n" + "\n".join(lines)


def comparisons_markdown(rows: Sequence[dict], confidence: float = 0.95, seeds: int = 1) -> str:
    """:func:`comparisons_table` as markdown, with the test of each p-value."""
    lines = [f"| condition | vs | metric | Δ [{confidence:.0%} CI] (points) | p | test |", "|" + "---|" * 6]
    for row in rows:
        lines.append(f"| {row['condition']} | {_vs(row)} | {_METRIC_NAMES[row['metric']]} | {_diff(row)} | "
                     f"{_p(row['p'])} | {row['test']} |")
    return comparisons_caption(seeds, any(row.get("match") for row in rows)) + "\n\n" + "\n".join(lines)


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def write_jsonl(rows: Sequence[dict], path) -> Path:
    """One JSON object per line (NaN written as ``null``), atomically."""
    write_text(Path(path), "".join(json.dumps(json_safe(r)) + "\n" for r in rows))
    return Path(path)


def write_json(payload: dict, path) -> Path:
    write_text(Path(path), json.dumps(json_safe(payload), indent=2) + "\n")
    return Path(path)


def json_safe(x):
    """JSON-safe: NaN/inf -> None, tuples -> lists (pandas reads ``null`` as NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_plot(plot: Callable[..., None], *args, path) -> str:
    """Run ``plot(*args, path)``; the line to print: where the PNG went, or why there is none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"no plot: matplotlib is missing (pip install matplotlib) for {path}"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    plot(*args, path)
    return f"wrote {path}"


def plot_sweep(conditions, path) -> None:
    """PNG: diversity (left axis) and per-mind / majority accuracy (right axis) against sigma for the
    minds conditions; temperature sampling alone as dashed horizontal lines, greedy as a dotted one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pops = sorted((c for c in conditions if c.kind == "minds"), key=lambda c: c.sigma)
    temp = next((c for c in conditions if c.kind == "samples"), None)
    greedy = next((c for c in conditions if c.kind == "greedy"), None)
    semantic = pops and all(c.semantic_diversity is not None for c in pops)
    div_name = "semantic diversity" if semantic else "distinct-2 (chars)"
    div = (lambda c: c.semantic_diversity) if semantic else (lambda c: c.distinct_2)
    fig, ax = plt.subplots(figsize=(7, 5.2))
    acc_ax = ax.twinx()
    sig = [c.sigma for c in pops]
    ax.plot(sig, [div(c) for c in pops], "o-", color="tab:purple", label=f"minds: {div_name}")
    acc_ax.plot(sig, [c.pass_at_1 for c in pops], "s-", color="tab:blue", label="minds: per-mind accuracy")
    acc_ax.plot(sig, [c.majority_at_k for c in pops], "^-", color="tab:green", label="minds: majority vote")
    if temp is not None:
        if div(temp) is not None:
            ax.axhline(div(temp), ls="--", color="tab:purple", alpha=0.6, label=f"{temp.name}: {div_name}")
        acc_ax.axhline(temp.pass_at_1, ls="--", color="tab:blue", alpha=0.6, label=f"{temp.name}: accuracy")
        acc_ax.axhline(temp.majority_at_k, ls="--", color="tab:green", alpha=0.6,
                       label=f"{temp.name}: majority vote")
    if greedy is not None:
        acc_ax.axhline(greedy.pass_at_1, ls=":", color="black", alpha=0.7, label="greedy: accuracy")
    if len(sig) > 1 and min(sig) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("sigma (noise scale of the minds)")
    ax.set_ylabel(div_name)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + acc_ax.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    k = pops[0].k if pops else (temp.k if temp else 1)
    ax.set_title(f"Population minds vs temperature sampling ({k} answers per problem)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_risk_coverage(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path,
                       title: str = "Selective answering") -> None:
    """PNG of risk (error rate among answered prompts) against coverage, one line per uncertainty
    score: ``curves[name] = (uncertainty [N], correct [N])``; the legend gives each AURC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from manyminds.ensemble import risk_coverage

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (scores, correct) in curves.items():
        rc = risk_coverage(scores, correct)
        ax.plot(rc["coverage"].tolist(), rc["risk"].tolist(), label=f"{name} (AURC {rc['aurc']:.3f})")
    ax.set_xlabel("coverage (share of prompts answered, most certain first)")
    ax.set_ylabel("risk (error rate among answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontiers(conditions, intervals: dict | None, path) -> None:
    """PNG with two frontiers, one line per family (minds over sigma, sampling over temperature),
    greedy as a point: (left) diversity (mean unique answers per problem) vs per-answer accuracy,
    (right) per-answer accuracy vs pass@k and majority@k. ``intervals``
    (:func:`~manyminds.evaluation.intervals.condition_intervals`) adds 95% error bars on accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = {"minds": sorted((c for c in conditions if c.kind == "minds"), key=lambda c: c.sigma),
                "temperature": sorted((c for c in conditions if c.kind == "samples"), key=lambda c: c.temperature)}
    greedy = next((c for c in conditions if c.kind == "greedy"), None)
    colors = {"minds": "tab:green", "temperature": "tab:orange"}

    def err(cs, metric):
        if not intervals:
            return None
        lo = [getattr(c, metric) - intervals[c.name][metric]["low"] for c in cs]
        hi = [intervals[c.name][metric]["high"] - getattr(c, metric) for c in cs]
        return [lo, hi]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for fam, cs in families.items():
        if not cs:
            continue
        labels = [f"σ={c.sigma:g}" if fam == "minds" else f"T={c.temperature:g}" for c in cs]
        x = [c.unique_answers for c in cs]
        y = [c.pass_at_1 for c in cs]
        left.errorbar(x, y, yerr=err(cs, "pass_at_1"), fmt="o-", color=colors[fam], capsize=3, label=fam)
        for xi, yi, lab in zip(x, y, labels):
            left.annotate(lab, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
        for metric, style in (("pass_at_k", "s-"), ("majority_at_k", "^--")):
            right.errorbar(y, [getattr(c, metric) for c in cs], yerr=err(cs, metric), fmt=style, capsize=3,
                           color=colors[fam], label=f"{fam}: {'pass@k' if metric == 'pass_at_k' else 'maj@k'}")
    if greedy is not None:
        left.plot([1.0], [greedy.pass_at_1], "k*", markersize=10, label="greedy")
        right.plot([greedy.pass_at_1], [greedy.pass_at_1], "k*", markersize=10, label="greedy")
    k = max((c.k for c in conditions), default=1)
    left.set_xlabel("diversity: unique answers per problem")
    left.set_ylabel("per-answer accuracy (pass@1)")
    left.set_title("diversity vs coherence")
    right.set_xlabel("per-answer accuracy (pass@1)")
    right.set_ylabel(f"accuracy of {k} answers")
    right.set_title(f"pass@{k} and majority of {k}")
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
