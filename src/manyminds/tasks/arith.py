"""``arith``: arithmetic word-free problems with a worked solution and a ``#### <answer>`` line.

A problem is ``ops`` binary operations over integers of at most ``digits`` digits, e.g. with the
defaults (``digits=2, ops=2, operators="+-"``)::

    prompt:     "Q: 12+34-5\\nA:"
    completion: " 12+34=46, 46-5=41\\n#### 41"
    answer:     "41"

The worked solution applies ``*`` first (left to right), then ``+``/``-`` left to right, one
step per operation. Train and test never overlap: a problem's split is a hash of its prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from manyminds.tasks.splits import split_of

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
        """Worked steps (``"a*b=c"``) and the value, ``*`` before ``+``/``-``, left to right."""
        vals, ops, steps = list(self.operands), list(self.operators), []
        for prec in ("*", "+-"):
            i = 0
            while i < len(ops):
                if ops[i] in prec:
                    a, b, op = vals[i], vals[i + 1], ops[i]
                    c = a * b if op == "*" else a + b if op == "+" else a - b
                    steps.append(f"{a}{op}{b}={c}")
                    vals[i:i + 2] = [c]
                    del ops[i]
                else:
                    i += 1
        return steps, vals[0]


def format_prompt(expression: str) -> str:
    return f"Q: {expression}\nA:"


def format_completion(steps: list[str], value: int | str) -> str:
    return " " + ", ".join(steps) + f"\n#### {value}"


def sample_problem(rng: random.Random, digits: int, ops: int, operators: str) -> ArithProblem:
    hi = 10 ** digits - 1
    operands = tuple(rng.randint(0, hi) for _ in range(ops + 1))
    return ArithProblem(operands, tuple(rng.choice(operators) for _ in range(ops)))


def check_knobs(digits: int, ops: int, operators: str) -> None:
    if not (isinstance(digits, int) and 1 <= digits <= 6):
        raise ValueError(f"arith: digits must be an integer in [1, 6], got {digits!r}")
    if not (isinstance(ops, int) and 1 <= ops <= 6):
        raise ValueError(f"arith: ops must be an integer in [1, 6], got {ops!r}")
    if not operators or any(o not in OPERATORS for o in operators):
        raise ValueError(f"arith: operators must be a non-empty subset of {OPERATORS!r}, got {operators!r}")


def arith_rows(split: str, n: int, seed: int, digits: int = 2, ops: int = 2,
               operators: str = "+-") -> list[dict]:
    """``n`` distinct problems of ``split``; columns prompt, completion, answer."""
    check_knobs(digits, ops, operators)
    rng = random.Random(f"arith/{split}/{seed}/{digits}/{ops}/{operators}")
    rows, seen, tries = [], set(), 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"arith: only {len(rows)} distinct {split} problems found with digits={digits}, "
                             f"ops={ops}, operators={operators!r}; ask for fewer (n<={len(rows)}) or raise digits/ops")
        p = sample_problem(rng, digits, ops, operators)
        prompt = format_prompt(p.expression)
        if prompt in seen or split_of(prompt) != split:
            continue
        seen.add(prompt)
        steps, value = p.steps()
        rows.append({"prompt": prompt, "completion": format_completion(steps, value), "answer": str(value)})
    return rows
