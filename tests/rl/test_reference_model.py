"""GRPO with a KL penalty (``beta > 0``): the reference model's pass. At sigma 0 population GRPO equals
TRL's GRPO; at sigma > 0 the reference log-probs follow the ``mind_logprobs`` rule (under each rollout's
mind with ``"mind"``, the mean reference model with ``"mean"``), checked against a float64 hand computation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

from .conftest import hand_completion_logps, make_trainer


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # TRL loads its reference from the path


def test_beta_at_sigma_zero_equals_trl(random_model_path, char_tokenizer, arith_ds, tmp_path, rl_helpers):
    grpo_kwargs, _, varied_reward = rl_helpers
    kw = grpo_kwargs(tmp_path, beta=0.5, max_steps=2)
    for key in ("mind_sigma", "mind_kl_metrics"):
        kw.pop(key)
    plain = GRPOTrainer(_load(random_model_path), reward_funcs=varied_reward, args=GRPOConfig(**kw), train_dataset=arith_ds,
                        processing_class=char_tokenizer)
    plain.train()
    assert plain.ref_model is not None  # the reference path runs
    pop = PopulationGRPOTrainer(_load(random_model_path), reward_funcs=varied_reward, train_dataset=arith_ds,
                                args=PopulationGRPOConfig(**kw, mind_sigma=0.0, mind_kl_metrics=False),
                                processing_class=char_tokenizer)
    pop.train()
    kl = [h["kl"] for h in plain.state.log_history if "kl" in h]
    assert kl and kl == [h["kl"] for h in pop.state.log_history if "kl" in h]
    assert any(v > 0 for v in kl[1:])  # the penalty is live after the first update
    for p, q in zip(plain.model.parameters(), pop.model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mind_logprobs", ["mean", "mind"])
def test_reference_logps_follow_the_mind_rule(random_model_path, char_tokenizer, arith_ds, tmp_path, monkeypatch,
                                              mind_logprobs):
    sigma = 0.5
    seen = []
    original = PopulationGRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        seen.append({k: v.clone() for k, v in out.items() if isinstance(v, torch.Tensor)})
        return out

    monkeypatch.setattr(PopulationGRPOTrainer, "_generate_and_score_completions", spy)
    trainer = make_trainer(_load(random_model_path), char_tokenizer, arith_ds, tmp_path, max_steps=1, mind_sigma=sigma,
                           beta=0.5, mind_logprobs=mind_logprobs)
    trainer.train()
    batch = seen[0]
    lp_mean, lp_mind = hand_completion_logps(_load(random_model_path), sigma, trainer.args.mind_seed, batch,
                                             trainer.args.temperature)  # TRL's reference: the initial model
    mask = batch["completion_mask"].bool()
    assert (lp_mean - lp_mind)[mask].abs().max() > 1e-2  # the two rules give different references
    expected = lp_mind if mind_logprobs == "mind" else lp_mean
    torch.testing.assert_close(batch["ref_per_token_logps"].double()[mask], expected[mask], rtol=1e-4, atol=1e-4)
