"""A verifiable reward for free-form answers: the last number of the completion.

Chat models answer "What is 7 + 5?" in prose ("7 + 5 equals 12."), not with a ``####`` line, so
:func:`manyminds.rewards.answer_reward` would score them 0. Here a completion's final answer is the
last number it writes (thousands separators and integral decimals normalized as
:func:`manyminds.tasks.normalize_answer` does: ``"1,000.0" -> "1000"``), and the reward is 1 when it
equals the row's ``answer``.

    >>> last_number_reward(None, [[{"role": "assistant", "content": "7 + 5 equals 12."}]], answer=["12"])
    [1.0]
    >>> final_number("I think 3, no wait, 4")
    '4'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from manyminds.rewards import _answers, completion_text
from manyminds.tasks.answers import normalize_answer

__all__ = ["final_number", "last_number_reward"]

# A number: "1,234.5" (comma groups of three only, so "3,4" is two numbers) or "12" / "12.5".
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|\d+(?:\.\d+)?")
# A "-" right before a number is its sign unless a digit or ")" precedes the "-" (at most one
# space between): "9 - 5" reads as 9 and 5, "= -4" and "is -4" read -4.
_BINARY_MINUS = re.compile(r"[\d)] ?\Z")


def final_number(text: str | None) -> str | None:
    """The normalized last number in ``text``, or ``None`` when it has no digit."""
    if not text:
        return None
    found = list(_NUMBER.finditer(text))
    if not found:
        return None
    m = found[-1]
    start = m.start()
    negative = start > 0 and text[start - 1] == "-" and not _BINARY_MINUS.search(text[:start - 1])
    return normalize_answer(("-" if negative else "") + m.group())


def last_number_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                       **kwargs) -> list[float]:
    """1.0 when the last number of the completion equals the row's ``answer`` (both normalized), else 0.0.

    ``r_i = 1[final_number(c_i) == normalize(a_i)]``. Completions are strings or TRL's conversational
    message lists; ``answer`` is the dataset's ``answer`` column (TRL passes it as a keyword). A
    completion without a number scores 0.
    """
    answers = _answers({"answer": answer}, len(completions), "last_number_reward")
    out = []
    for completion, gold in zip(completions, answers):
        got = final_number(completion_text(completion))
        out.append(float(got is not None and got == normalize_answer(str(gold))))
    return out


last_number_reward.requires_answer = True
