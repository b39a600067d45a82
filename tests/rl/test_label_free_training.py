"""Label-free population RL never reads labels: corrupting or removing them changes nothing."""

from __future__ import annotations

import pytest
import torch

from manyminds import rewards
from manyminds.rewards import answer_reward
from manyminds.rl import label_free, majority_vote_reward
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer


@pytest.fixture(autouse=True)
def _first_char_answers(monkeypatch):
    # A random model never writes "####"; take a completion's first character as its "final answer"
    # so that groups disagree and the majority reward has a signal.
    monkeypatch.setattr(rewards, "extract_answer", lambda text: text[:1] or None)


def _spy_reward(prompts, completions, **kwargs):
    leaked = set(kwargs) & set(label_free.LABEL_COLUMNS)
    assert not leaked, f"label columns reached a reward function: {leaked}"
    return [0.0] * len(completions)


def _run(make_model, tok, ds, tmp_path, rl_helpers):
    grpo_kwargs, snapshot, _ = rl_helpers
    args = PopulationGRPOConfig(**grpo_kwargs(tmp_path, label_free=True, max_steps=2))
    trainer = PopulationGRPOTrainer(make_model(), reward_funcs=[_spy_reward], args=args, train_dataset=ds,
                                    processing_class=tok)
    before = snapshot(trainer.model)
    trainer.train()
    logs = [{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k and k != "step_time"}
            for h in trainer.state.log_history]
    return before, snapshot(trainer.model), logs, trainer


def test_label_free_ignores_corrupted_or_missing_answers(make_model, char_tokenizer, arith_ds, tmp_path,
                                                         rl_helpers):
    before, clean, clean_logs, trainer = _run(make_model, char_tokenizer, arith_ds, tmp_path / "clean", rl_helpers)
    assert trainer.reward_funcs[0] is majority_vote_reward
    assert any(not torch.equal(before[n], clean[n]) for n in clean)  # the majority reward did train the model
    assert any(h.get("rewards/majority_vote_reward/mean", 0) > 0 for h in clean_logs)
    corrupted = arith_ds.map(lambda r: {"answer": "999999", "completion": "#### 999999"})
    _, bad, bad_logs, _ = _run(make_model, char_tokenizer, corrupted, tmp_path / "bad", rl_helpers)
    _, gone, gone_logs, _ = _run(make_model, char_tokenizer, arith_ds.remove_columns(["answer", "completion"]),
                                 tmp_path / "gone", rl_helpers)
    for n in clean:
        assert torch.equal(clean[n], bad[n]) and torch.equal(clean[n], gone[n]), n
    assert clean_logs == bad_logs == gone_logs


def test_label_free_refuses_label_rewards(make_model, char_tokenizer, arith_ds, tmp_path, rl_helpers):
    grpo_kwargs, _, _ = rl_helpers
    args = PopulationGRPOConfig(**grpo_kwargs(tmp_path, label_free=True))
    with pytest.raises(ValueError, match="never reads labels"):
        PopulationGRPOTrainer(make_model(), reward_funcs=answer_reward, args=args, train_dataset=arith_ds,
                              processing_class=char_tokenizer)
