"""Population GRPO with vLLM rollouts (TRL colocate mode, in-process on the CPU)."""

import gc
import os

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from datasets import Dataset
from transformers import AutoModelForCausalLM

from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
from manyminds.training.grpo_vllm import MindRolloutLLM
from manyminds.vllm import EXTRA_ARGS_KEY


def varied_reward(prompts, completions, **kwargs):
    """Differs between almost any two random completions: a hash of the text in [0, 1]."""
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in completions]


def grpo_args(tmp_path, **over):
    kw = {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "num_generations": 4,
              "max_completion_length": 8, "max_steps": 2, "learning_rate": 0.1, "logging_steps": 1, "report_to": "none",
              "save_strategy": "no", "use_cpu": True, "seed": 0, "mind_sigma": 0.5, "bf16": False, "use_vllm": True,
              "vllm_mode": "colocate", "vllm_max_model_length": 128, "vllm_enable_sleep_mode": False}
    kw.update(over)
    return PopulationGRPOConfig(**kw)


def test_grpo_on_vllm_rollouts_changes_parameters_and_runs_minds(tiny_llama, tmp_path, monkeypatch):
    directory, _, tokenizer = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ds = Dataset.from_dict({"prompt": ["hello world", "once upon a time", "the quick brown", "numbers one"]})
    sent = []
    original = MindRolloutLLM.generate

    def record(self, prompts, sampling_params=None, **kwargs):
        sent.append([-1 if spec is None else spec.mind for spec in self._specs])
        return original(self, prompts, sampling_params, **kwargs)

    monkeypatch.setattr(MindRolloutLLM, "generate", record)
    trainer = PopulationGRPOTrainer(model, reward_funcs=varied_reward, args=grpo_args(tmp_path), train_dataset=ds,
                                    processing_class=tokenizer)
    try:
        llm = trainer.vllm_generation.llm
        assert isinstance(llm, MindRolloutLLM)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
        assert not unchanged, f"parameters did not change: {unchanged}"
        assert sent == [[0, 1, 2, 3], [4, 5, 6, 7]]  # fresh minds, one per rollout row, as with HF rollouts
        stats = llm.collective_rpc("manyminds_stats")[0]
        rows = llm.collective_rpc("manyminds_layout")[0]["rows"]  # TRL's max_num_seqs + 1
        assert stats["mind_steps"] > 0 and stats["cached_minds"] == min(8, rows - 1)
        logged = {k for entry in trainer.state.log_history for k in entry}
        assert "minds/unique_answers_per_group" in logged and "reward" in logged  # TRL's metrics kept
    finally:
        del trainer
        gc.collect()


def test_mind_requests_carry_the_rollout_minds(tiny_llama, tmp_path):
    """The rows TRL sends are turned into one request per rollout carrying its mind and a salted prompt."""
    from vllm import SamplingParams

    class FakeLLM:
        def generate(self, rows, params, **kwargs):
            self.rows, self.params = rows, params
            return []

        def collective_rpc(self, name):
            return [{"model": "LlamaForCausalLM", "hidden_size": 128,
                     "selections": {"all": {"num_layers": 5, "keys": [0, 1, 2, 3, 4]}}}]

    from manyminds.population import Population

    _, model, _ = tiny_llama
    population = Population(model, sigma=0.1, seed=3)
    fake = FakeLLM()
    llm = MindRolloutLLM(fake)
    rows, params = [{"prompt_token_ids": [1, 2]}] * 3, SamplingParams(max_tokens=4)
    with pytest.raises(RuntimeError, match="inside MindRolloutLLM.minds"):
        llm.generate(rows, params)  # outside a rollout call: no silent mean-model rollouts
    with llm.minds([population.spec(5), None, population.spec(9)]):
        with pytest.raises(RuntimeError, match="do not nest"), llm.minds([None] * 3):
            pass
        llm.generate(rows, params)
    minds = [None if p.extra_args is None else p.extra_args[EXTRA_ARGS_KEY]["mind"] for p in fake.params]
    assert minds == [5, None, 9]
    assert [("cache_salt" in r) for r in fake.rows] == [True, False, True]
    assert fake.params[0].extra_args[EXTRA_ARGS_KEY]["seed"] == 3


def test_bad_vllm_settings(tmp_path):
    with pytest.raises(ValueError, match="'colocate' or 'server'"):
        grpo_args(tmp_path, vllm_mode="remote")
    grpo_args(tmp_path, mind_importance_correction=2.0)  # TRL's engine correction no longer doubles it


def test_sigma_zero_rows_are_plain_requests():
    """mind_sigma=0 reproduces plain GRPO: no mind in the request and the plain model's prefix cache."""
    from vllm import SamplingParams

    from manyminds.population import MindSpec
    from manyminds.vllm import mind_requests

    specs = [MindSpec(seed=0, mind=3, sigma=0.0), MindSpec(seed=0, mind=3, sigma=0.1), None]
    rows, params = mind_requests(["a", "a", "a"], specs, SamplingParams(max_tokens=2))
    assert [p.extra_args is None for p in params] == [True, False, True]
    assert ["cache_salt" in r for r in rows] == [False, True, False]
