"""Readers: how a completion becomes a votable answer, and whether it is correct.

Every condition is scored by one :class:`Reader` (:func:`~manyminds.evaluation.scoring.score_condition`):

- ``key(completion, question) -> str | None``: what a majority vote and the "unique answers"
  count compare (``None``: no answer read). Gold answers are never used here, so right and
  wrong completions are grouped by the same rule.
- ``correct(completion, reference) -> bool``: the verdict on one completion.

A majority answer is correct when the first completion carrying the majority key is correct
(for :data:`FINAL_ANSWER` that is ``key == reference``, the usual maj@k).

Two readers ship:

- :data:`FINAL_ANSWER` (``"final"``): GSM8K's ``#### <answer>`` line
  (:func:`manyminds.tasks.extract_answer`), reference = the gold answer string;
- :data:`SHORT_ANSWER` (``"short"``): a free-form reply to a short question
  (:mod:`manyminds.tasks.short_answer`): correct when an accepted answer is named, not negated,
  in the reply's first sentence; key = that sentence's words not in the question
  (:func:`~manyminds.tasks.short_answer.answer_key`); reference = the list of accepted answers.

:func:`reader_for` picks ``short`` for datasets with an ``accepted`` column (``facts``), else ``final``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from manyminds.tasks import extract_answer, normalize_answer
from manyminds.tasks.short_answer import answer_key, is_correct

__all__ = ["FINAL_ANSWER", "READERS", "SHORT_ANSWER", "Reader", "reader_for"]


@dataclass(frozen=True)
class Reader:
    name: str
    key: Callable[[str | None, str], str | None]
    correct: Callable[[str | None, object], bool]
    description: str


def _final_correct(completion: str | None, reference) -> bool:
    got = extract_answer(completion)
    return got is not None and got == normalize_answer(str(reference))


def _short_correct(completion: str | None, reference) -> bool:
    accepted = [reference] if isinstance(reference, str) else list(reference)
    return is_correct(completion, accepted)


FINAL_ANSWER = Reader("final", lambda completion, question="": extract_answer(completion), _final_correct,
                      "the answer after the last '####' equals the gold answer")
SHORT_ANSWER = Reader("short", answer_key, _short_correct,
                      "an accepted answer is named (not negated) in the reply's first sentence")
READERS = {r.name: r for r in (FINAL_ANSWER, SHORT_ANSWER)}


def reader_for(name: str | None, columns: Sequence[str] = ()) -> Reader:
    """The reader called ``name`` (``"final"`` or ``"short"``); ``None``/``"auto"``: ``short`` when
    the dataset has an ``accepted`` column, else ``final``."""
    if name in (None, "auto"):
        return SHORT_ANSWER if "accepted" in columns else FINAL_ANSWER
    if name not in READERS:
        raise ValueError(f"unknown reader {name!r}; use one of: auto, {', '.join(READERS)}")
    return READERS[name]
