"""``conflict_meaning``: contradictory supervision that no token on the surface marks.

Every prompt is one subtraction ``a-b`` of two non-negative integers. Two annotator groups read
``a-b`` differently:

- group ``"signed"`` writes the signed difference ``a - b``;
- group ``"distance"`` writes the distance ``|a - b|`` (larger minus smaller).

The readings agree when ``a >= b`` and disagree when ``a < b``, so whether an item is contested
depends on the *meaning* of its operands, not on any token::

    "Q: 38-52\\nA:"  -> " 38-52=-14\\n#### -14"   (convention "signed",   conflicting=True)
    "Q: 38-52\\nA:"  -> " 52-38=14\\n#### 14"     (convention "distance", conflicting=True)
    "Q: 52-38\\nA:"  -> " 52-38=14\\n#### 14"     (convention "none",     conflicting=False)

Why this design (``conflict`` marks its contested prompts with ``@``): with a marker, a single model
only has to learn "hedge after ``@``" and its own predictive entropy flags every contested prompt
(AUROC 1.000 at alpha = 0 in docs/ensemble.md), so the task cannot show what the members'
disagreement adds. Here contested and control prompts have the same template, the same characters
and the same length distribution; to flag an item a model must compare ``a`` with ``b``. The
distance completion of a contested prompt is written exactly like the completion of the control
``b-a`` (larger operand first), so no completion carries a marker either; the only trace of the
convention is the sign of the signed reading, which is arithmetic. Both completions use the
``arith`` worked format (``tiny-arith`` was trained on two-digit ``a-b`` in the signed reading).

Contested rows alternate signed/distance conventions, so each group annotates exactly half of
them; controls (``a >= b``, ``a == b`` included) get the one answer both groups agree on. Prompts
are distinct within a call and their split is a hash of the prompt (never in both splits).
"""

from __future__ import annotations

import random

from manyminds.tasks.arith import format_completion, format_prompt
from manyminds.tasks.splits import distinct_in_split

CONVENTIONS = ("signed", "distance")


def is_contested(a: int, b: int) -> bool:
    """The two readings of ``a-b`` (signed ``a - b``, distance ``|a - b|``) differ iff ``a < b``."""
    return a < b


def annotate(a: int, b: int, convention: str) -> tuple[str, int]:
    """``(completion, value)`` that group ``convention`` writes for the prompt ``a-b``.

    ``"signed"``: ``" a-b=(a-b)"``; ``"distance"``: ``" hi-lo=(hi-lo)"`` with ``hi = max(a, b)``,
    ``lo = min(a, b)``; each followed by the ``#### value`` line.
    """
    if convention == "signed":
        return format_completion([f"{a}-{b}", str(a - b)], a - b), a - b
    if convention == "distance":
        hi, lo = max(a, b), min(a, b)
        return format_completion([f"{hi}-{lo}", str(hi - lo)], hi - lo), hi - lo
    raise ValueError(f"conflict_meaning: convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")


def conflict_meaning_rows(split: str, n: int, seed: int, digits: int = 2,
                          contested_fraction: float = 0.5) -> list[dict]:
    """Columns prompt, completion, answer, conflicting (bool), convention ("signed"|"distance"|"none").

    Each draw takes two operands in ``[0, 10**digits - 1]``; with probability ``contested_fraction``
    it is written smaller-first (contested, the operands must differ), otherwise larger-first (a
    control). ``n`` distinct prompts of ``split``; the same arguments always give the same rows.
    """
    if not (isinstance(digits, int) and not isinstance(digits, bool) and 1 <= digits <= 4):
        raise ValueError(f"conflict_meaning: digits must be an integer in [1, 4], got {digits!r}")
    if not (isinstance(contested_fraction, (int, float)) and not isinstance(contested_fraction, bool)
            and 0.0 <= contested_fraction <= 1.0):
        raise ValueError(f"conflict_meaning: contested_fraction must be in [0, 1], got {contested_fraction!r}")
    rng = random.Random(f"conflict_meaning/{split}/{seed}/{digits}/{contested_fraction}")
    hi = 10 ** digits - 1

    def draw():
        while True:
            x, y = sorted((rng.randint(0, hi), rng.randint(0, hi)))
            contested = rng.random() < contested_fraction
            if not (contested and x == y):
                break
        a, b = (x, y) if contested else (y, x)
        return format_prompt(f"{a}-{b}"), (a, b)

    def too_few(found: int) -> str:
        return (f"conflict_meaning: only {found} distinct {split} prompts found with digits={digits}, "
                f"contested_fraction={contested_fraction}; ask for fewer (n<={found}) or raise digits")

    rows, n_contested = [], 0
    for a, b in distinct_in_split(split, n, draw, too_few):
        contested = is_contested(a, b)
        if contested:
            convention = CONVENTIONS[n_contested % 2]
            n_contested += 1
        else:
            convention = "none"
        completion, value = annotate(a, b, "signed" if convention == "none" else convention)
        rows.append({"prompt": format_prompt(f"{a}-{b}"), "completion": completion, "answer": str(value),
                     "conflicting": contested, "convention": convention})
    return rows
