"""Zero-variance rescue: the splice by hand, and the trainer re-rolling groups without signal with fresh minds."""

from __future__ import annotations

import pytest
import torch

from manyminds.rl.rescue import splice_groups, zero_signal_groups
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

from .conftest import make_trainer


def test_zero_signal_groups_by_hand():
    adv = torch.tensor([0.0, 0.0, 0.5, -0.5, 0.0, 0.0])
    assert zero_signal_groups(adv, 2) == [0, 2]
    assert zero_signal_groups(torch.tensor([[0.0, 0.1], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), 2) == [1]
    with pytest.raises(ValueError, match="groups of 4"):
        zero_signal_groups(adv, 4)


def test_splice_repads_prompts_left_and_completions_right():
    batch = {"prompt_ids": torch.tensor([[9, 1], [9, 2], [3, 4], [5, 6]]),
             "prompt_mask": torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]]),
             "completion_ids": torch.tensor([[7, 9], [8, 9], [1, 2], [3, 4]]),
             "completion_mask": torch.tensor([[1, 0], [1, 0], [1, 1], [1, 1]]),
             "advantages": torch.tensor([0.0, 0.0, 1.0, -1.0]),
             "mind_ids": torch.tensor([0, 1, 2, 3]),
             "num_items_in_batch": torch.tensor(6)}
    new = {"prompt_ids": torch.tensor([[1, 1, 1], [2, 2, 2]]),
           "prompt_mask": torch.tensor([[1, 1, 1], [1, 1, 1]]),
           "completion_ids": torch.tensor([[5, 5, 5], [6, 9, 9]]),
           "completion_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
           "advantages": torch.tensor([0.7, -0.7]),
           "mind_ids": torch.tensor([4, 5]),
           "num_items_in_batch": torch.tensor(4)}
    out = splice_groups(batch, [0], new, [0], 2, pad_token_id=9)
    assert out["prompt_ids"].tolist() == [[1, 1, 1], [2, 2, 2], [9, 3, 4], [9, 5, 6]]
    assert out["prompt_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1], [0, 1, 1]]
    assert out["completion_ids"].tolist() == [[5, 5, 5], [6, 9, 9], [1, 2, 9], [3, 4, 9]]
    assert out["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert out["advantages"].tolist() == pytest.approx([0.7, -0.7, 1.0, -1.0])
    assert out["mind_ids"].tolist() == [4, 5, 2, 3]
    assert int(out["num_items_in_batch"]) == 8
    assert batch["mind_ids"].tolist() == [0, 1, 2, 3]  # the input is not modified
    with pytest.raises(ValueError, match="text-only"):
        splice_groups({**batch, "pixel_values": torch.zeros(4)}, [0], new, [0], 2, pad_token_id=9)


def _first_call_flat_reward():
    calls = []

    def reward(prompts, completions, **kwargs):
        calls.append(len(completions))
        if len(calls) == 1:
            return [0.0] * len(completions)  # the first generation: no group has signal
        return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in completions]

    return reward, calls


@pytest.mark.parametrize("budget, expected_minds, rescued", [(8, list(range(8, 16)), 1.0),
                                                              (4, list(range(8, 12)) + list(range(4, 8)), 0.5)])
def test_trainer_rerolls_groups_without_signal(make_model, char_tokenizer, arith_ds, tmp_path, monkeypatch,
                                               budget, expected_minds, rescued):
    reward, calls = _first_call_flat_reward()
    outputs = []
    original = PopulationGRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        outputs.append(out)
        return out

    monkeypatch.setattr(PopulationGRPOTrainer, "_generate_and_score_completions", spy)
    trainer = make_trainer(make_model(), char_tokenizer, arith_ds, tmp_path, reward=reward, max_steps=1,
                           per_device_train_batch_size=8, mind_rescue_budget=budget)
    trainer.train()
    out = outputs[0]
    assert calls == [8, budget]  # the first try, then one re-roll of the flat groups within the budget
    assert out["mind_ids"].tolist() == expected_minds  # re-rolled rows carry fresh minds, the rest keep theirs
    assert len(zero_signal_groups(out["advantages"], 4)) == (0 if budget == 8 else 1)
    logged = trainer.state.log_history[0]
    assert logged["minds/rescued_groups"] == pytest.approx(rescued)
    assert logged["minds/rescue_rollouts"] == budget
    assert logged["reward"] == 0.0  # TRL's logged reward is the first try's


def test_bad_rescue_settings(rl_helpers, tmp_path):
    grpo_kwargs = rl_helpers[0]
    with pytest.raises(ValueError, match="multiple of num_generations"):
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, mind_rescue_budget=3))
    with pytest.raises(ValueError, match="multiple of num_generations"):
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, mind_rescue_budget=-4))
    with pytest.raises(ValueError, match="scale_rewards"):
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, mind_rescue_budget=4, scale_rewards="batch"))
