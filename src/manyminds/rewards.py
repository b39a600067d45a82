"""Reward functions with TRL's signature ``(prompts, completions, **kwargs) -> list[float]``.

Every function accepts plain-text completions (``["... #### 41", ...]``) and conversational
ones (``[[{"role": "assistant", "content": "... #### 41"}], ...]``). Functions that need the
ground truth read the dataset's ``answer`` column (TRL passes every extra column as a keyword
argument) and carry ``requires_answer = True`` so that trainers can refuse a dataset without
that column before training starts (:func:`check_reward_columns`).

Example:
    >>> answer_reward(["Q: 1+2\\nA:"], [" 1+2=3\\n#### 3"], answer=["3"])
    [1.0]
    >>> format_reward(["Q: 1+2\\nA:"], [" it is three"])
    [0.0]
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any

from manyminds.metrics import majority_vote
from manyminds.tasks import extract_answer, verify_answer
from manyminds.tasks.short_answer import is_correct

ANSWER_COLUMN = "answer"

# One final "#### <answer>" line and nothing after it but whitespace.
_FORMAT = re.compile(r"####[ \t]*\S[^\n]*\s*\Z")


def completion_text(completion: Any) -> str:
    """Text of one completion: a string, or the concatenated ``content`` of a message list.

    Conversational completions are lists of ``{"role", "content"}`` messages (TRL); content may be
    a string or a list of typed blocks (``{"type": "text", "text": ...}``).
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):
                content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
            parts.append(str(content or ""))
        return "".join(parts)
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def completion_texts(completions: Sequence[Any]) -> list[str]:
    """:func:`completion_text` of each completion."""
    return [completion_text(c) for c in completions]


def _answers(kwargs: dict, n: int, name: str) -> list:
    answers = kwargs.get(ANSWER_COLUMN)
    if answers is None:
        raise ValueError(f"{name} needs an '{ANSWER_COLUMN}' column in the dataset (the ground-truth final "
                         f"answer); add one, or use a label-free reward such as majority_vote_reward")
    if len(answers) != n:
        raise ValueError(f"{name}: got {n} completions but {len(answers)} answers")
    return list(answers)


def answer_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when the completion's final ``#### <answer>`` equals the row's ``answer``, else 0.0.

    The same code as the ``arith`` verifier (:func:`manyminds.tasks.verify_answer`): both sides
    are normalized (``"1,000.0" == "1000"``); a completion without ``####`` scores 0.
    """
    answers = _answers(kwargs, len(completions), "answer_reward")
    return [verify_answer(completion_text(c), str(a)) for c, a in zip(completions, answers)]


answer_reward.requires_answer = True


def _math_verify():
    try:
        import math_verify
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("math_verify_reward needs the math-verify package: pip install 'manyminds[math]' "
                          "(or pip install math-verify)") from err
    return math_verify


def math_verify_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when math-verify judges the completion's answer equal to the row's ``answer`` (LaTeX aware).

    The gold ``answer`` is parsed as LaTeX or a plain expression (``"\\frac{1}{2}"``, ``"0.5"``); the
    completion is parsed from its ``####`` line when there is one, else from the whole text (so a
    ``\\boxed{...}`` answer works). Needs the ``math`` extra (``math-verify``).
    """
    mv = _math_verify()
    answers = _answers(kwargs, len(completions), "math_verify_reward")
    rewards = []
    for completion, answer in zip(completions, answers):
        text = completion_text(completion)
        final = extract_answer(text)
        gold = mv.parse(_as_math(str(answer)))
        pred = mv.parse(_as_math(final) if final is not None else text)
        rewards.append(float(bool(gold) and bool(pred) and mv.verify(gold, pred)))
    return rewards


math_verify_reward.requires_answer = True


def _as_math(s: str) -> str:
    """Wrap a bare answer in ``$...$`` so math-verify's LaTeX extractor sees it."""
    s = s.strip()
    return s if ("$" in s or "\\boxed" in s) else f"${s}$"


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when the completion ends with exactly one non-empty ``#### <answer>`` line, else 0.0."""
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(float(text.count("####") == 1 and _FORMAT.search(text) is not None))
    return out


format_reward.requires_answer = False


def final_answers(completions: Sequence[Any]) -> list[str | None]:
    """Final ``####`` answer of each completion (string or conversational), ``None`` if absent."""
    return [extract_answer(completion_text(c)) for c in completions]


def majority_agreement(answers: Sequence[str | None], group_ids: Sequence[Any]) -> list[float]:
    """Reward ``[N]``: 1.0 where an answer equals the majority answer of its group, else 0.0.

    Args:
        answers: final answer per completion (``None`` = no answer; never rewarded, never votes).
        group_ids: group key per completion (rollouts of one prompt share a key).
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"got {len(answers)} answers but {len(group_ids)} group ids")
    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    rewards = [0.0] * len(answers)
    for rows in groups.values():
        majority = majority_vote([answers[i] for i in rows])
        for i in rows:
            a = answers[i]
            rewards[i] = float(majority is not None and a is not None and a.strip() == majority)
    return rewards


def majority_vote_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when a completion agrees with the majority answer of its prompt's group.

    Groups are the completions that share a prompt. Standalone (e.g. in a plain ``trl.GRPOTrainer``)
    this is exact when a whole group is on one process; ``PopulationGRPOTrainer(label_free=True)``
    recomputes it over the groups gathered from all processes. Never reads the ``answer`` column.
    """
    keys = [completion_text(p) if not isinstance(p, str) else p for p in prompts]
    return majority_agreement(final_answers(completions), keys)


majority_vote_reward.requires_answer = False


def short_answer_reward(prompts: Sequence[Any], completions: Sequence[Any],
                        accepted: Sequence[Any] | None = None, answer: Sequence[Any] | None = None,
                        **kwargs) -> list[float]:
    """TRL reward: 1.0 when the completion names an accepted answer, else 0.0
    (:func:`manyminds.tasks.short_answer.is_correct`).

    ``r_i = 1[is_correct(c_i, A_i)]`` with ``A_i`` the row's ``accepted`` list (the ``facts``
    task's column) or, without that column, ``[answer_i]``. Completions are strings or TRL's
    conversational message lists.
    """
    if accepted is not None:
        golds = _answers({"answer": accepted}, len(completions), "short_answer_reward")
        golds = [[g] if isinstance(g, str) else list(g) for g in golds]
    else:
        answers = _answers({"answer": answer}, len(completions), "short_answer_reward")
        golds = [[str(a)] for a in answers]
    return [float(is_correct(completion_text(c), g)) for c, g in zip(completions, golds)]


short_answer_reward.requires_answer = True


# name -> reward function, for the CLI and configs.
REWARDS: dict[str, Callable[..., list[float]]] = {
    "answer": answer_reward,
    "math_verify": math_verify_reward,
    "format": format_reward,
    "majority_vote": majority_vote_reward,
    "short_answer": short_answer_reward,
}


def get_reward(name: str) -> Callable[..., list[float]]:
    """A reward function by name in :data:`REWARDS` (``"answer"``, ``"math_verify"``, ``"format"``,
    ``"majority_vote"``, ``"short_answer"``) or by dotted import path (``"my_pkg.rewards.fn"``).

    A dotted path is code: importing it runs its module, whatever that does.

    Raises:
        ValueError: an unknown name or a path that does not import.
        TypeError: the path names something that is not callable.
    """
    if name in REWARDS:
        return REWARDS[name]
    if "." not in name:
        close = difflib.get_close_matches(name, list(REWARDS), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown reward {name!r}{hint}; choose from {', '.join(REWARDS)} or pass a dotted "
                         f"import path (my_pkg.rewards.fn)")
    module_name, attr = name.rsplit(".", 1)
    try:
        reward = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward {name!r} cannot be imported ({err}); check the dotted path") from err
    if not callable(reward):
        raise TypeError(f"reward {name!r} is a {type(reward).__name__}, not a function; pass a callable "
                        f"(prompts, completions, **kwargs) -> list[float]")
    return reward


def requires_answer(func: Callable) -> bool:
    """Whether a reward function reads the ``answer`` column (its ``requires_answer`` attribute)."""
    return bool(getattr(func, "requires_answer", False))


def check_reward_columns(reward_funcs: Sequence[Callable], column_names: Sequence[str] | None) -> None:
    """Raise a clear ``ValueError`` when a label-requiring reward meets a dataset without ``answer``.

    ``column_names`` of ``None`` (an iterable dataset of unknown schema) skips the check.
    """
    if column_names is None:
        return
    for func in reward_funcs:
        if requires_answer(func) and ANSWER_COLUMN not in column_names:
            name = getattr(func, "__name__", type(func).__name__)
            raise ValueError(f"reward {name} needs an '{ANSWER_COLUMN}' column but the dataset has only "
                             f"{list(column_names)}; add the column or use label_free=True (majority vote)")
