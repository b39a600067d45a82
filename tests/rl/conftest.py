"""Fixtures of the population-RL tests: a tiny char-level Qwen2 model and a small arith dataset."""

from __future__ import annotations

import pytest
import torch

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model
from manyminds.tasks import load_task


def varied_reward(prompts, completions, **kwargs):
    """A reward that differs between almost any two random completions: a hash of the text in [0, 1]."""
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in texts]


@pytest.fixture
def char_tokenizer():
    return build_tokenizer()


@pytest.fixture
def make_model(char_tokenizer):
    """Factory of identical tiny random Qwen2 models with the char tokenizer's special ids."""
    tok = char_tokenizer

    def make(seed: int = 0):
        return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=seed, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return make


@pytest.fixture
def arith_ds():
    return load_task("arith", split="train", n=8, seed=0)


def _grpo_kwargs(tmp_path, **over):
    """Tiny, fast GRPO settings: 2 optimizer steps of 4 rollouts, 8 completion tokens."""
    kw = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "num_generations": 4,
              "max_completion_length": 8, "max_steps": 2, "learning_rate": 0.1, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "use_cpu": True, "seed": 0, "mind_sigma": 0.5,
              "bf16": False,  # explicit: TRL's GRPOConfig defaults to bf16, ours to fp32 on CPU
              "mind_kl_metrics": False}  # its extra log-prob passes would show in the tests that spy on minds
    kw.update(over)
    return kw


def make_trainer(model, tok, ds, tmp_path, reward=None, eval_dataset=None, **over):
    """A PopulationGRPOTrainer with :func:`_grpo_kwargs` settings (``over`` overrides them)."""
    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    args = PopulationGRPOConfig(**_grpo_kwargs(tmp_path, **over))
    return PopulationGRPOTrainer(model, reward_funcs=reward or varied_reward, args=args, train_dataset=ds,
                                 eval_dataset=eval_dataset, processing_class=tok)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def rl_helpers():
    """(grpo_kwargs, snapshot, varied_reward) helpers for the tests of this folder."""
    return _grpo_kwargs, _snapshot, varied_reward


@pytest.fixture
def random_model_path(make_model, char_tokenizer, tmp_path):
    """A tiny random Qwen2 + char tokenizer saved as an ordinary save_pretrained folder (fast CLI tests)."""
    path = tmp_path / "random_tiny"
    make_model().save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path


def hand_completion_logps(model, sigma: float, seed: int, batch: dict, temperature: float):
    """Float64 reference: log-probs ``[B, C]`` of a GRPO batch's completion tokens under ``model`` (the
    mean model) and under each row's mind (``batch["mind_ids"]``), one plain forward each, no cache."""
    from manyminds.population import Population

    ref = model.double().eval()
    population = Population(ref, sigma=sigma, seed=seed)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)           # [B, P+C]
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    C = batch["completion_ids"].size(1)

    def completion_logps():
        logits = ref(input_ids=ids, attention_mask=attention).logits[:, -C - 1:-1] / temperature   # [B, C, V]
        return logits.log_softmax(-1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():
        lp_mean = completion_logps()
        with population.minds(batch["mind_ids"]):
            lp_mind = completion_logps()
    return lp_mean, lp_mind
