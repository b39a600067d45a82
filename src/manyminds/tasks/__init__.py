"""Bundled verifiable tasks as ``datasets.Dataset`` in TRL's column conventions.

    >>> ds = load_task("arith", split="test", n=200, seed=0)
    >>> ds.column_names
    ['prompt', 'completion', 'answer']

With ``conversational=True`` the same rows come in TRL's conversational form, for chat models:

    >>> load_task("arith", n=1, conversational=True)[0]["prompt"]
    [{'role': 'user', 'content': 'Q: 1+9+5+2\nA:'}]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from manyminds.tasks.answers import extract_answer, normalize_answer, verify_answer
from manyminds.tasks.arith import arith_rows
from manyminds.tasks.conflict import conflict_rows
from manyminds.tasks.conflict_meaning import conflict_meaning_rows
from manyminds.tasks.facts import SPLITS as FACT_SPLITS
from manyminds.tasks.facts import facts_rows
from manyminds.tasks.mental import mental_rows
from manyminds.tasks.prefs import prefs_rows
from manyminds.tasks.splits import SPLITS, split_of


@dataclass(frozen=True)
class Task:
    name: str
    rows: Callable[..., list[dict]]
    description: str
    default_n: dict  # rows per split; None = every row of a fixed question set
    splits: tuple[str, ...] = SPLITS


TASKS: dict[str, Task] = {
    "arith": Task("arith", arith_rows,
                  "arithmetic with a worked solution and a '#### <answer>' line (knobs: digits, ops, operators)",
                  {"train": 5000, "test": 200}),
    "conflict": Task("conflict", conflict_rows,
                     "'@' means + for half the annotators and - for the rest, plus unambiguous +/- controls "
                     "(knobs: digits, conflict_fraction)", {"train": 2000, "test": 200}),
    "prefs": Task("prefs", prefs_rows,
                  "preference pairs: terse-vs-worked style disagreement between two annotator groups, plus "
                  "agreed right-vs-wrong pairs (knobs: digits, ops, style_fraction)", {"train": 2000, "test": 200}),
    "mental": Task("mental", mental_rows,
                   "chat questions 'What is 7 + 5?' with a free-form answer, always conversational "
                   "(knobs: max_operand, operators, nonnegative, instruction)", {"train": 400, "test": 100}),
    "facts": Task("facts", facts_rows,
                  "short fact questions for chat LMs ('What is the capital of France?') with "
                  "accepted answers, splits dev/test (knobs: path, instruction)",
                  {"dev": None, "test": None}, FACT_SPLITS),
    "conflict_meaning": Task("conflict_meaning", conflict_meaning_rows,
                             "'a-b' is the signed difference for half the annotators and the distance |a-b| "
                             "for the rest: contested only when a<b, no token marks it (knobs: digits, "
                             "contested_fraction)", {"train": 2000, "test": 200}),
}


def task_knobs(name: str) -> dict:
    """Difficulty knobs of a task and their defaults."""
    params = inspect.signature(TASKS[name].rows).parameters
    return {k: p.default for k, p in params.items() if k not in ("split", "n", "seed")}


CONVERSATIONAL_COLUMNS = {"prompt": "user", "completion": "assistant", "chosen": "assistant",
                          "rejected": "assistant"}
"""The text columns that :func:`conversational_rows` turns into messages, and the role of each."""


def conversational_rows(rows: list[dict]) -> list[dict]:
    """Rows in TRL's conversational form: ``prompt -> [{"role": "user", "content": prompt}]``,
    ``completion``/``chosen``/``rejected -> [{"role": "assistant", "content": text}]``.

    The assistant turn is the completion without its leading space (the text form's ``" 7+8=15"``
    follows ``"A:"``; in a chat the answer starts its own turn). Other columns are kept as they are.
    """
    out = []
    for row in rows:
        new = dict(row)
        for column, role in CONVERSATIONAL_COLUMNS.items():
            if isinstance(row.get(column), str):
                text = row[column] if role == "user" else row[column].lstrip(" ")
                new[column] = [{"role": role, "content": text}]
        out.append(new)
    return out


def load_task(name: str, split: str = "train", n: int | None = None, seed: int = 0, conversational: bool = False,
              **knobs):
    """Load a bundled task as a ``datasets.Dataset``.

    Args:
        name: one of :data:`TASKS` (``"arith"``, ``"conflict"``, ``"prefs"``, ``"mental"``,
            ``"facts"``).
        split: ``"train"`` or ``"test"`` (``"dev"`` or ``"test"`` for ``facts``); splits never share
            a prompt.
        n: number of rows (default: the task's default for the split; ``facts``: all of the split).
        seed: sampling seed; the same arguments always give the same rows.
        conversational: TRL's conversational columns (:func:`conversational_rows`): ``prompt`` as a
            user message, ``completion`` (SFT) or ``chosen``/``rejected`` (preferences) as assistant
            messages, for a model with a chat template; the default is plain text.
        **knobs: task-specific difficulty settings (see :func:`task_knobs`).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    splits = TASKS[name].splits
    if split not in splits:
        raise ValueError(f"unknown split {split!r} for task {name!r}; valid splits: {', '.join(splits)}")
    valid = task_knobs(name)
    bad = sorted(set(knobs) - set(valid))
    if bad:
        raise ValueError(f"unknown setting(s) {', '.join(bad)} for task {name!r}; valid: {', '.join(valid)}")
    n = TASKS[name].default_n[split] if n is None else n
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(conversational, bool):
        raise TypeError(f"conversational must be True or False, got {conversational!r}")
    import datasets

    rows = TASKS[name].rows(split=split, n=n, seed=seed, **knobs)
    return datasets.Dataset.from_list(conversational_rows(rows) if conversational else rows)


__all__ = [
    "SPLITS",
    "TASKS",
    "conversational_rows",
    "extract_answer",
    "load_task",
    "normalize_answer",
    "split_of",
    "task_knobs",
    "verify_answer",
]
