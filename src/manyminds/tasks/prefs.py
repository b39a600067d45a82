"""``prefs``: preference pairs from two annotator groups who disagree on one axis.

Style pairs (``kind="style"``): both answers are right; group ``"terse"`` prefers the bare
answer (``" #### 41"``), group ``"worked"`` prefers the worked solution. Agreed pairs
(``kind="agreed"``, group ``"all"``): a right worked answer beats a wrong one.
Columns: prompt, chosen, rejected, answer, kind, group (TRL preference columns + metadata).
"""

from __future__ import annotations

import random

from manyminds.tasks.arith import check_knobs, format_completion, format_prompt, sample_problem
from manyminds.tasks.splits import distinct_in_split


def terse_completion(value: int | str) -> str:
    return f" #### {value}"


def prefs_rows(split: str, n: int, seed: int, digits: int = 1, ops: int = 2,
               style_fraction: float = 0.5) -> list[dict]:
    check_knobs(digits, ops, "+-")
    if not 0.0 <= style_fraction <= 1.0:
        raise ValueError(f"prefs: style_fraction must be in [0, 1], got {style_fraction!r}")
    rng = random.Random(f"prefs/{split}/{seed}/{digits}/{ops}/{style_fraction}")

    def draw():
        p = sample_problem(rng, digits, ops, "+-")
        return format_prompt(p.expression), p

    def too_few(found: int) -> str:
        return f"prefs: only {found} distinct {split} prompts with digits={digits}, ops={ops}; ask for fewer"

    rows, n_style = [], 0
    for p in distinct_in_split(split, n, draw, too_few):  # the style draws below come between problems
        prompt = format_prompt(p.expression)
        steps, value = p.steps()
        worked = format_completion(steps, value)
        if rng.random() < style_fraction:
            group = "terse" if n_style % 2 == 0 else "worked"
            n_style += 1
            terse = terse_completion(value)
            chosen, rejected = (terse, worked) if group == "terse" else (worked, terse)
            kind = "style"
        else:
            wrong = value + rng.choice([-1, 1]) * rng.randint(1, 10)
            chosen, rejected = worked, format_completion(steps[:-1] + [str(wrong)], wrong)
            kind, group = "agreed", "all"
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "answer": str(value),
                     "kind": kind, "group": group})
    return rows
