"""Greedy answers of SmolLM2-135M-Instruct to every bundled ``facts`` question, scored per question.

Each question is asked as a one-turn chat (``load_task("facts", conversational=True)``: the chat
template applied once, as TRL does), answered greedily with at most ``--max-new-tokens`` new
tokens in batches, and scored by :func:`manyminds.tasks.short_answer.is_correct` (an accepted
answer named in the reply's first sentence, not negated). One line per question goes to ``--out``::

    {"id": "capital/france", "category": "capital", "split": "test", "question": "...",
     "reply": "The capital of France is Paris.", "correct": true}

Then it prints greedy accuracy per category, per split and overall, each with a Wilson 95% interval.

    python examples/facts_greedy.py          # all questions -> docs/data/facts/greedy_smollm2.jsonl
    python examples/facts_greedy.py --split dev --instruction " Be brief." --out /tmp/dev.jsonl
    python examples/facts_greedy.py --report docs/data/facts/greedy_smollm2.jsonl  # rescore only

``--report`` rescores the saved replies with the current reader, so the table can be rebuilt (and a
change of the reader checked) without running the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

MODEL = "smollm2-135m-instruct"
OUT = Path(__file__).resolve().parent.parent / "docs" / "data" / "facts" / "greedy_smollm2.jsonl"


def generate(args) -> list[dict]:
    """Greedy replies to the questions of ``args.split`` (``all``: dev, then test), one record
    each."""
    import torch

    import manyminds
    from manyminds.evaluation.generation import generate_completions
    from manyminds.tasks import load_task

    torch.set_num_threads(args.threads)
    model, tokenizer = manyminds.load(MODEL)
    model.eval()
    splits = ("dev", "test") if args.split == "all" else (args.split,)
    records = []
    for split in splits:
        ds = load_task("facts", split=split, conversational=True, instruction=args.instruction)
        t0 = time.time()
        replies = generate_completions(model, tokenizer, ds["prompt"], batch_size=args.batch_size,
                                       max_new_tokens=args.max_new_tokens)
        print(f"{split}: {len(ds)} questions in {time.time() - t0:.0f} s", flush=True)
        for row, reply in zip(ds, replies):
            records.append({"id": row["id"], "category": row["category"], "split": split,
                            "question": row["prompt"][0]["content"], "accepted": row["accepted"],
                            "reply": reply})
    return records


def score(records: list[dict]) -> list[dict]:
    """Set ``correct`` of each record from its reply and the bundled accepted answers (by id)."""
    from manyminds.tasks.facts import read_facts
    from manyminds.tasks.short_answer import is_correct

    accepted = {f["id"]: f["answers"] for f in read_facts()}
    for r in records:
        r["accepted"] = accepted.get(r["id"], r.get("accepted"))
        r["correct"] = is_correct(r["reply"], r["accepted"])
    return records


def table(records: list[dict]) -> str:
    """Accuracy with a Wilson 95% interval per category, per split and overall (markdown)."""
    from manyminds.evaluation.stats import wilson_interval

    groups: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        groups[r["category"]].append(r["correct"])
    for r in records:
        groups[f"all {r['split']}"].append(r["correct"])
    groups["all"] = [r["correct"] for r in records]
    lines = ["| questions | n | correct | accuracy | 95% interval (Wilson) |",
             "|---|---|---|---|---|"]
    for name, xs in groups.items():
        lo, hi = wilson_interval(sum(xs), len(xs))
        lines.append(f"| {name} | {len(xs)} | {sum(xs)} | {sum(xs) / len(xs):.1%} "
                     f"| [{lo:.1%}, {hi:.1%}] |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("all", "dev", "test"), default="all")
    parser.add_argument("--instruction", default="",
                        help="text appended to every question (default: none)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT,
                        help="where the per-question records go (.jsonl)")
    parser.add_argument("--report", type=Path, default=None,
                        help="rescore this saved .jsonl and print the table")
    args = parser.parse_args(argv)
    if args.report is not None:
        lines = args.report.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        print(table(score(records)))
        return
    t0 = time.time()
    records = score(generate(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("id", "category", "split", "question", "reply", "correct")
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n"
                     for r in records)
    import torch
    import transformers

    print(f"{MODEL}, greedy, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
          f"instruction {args.instruction!r}; {platform.machine()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}, {time.time() - t0:.0f} s")
    print(table(records))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
