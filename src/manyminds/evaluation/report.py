"""What people read: an 80-column table, ``results.jsonl`` (one row per prompt), ``results.json``,
``results.md`` and PNGs (accuracy / diversity against sigma; risk-coverage for an ensemble).

matplotlib is optional: without it the PNG is skipped and :func:`write_plot` says so in one line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["conditions_markdown", "conditions_table", "json_safe", "plot_risk_coverage", "plot_sweep", "write_json",
           "write_jsonl", "write_plot", "write_text"]


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
    """The same scores as a markdown table (all columns, seconds included)."""
    head = ("| condition | answers/problem | per-mind acc | majority acc | pass@k | unique answers | "
            "semantic div. | distinct-2 | self-BLEU | s |")
    lines = [head, "|" + "---|" * 10]
    for c in conditions:
        lines.append(f"| {c.name} | {c.k} | {_pct(c.pass_at_1)} | {_pct(c.majority_at_k)} | {_pct(c.pass_at_k)} | "
                     f"{c.unique_answers:.2f} | {_num(c.semantic_diversity)} | {_num(c.distinct_2)} | "
                     f"{_num(c.self_bleu)} | {c.seconds:.1f} |")
    return "\n".join(lines)


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
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
