"""Mind assignment, label-free majority rewards and the importance ratio: pure functions."""

from __future__ import annotations

import math

import pytest
import torch

from manyminds.rl import assign_minds, majority_agreement, majority_vote_reward
from manyminds.rl.functional import (
    group_unique_answers,
    reward_by_mind,
    truncated_importance_ratio,
    zero_variance_fraction,
)
from manyminds.rl.label_free import group_majority_rewards, strip_labels


def test_fresh_minds_never_repeat_across_calls_and_processes():
    seen = []
    for call in range(5):
        for p in range(3):
            seen += assign_minds("fresh", call, rows=4, process_index=p, num_processes=3).tolist()
    assert len(seen) == len(set(seen)) == 60 and min(seen) == 0


@pytest.mark.parametrize("num_processes", [1, 2])
def test_pool_gives_each_rollout_of_a_group_its_own_mind(num_processes):
    G, M, n = 4, 6, 4
    for call in range(4):
        rows = torch.cat([assign_minds("pool", call, n, p, num_processes, pool_size=M)
                          for p in range(num_processes)])  # global order, as TRL gathers
        assert rows.max() < M and rows.min() >= 0
        for group in rows.view(-1, G):
            assert len(set(group.tolist())) == G


def test_assignment_bad_input():
    with pytest.raises(ValueError, match="pool_size"):
        assign_minds("pool", 0, 4)
    with pytest.raises(ValueError, match="unknown mind assignment"):
        assign_minds("random", 0, 4)
    with pytest.raises(ValueError):
        assign_minds("fresh", 0, 4, process_index=2, num_processes=2)


def test_majority_agreement():
    answers = ["3", "3", "4", None, "7", "8", "8", "8"]
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    assert majority_agreement(answers, groups) == [1, 1, 0, 0, 0, 1, 1, 1]
    assert majority_agreement([None, None], [0, 0]) == [0.0, 0.0]  # nobody answered: no pseudo-label


def test_majority_vote_reward_groups_by_prompt_and_never_reads_answers():
    prompts = ["a", "a", "a", "b", "b"]
    completions = ["#### 1", "#### 1", "#### 2", "#### 5", [{"role": "assistant", "content": "#### 5"}]]
    r1 = majority_vote_reward(prompts, completions, answer=["9"] * 5)
    r2 = majority_vote_reward(prompts, completions)
    assert r1 == r2 == [1.0, 1.0, 0.0, 1.0, 1.0]
    # groups of 2 consecutive rows; a tie goes to the answer seen first (metrics.majority_vote)
    assert group_majority_rewards(["#### 1", "#### 2", "#### 2", "#### 2"], 2) == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        group_majority_rewards(["#### 1"] * 3, 2)
    assert strip_labels({"prompt": "p", "answer": "1", "completion": "c", "x": 2}) == {"prompt": "p", "x": 2}


def test_truncated_importance_ratio():
    target = torch.tensor([[0.0, -1.0, -2.0]])
    behaviour = torch.tensor([[-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    w = truncated_importance_ratio(target, behaviour, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.0, 1.0]]))  # e^1 truncated at 2, masked -> 1
    w = truncated_importance_ratio(target, behaviour, torch.ones(1, 3), cap=10.0)
    torch.testing.assert_close(w, torch.tensor([[math.e, 1.0, math.exp(-2.0)]]))
    with pytest.raises(ValueError, match="shape"):
        truncated_importance_ratio(target, behaviour[:, :2], mask, 2.0)


def test_group_statistics():
    assert group_unique_answers(["1", "1", "2", None, None, None], 3) == [2, 0]
    assert zero_variance_fraction(torch.tensor([1.0, 1.0, 0.0, 1.0]), 2) == 0.5
    assert reward_by_mind(torch.tensor([1.0, 0.0, 1.0, float("nan")]), torch.tensor([0, 1, 0, 1])) == {0: 1.0,
                                                                                                     1: 0.0}
