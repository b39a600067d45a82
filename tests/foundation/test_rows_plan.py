"""The prompt-major row plan of :mod:`manyminds.rows` (k rows per prompt, prompt ``p``'s rows are
``p*k .. p*k+k-1``), the plain-text-as-user-turn rule, and the zoo's tokenisation through rows."""

import pytest
import torch

from manyminds.rows import (
    grid_ids,
    group_rows,
    prompt_grid,
    repeat_prompts,
    user_message,
    user_prompts,
)

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_prompt_grid_is_prompt_major_and_group_rows_inverts_it():
    rows, ids = prompt_grid(["a", "b"], 3)
    assert rows == ["a", "a", "a", "b", "b", "b"]
    assert ids == [0, 1, 2, 0, 1, 2]  # row p*k + j runs id j
    rows, ids = prompt_grid(["a", "b"], [5, -1])
    assert list(zip(rows, ids)) == [("a", 5), ("a", -1), ("b", 5), ("b", -1)]
    assert repeat_prompts(["a", "b"], 2) == ["a", "a", "b", "b"]
    assert grid_ids(2, 3) == [0, 1, 0, 1, 0, 1] and grid_ids([7], 2) == [7, 7]
    flat = [f"{p}{m}" for p, m in zip(*prompt_grid(["x", "y", "z"], 4))]
    grouped = group_rows(flat, 4)  # [P][k]
    assert grouped == [[f"{p}{m}" for m in range(4)] for p in "xyz"]


def test_repeat_prompts_on_a_tensor_matches_the_list_plan():
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])  # [P=3, T=2]
    out = repeat_prompts(ids, 2)  # [P*k, T]
    assert out.tolist() == repeat_prompts(ids.tolist(), 2)
    assert out.shape == (6, 2) and out[3].tolist() == [3, 4]


def test_group_rows_refuses_a_flat_list_that_is_not_k_per_prompt():
    with pytest.raises(ValueError, match=r"^7 rows do not split into groups of 3; pass k rows per prompt") as err:
        group_rows(list(range(7)), 3)
    assert "\n" not in str(err.value)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive number of rows per prompt"):
            group_rows([1, 2], bad)
        with pytest.raises(ValueError, match="positive number of rows per prompt"):
            repeat_prompts(["a"], bad)
    with pytest.raises(ValueError, match="non-empty list of ids"):
        prompt_grid(["a"], [])
    with pytest.raises(ValueError, match="positive number"):
        grid_ids(0, 2)


def test_user_prompts_are_user_turns_only_for_a_chat_model(char_tokenizer):
    assert user_prompts(char_tokenizer, ("hi", "yo")) == ["hi", "yo"]  # no chat template: the text
    char_tokenizer.chat_template = CHAT_TEMPLATE
    assert user_prompts(char_tokenizer, ["hi"]) == [user_message("hi")]


def test_zoo_training_rows_label_only_the_completion_and_eos(char_tokenizer):
    from manyminds.zoo.charlm import encode_batch

    tok = char_tokenizer
    batch = encode_batch(tok, [("Q: 1+2\nA:", " 3"), ("Q:9\nA:", " 12")])
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [2, T]
    first = tok("Q: 1+2\nA:", add_special_tokens=False).input_ids + tok(" 3", add_special_tokens=False).input_ids
    assert ids[0].tolist() == first + [tok.eos_token_id]  # the longest row: no padding
    short = tok("Q:9\nA: 12", add_special_tokens=False).input_ids + [tok.eos_token_id]
    T, pad = len(first) + 1, len(first) + 1 - len(short)  # 12 tokens, 2 of them padding in row 1
    assert ids.shape == (2, T) and ids[1].tolist() == short + [tok.pad_token_id] * pad  # right-padded
    assert mask[0].tolist() == [1] * T and mask[1].tolist() == [1] * len(short) + [0] * pad
    assert labels[0].tolist() == [-100] * 9 + ids[0, 9:].tolist()  # loss on " 3" + eos only
    assert labels[1].tolist() == [-100] * 6 + short[6:] + [-100] * pad


def test_gguf_probe_batch_is_the_chat_template_left_padded(char_tokenizer):
    from manyminds.zoo import gguf

    tok = char_tokenizer
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    batch = gguf.probe_batch(tok)  # [B, T]
    texts = [tok.apply_chat_template(user_message(p), tokenize=False, add_generation_prompt=True)
             for p in gguf.PROBE_PROMPTS]
    ref = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["attention_mask"][:, 0].tolist() != batch["attention_mask"][:, -1].tolist()  # padding on the left
    assert tok.padding_side == "left"  # the tokenizer is not changed
