"""Label-free RL (TTRL-style): reward agreement with the group's majority answer.

For a group of ``G`` rollouts of one prompt with final answers ``a_1..a_G`` (``None`` when no
``#### <answer>`` line was produced), the pseudo-label is ``m = majority_vote(a_1..a_G)`` and

    r_i = 1  if a_i is not None and a_i == m   else 0.

No ground truth is read anywhere: :func:`strip_labels` removes label columns from the rows
before any reward function sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from manyminds.metrics import majority_vote
from manyminds.rewards import completion_text
from manyminds.tasks import extract_answer

# Columns that may carry a ground truth; label-free training never lets a reward function see them.
LABEL_COLUMNS = ("answer", "solution", "ground_truth", "label", "completion")


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


def group_majority_rewards(completions: Sequence[Any], num_generations: int) -> list[float]:
    """:func:`majority_agreement` with groups of ``num_generations`` consecutive completions (TRL's layout)."""
    if num_generations < 1 or len(completions) % num_generations:
        raise ValueError(f"{len(completions)} completions do not split into groups of {num_generations}")
    return majority_agreement(final_answers(completions), [i // num_generations for i in range(len(completions))])


def majority_vote_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs) -> list[float]:
    """TRL reward function: 1.0 when a completion agrees with the majority answer of its prompt's group.

    Groups are the completions that share a prompt. Standalone (e.g. in a plain ``trl.GRPOTrainer``)
    this is exact when a whole group is on one process; ``PopulationGRPOTrainer(label_free=True)``
    recomputes it over the groups gathered from all processes. Never reads the ``answer`` column.
    """
    keys = [completion_text(p) if not isinstance(p, str) else p for p in prompts]
    return majority_agreement(final_answers(completions), keys)


majority_vote_reward.requires_answer = False


def strip_labels(row: Mapping[str, Any], columns: Sequence[str] = LABEL_COLUMNS) -> dict[str, Any]:
    """A copy of a dataset row without its label columns."""
    return {k: v for k, v in row.items() if k not in columns}
