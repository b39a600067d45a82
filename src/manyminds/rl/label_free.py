"""Label-free RL (TTRL-style): reward agreement with the group's majority answer.

For a group of ``G`` rollouts of one prompt with final answers ``a_1..a_G`` (``None`` when no
``#### <answer>`` line was produced), the pseudo-label is ``m = majority_vote(a_1..a_G)`` and

    r_i = 1  if a_i is not None and a_i == m   else 0.

No ground truth is read anywhere: :func:`strip_labels` removes label columns from the rows
before any reward function sees them. The reward itself (:func:`majority_vote_reward`, with
:func:`majority_agreement` and :func:`final_answers`) lives with the other reward functions in
:mod:`manyminds.rewards`; this module groups TRL's rollouts and keeps the labels out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from manyminds.rewards import final_answers, majority_agreement, majority_vote_reward

__all__ = ["LABEL_COLUMNS", "final_answers", "group_majority_rewards", "majority_agreement",
           "majority_vote_reward", "strip_labels"]

# Columns that may carry a ground truth; label-free training never lets a reward function see them.
LABEL_COLUMNS = ("answer", "solution", "ground_truth", "label", "completion")


def group_majority_rewards(completions: Sequence[Any], num_generations: int) -> list[float]:
    """:func:`majority_agreement` with groups of ``num_generations`` consecutive completions (TRL's layout)."""
    if num_generations < 1 or len(completions) % num_generations:
        raise ValueError(f"{len(completions)} completions do not split into groups of {num_generations}")
    return majority_agreement(final_answers(completions), [i // num_generations for i in range(len(completions))])


def strip_labels(row: Mapping[str, Any], columns: Sequence[str] = LABEL_COLUMNS) -> dict[str, Any]:
    """A copy of a dataset row without its label columns."""
    return {k: v for k, v in row.items() if k not in columns}
