"""Conversational prompts through the population (generate, vote, best_of, select_minds) and
population GRPO: the template is applied once, exactly as the evaluation path and TRL do."""

from __future__ import annotations

import pytest
import torch

from manyminds.evaluation import generate_completions
from manyminds.population import Population
from manyminds.rewards import answer_reward, completion_text
from manyminds.rows import pad_left, tokenize_prompts
from manyminds.tasks import load_task

CONVS = [[{"role": "user", "content": "Q: 1+2\nA:"}], [{"role": "user", "content": "Q: 3+4\nA:"}]]


def record_generate(model, monkeypatch):
    """Record the ``input_ids`` of every ``model.generate`` call."""
    seen, original = [], model.generate

    def generate(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return seen


def test_generate_applies_the_chat_template_once(chat_model, chat_tokenizer, monkeypatch):
    tok = chat_tokenizer
    pop = Population(chat_model, sigma=0.5, seed=0, tokenizer=tok)
    seen = record_generate(chat_model, monkeypatch)
    out = pop.generate(CONVS, minds=2, max_new_tokens=6, do_sample=False)
    rows = [c for c in CONVS for _ in range(2)]
    expected = pad_left(tokenize_prompts(tok, rows), tok.pad_token_id)["input_ids"]
    assert torch.equal(seen[0], expected)
    assert (seen[0] == tok.bos_token_id).sum(1).tolist() == [1, 1, 1, 1]           # one BOS per row
    # rendering the template to text and passing that as a string prompt gives other ids (a second BOS)
    text = tok.apply_chat_template(CONVS[0], tokenize=False, add_generation_prompt=True)
    pop.generate(text, minds=[0], max_new_tokens=2, do_sample=False)
    assert seen[-1][0].tolist() != tokenize_prompts(tok, CONVS[:1])[0]
    # the evaluation path, given the same rows and minds, generates the same completions
    assert out == generate_completions(chat_model, tok, rows, max_new_tokens=6, population=pop,
                                       mind_ids=[0, 1, 0, 1])
    # one conversation is one prompt
    assert pop.generate(CONVS[0], minds=2, max_new_tokens=6, do_sample=False) == out[:2]


def test_string_prompts_stay_raw_text(chat_model, chat_tokenizer, monkeypatch):
    tok = chat_tokenizer
    pop = Population(chat_model, sigma=0.5, seed=0, tokenizer=tok)
    seen = record_generate(chat_model, monkeypatch)
    pop.generate(["Q: 1+2\nA:"], minds=[3], max_new_tokens=2)
    assert seen[0][0].tolist() == tok(text="Q: 1+2\nA:")["input_ids"]            # no template, TRL's BOS
    with pytest.raises(ValueError, match="all be strings or all be conversations"):
        pop.generate(["Q: 1+2\nA:", CONVS[0]], minds=1)


def test_decisions_take_conversations_and_rewards_see_conversational_completions(chat_model, chat_tokenizer):
    tok = chat_tokenizer
    pop = Population(chat_model, sigma=0.5, seed=0, tokenizer=tok)
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append((prompts, completions))
        return [float(len(completion_text(c))) for c in completions]

    votes = pop.vote(CONVS, minds=3, max_new_tokens=5)
    grid = [[t for t in pop.generate([c], minds=3, max_new_tokens=5)] for c in CONVS]
    assert [v.completions for v in votes] == grid
    best = pop.best_of(CONVS, reward, minds=3, max_new_tokens=5)
    prompts, completions = seen[-1]
    assert prompts[0] == CONVS[0] and completions[0] == [{"role": "assistant", "content": grid[0][0]}]
    assert [b["completion"] for b in best] == [max(g, key=len) for g in grid]
    dev = load_task("arith", split="test", n=2, conversational=True)
    ranked = pop.select_minds(dev, answer_reward, n=2, candidates=3, max_new_tokens=5)
    assert len(ranked) == 2 and all(isinstance(m, int) for m, _ in ranked)
    assert isinstance(seen[0][1][0], list)


def test_population_grpo_on_a_conversational_dataset(chat_model, chat_tokenizer, tmp_path, monkeypatch):
    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    tok = chat_tokenizer
    data = load_task("arith", n=4, conversational=True)
    rewarded = []

    def reward(prompts, completions, **kwargs):
        rewarded.extend(completions)
        return [(sum(map(ord, completion_text(c))) % 11) / 10 for c in completions]

    args = PopulationGRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                                max_completion_length=6, max_steps=2, learning_rate=0.1, logging_steps=1,
                                report_to="none", save_strategy="no", use_cpu=True, seed=0, mind_sigma=0.5,
                                mind_logprobs="mind", bf16=False)
    trainer = PopulationGRPOTrainer(chat_model, reward_funcs=[reward, answer_reward], args=args, train_dataset=data,
                                    processing_class=tok)
    passes = []
    original = PopulationGRPOTrainer._get_per_token_logps_and_entropies

    def logps(self, model, input_ids, attention_mask, logits_to_keep, *a, **kw):
        prompt = input_ids[:, :-logits_to_keep]                     # [B, P], left-padded
        mask = attention_mask[:, :-logits_to_keep].bool()
        passes.append(([row[m].tolist() for row, m in zip(prompt, mask)], self._logp_mind_ids))
        return original(self, model, input_ids, attention_mask, logits_to_keep, *a, **kw)

    monkeypatch.setattr(PopulationGRPOTrainer, "_get_per_token_logps_and_entropies", logps)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert rewarded and all(c[0]["role"] == "assistant" for c in rewarded)   # conversational completions
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    trl_ids = trainer._tokenize_prompts(list(data["prompt"]))[0]            # TRL's own prompt tokenisation
    assert [list(x) for x in trl_ids] == tokenize_prompts(tok, data["prompt"])
    allowed = {tuple(x) for x in trl_ids}
    mind_passes = [rows for rows, ids in passes if ids is not None and bool((ids >= 0).all())]
    assert mind_passes and all(tuple(r) in allowed for rows in mind_passes for r in rows)
    assert all(r[0] == tok.bos_token_id and r.count(tok.bos_token_id) == 1 for rows in mind_passes for r in rows)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    assert logged and "minds/unique_answers_per_group" in logged[0]
