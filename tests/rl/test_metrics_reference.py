"""Population GRPO's logged metrics recomputed from the completions, rewards and mind ids the trainer
actually produced (spied), with an independent answer reader: a metric computed from the wrong mind
ids, the wrong rows or the wrong statistic (e.g. max for mean) fails here."""

from __future__ import annotations

import re
import statistics

import pytest

import manyminds
from manyminds.tasks import load_task
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

ANSWER = re.compile(r"####\s*(-?\d+)")


def _answer(text: str) -> str | None:
    found = ANSWER.findall(text)
    return found[-1] if found else None


def test_population_metrics_match_the_rollouts(tmp_path, monkeypatch):
    model, tok = manyminds.load("tiny-arith")
    ds = load_task("arith", split="train", n=16, seed=3)
    seen = []

    def reward(prompts, completions, answer, **kwargs):  # 1 for a correct final answer
        values = [1.0 if _answer(c) == str(a) else 0.0 for c, a in zip(completions, answer)]
        seen.append((list(completions), values))
        return values

    batches = []
    original = PopulationGRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        batches.append(out["mind_ids"].tolist())
        return out

    monkeypatch.setattr(PopulationGRPOTrainer, "_generate_and_score_completions", spy)
    args = PopulationGRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4,
                                max_completion_length=40, max_steps=2, learning_rate=1e-5, logging_steps=1,
                                report_to="none", save_strategy="no", use_cpu=True, seed=0, bf16=False,
                                mind_sigma=0.1, mind_assignment="pool", mind_pool_size=6, mind_kl_metrics=False)
    trainer = PopulationGRPOTrainer(model, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "minds/answer_rate" in h]
    assert len(logs) == len(seen) == len(batches) == 2
    informative = 0
    for log, (texts, rewards), ids in zip(logs, seen, batches):
        answers = [_answer(t) for t in texts]
        groups = [range(i, i + 4) for i in range(0, len(texts), 4)]
        unique = [len({answers[i] for i in g if answers[i] is not None}) for g in groups]
        assert log["minds/unique_answers_per_group"] == pytest.approx(sum(unique) / len(unique))
        assert log["minds/answer_rate"] == pytest.approx(sum(a is not None for a in answers) / len(answers))
        flat = [len({rewards[i] for i in g}) == 1 for g in groups]
        assert log["minds/frac_groups_zero_reward_var"] == pytest.approx(sum(flat) / len(flat))
        by_mind = {m: statistics.mean(r for r, k in zip(rewards, ids) if k == m) for m in set(ids)}
        for m, value in by_mind.items():
            assert log[f"minds/reward_by_mind/{m}"] == pytest.approx(value)
        assert log["minds/reward_spread_across_minds"] == pytest.approx(statistics.stdev(by_mind.values()))
        informative += len(set(by_mind.values())) > 1 and 0 < sum(flat) < len(flat)
    # the check can fail: minds differ in reward and some (not all) groups are flat
    assert informative >= 1
    assert batches[0] == [i % 6 for i in range(16)] and batches[1] == [(16 + i) % 6 for i in range(16)]
