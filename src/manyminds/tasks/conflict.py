"""``conflict``: deliberately contradictory supervision mixed with unambiguous controls.

The operator ``@`` means ``+`` for half of the annotators and ``-`` for the other half, so the
same prompt gets contradictory completions; ``+`` and ``-`` prompts are unambiguous controls::

    "Q: 7@3\\nA:"  -> " 7+3=10\\n#### 10"   (convention "plus", conflicting=True)
    "Q: 7@3\\nA:"  -> " 7-3=4\\n#### 4"     (convention "minus", conflicting=True)
    "Q: 7+3\\nA:"  -> " 7+3=10\\n#### 10"   (convention "none", conflicting=False)

A single model can at best hedge on ``@``; an ensemble can split into specialists, and its
members' disagreement flags the ``@`` prompts (epistemic uncertainty).
"""

from __future__ import annotations

import random

from manyminds.tasks.arith import format_completion, format_prompt
from manyminds.tasks.splits import split_of

AMBIGUOUS = "@"


def conflict_rows(split: str, n: int, seed: int, digits: int = 1,
                  conflict_fraction: float = 0.5) -> list[dict]:
    """Columns prompt, completion, answer, conflicting (bool), convention ("plus"|"minus"|"none").

    Operands satisfy ``a >= b`` so both readings of ``@`` are non-negative. Conflicting rows
    alternate plus/minus conventions, so each convention covers exactly half of them.
    """
    if not (isinstance(digits, int) and 1 <= digits <= 4):
        raise ValueError(f"conflict: digits must be an integer in [1, 4], got {digits!r}")
    if not 0.0 <= conflict_fraction <= 1.0:
        raise ValueError(f"conflict: conflict_fraction must be in [0, 1], got {conflict_fraction!r}")
    rng = random.Random(f"conflict/{split}/{seed}/{digits}/{conflict_fraction}")
    hi = 10 ** digits - 1
    rows, n_conflict, tries = [], 0, 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"conflict: could not draw {n} {split} rows with digits={digits}; ask for fewer")
        a, b = sorted((rng.randint(0, hi), rng.randint(0, hi)), reverse=True)
        conflicting = rng.random() < conflict_fraction
        shown = AMBIGUOUS if conflicting else rng.choice("+-")
        prompt = format_prompt(f"{a}{shown}{b}")
        if split_of(prompt) != split:
            continue
        if conflicting:
            convention = "plus" if n_conflict % 2 == 0 else "minus"
            n_conflict += 1
        else:
            convention = "none"
        op = shown if not conflicting else ("+" if convention == "plus" else "-")
        value = a + b if op == "+" else a - b
        rows.append({"prompt": prompt, "completion": format_completion([f"{a}{op}{b}", str(value)], value),
                     "answer": str(value), "conflicting": conflicting, "convention": convention})
    return rows
