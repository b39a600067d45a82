"""Population GRPO computes the same update on vLLM rollouts as on transformers (issue: one algorithm
on every engine).

The same rollouts (sampled by vLLM under each row's mind, 64 tokens, per-token KL(mind || mean)
about 0.1 nats) are scored by a vLLM trainer and by a transformers trainer that is handed those
rollouts. Per-rollout weights (advantages and TRL's engine correction), loss and gradients must agree
up to engine numerics, for every setting of ``mind_logprobs`` and the corrections. Without the fix,
TRL's default ``sequence_mask`` correction compared the mean model's log-probs with the mind's
(``exp(sum_t log p_mean - log p_mind)``, about ``e^-6`` here) and zeroed most rollouts: the test first
shows that ratio is far from 1 on these rollouts.
"""

import functools
import gc
import math
import os

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

from manyminds.rl.functional import mind_log_weights
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

from .conftest import build_tiny_llama

SIGMA = 0.15  # per-token KL(mind || mean) ~0.1 nats on the sharpened tiny Llama
LENGTH = 64
PROMPTS = ["the quick brown fox", "numbers one two three"]


def varied_reward(prompts, completions, **kwargs):
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in completions]


@pytest.fixture(scope="module")
def sharp_llama(tmp_path_factory):
    """The tiny Llama with its output layer scaled by 4 (peaked next-token distributions, entropy ~5.3
    nats instead of 5.7), so that sigma 0.15 gives a per-token KL of ~0.1 nats as on a real LM at its sigma."""
    directory = tmp_path_factory.mktemp("sharp_llama")
    model, tokenizer = build_tiny_llama(directory)
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(directory)
    return str(directory), tokenizer


def _args(tmp_path, use_vllm, **over):
    kw = {"output_dir": str(tmp_path), "per_device_train_batch_size": 8, "num_generations": 4,
          "max_completion_length": LENGTH, "max_steps": 1, "learning_rate": 1e-3, "report_to": "none",
          "save_strategy": "no", "use_cpu": True, "seed": 0, "mind_sigma": SIGMA, "bf16": False,
          "use_vllm": use_vllm, "mind_kl_metrics": True}
    if use_vllm:
        kw.update(vllm_mode="colocate", vllm_max_model_length=128, vllm_enable_sleep_mode=False,
                  generation_kwargs={"ignore_eos": True})  # 64 tokens, unprocessed log-probs
    kw.update(over)
    return PopulationGRPOConfig(**kw)


def _rows():
    return [{"prompt": p} for p in PROMPTS for _ in range(4)]  # TRL's sampler: each prompt num_generations times


def _score(trainer, rows):
    """The batch dict of one generation, its loss and the gradients of that loss (the trainer's model)."""
    trainer.model.train()
    output = trainer._generate_and_score_completions(rows)
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which this test does not run
    loss = trainer._compute_loss(trainer.model, output)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return output, loss.detach(), grads


@pytest.mark.parametrize("mind_logprobs, correction, mode, beta", [
    ("mean", None, "sequence_mask", 0.0),   # TRL's defaults and the paper's update
    ("mean", 2.0, "sequence_mask", 0.0),    # the population correction, token-level and truncated
    ("mind", None, "sequence_mask", 0.0),   # on-policy
    ("mean", None, "token_truncate", 0.0),
    ("mean", None, "sequence_mask", 0.5),   # KL penalty: the reference pass keeps the mean model
])
def test_vllm_update_equals_transformers_update(sharp_llama, tmp_path, monkeypatch, mind_logprobs, correction,
                                                mode, beta):
    from trl.generation import vllm_generation

    directory, tokenizer = sharp_llama
    # vLLM's dtype "auto" runs a float32 checkpoint in 16 bits (per-token log-prob errors ~5e-3, a sequence
    # ratio of 0.7-1.0 at 64 tokens even without minds); float32 here, so only the algorithm can differ.
    monkeypatch.setattr(vllm_generation, "LLM", functools.partial(vllm_generation.LLM, dtype="float32"))
    ds = Dataset.from_dict({"prompt": PROMPTS})
    over = {"mind_logprobs": mind_logprobs, "mind_importance_correction": correction,
            "vllm_importance_sampling_mode": mode, "beta": beta}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    vt = PopulationGRPOTrainer(model, reward_funcs=varied_reward, args=_args(tmp_path / "v", True, **over),
                               train_dataset=ds, processing_class=tokenizer)
    try:
        vt._last_loaded_step = vt.state.global_step  # the engine loaded these very weights from the folder
        v_out, v_loss, v_grads = _score(vt, _rows())
        v_metrics = {k: v[-1] for k, v in vt._metrics["train"].items() if v}
    finally:
        del vt
        gc.collect()
    mask = v_out["completion_mask"].bool()
    assert mask.sum(1).min() >= LENGTH  # realistic lengths: every rollout has 64 tokens

    # Without the fix: TRL's sequence ratio would compare the mean model with the minds. Far from 1 here.
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ht = PopulationGRPOTrainer(model, reward_funcs=varied_reward, args=_args(tmp_path / "h", False, **over),
                               train_dataset=ds, processing_class=tokenizer)
    lp_mean = ht._completion_logps(v_out, None)
    old_log_w = mind_log_weights(lp_mean, v_out["sampling_per_token_logps"], v_out["completion_mask"])
    assert old_log_w.median() < math.log(0.1), old_log_w  # the old correction would zero or crush these rollouts
    assert 0.03 < v_metrics["minds/kl_mind_mean"] < 0.4  # the sigma regime of real LMs (0.05-0.2 nats)
    assert v_metrics["minds/frac_weight_below_0.1"] > 0.5

    # The transformers trainer handed the same rollouts (same minds: both counters start at 0).
    completions = [row[m].tolist() for row, m in zip(v_out["completion_ids"], mask)]
    original = GRPOTrainer._generate_single_turn

    def replay(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        assert len(prompt_ids) == len(completions)
        return [list(c) for c in completions], None

    GRPOTrainer._generate_single_turn = replay
    try:
        h_out, h_loss, h_grads = _score(ht, _rows())
    finally:
        GRPOTrainer._generate_single_turn = original
        del ht
        gc.collect()
    assert torch.equal(h_out["completion_ids"], v_out["completion_ids"])
    assert torch.equal(h_out["mind_ids"], v_out["mind_ids"])

    # Per-rollout weights: TRL's engine correction is numerics only (never masks a rollout) ...
    ratio = v_out["importance_sampling_ratio"]
    assert (ratio > 0).all() and (ratio - 1).abs().max() < 0.01, ratio
    assert v_metrics["minds/frac_masked"] == 0.0
    # ... with mind_logprobs="mean" the update's old log-probs are the transformers path's (dropped when
    # not needed; with "mind" vLLM keeps TRL's, which equal the current ones before the first update) ...
    if mind_logprobs == "mean":
        assert ("old_per_token_logps" in v_out) == ("old_per_token_logps" in h_out)
    # ... and the advantages, with the population correction folded in, are the same.
    torch.testing.assert_close(v_out["advantages"], h_out["advantages"], rtol=1e-4, atol=1e-5)
    if beta:
        torch.testing.assert_close(v_out["ref_per_token_logps"], h_out["ref_per_token_logps"], rtol=1e-4, atol=1e-4)
    if correction is not None:
        assert v_out["advantages"].dim() == 2 and (v_out["advantages"] != 0).any()
    # Loss and gradients: equal up to the engine ratio (within 1% of 1 per rollout).
    torch.testing.assert_close(v_loss, h_loss, rtol=0.01, atol=1e-5)
    for name, g in h_grads.items():
        torch.testing.assert_close(v_grads[name], g, rtol=0.02, atol=1e-6 + 0.01 * g.abs().max().item())
