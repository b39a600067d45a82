"""The rollouts' KL(mind || mean) metrics against a float64 hand computation, and adaptive sigma
(``mind_kl_target``) against the controller's formula, on the transformers engine."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from manyminds.rl.functional import adapted_sigma, mind_kl, mind_log_weights
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

from .conftest import hand_completion_logps, make_trainer


def test_kl_functions_by_hand():
    mean = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, 0.0]], dtype=torch.float64)
    mind = torch.tensor([[-0.5, -1.0, -9.0], [-0.4, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # tokens: (0.5, 1.0) and (-0.2, 2.0, -1.0): sum 2.3 over 5 tokens
    assert mind_kl(mind, mean, mask) == pytest.approx(2.3 / 5, abs=1e-15)
    torch.testing.assert_close(mind_log_weights(mean, mind, mask), torch.tensor([-1.5, -0.8], dtype=torch.float64))
    assert math.isnan(mind_kl(mind, mean, torch.zeros_like(mask)))
    # KL ~ sigma^2: rate 1 jumps to sigma * sqrt(target / kl); 0.5 goes half way in log space
    assert adapted_sigma(0.02, 0.4, 0.1, rate=1.0) == pytest.approx(0.01)
    assert adapted_sigma(0.02, 0.4, 0.1, rate=0.5) == pytest.approx(0.02 * 0.5 ** 0.5)
    assert adapted_sigma(0.02, 0.0, 0.1) == 0.02 and adapted_sigma(0.02, float("nan"), 0.1) == 0.02
    assert adapted_sigma(1.0, 1e-12, 1.0, rate=1.0, bounds=(1e-6, 10.0)) == 10.0


def test_logged_kl_matches_a_hand_computation(make_model, char_tokenizer, arith_ds, tmp_path, monkeypatch):
    sigma = 0.5
    seen = []
    original = PopulationGRPOTrainer._mind_corrections

    def spy(self, output):
        seen.append({k: output[k].clone() for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                    "completion_mask", "mind_ids")})
        original(self, output)

    monkeypatch.setattr(PopulationGRPOTrainer, "_mind_corrections", spy)
    trainer = make_trainer(make_model(), char_tokenizer, arith_ds, tmp_path, max_steps=1, mind_sigma=sigma,
                           mind_kl_metrics=True)
    trainer.train()
    logged = trainer.state.log_history[0]
    lp_mean, lp_mind = hand_completion_logps(make_model(), sigma, trainer.args.mind_seed, seen[0],
                                             trainer.args.temperature)
    mask = seen[0]["completion_mask"]
    kl = mind_kl(lp_mind, lp_mean, mask)
    assert abs(kl) > 1e-3  # the minds are measurably away from the mean model: the check can fail
    assert logged["minds/kl_mind_mean"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    below = (mind_log_weights(lp_mean, lp_mind, mask) < math.log(0.1)).double().mean().item()
    assert logged["minds/frac_weight_below_0.1"] == pytest.approx(below)
    assert logged["minds/sigma"] == pytest.approx(sigma)


def test_adaptive_sigma_follows_the_controller(make_model, char_tokenizer, arith_ds, tmp_path):
    target, rate, sigma0 = 0.05, 0.5, 0.5
    trainer = make_trainer(make_model(), char_tokenizer, arith_ds, tmp_path, max_steps=3, mind_sigma=sigma0,
                           mind_kl_metrics=True, mind_kl_target=target, mind_kl_rate=rate)
    trainer.train()
    steps = [h for h in trainer.state.log_history if "minds/sigma" in h]
    assert len(steps) == 3 and steps[0]["minds/sigma"] == pytest.approx(sigma0)
    for before, after in itertools.pairwise(steps):  # each generation's sigma from the previous one's KL
        expected = adapted_sigma(before["minds/sigma"], before["minds/kl_mind_mean"], target, rate)
        assert after["minds/sigma"] == pytest.approx(expected, rel=1e-6)
    assert steps[1]["minds/sigma"] != pytest.approx(sigma0)  # it moved
    # the trained population's specs carry the adapted sigma (what vLLM requests are built from)
    assert trainer.population.spec(0).sigma == pytest.approx((trainer.population.base_sigma,))


@pytest.mark.parametrize("bad, match", [({"mind_kl_target": 0.0}, "mind_kl_target"),
                                        ({"mind_kl_target": 11.0}, "mind_kl_target"),
                                        ({"mind_kl_target": 0.1, "mind_sigma": 0.0}, "start > 0"),
                                        ({"mind_kl_target": 0.1, "mind_kl_metrics": False}, "mind_kl_metrics"),
                                        ({"mind_kl_rate": 0.0}, "mind_kl_rate"),
                                        ({"mind_kl_rate": 1.5}, "mind_kl_rate")])
def test_bad_adaptive_sigma_settings(rl_helpers, tmp_path, bad, match):
    grpo_kwargs = rl_helpers[0]
    with pytest.raises(ValueError, match=match):
        PopulationGRPOConfig(**grpo_kwargs(tmp_path, **bad))
