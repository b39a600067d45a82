"""Evaluation rollouts (mean model unless ``mind_eval``), importance weights checked against a hand
computation, and importance correction refused where the loss has its own weights."""

from __future__ import annotations

import math

import pytest
import torch

from manyminds.population import Population
from manyminds.rl.functional import truncated_importance_ratio
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
from manyminds.training.grpo_config import LOSS_TYPES_WITH_OWN_IMPORTANCE_WEIGHTS

from .conftest import hand_completion_logps, make_trainer


@pytest.fixture(autouse=True)
def _helpers(rl_helpers):
    global grpo_kwargs, snapshot, varied_reward
    grpo_kwargs, snapshot, varied_reward = rl_helpers


_trainer = make_trainer


def _record(monkeypatch):
    """Every ``Population.minds`` context entered (ids, grad enabled) and every scored batch's mind ids."""
    minds, batches = [], []
    original_minds = Population.minds

    def spy_minds(self, ids):
        minds.append((torch.as_tensor(ids).tolist(), torch.is_grad_enabled()))
        return original_minds(self, ids)

    original_gen = PopulationGRPOTrainer._generate_and_score_completions

    def spy_gen(self, inputs):
        out = original_gen(self, inputs)
        batches.append(("train" if self.model.training else "eval", out["mind_ids"].tolist()))
        return out

    monkeypatch.setattr(Population, "minds", spy_minds)
    monkeypatch.setattr(PopulationGRPOTrainer, "_generate_and_score_completions", spy_gen)
    return minds, batches


# ---------------------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("mind_logprobs", ["mean", "mind"])
def test_eval_rollouts_come_from_the_mean_model_by_default(make_model, char_tokenizer, arith_ds, tmp_path,
                                                           monkeypatch, mind_logprobs):
    trainer = _trainer(make_model(), char_tokenizer, arith_ds, tmp_path, eval_dataset=arith_ds.select(range(2)),
                       per_device_eval_batch_size=4, mind_logprobs=mind_logprobs)
    minds, batches = _record(monkeypatch)
    metrics = trainer.evaluate()
    assert batches and all(mode == "eval" and ids == [-1] * 4 for mode, ids in batches)
    # neither generation nor any log-prob pass (old, loss) ran a mind: all of it is the trained model
    assert minds == []
    assert trainer._mind_calls == 0  # training's mind sequence is untouched
    assert "eval_reward" in metrics and "eval_minds/reward_by_mind/-1" not in metrics


def test_eval_rollouts_use_minds_when_asked(make_model, char_tokenizer, arith_ds, tmp_path, monkeypatch):
    trainer = _trainer(make_model(), char_tokenizer, arith_ds, tmp_path, eval_dataset=arith_ds.select(range(2)),
                       per_device_eval_batch_size=4, mind_logprobs="mind", mind_eval=True, mind_kl_metrics=False)
    minds, batches = _record(monkeypatch)
    trainer.evaluate()
    assert [ids for _, ids in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # fresh minds, eval's own counter
    # per batch: generation, then the eval loss's log-probs under exactly the same minds
    assert [ids for ids, _ in minds] == [[0, 1, 2, 3]] * 2 + [[4, 5, 6, 7]] * 2
    assert trainer._mind_calls == 0  # evaluation never shifts the minds of training


def test_training_rollouts_still_use_minds_with_eval(make_model, char_tokenizer, arith_ds, tmp_path, monkeypatch):
    minds, batches = _record(monkeypatch)
    _trainer(make_model(), char_tokenizer, arith_ds, tmp_path, eval_dataset=arith_ds.select(range(1)),
             per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=1, max_steps=1).train()
    assert batches == [("train", [0, 1, 2, 3]), ("eval", [-1] * 4)]
    assert [ids for ids, _ in minds] == [[0, 1, 2, 3]]  # only training's generation ran minds


# ---------------------------------------------------------------------------------------- config

def test_importance_correction_refused_where_the_loss_has_its_own(tmp_path):
    assert "vespo" in LOSS_TYPES_WITH_OWN_IMPORTANCE_WEIGHTS
    for loss_type in LOSS_TYPES_WITH_OWN_IMPORTANCE_WEIGHTS:
        with pytest.raises(ValueError, match="applies its own importance weights; set mind_importance_correction"):
            PopulationGRPOConfig(**grpo_kwargs(tmp_path, loss_type=loss_type, mind_importance_correction=2.0))
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, loss_type=loss_type))  # fine without the correction
    for loss_type in ("dapo", "grpo", "cispo"):
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, loss_type=loss_type, mind_importance_correction=2.0))


# ---------------------------------------------------------------------------------------- importance weights

def test_truncated_importance_ratio_by_hand_float64():
    target = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.25, -4.0, -1.0, -2.0]], dtype=torch.float64)
    behaviour = torch.tensor([[-1.5, -1.0, -0.5, -float("inf")], [-0.5, -3.0, -3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    w = truncated_importance_ratio(target, behaviour, mask, cap=1.5)
    expected = torch.tensor([[min(math.exp(0.5), 1.5), math.exp(-1.0), 1.0, 1.0],          # masked -inf -> 1
                             [math.exp(0.25), math.exp(-1.0), 1.5, math.exp(-2.0)]], dtype=torch.float64)
    assert w.dtype == torch.float64
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="shape mismatch"):
        truncated_importance_ratio(target, behaviour[:, :3], mask, cap=1.5)
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_ratio(target, behaviour, mask, cap=0.0)


def test_importance_weights_match_a_hand_computation(make_model, char_tokenizer, arith_ds, tmp_path, monkeypatch):
    cap, sigma = 1.1, 0.5
    seen = []
    original = PopulationGRPOTrainer._mind_corrections

    def spy(self, output):
        before = output["advantages"].clone()
        original(self, output)
        seen.append((before, output["advantages"].clone(),
                     {k: output[k].clone() for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                     "completion_mask", "mind_ids")}))

    monkeypatch.setattr(PopulationGRPOTrainer, "_mind_corrections", spy)
    # bf16=False: TRL's CPU default autocasts to bfloat16 (log-prob errors ~1e-3); float32 here
    trainer = _trainer(make_model(), char_tokenizer, arith_ds, tmp_path, max_steps=1, mind_sigma=sigma,
                       mind_importance_correction=cap, bf16=False)
    trainer.train()
    before, after, batch = seen[0]   # the first generation: the model is still the initial one
    assert before.dim() == 1 and (before.abs() > 1e-3).sum() >= 2

    # By hand, in float64 on a fresh copy of the initial model: one plain forward (the mean model)
    # and one under each row's mind; w = min(exp(lp_mean - lp_mind), cap) on completion tokens.
    lp_mean, lp_mind = hand_completion_logps(make_model(), sigma, trainer.args.mind_seed, batch,
                                             trainer.args.temperature)
    valid = batch["completion_mask"].bool()
    w = torch.where(valid, torch.exp(lp_mean - lp_mind).clamp(max=cap), torch.ones_like(lp_mean))
    inverted = torch.where(valid, torch.exp(lp_mind - lp_mean).clamp(max=cap), torch.ones_like(lp_mean))
    # the check can fail: truncation binds on some tokens, others are down-weighted, and the
    # inverted ratio gives a clearly different update
    assert (w[valid] == cap).any() and (w[valid] < 0.95).any()
    expected = before.double().unsqueeze(1) * w                                       # [B, C]
    wrong = before.double().unsqueeze(1) * inverted
    assert (wrong - expected).abs().max() > 1e-2
    torch.testing.assert_close(after.double(), expected, rtol=1e-5, atol=1e-5)
