"""manyminds.evaluation: TRL's tokenisation, one generation routine, one scorer, and the demo and
``manyminds eval`` giving the same numbers on the same model (tiny random models: fast)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from tokenizers.processors import TemplateProcessing
from typer.testing import CliRunner

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.cli import app
from manyminds.evaluation import (
    EvalConfig,
    evaluate,
    generate_completions,
    score_condition,
    tokenize_prompts,
)
from manyminds.evaluation.report import conditions_table
from manyminds.zoo.models import random_model
from manyminds.tasks import load_task

runner = CliRunner()
CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}")


def bos_tokenizer():
    """The char tokenizer with a post-processor that prepends <bos> (as Llama's does) and a chat template."""
    tok = build_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok.chat_template = CHAT
    return tok


def char_model(seed=0):
    tok = build_tokenizer()
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=seed, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def trl_prompt_ids(tokenizer, prompts):
    """What TRL 1.16's GRPOTrainer._tokenize_prompts returns, called on a stand-in trainer."""
    from trl import GRPOTrainer

    trainer = SimpleNamespace(processing_class=tokenizer, _is_vlm=False, environment_factories=None, tools=None,
                              chat_template=None, chat_template_kwargs={})
    ids, _, _ = GRPOTrainer._tokenize_prompts(trainer, prompts)
    return [list(x) for x in ids]


def test_prompts_are_tokenised_as_trl_tokenises_them():
    tok = bos_tokenizer()
    text = ["Q: 1+2\nA:", "Q: 10-3\nA:"]
    ours = tokenize_prompts(tok, text)
    assert ours == trl_prompt_ids(tok, text)
    assert ours[0][0] == tok.bos_token_id  # TRL keeps the tokenizer's special tokens
    assert ours != [tok(t, add_special_tokens=False).input_ids for t in text]  # the old eval path's ids
    chats = [[{"role": "user", "content": "1+2?"}], [{"role": "user", "content": "3+4?"}]]
    assert tokenize_prompts(tok, chats) == trl_prompt_ids(tok, chats)
    with pytest.raises(ValueError, match="all be strings"):
        tokenize_prompts(tok, ["a", 3])


def test_generation_leaves_the_global_rng_alone_and_is_seeded():
    model, tok = char_model(), build_tokenizer()
    rows = ["Q: 1+2\nA:"] * 4
    state = torch.random.get_rng_state()
    a = generate_completions(model, tok, rows, max_new_tokens=6, temperature=1.0, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == generate_completions(model, tok, rows, max_new_tokens=6, temperature=1.0, seed=3)
    assert a != generate_completions(model, tok, rows, max_new_tokens=6, temperature=1.0, seed=4)


def test_score_condition():
    grid = [["#### 1", "#### 2", "#### 2"], ["#### 5", "x", "#### 5"]]
    s = score_condition("samples", "samples", grid, ["2", "7"])
    assert s.pass_at_1 == pytest.approx((2 / 3 + 0) / 2)
    assert s.pass_at_k == 0.5 and s.majority_at_k == 0.5
    assert s.unique_answers == 1.5 and s.answer_rate == pytest.approx(5 / 6)
    assert s.per_prompt[0] == {"completions": grid[0], "answers": ["1", "2", "2"], "votes": {"1": 1, "2": 2},
                               "majority": "2", "agreement": 2 / 3, "correct": [0.0, 1.0, 1.0],
                               "majority_correct": 1.0}
    unlabeled = score_condition("x", "samples", grid, None)
    assert unlabeled.pass_at_1 != unlabeled.pass_at_1 and "correct" not in unlabeled.per_prompt[0]


def test_evaluate_sigma_zero_minds_equal_greedy_and_records():
    model, tok = char_model(), build_tokenizer()
    rows = load_task("arith", split="test", n=4, seed=0)
    result = evaluate(model, tok, rows, EvalConfig(k=3, sigmas=(0.0, 1.0), max_new_tokens=10))
    assert [c.name for c in result.conditions] == ["greedy", "temperature 1", "minds sigma=0", "minds sigma=1"]
    greedy, zero, noisy = result["greedy"], result["minds sigma=0"], result["minds sigma=1"]
    # sigma = 0: every mind is the mean model, so each answers exactly as greedy decoding does
    for g, z in zip(greedy.per_prompt, zero.per_prompt):
        assert z["completions"] == g["completions"] * 3
    assert [r["completions"] for r in noisy.per_prompt] != [r["completions"] for r in zero.per_prompt]
    records = result.records()
    assert len(records) == 4 and records[1]["prompt"] == rows[1]["prompt"] and records[1]["answer"] == rows[1]["answer"]
    assert records[0]["conditions"]["minds sigma=1"]["ids"] == [0, 1, 2]
    assert set(records[0]["conditions"]["greedy"]) >= {"completions", "answers", "votes", "majority", "correct"}
    with pytest.raises(ValueError, match="'answer' column"):
        evaluate(model, tok, rows.remove_columns("answer"), EvalConfig(k=2))


def test_table_fits_80_columns():
    model, tok = char_model(), build_tokenizer()
    result = evaluate(model, tok, load_task("arith", split="test", n=2), EvalConfig(k=2, sigmas=(0.01, 0.05),
                                                                                  max_new_tokens=4))
    console = Console(width=80, record=True)
    console.print(conditions_table(result.conditions, "t"))
    text = console.export_text()
    assert "…" not in text and "maj@k" in text and "minds σ=0.05" in text


@pytest.fixture
def bos_model_dir(tmp_path):
    """A tiny random model whose tokenizer adds <bos>: tokenisation differences change its answers."""
    path = tmp_path / "bos_model"
    char_model().save_pretrained(path)
    bos_tokenizer().save_pretrained(path)
    return path


def test_demo_and_eval_agree_on_the_same_model(bos_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(bos_model_dir), AutoTokenizer.from_pretrained(bos_model_dir)
    prompts = load_task("arith", split="test", n=3, seed=0)["prompt"]
    # The two old paths differed in exactly these ways; each changes this model's answers:
    # prompt ids with vs without the tokenizer's special tokens ...
    with_bos = generate_completions(model, tok, prompts, max_new_tokens=6)
    tok_plain = AutoTokenizer.from_pretrained(bos_model_dir)
    tok_plain.backend_tokenizer.post_processor = None
    assert generate_completions(model, tok_plain, prompts, max_new_tokens=6) != with_bos
    # ... and the sampling stream (demo: the global seed; eval: a forked RNG seeded per condition).
    rows = [p for p in prompts for _ in range(2)]
    assert (generate_completions(model, tok, rows, max_new_tokens=6, temperature=1.0, seed=0)
            != generate_completions(model, tok, rows, max_new_tokens=6, temperature=1.0, seed=1))

    demo_dir, eval_dir = tmp_path / "demo", tmp_path / "eval"
    common = ["--model", str(bos_model_dir), "--max-new-tokens", "6", "--temperature", "1.0", "--seed", "0",
              "--no-chat"]  # the tokenizer has a chat template; this test compares the text path
    out = runner.invoke(app, ["demo", *common, "--problems", "3", "--minds", "2", "--sigmas", "0.3,1.0",
                              "--no-semantic", "--out-dir", str(demo_dir)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["eval", *common, "--n", "3", "--k", "2", "--sigma", "0.3", "--sigma", "1.0",
                              "--out-dir", str(eval_dir)])
    assert out.exit_code == 0, out.output
    demo = json.loads((demo_dir / "results.json").read_text())["conditions"]
    ev = json.loads((eval_dir / "results.json").read_text())["conditions"]
    drop = ("seconds",)
    assert [{k: v for k, v in c.items() if k not in drop} for c in demo] == \
           [{k: v for k, v in c.items() if k not in drop} for c in ev]
    demo_rows = [json.loads(x) for x in (demo_dir / "results.jsonl").read_text().splitlines()]
    eval_rows = [json.loads(x) for x in (eval_dir / "results.jsonl").read_text().splitlines()]
    assert demo_rows == eval_rows and len(demo_rows) == 3
    # and the same completions as generating directly with TRL's token ids
    assert [r["conditions"]["greedy"]["completions"][0] for r in demo_rows] == with_bos
