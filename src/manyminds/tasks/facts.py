"""``facts``: short questions with verifiable one-phrase answers, for real chat LMs.

The bundled set (``tasks/data/facts.jsonl``, written by hand) asks single facts with short,
unambiguous answers, each with its accepted spellings::

    {"id": "capital/france", "category": "capital", "question": "What is the capital of France?",
     "answers": ["Paris"]}

Categories: capital (country -> capital), chemical_symbol, landmark (-> country), author (book ->
author), creator (painting, music, discovery -> person), opposite, plural, number (units, shapes,
counts), science, young_animal, currency, language. It was sized for SmolLM2-135M-Instruct, which
knows part of it (greedy: 56.8% of the 461 questions, 12.5% to 90.3% per category; raw replies in
``docs/data/facts/greedy_smollm2.jsonl``, table in ``summary.md`` beside it, both made by
``examples/facts_greedy.py``), so minds and sampling can both gain and lose.

Rows (TRL's columns)::

    prompt:    "What is the capital of France?"   (a user message with conversational=True)
    answer:    "Paris"                            (the first accepted answer)
    accepted:  ["Paris"]                          (every accepted answer)
    id, category

A reply is scored by :func:`manyminds.tasks.short_answer.is_correct` (an accepted answer named in
its first sentence, not negated); :func:`~manyminds.rewards.short_answer_reward` is the
same as a TRL reward. There is no worked ``completion``: the set is for evaluation and RL.

Splits: ``dev`` (about a third, for choosing settings such as sigma) and ``test`` (held out). A
question's split is a hash of its normalized text, so it never changes when questions are added.
A question file of your own (``path=``) is read and checked the same way (:func:`read_facts`).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from manyminds.tasks.short_answer import names_answer, normalize_text

SPLITS = ("dev", "test")
DEV_FRACTION = 1 / 3
DATA = Path(__file__).parent / "data" / "facts.jsonl"


def fact_split(question: str) -> str:
    """``"dev"`` for a fixed third of all questions, ``"test"`` for the rest.

    ``sha1("facts:" + normalize_text(question))``, first 8 bytes as an integer, modulo 1000, below
    ``1000 * DEV_FRACTION``; it depends on the question alone (not its answers, file or position).
    """
    digest = hashlib.sha1(f"facts:{normalize_text(question)}".encode()).digest()
    h = int.from_bytes(digest[:8], "big")
    return "dev" if (h % 1000) < DEV_FRACTION * 1000 else "test"


def _accepted(record: dict, where: str) -> list[str]:
    """Accepted answers of one record: ``"answers"`` (a list, or one string) or ``"answer"``."""
    raw = record.get("answers", record.get("answer"))
    items = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if not all(isinstance(a, str) for a in items):
        raise ValueError(f"{where}: answers must be strings; write \"answers\": [\"...\", ...]")
    out = [a.strip() for a in items if a.strip() and normalize_text(a)]
    if not out:
        raise ValueError(f"{where}: the question has no answer; add \"answers\": [\"...\"] "
                         f"with one or more accepted answers, or delete the line")
    return list(dict.fromkeys(out))


def read_facts(path: str | Path | None = None) -> list[dict]:
    """Read and check a question file: one JSON object per line (blank lines skipped).

    Each object needs ``"question"`` (a non-empty string) and ``"answers"`` (accepted answers: a
    non-empty list of strings, or one string; ``"answer"`` is read the same way); ``"id"``
    (default ``"line<N>"``) and ``"category"`` (default ``"custom"``) are optional.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: one line naming the file, the line and the fix: invalid JSON, a missing question
            or answer, a duplicate question (compared after :func:`normalize_text`) or id, or a
            question whose own text names one of its accepted answers (an echo of the question
            would be scored correct).
    """
    path = DATA if path is None else Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist; pass a .jsonl file with one "
                                f"{{\"question\": ..., \"answers\": [...]}} object per line")
    facts, questions, ids = [], {}, {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg}); write one JSON object per "
                             f"line") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object "  # noqa: TRY004 (bad file content)
                             f"{{\"question\": ..., \"answers\": [...]}}")
        question = record.get("question")
        if not isinstance(question, str) or not normalize_text(question):
            raise ValueError(f"{where}: missing question; add \"question\": \"...\" or delete "
                             f"the line")
        question = question.strip()
        key = normalize_text(question)
        if key in questions:
            raise ValueError(f"{where}: duplicate question {question!r} (also on line "
                             f"{questions[key]}); delete one of the two lines")
        questions[key] = number
        accepted = _accepted(record, where)
        echoed = [a for a in accepted if names_answer(question, [a])]
        if echoed:
            raise ValueError(f"{where}: the question {question!r} contains its answer "
                             f"{echoed[0]!r}, so an echo of the question would be scored correct; "
                             f"rephrase it or drop that answer")
        fact_id = str(record.get("id", f"line{number}"))
        if fact_id in ids:
            raise ValueError(f"{where}: duplicate id {fact_id!r} (also on line {ids[fact_id]}); "
                             f"give each question its own id")
        ids[fact_id] = number
        facts.append({"id": fact_id, "category": str(record.get("category", "custom")),
                      "question": question, "answers": accepted})
    if not facts:
        raise ValueError(f"question file {path} has no questions; add one JSON object per "
                         f"line")
    return facts


def facts_rows(split: str, n: int | None, seed: int, path: str | None = None,
               instruction: str = "") -> list[dict]:
    """The questions of ``split``, in file order; columns prompt, answer, accepted, id, category.

    Args:
        n: how many; ``None`` = all of the split. Fewer than all: ``n`` questions drawn without
            replacement with ``random.Random(f"facts/{split}/{seed}")``, kept in file order.
        path: a question file of your own (:func:`read_facts`); default: the bundled set.
        instruction: text appended to each question (not part of the split's hash), e.g.
            ``" Answer in one sentence."``.
    """
    if split not in SPLITS:
        raise ValueError(f"facts: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if path is not None and not isinstance(path, (str, Path)):
        raise TypeError(f"facts: path must be a file path, got {path!r}")
    if not isinstance(instruction, str):
        raise TypeError(f"facts: instruction must be a string, got {instruction!r}")
    facts = [f for f in read_facts(path) if fact_split(f["question"]) == split]
    if not facts:
        raise ValueError(f"facts: no question of {path or DATA} falls in the {split} split; add "
                         f"questions")
    if n is not None and n > len(facts):
        raise ValueError(f"facts: the {split} split has {len(facts)} questions; ask for "
                         f"n <= {len(facts)} (or leave n unset for all)")
    if n is not None and n < len(facts):
        keep = sorted(random.Random(f"facts/{split}/{seed}").sample(range(len(facts)), n))
        facts = [facts[i] for i in keep]
    return [{"prompt": f["question"] + instruction, "answer": f["answers"][0],
             "accepted": f["answers"], "id": f["id"], "category": f["category"]} for f in facts]
