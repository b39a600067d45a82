"""Final-answer extraction and verification, GSM8K style.

The same code scores the bundled ``arith`` task and real GSM8K-style data: a completion's
final answer is whatever follows the last ``####`` marker on its line.

Example:
    >>> extract_answer(" 12+34=46, 46-5=41\\n#### 41")
    '41'
    >>> verify_answer("... #### 41.0", "41")
    1.0
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?$")


def normalize_answer(text: str) -> str:
    """Canonical form of an answer string: stripped, thousands separators and ``$`` removed,
    integral floats written as integers (``"1,000.0" -> "1000"``); non-numbers are kept stripped."""
    s = text.strip().rstrip(".").replace("$", "").strip()
    if _NUMBER.match(s):
        s = s.replace(",", "")
        if "." in s:
            f = float(s)
            s = str(int(f)) if f.is_integer() else repr(f)
        s = s.lstrip("+")
        if s in ("-0",):
            s = "0"
    return s


def extract_answer(text: str | None) -> str | None:
    """The normalized final answer after the last ``####`` in ``text``, or ``None`` if absent/empty."""
    if not text:
        return None
    found = _ANSWER.findall(text)
    if not found:
        return None
    ans = normalize_answer(found[-1])
    return ans or None


def verify_answer(completion: str, answer: str) -> float:
    """1.0 if the completion's final ``####`` answer equals ``answer`` (both normalized), else 0.0."""
    got = extract_answer(completion)
    return float(got is not None and got == normalize_answer(str(answer)))
