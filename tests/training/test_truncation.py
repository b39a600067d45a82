"""Truncation to ``max_length``: the prompt is cut from the left, the completion kept (as TRL's
``keep_end`` for the prompt), so a long prompt never leaves an example without completion tokens."""

from __future__ import annotations

import pytest
from datasets import Dataset

from manyminds.rows import encode_pair, truncate_prompt_left
from manyminds.tasks import load_task
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig
from manyminds.training.dpo import prepare_dpo_dataset
from manyminds.training.sft import prepare_sft_dataset

LONG_PROMPT = "Context: " + "1+2-3*4 " * 8 + "\nQ: 2+3\nA:"   # 77 characters, one token each


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_long_prompt_is_cut_from_the_left_and_the_completion_kept(char_tokenizer):
    tok = char_tokenizer
    prompt, completion = _ids(tok, LONG_PROMPT), _ids(tok, " #### 5") + [tok.eos_token_id]
    assert len(prompt) > 40
    enc = encode_pair(tok, LONG_PROMPT, " #### 5", max_length=16)
    assert len(enc["input_ids"]) == 16
    assert enc["input_ids"] == prompt[-(16 - len(completion)):] + completion   # the prompt's end, all of the answer
    assert enc["completion_mask"] == [0] * (16 - len(completion)) + [1] * len(completion)


def test_completion_longer_than_max_length_keeps_its_start(char_tokenizer):
    tok = char_tokenizer
    long_answer = " " + "1+2=3, " * 6
    enc = encode_pair(tok, LONG_PROMPT, long_answer, max_length=10)
    # one prompt token (so the first completion token is still predicted), then the completion's start
    assert enc["input_ids"] == _ids(tok, LONG_PROMPT)[-1:] + _ids(tok, long_answer)[:9]
    assert enc["completion_mask"] == [0] + [1] * 9
    # text-only rows (empty prompt) keep the start of the text
    enc = encode_pair(tok, "", long_answer, max_length=10)
    assert enc["input_ids"] == _ids(tok, long_answer)[:10] and sum(enc["completion_mask"]) == 10


def test_short_rows_are_untouched(char_tokenizer):
    tok = char_tokenizer
    enc = encode_pair(tok, "Q: 1+1\nA:", " 2", max_length=64)
    assert enc["input_ids"] == _ids(tok, "Q: 1+1\nA:") + _ids(tok, " 2") + [tok.eos_token_id]
    assert encode_pair(tok, LONG_PROMPT, " 2", max_length=None)["input_ids"][:len(LONG_PROMPT)] == \
        _ids(tok, LONG_PROMPT)


def test_truncate_prompt_left_rules():
    bos = 1
    prompt = [bos, 10, 11, 12, 13, 14]
    # one shared prompt cut for the longest completion; the BOS token stays at position 0
    p, (a, b) = truncate_prompt_left(prompt, [[20, 21], [30, 31, 32, 33]], max_length=7, bos_token_id=bos)
    assert p == [bos, 13, 14] and a == [20, 21] and b == [30, 31, 32, 33]
    # without a BOS id the prompt simply keeps its end
    p, _ = truncate_prompt_left(prompt, [[30, 31, 32, 33]], max_length=7)
    assert p == [12, 13, 14]
    # a completion longer than the budget: last prompt token, the completion's start
    p, (c,) = truncate_prompt_left(prompt, [list(range(20, 40))], max_length=5, bos_token_id=bos)
    assert p == [14] and c == [20, 21, 22, 23]
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        truncate_prompt_left(prompt, [[20]], max_length=1)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        RenyiSFTConfig(output_dir="unused", max_length=1)


def test_datasets_keep_completion_tokens_with_a_long_prompt(char_tokenizer):
    rows = load_task("prefs", n=4).to_list()
    data = Dataset.from_list([{**r, "prompt": LONG_PROMPT + r["prompt"]} for r in rows])
    dpo = prepare_dpo_dataset(data, char_tokenizer, max_length=32)
    for row in dpo:
        for key in ("chosen", "rejected"):
            assert len(row[f"{key}_ids"]) <= 32 and sum(row[f"{key}_mask"]) > 0
        # chosen and rejected are scored in the same (truncated) context
        n_c, n_r = row["chosen_mask"].index(1), row["rejected_mask"].index(1)
        assert row["chosen_ids"][:n_c] == row["rejected_ids"][:n_r]
    sft = prepare_sft_dataset(data.rename_column("chosen", "completion"), char_tokenizer, max_length=32)
    assert all(sum(row["completion_mask"]) > 0 for row in sft)


def test_dpo_margin_is_not_silently_zero_with_a_long_prompt(char_qwen2, char_tokenizer, tmp_path):
    rows = load_task("prefs", n=8).to_list()
    data = Dataset.from_list([{**r, "prompt": LONG_PROMPT + r["prompt"]} for r in rows])
    # diverse members differ from the reference (the base), so every pair with completion tokens
    # has a non-zero margin; a right-truncated row (prompt only) would give exactly 0
    args = RenyiDPOConfig(output_dir=str(tmp_path), num_members=2, r=4, init="diverse", init_std=0.1,
                          max_length=48, per_device_eval_batch_size=8, use_cpu=True, disable_tqdm=True,
                          report_to="none", seed=0)
    trainer = RenyiDPOTrainer(char_qwen2, args, eval_dataset=data, processing_class=char_tokenizer)
    trainer.evaluate()
    logged = trainer.state.log_history[-1]
    assert abs(logged["eval_rewards/margin"]) > 1e-4
