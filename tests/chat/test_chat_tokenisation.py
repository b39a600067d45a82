"""Train and eval see identical token ids: our SFT/DPO tokenisation equals TRL 1.16's SFTTrainer and
DPOTrainer (conversational and plain text), and the evaluation / population prompt ids equal the
prompt part of the training ids."""

from __future__ import annotations

import copy

import pytest

from manyminds.rows import encode_pair, tokenize_prompts
from manyminds.tasks import load_task
from manyminds.training.dpo import prepare_dpo_dataset
from manyminds.training.sft import prepare_sft_dataset


def trl_sft_rows(model, tok, dataset, tmp_path):
    """``(input_ids, completion_mask)`` of TRL's own SFTTrainer (its mask is the labels != -100)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True, bf16=False)
    rows = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok).train_dataset
    return rows["input_ids"], [[int(label != -100) for label in labels] for labels in rows["labels"]]


def trl_dpo_rows(model, tok, dataset, tmp_path):
    """TRL's DPOTrainer rows as ``prompt + chosen`` / ``prompt + rejected`` ids with completion masks."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "dpo"), report_to="none", use_cpu=True, bf16=False)
    rows = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args, train_dataset=dataset,
                      processing_class=tok).train_dataset
    out = []
    for r in rows:
        p = r["prompt_ids"]
        out.append({"chosen_ids": p + r["chosen_ids"], "chosen_mask": [0] * len(p) + [1] * len(r["chosen_ids"]),
                    "rejected_ids": p + r["rejected_ids"],
                    "rejected_mask": [0] * len(p) + [1] * len(r["rejected_ids"])})
    return out


def old_text_encoding(tok, prompt, completion):
    """The path this change replaced: the template rendered to text (``tokenize=False``), tokenised
    again with the tokenizer's special tokens, the completion separately, then an EOS id appended."""
    p_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + completion, tokenize=False)
    p = tok(p_text, add_special_tokens=True)["input_ids"]
    c = tok(full[len(p_text):], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + c


def test_the_chat_tokenizer_has_the_traps(chat_tokenizer):
    """The fixture is a real test of the bug: a BOS from the template and one from the tokenizer."""
    tok = chat_tokenizer
    conv = [{"role": "user", "content": "Q: 1+2\nA:"}]
    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<bos><|im_start|>user")
    assert tok(text)["input_ids"][:2] == [tok.bos_token_id, tok.bos_token_id]   # rendered, then tokenised: 2 BOS
    assert tokenize_prompts(tok, [conv])[0][:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<|im_start|>")]
    assert tok(text="Q: 1")["input_ids"][0] == tok.bos_token_id                 # plain text gets one BOS too


def test_sft_conversational_tokenisation_equals_trl(chat_model, chat_tokenizer, tmp_path):
    tok = chat_tokenizer
    data = load_task("conflict", n=6, conversational=True)
    trl_ids, trl_mask = trl_sft_rows(chat_model, tok, data, tmp_path)
    # without the fix the ids differ: a doubled BOS and an EOS after the template's end of turn
    old = [old_text_encoding(tok, r["prompt"], r["completion"]) for r in data]
    assert old[0][:2] == [tok.bos_token_id, tok.bos_token_id] and old[0] != trl_ids[0]
    ours = prepare_sft_dataset(data, tok, None)
    assert ours["input_ids"] == trl_ids
    assert ours["completion_mask"] == trl_mask
    assert all(ids.count(tok.bos_token_id) == 1 for ids in ours["input_ids"])
    # the completion ends with the template's end of turn, once: "<|im_end|>\n", no extra EOS
    first = ours[0]
    completion = [t for t, m in zip(first["input_ids"], first["completion_mask"]) if m]
    assert tok.decode(completion) == data[0]["completion"][0]["content"] + "<|im_end|>\n"
    # a `messages` column (the last message is the completion) gives the same rows
    messages = data.map(lambda r: {"messages": r["prompt"] + r["completion"]},
                        remove_columns=["prompt", "completion"])
    assert prepare_sft_dataset(messages, tok, None)["input_ids"] == trl_ids


def test_sft_text_tokenisation_equals_trl(chat_model, chat_tokenizer, tmp_path):
    tok = chat_tokenizer
    data = load_task("conflict", n=6)
    trl_ids, trl_mask = trl_sft_rows(chat_model, tok, data, tmp_path)
    ours = prepare_sft_dataset(data, tok, None)
    assert ours["input_ids"] == trl_ids and ours["completion_mask"] == trl_mask
    assert trl_ids[0][0] == tok.bos_token_id and trl_ids[0][-1] == tok.eos_token_id   # one BOS, one EOS


@pytest.mark.parametrize("conversational", [True, False])
def test_dpo_tokenisation_equals_trl(chat_model, chat_tokenizer, tmp_path, conversational):
    tok = chat_tokenizer
    data = load_task("prefs", n=6, conversational=conversational)
    expected = trl_dpo_rows(chat_model, tok, data, tmp_path)
    ours = prepare_dpo_dataset(data, tok, None)
    for key in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask"):
        assert ours[key] == [e[key] for e in expected], key
    if conversational:
        r = data[0]
        assert old_text_encoding(tok, r["prompt"], r["chosen"]) != expected[0]["chosen_ids"]


@pytest.mark.parametrize("conversational", [True, False])
def test_eval_prompt_ids_are_the_prompt_part_of_the_training_ids(chat_tokenizer, conversational):
    tok = chat_tokenizer
    data = load_task("arith", n=5, conversational=conversational)
    prompt_ids = tokenize_prompts(tok, data["prompt"])                       # evaluation / generation
    for ids, row in zip(prompt_ids, prepare_sft_dataset(data, tok, None)):
        prompt_part = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if not m]
        assert prompt_part == ids
        assert row["input_ids"][:len(ids)] == ids
    # the other form's prompt ids are different tokens (the check above is not vacuous)
    other = tokenize_prompts(tok, load_task("arith", n=5, conversational=not conversational)["prompt"])
    assert other[0] != prompt_ids[0]


def test_encode_pair_refuses_mixed_forms(chat_tokenizer):
    with pytest.raises(ValueError, match="all strings or all conversations"):
        encode_pair(chat_tokenizer, [{"role": "user", "content": "hi"}], "hello", None)
    with pytest.raises(ValueError, match="chat template"):
        tok = copy.deepcopy(chat_tokenizer)
        tok.chat_template = None
        encode_pair(tok, [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}], None)


def test_truncation_keeps_the_bos_of_a_chat_prompt(chat_tokenizer):
    tok = chat_tokenizer
    row = load_task("arith", n=1, conversational=True)[0]
    full = encode_pair(tok, row["prompt"], row["completion"], None)
    cut = encode_pair(tok, row["prompt"], row["completion"], len(full["input_ids"]) - 5)
    assert len(cut["input_ids"]) == len(full["input_ids"]) - 5
    assert cut["input_ids"][0] == tok.bos_token_id
    n = sum(full["completion_mask"])
    assert cut["input_ids"][-n:] == full["input_ids"][-n:]                    # the completion is kept whole
