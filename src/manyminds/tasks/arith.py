"""``arith``: arithmetic word-free problems with a worked solution and a ``#### <answer>`` line.

A problem is ``ops`` binary operations over integers of at most ``digits`` digits, e.g. with the
defaults (``digits=1, ops=3, operators="+-"``)::

    prompt:     "Q: 4-5+3-5\\nA:"
    completion: " 4-5+3-5=-1+3-5=2-5=-3\\n#### -3"
    answer:     "-3"

The worked solution is a rewrite chain: the expression, then the expression with its next
operation done (``*`` first, left to right, then ``+``/``-`` left to right), until one number
is left. Every step reads only the segment before it, so the format is learnable by small
models. Train and test never overlap: a problem's split is a hash of its prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from manyminds.tasks.splits import distinct_in_split

OPERATORS = "+-*"


@dataclass(frozen=True)
class ArithProblem:
    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def expression(self) -> str:
        out = str(self.operands[0])
        for op, x in zip(self.operators, self.operands[1:]):
            out += f"{op}{x}"
        return out

    def steps(self) -> tuple[list[str], int]:
        """The rewrite chain (``["2+3*4", "2+12", "14"]``) and the value.

        ``*`` is done before ``+``/``-``, each left to right, one operation per step.
        """
        vals, ops = list(self.operands), list(self.operators)
        chain = [_render(vals, ops)]
        for prec in ("*", "+-"):
            i = 0
            while i < len(ops):
                if ops[i] in prec:
                    a, b, op = vals[i], vals[i + 1], ops[i]
                    vals[i:i + 2] = [a * b if op == "*" else a + b if op == "+" else a - b]
                    del ops[i]
                    chain.append(_render(vals, ops))
                else:
                    i += 1
        return chain, vals[0]


def _render(vals: list[int], ops: list[str]) -> str:
    # "a+-3" would be ambiguous to read; intermediate negatives are written in parentheses
    out = str(vals[0])
    for op, x in zip(ops, vals[1:]):
        out += f"{op}{x}" if x >= 0 else f"{op}({x})"
    return out


def format_prompt(expression: str) -> str:
    return f"Q: {expression}\nA:"


def format_completion(chain: list[str], value: int | str) -> str:
    """``" " + "=".join(chain)`` then the ``#### value`` line."""
    return " " + "=".join(chain) + f"\n#### {value}"


def sample_problem(rng: random.Random, digits: int, ops: int, operators: str) -> ArithProblem:
    hi = 10 ** digits - 1
    operands = tuple(rng.randint(0, hi) for _ in range(ops + 1))
    return ArithProblem(operands, tuple(rng.choice(operators) for _ in range(ops)))


def problem_space(digits: int = 1, ops: int = 3, operators: str = "+-") -> int:
    """How many distinct problems (both splits) the knobs allow: operand choices times operators."""
    return (10 ** digits) ** (ops + 1) * len(operators) ** ops


def check_knobs(digits: int, ops: int, operators: str) -> None:
    if not (isinstance(digits, int) and 1 <= digits <= 6):
        raise ValueError(f"arith: digits must be an integer in [1, 6], got {digits!r}")
    if not (isinstance(ops, int) and 1 <= ops <= 6):
        raise ValueError(f"arith: ops must be an integer in [1, 6], got {ops!r}")
    if not operators or any(o not in OPERATORS for o in operators):
        raise ValueError(f"arith: operators must be a non-empty subset of {OPERATORS!r}, got {operators!r}")


def arith_rows(split: str, n: int, seed: int, digits: int = 1, ops: int = 3,
               operators: str = "+-") -> list[dict]:
    """``n`` distinct problems of ``split``; columns prompt, completion, answer."""
    check_knobs(digits, ops, operators)
    rng = random.Random(f"arith/{split}/{seed}/{digits}/{ops}/{operators}")

    def draw():
        p = sample_problem(rng, digits, ops, operators)
        return format_prompt(p.expression), p

    def too_few(found: int) -> str:
        return (f"arith: only {found} distinct {split} problems found with digits={digits}, ops={ops}, "
                f"operators={operators!r}; ask for fewer (n<={found}) or raise digits/ops")

    rows = []
    for p in distinct_in_split(split, n, draw, too_few):
        steps, value = p.steps()
        rows.append({"prompt": format_prompt(p.expression), "completion": format_completion(steps, value),
                     "answer": str(value)})
    return rows
