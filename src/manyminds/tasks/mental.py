"""``mental``: one-step mental arithmetic asked in plain English, for chat models.

A problem is ``a <op> b`` with operands in ``[0, max_operand]``, asked as a chat question whose
answer is free-form text; the reward reads the last number of the reply
(:func:`manyminds.rl.free_form.last_number_reward`)::

    prompt:  [{"role": "user", "content": "What is 7 + 5? Answer with just the number."}]
    answer:  "12"

There is no worked ``completion``: the task is for RL with a verifier, not for SFT. It was sized for
SmolLM2-135M-Instruct, which answers one-step sums and differences of small numbers right about half
the time (greedy; see ``docs/rl.md``), so GRPO has headroom both ways. The instruction keeps its
replies short (about 15 tokens): asked without it, the model often names the answer and then rambles
on, so the last number of a 48-token reply was right on only 24% of the held-out problems vs 44% with it.

Train and test never overlap: a problem's split is a hash of its expression (``"7 + 5"``, see
:func:`manyminds.tasks.splits.split_of`), so two phrasings of one problem land in the same split.
"""

from __future__ import annotations

import random

from manyminds.tasks.splits import distinct_in_split

OPERATORS = "+-*"
_WORDS = {"+": "+", "-": "-", "*": "×"}


def mental_expression(a: int, op: str, b: int) -> str:
    """``"7 + 5"``: the text the question shows and the split hashes (``*`` is shown as ``×``)."""
    return f"{a} {_WORDS[op]} {b}"


def mental_value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def check_knobs(max_operand: int, operators: str, nonnegative: bool, instruction: str = "") -> None:
    if not (isinstance(max_operand, int) and 1 <= max_operand <= 10_000):
        raise ValueError(f"mental: max_operand must be an integer in [1, 10000], got {max_operand!r}")
    if not operators or any(o not in OPERATORS for o in operators):
        raise ValueError(f"mental: operators must be a non-empty subset of {OPERATORS!r}, got {operators!r}")
    if not isinstance(nonnegative, bool):
        raise TypeError(f"mental: nonnegative must be True or False, got {nonnegative!r}")
    if not isinstance(instruction, str):
        raise TypeError(f"mental: instruction must be a string, got {instruction!r}")


INSTRUCTION = " Answer with just the number."


def mental_rows(split: str, n: int, seed: int, max_operand: int = 20, operators: str = "+-",
                nonnegative: bool = True, instruction: str = INSTRUCTION) -> list[dict]:
    """``n`` distinct problems of ``split``; columns ``prompt`` (a one-message conversation, TRL's
    conversational format, whatever ``load_task``'s ``conversational`` says) and ``answer``.

    Args:
        max_operand: operands are drawn uniformly from ``[0, max_operand]``.
        operators: subset of ``"+-*"``, one drawn uniformly per problem.
        nonnegative: for ``-``, put the larger operand first so the answer is never negative.
        instruction: text appended to the question (not part of the split's hash).
    """
    check_knobs(max_operand, operators, nonnegative, instruction)
    rng = random.Random(f"mental/{split}/{seed}/{max_operand}/{operators}/{nonnegative}")

    def draw():
        a, b, op = rng.randint(0, max_operand), rng.randint(0, max_operand), rng.choice(operators)
        if op == "-" and nonnegative and b > a:
            a, b = b, a
        return mental_expression(a, op, b), (a, op, b)

    def too_few(found: int) -> str:
        return (f"mental: only {found} distinct {split} problems found with max_operand={max_operand}, "
                f"operators={operators!r}; ask for fewer (n<={found}) or raise max_operand")

    rows = []
    for a, op, b in distinct_in_split(split, n, draw, too_few):
        rows.append({"prompt": [{"role": "user", "content": f"What is {mental_expression(a, op, b)}?{instruction}"}],
                     "answer": str(mental_value(a, op, b))})
    return rows
