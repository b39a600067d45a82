"""A verifiable task on a real LM: capital cities with SmolLM2-135M-Instruct; minds vs temperature.

The task: "What is the capital of <country>?" for the 60 countries bundled in
``examples/data/smollm2_capitals.json`` (accepted spellings listed per country). It was picked
because the model partly solves it: greedy accuracy is 71.7% (43/60), neither ~0% nor ~100%, so
both a vote's gains and its losses can show.

An answer's *final answer* is the city it names: the text after "capital of ... is" when the model
writes that sentence, else its first clause. It is correct when an accepted spelling occurs in it.
Per condition, with ``k`` answers per question:

- per-answer accuracy (pass@1 averaged over the k answers);
- pass@k: some answer is correct (the unbiased estimator with n = k);
- majority vote: the most frequent final answer (ties to the first) is correct;
- unique final answers per question.

Each accuracy comes with its 95% interval over questions and every condition is compared with greedy
(and the minds with temperature sampling) on the same questions, through the library's evaluation
path (:func:`statistics`: :mod:`manyminds.evaluation.intervals`; Wilson / bootstrap intervals, exact
McNemar / paired bootstrap).

    python examples/smollm2_verifiable.py --quick     # smoke run: 8 questions, k=3
    python examples/smollm2_verifiable.py             # full: see docs/real-lm.md for the run time

Writes ``<out>/results.json`` (all answers and the per-question outcomes included) and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import unicodedata
from pathlib import Path

from smollm2_common import (
    DATA,
    Clock,
    Condition,
    chat,
    draw,
    load_model,
    new_results,
    parse_conditions,
    write_json,
    write_results,
)

FULL = "greedy,temp:0.7,add:0.01,add:0.02,mult:0.05"
QUICK = "greedy,temp:1.0,add:0.01"
_SENTENCE = re.compile(r"capital of [^.\n]*? is (?:known as |called )?([^.,;:!\n(]+)", re.IGNORECASE)


def load_capitals(path: Path = DATA / "smollm2_capitals.json") -> list[dict]:
    """``[{"country": ..., "capital": [accepted spellings]}]`` (60 countries)."""
    return json.loads(path.read_text())


def _fold(text: str) -> str:
    """Lower case without accents: "Bogotá" -> "bogota"."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower().strip()


def final_answer(text: str) -> str | None:
    """The city an answer names (folded), or ``None`` for an empty answer.

    >>> final_answer("The capital of France is Paris.")
    'paris'
    >>> final_answer("Il Coriobella, Italy.")
    'il coriobella'
    """
    m = _SENTENCE.search(text)
    span = m.group(1) if m else re.split(r"[.,;:!\n]", text.strip(), maxsplit=1)[0]
    return _fold(span) or None


def is_correct(answer: str | None, accepted: list[str]) -> bool:
    return answer is not None and any(_fold(a) in answer for a in accepted)


def reader():
    """This task's :class:`~manyminds.evaluation.readers.Reader`: key = :func:`final_answer`, correct =
    :func:`is_correct` of it (the reference is the list of accepted spellings)."""
    from manyminds.evaluation.readers import Reader

    return Reader("capital", lambda text, question="": final_answer(text),
                  lambda text, accepted: is_correct(final_answer(text), accepted),
                  "an accepted spelling of the capital occurs in the named city")


KINDS = {"greedy": "greedy", "temperature": "samples", "minds": "minds"}


def evaluation(results: dict, data: list[dict]):
    """An :class:`~manyminds.evaluation.core.EvalResult` of the answers in ``results["answers"]``
    (greedy scored as its one answer per question; the others as their ``k`` answers)."""
    from manyminds.evaluation import EvalConfig
    from manyminds.evaluation.core import EvalResult
    from manyminds.evaluation.scoring import score_condition

    conditions = []
    for name, groups in results["answers"].items():
        cond = _condition_of(name)
        grid = [g[:1] for g in groups] if cond.kind == "greedy" else groups
        conditions.append(score_condition(name, KINDS[cond.kind], grid, [d["capital"] for d in data],
                                          sigma=cond.value if cond.kind == "minds" else 0.0,
                                          temperature=cond.value if cond.kind == "temperature" else 0.0,
                                          reader=reader()))
    k = int(results["settings"]["k"])
    return EvalResult(config=EvalConfig(k=k), conditions=conditions, answers=[d["capital"][0] for d in data],
                      prompts=[d["country"] for d in data])


def _condition_of(name: str) -> Condition:
    """The :class:`Condition` a stored name came from (``"minds add 0.01"`` -> ``add:0.01``)."""
    head, _, value = name.rpartition(" ")
    spec = {"greedy": "greedy", "temperature": "temp", "minds add": "add", "minds mult": "mult",
            "minds weight": "weight"}[head or name]
    return Condition.parse(spec if spec == "greedy" else f"{spec}:{value}")


def statistics(results: dict, data: list[dict], confidence: float = 0.95) -> dict:
    """95% intervals of every condition's accuracies and the paired comparisons with greedy and (minds)
    with temperature sampling; also each question's outcomes (``per_problem``) for rerunning the tests."""
    from manyminds.evaluation.intervals import comparisons_vs_baselines, condition_intervals

    result = evaluation(results, data)
    return {"confidence": confidence, "intervals": condition_intervals(result, confidence),
            "comparisons": comparisons_vs_baselines(result, confidence),
            "per_problem": {c.name: [{"correct": r["correct"], "majority_correct": r["majority_correct"]}
                                     for r in c.per_prompt] for c in result.conditions}}


def score(groups: list[list[str]], data: list[dict], k: int) -> dict:
    from manyminds.metrics import majority_vote, mean_pass_at_k

    finals = [[final_answer(a) for a in g] for g in groups]
    correct = [[is_correct(f, d["capital"]) for f in fs] for fs, d in zip(finals, data)]
    votes = [majority_vote(fs) for fs in finals]
    return {
        "per_answer_accuracy": sum(map(sum, correct)) / sum(map(len, correct)),
        f"pass_at_{k}": mean_pass_at_k(correct, k),
        "majority_vote_accuracy": sum(is_correct(v, d["capital"]) for v, d in zip(votes, data)) / len(data),
        "unique_answers": sum(len({f for f in fs if f is not None}) for fs in finals) / len(finals),
        "empty_share": sum(f is None for fs in finals for f in fs) / sum(map(len, finals)),
    }


def _ci(x: float, entry: dict | None) -> str:
    """``71.7% [59.2, 81.5]``: a value and its interval in percent."""
    return f"{x:.1%}" + (f" [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]" if entry else "")


def table(results: dict) -> str:
    """The scores (accuracies with their 95% intervals, when ``results`` has them) and the paired
    differences (:func:`statistics`)."""
    from manyminds.evaluation.report import comparisons_markdown

    k = results["settings"]["k"]
    cis = results.get("intervals", {})
    lines = [f"| condition | per-answer accuracy | pass@{k} | majority vote of {k} | unique answers / {k} | empty |",
             "|" + "---|" * 6]
    for name, r in results["conditions"].items():
        ci = cis.get(name, {})
        lines.append(f"| {name} | {_ci(r['per_answer_accuracy'], ci.get('pass_at_1'))} | "
                     f"{_ci(r[f'pass_at_{k}'], ci.get('pass_at_k'))} | "
                     f"{_ci(r['majority_vote_accuracy'], ci.get('majority_at_k'))} | {r['unique_answers']:.2f} | "
                     f"{r['empty_share']:.1%} |")
    text = "\n".join(lines) + "\n"
    if cis:
        text = (f"Accuracies with {results['confidence']:.0%} intervals over questions in %: Wilson for 0/1 "
                "per-question scores (greedy; pass@k and majority), else a percentile bootstrap (pass@1 of "
                f"{k} answers).\n\n" + text)
    if results.get("comparisons"):
        text += "\n" + comparisons_markdown(results["comparisons"], results["confidence"]) + "\n"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 questions, k=3, " + QUICK)
    parser.add_argument("--conditions", default=None, help=f"comma-separated (default: {FULL})")
    parser.add_argument("--questions", type=int, default=None, help="use the first N bundled countries (default: all)")
    parser.add_argument("--k", type=int, default=4, help="answers per question and condition")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="mind population seed and sampling seed")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("smollm2-verifiable"))
    args = parser.parse_args(argv)
    if args.quick:
        args.conditions, args.questions, args.k = args.conditions or QUICK, args.questions or 8, 3
    if args.k < 1:
        parser.error("--k must be >= 1")
    conditions = parse_conditions(args.conditions or FULL)
    from manyminds.evaluation.intervals import condition_intervals

    clock = Clock()
    model, tokenizer = load_model(args.threads)
    data = load_capitals()[:args.questions]
    prompts = [chat(f"What is the capital of {d['country']}?") for d in data]
    results = new_results(args, clock, n_questions=len(data))
    for cond in conditions:
        t0 = time.time()
        groups = draw(model, tokenizer, prompts, cond, args.k, max_new_tokens=args.max_new_tokens, seed=args.seed,
                      batch_size=args.batch_size)
        r = results["conditions"][cond.name] = score(groups, data, args.k)
        results["answers"][cond.name] = groups
        ci = condition_intervals(evaluation(results, data))[cond.name]
        print(f"{cond.name}: per-answer {_ci(r['per_answer_accuracy'], ci['pass_at_1'])}  "
              f"pass@{args.k} {_ci(r[f'pass_at_{args.k}'], ci['pass_at_k'])}  "
              f"vote {_ci(r['majority_vote_accuracy'], ci['majority_at_k'])}  unique {r['unique_answers']:.2f}  "
              f"({clock.lap(cond.name, t0)} s)", flush=True)
        write_json(args.out / "results.json", results)  # after every condition: a stopped run keeps its numbers
    results.update(statistics(results, data))
    write_results(args.out, results, clock, table(results))


if __name__ == "__main__":
    main()
