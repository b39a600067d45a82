"""Every number of docs/real-lm.md section 4, from the committed raw answers (no model is run).

Reads what ``examples/facts_runs.py`` wrote (``docs/data/facts/runs/<split>/<condition>_s<seed>.jsonl``)
and, for the ensemble column, what ``examples/facts_ensemble.py`` wrote
(``docs/data/facts/ensemble/alpha*.jsonl``), and scores them with the library's evaluation path:
:data:`manyminds.evaluation.readers.SHORT_ANSWER` (an accepted answer named in the reply's first
sentence; votes over :func:`~manyminds.tasks.short_answer.answer_key`),
:func:`~manyminds.evaluation.intervals.condition_intervals` (Wilson / bootstrap over questions),
:func:`~manyminds.evaluation.intervals.comparisons_vs_baselines` (exact McNemar / paired bootstrap;
minds against the temperature matched in diversity and in accuracy), and for error detection
:func:`~manyminds.evaluation.stats.auroc_interval` and
:func:`~manyminds.evaluation.rejection.prediction_rejection_ratio`.

The rule that picks the test conditions was fixed before the test split was run: on dev (one seed),
sigma* = the sigma with the highest majority-of-k accuracy; the temperatures run on test are 0.7
(the earlier docs' baseline) and the dev temperatures closest to sigma* in diversity and accuracy.

    python examples/facts_report.py            # rewrites the block of docs/real-lm.md and the frontier PNG
    python examples/facts_report.py --check    # exit 1 if the block differs from what the files give
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "data" / "facts" / "runs"
ENSEMBLE = ROOT / "docs" / "data" / "facts" / "ensemble"
DOC = ROOT / "docs" / "real-lm.md"
PNG = ROOT / "docs" / "img" / "facts_frontiers.png"
BEGIN, END = "<!-- facts-report:begin -->", "<!-- facts-report:end -->"
_FILE = re.compile(r"(?P<kind>greedy|temp|add)(?P<value>[0-9.e-]*)_s(?P<seed>\d+)\.jsonl")


def read_split(split: str) -> dict[tuple[str, float], dict[int, list[dict]]]:
    """``{(kind, value): {seed: records}}`` of one split's raw files."""
    out: dict = {}
    for path in sorted((RUNS / split).glob("*.jsonl")):
        m = _FILE.fullmatch(path.name)
        if not m:
            continue
        key = (m["kind"], float(m["value"] or 0))
        out.setdefault(key, {})[int(m["seed"])] = [json.loads(line) for line in path.open()]
    return out


def condition(kind: str, value: float, records: list[dict]):
    """One :class:`~manyminds.evaluation.scoring.ConditionScores` from raw records (short reader)."""
    from manyminds.evaluation.readers import SHORT_ANSWER
    from manyminds.evaluation.scoring import score_condition

    name = {"greedy": "greedy", "temp": f"temperature {value:g}", "add": f"minds sigma={value:g}"}[kind]
    k = len(records[0]["completions"])
    return score_condition(name, {"greedy": "greedy", "temp": "samples", "add": "minds"}[kind],
                           [r["completions"] for r in records], [r["accepted"] for r in records],
                           sigma=value if kind == "add" else 0.0, temperature=value if kind == "temp" else 0.0,
                           draw_ids=list(range(k)) if kind == "add" else None, reader=SHORT_ANSWER,
                           questions=[r["question"] for r in records])


def results(data: dict, keys: list[tuple[str, float]], seeds: list[int]) -> list:
    """One :class:`~manyminds.evaluation.core.EvalResult` per seed over the conditions ``keys``
    (greedy has one seed and is shared by all)."""
    from manyminds.evaluation import EvalConfig
    from manyminds.evaluation.core import EvalResult

    runs = []
    for s in seeds:
        conds = [condition(kind, value, data[(kind, value)][0 if kind == "greedy" else s]) for kind, value in keys]
        first = data[keys[0]][0]
        runs.append(EvalResult(config=EvalConfig(k=conds[-1].k, seed=s, mind_seed=s), conditions=conds,
                               prompts=[r["question"] for r in first], answers=[r["accepted"][0] for r in first]))
    return runs


def order(keys):
    rank = {"greedy": 0, "temp": 1, "add": 2}
    return sorted(keys, key=lambda kv: (rank[kv[0]], kv[1]))


def choose(dev_runs) -> dict:
    """The pre-registered choice on dev: sigma* (highest maj@k) and the matched temperatures."""
    from manyminds.evaluation.intervals import matched_temperatures

    minds = [c for c in dev_runs[0].conditions if c.kind == "minds"]
    best = max(minds, key=lambda c: (c.majority_at_k, -c.sigma))
    return {"sigma": best.sigma, "name": best.name, "matched": matched_temperatures(dev_runs)[best.name]}


def tables(runs, title: str, confidence: float = 0.95) -> str:
    from manyminds.evaluation.intervals import comparisons_vs_baselines, condition_intervals
    from manyminds.evaluation.report import (
        comparisons_markdown,
        conditions_markdown,
        intervals_markdown,
    )
    from manyminds.evaluation.seeds import mean_conditions

    seeds = len(runs)
    means = mean_conditions(runs)
    return (f"{title}\n\n{conditions_markdown(means)}\n\n"
            f"{intervals_markdown(condition_intervals(runs, confidence), confidence, seeds)}\n\n"
            f"{comparisons_markdown(comparisons_vs_baselines(runs, confidence), confidence, seeds)}\n")


def disagreement(records: list[dict]) -> list[float]:
    """``1 - (share of the k answers with the most common key)`` per question
    (:func:`~manyminds.ensemble.uncertainty.answer_disagreement` of the short reader's keys)."""
    from manyminds.ensemble.uncertainty import answer_disagreement
    from manyminds.evaluation.readers import SHORT_ANSWER

    keys = [[SHORT_ANSWER.key(c, r["question"]) for c in r["completions"]] for r in records]  # [N][k]
    return answer_disagreement(list(zip(*keys)))                                             # [k][N] -> [N]


def pooled(data, key, seeds) -> list[dict]:
    """The records of several seeds with their completions joined (k * seeds answers per question)."""
    base = [dict(r) for r in data[key][seeds[0]]]
    for s in seeds[1:]:
        for r, other in zip(base, data[key][s]):
            assert r["id"] == other["id"]
            r["completions"] = r["completions"] + other["completions"]
    return base


def error_detection(data: dict, seeds: list[int], confidence: float = 0.95) -> tuple[str, list[dict]]:
    """AUROC and PRR of each uncertainty score for "the greedy answer is wrong" on test."""
    from manyminds.evaluation.rejection import prediction_rejection_ratio
    from manyminds.evaluation.stats import auroc_interval, paired_auroc
    from manyminds.tasks.short_answer import is_correct

    greedy = data[("greedy", 0.0)][0]
    ids = [r["id"] for r in greedy]
    wrong = [0 if is_correct(r["completions"][0], r["accepted"]) else 1 for r in greedy]
    scores: dict[str, list[float]] = {
        "greedy answer: mean token NLL": [r["nll_mean"] for r in greedy],
        "greedy answer: total NLL": [r["nll_sum"] for r in greedy]}
    for kind, value in order(k for k in data if k[0] != "greedy"):
        label = f"T={value:g}" if kind == "temp" else f"minds σ={value:g}"
        have = sorted(data[(kind, value)])
        scores[f"{label}: disagreement of 4"] = disagreement(data[(kind, value)][have[0]])
        if len(have) > 1:
            scores[f"{label}: disagreement of {4 * len(have)} ({len(have)} seeds)"] = disagreement(
                pooled(data, (kind, value), have))
    for path in sorted(ENSEMBLE.glob("alpha*.jsonl")):
        rows = {r["id"]: r for r in map(json.loads, path.open())}
        if set(rows) != set(ids):
            print(f"skipping {path.name}: its questions differ from the test split's", file=sys.stderr)
            continue
        alpha, _, targets = path.stem.removeprefix("alpha").partition("_")
        alpha += {"": ", one-word targets", "prose": ", own-reply targets"}.get(targets, f", {targets} targets")
        for field, label in (("epistemic", "mutual information (mean over answer tokens)"),
                             ("max_epistemic", "mutual information (max over answer tokens)"),
                             ("total", "total entropy"), ("disagreement", "member disagreement")):
            if field in rows[ids[0]]:
                scores[f"ensemble α={alpha}: {label}"] = [float(rows[i][field]) for i in ids]
    base_name = "greedy answer: mean token NLL"
    header = (f"| uncertainty score | AUROC | {confidence:.0%} CI | PRR | {confidence:.0%} CI | "
              f"Δ AUROC vs mean NLL [{confidence:.0%} CI] | p |")
    lines = [header, "|---|---|---|---|---|---|---|"]
    raw = []
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, len(ids), len(ids)) for _ in range(2000)]
    for name, s in scores.items():
        value, (lo, hi) = auroc_interval(s, wrong, confidence, seed=0)
        correct = 1.0 - np.asarray(wrong, dtype=float)  # the quality PRR keeps when it rejects
        prr = prediction_rejection_ratio(s, correct)
        arr = np.asarray(s, dtype=float)
        samples = [prediction_rejection_ratio(arr[b], correct[b]) for b in boots if 0 < correct[b].sum() < len(b)]
        plo, phi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
        if name == base_name:
            vs = "(baseline) | -"
        else:
            d, (dlo, dhi), p = paired_auroc(s, scores[base_name], wrong, confidence, seed=0)
            vs = f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | {'<0.001' if p < 0.001 else f'{p:.3f}'}"
        lines.append(f"| {name} | {value:.3f} | [{lo:.3f}, {hi:.3f}] | {prr:.3f} | [{plo:.3f}, {phi:.3f}] | {vs} |")
        raw.append({"score": name, "auroc": value, "auroc_ci": [lo, hi], "prr": prr, "prr_ci": [float(plo), float(phi)]})
    head = (f"**Error detection** on the {len(ids)} test questions: {sum(wrong)} greedy answers are wrong "
            f"({sum(wrong) / len(ids):.1%}). Higher score = less trusted. AUROC: stratified bootstrap "
            f"interval; PRR (prediction rejection ratio: 1 = the oracle's rejection order, 0 = random): "
            f"percentile bootstrap over questions (2,000 resamples). Δ AUROC: paired stratified bootstrap "
            f"against the greedy answer's mean token NLL on the same questions.\n\n")
    return head + "\n".join(lines) + "\n" + ensemble_notes(1 - sum(wrong) / len(ids)), raw


def ensemble_notes(base_accuracy: float) -> str:
    """One line per ensemble run: how its own replies score and how it was trained (its meta file)."""
    out = []
    for path in sorted(ENSEMBLE.glob("alpha*.meta.json")):
        meta = json.loads(path.read_text())
        s = meta["settings"]
        members = ", ".join(f"{a:.1%}" for a in meta["member_accuracy"])
        out.append(f"- `{path.name}`: K = {s['members']}, α = {s['alpha']:g}, LoRA r = {s['r']} on "
                   f"{s['modules']} of layers {s['layers']}, {meta['steps_done']} steps of {s['batch_size']} "
                   f"(lr {s['lr']:g}) on the {meta['train_questions']} dev questions, completion: "
                   f"{meta['completion']}; loss {meta['loss_first_window_mean']:.2f} -> "
                   f"{meta['loss_last_window_mean']:.2f} (first / last {s['loss_window']} steps); its own "
                   f"greedy replies on test: mixture {meta['mixture_accuracy']:.1%}, members {members} "
                   f"right (base greedy {base_accuracy:.1%}).")
    return ("\nThe ensembles (settings and accuracy from `docs/data/facts/ensemble/*.meta.json`):\n\n"
            + "\n".join(out) + "\n") if out else ""


def build(png: Path | None = PNG) -> str:
    """The markdown block (and, unless ``png`` is None, the frontier PNG) from the raw files."""
    from manyminds.evaluation.intervals import condition_intervals
    from manyminds.evaluation.report import plot_frontiers
    from manyminds.evaluation.seeds import mean_conditions

    dev, test = read_split("dev"), read_split("test")
    dev_keys = order(dev)
    dev_runs = results(dev, dev_keys, [0])
    pick = choose(dev_runs)
    parts = [tables(dev_runs, f"**Dev** ({dev_runs[0].n_prompts} questions, one seed, k = 4): the grid that "
                              f"chose sigma* = {pick['sigma']:g} (highest maj@4); closest temperatures: "
                              f"{pick['matched']['diversity']} in diversity, {pick['matched']['accuracy']} "
                              f"in accuracy.")]
    if png is not None:
        plot_frontiers(mean_conditions(dev_runs), condition_intervals(dev_runs), png)
    seeds = sorted(set.intersection(*(set(v) for k, v in test.items() if k[0] != "greedy")))
    test_keys = order(k for k in test if k[0] == "greedy" or set(seeds) <= set(test[k]))
    test_runs = results(test, test_keys, seeds)
    parts.append(tables(test_runs, f"**Test** ({test_runs[0].n_prompts} held-out questions, {len(seeds)} seeds: "
                                   f"minds 0..3 of population seed s, sampling seed s; greedy once)"))
    text, _ = error_detection(test, seeds)
    parts.append(text)
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/real-lm.md instead of writing")
    ap.add_argument("--print", action="store_true", help="print the block")
    args = ap.parse_args(argv)
    block = build(None if args.check else PNG)
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block; add the two markers where the tables go")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{block}{END}{tail}"
    if args.print:
        print(block)
    if args.check:
        if new != doc:
            print("docs/real-lm.md differs from the raw files; run python examples/facts_report.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
