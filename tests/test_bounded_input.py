"""Bounded input: oversized rows are refused at load with file and line, prompts are checked
against the model's context before generating, and many minds are generated in batches."""

import csv
import json

import pytest
import torch

from manyminds.evaluation import generate_completions
from manyminds.population import Population
from manyminds.rows import (
    MAX_FIELD_CHARS,
    check_context,
    check_csv_sizes,
    check_jsonl_sizes,
    check_parquet_sizes,
    tokenize_prompts,
)
from manyminds.zoo.charlm import VOCAB_SIZE
from manyminds.zoo.models import random_model


@pytest.fixture
def char_gpt2():
    """A tiny random GPT-2 (learned positions, ``n_positions=256``) over the zoo's character vocabulary."""
    return random_model("gpt2", vocab_size=VOCAB_SIZE, seed=0)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------ rows at load
def test_jsonl_row_over_limit_is_refused_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"prompt": "Q: 1+1\nA:", "answer": "2"},
                                                 {"prompt": "x" * 50, "answer": "3"},
                                                 {"prompt": "y" * 101, "answer": "4"}])
    check_jsonl_sizes(path, max_chars=1000)  # under a generous limit: nothing to say
    with pytest.raises(ValueError) as err:
        check_jsonl_sizes(path, max_chars=100)
    assert str(err.value).startswith(f"{path}:3: field 'prompt' has 101 characters, over the limit of 100;")
    assert "\n" not in str(err.value)


def test_conversation_fields_are_measured_per_message(tmp_path):
    messages = [{"role": "user", "content": "z" * 80}, {"role": "assistant", "content": "ok"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": messages}])
    check_jsonl_sizes(path, max_chars=80)
    with pytest.raises(ValueError, match=r"chat.jsonl:1: field 'prompt' has 80 characters, over the limit of 79"):
        check_jsonl_sizes(path, max_chars=79)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_row_over_limit_is_refused_with_file_line_and_row(tmp_path):
    # row 2 holds a quoted field over two lines, so row 3 starts on line 5 (header, 1, 2, 2, 3)
    path = write_csv(tmp_path / "data.csv", ["prompt", "answer"],
                     [["Q: 1+1 A:", "2"], ["a\nb" + "x" * 40, "3"], ["5", "y" * 101]])
    assert path.read_text().count("\n") == 5
    check_csv_sizes(path, max_chars=101)  # exactly at the limit: nothing to say
    with pytest.raises(ValueError) as err:
        check_csv_sizes(path, max_chars=100)
    assert str(err.value).startswith(f"{path}:5 (row 3): field 'answer' has 101 characters, over "
                                     f"the limit of 100;")
    assert "\n" not in str(err.value)
    # a field over the csv module's own limit (131072) is measured, not a csv error; the module's
    # limit is restored afterwards
    limit = csv.field_size_limit()
    big = write_csv(tmp_path / "big.csv", ["prompt"], [["p"], ["7" * 200_000]])
    with pytest.raises(ValueError, match=r"big.csv:3 \(row 2\): field 'prompt' has 200000 chara"):
        check_csv_sizes(big, max_chars=150_000)
    check_csv_sizes(big, max_chars=200_000)
    assert csv.field_size_limit() == limit


def test_parquet_row_over_limit_is_refused_with_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "z" * 80}], [],
                None, None]
    prompts = ["a", "b", "c", None, "w" * 90]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4, 5], "prompt": prompts, "messages": messages}), path)
    check_parquet_sizes(path, max_chars=90)
    # rows counted across batches of 2: row 5 is the first row of the third batch
    with pytest.raises(ValueError, match=r"data.parquet: row 5: field 'prompt' has 90 characters, "
                                         r"over the limit of 89;"):
        check_parquet_sizes(path, max_chars=89, batch_size=2)
    # a conversation is measured per message (the longest content), as in JSONL
    with pytest.raises(ValueError, match=r"data.parquet: row 2: field 'messages' has 80 chara"):
        check_parquet_sizes(path, max_chars=79, batch_size=2)
    dictionary = tmp_path / "dict.parquet"  # a dictionary-encoded string column is decoded first
    pq.write_table(pa.table({"text": pa.array(["ok", "q" * 30]).dictionary_encode()}), dictionary)
    with pytest.raises(ValueError, match=r"dict.parquet: row 2: field 'text' has 30 characters"):
        check_parquet_sizes(dictionary, max_chars=29)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_cli_data_loader_refuses_an_oversized_row_in_each_format(tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from manyminds.cli.common import CLIError, load_rows

    def write(name, prompts):
        path = tmp_path / f"{name}{suffix}"
        rows = [{"prompt": p, "completion": " 2"} for p in prompts]
        if suffix == ".jsonl":
            write_jsonl(path, rows)
        elif suffix == ".csv":
            write_csv(path, ["prompt", "completion"], [[r["prompt"], " 2"] for r in rows])
        else:
            pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    ok = write("ok", ["Q: 1+1\nA:", "Q: 2+0\nA:"])
    assert load_rows(None, str(ok), "train", None, 0)["prompt"] == ["Q: 1+1\nA:", "Q: 2+0\nA:"]
    big = write("big", ["Q: 1+1\nA:", "7" * (MAX_FIELD_CHARS + 1)])
    # the csv row 1 spans lines 2-3 (its prompt holds a newline), so row 2 starts on line 4
    where = {".jsonl": "big.jsonl:2", ".csv": r"big.csv:4 \(row 2\)",
             ".parquet": "big.parquet: row 2"}[suffix]
    with pytest.raises(CLIError, match=rf"{where}: field 'prompt' has {MAX_FIELD_CHARS + 1} "
                                       rf"characters, over the limit of {MAX_FIELD_CHARS}; "):
        load_rows(None, str(big), "train", None, 0)


def test_bundled_task_loader_refuses_an_oversized_row(tmp_path):
    from manyminds.harness.tasks.utils import load_jsonl

    ok = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "Q: 1+1\nA:", "answer": "2"}])
    assert len(load_jsonl({"test": str(ok)})["test"]) == 1
    big = write_jsonl(tmp_path / "big.jsonl", [{"prompt": "Q: 1+1\nA:", "answer": "2"},
                                               {"prompt": "7" * (MAX_FIELD_CHARS + 1), "answer": "2"}])
    with pytest.raises(ValueError, match=rf"big.jsonl:2: field 'prompt' has {MAX_FIELD_CHARS + 1} characters"):
        load_jsonl({"test": str(big)})


# ------------------------------------------------------------------------------ before tokenising
def test_tokenize_prompts_refuses_absurd_text_before_tokenising(char_tokenizer):
    class Refusing:  # a tokenizer that must never be reached
        def __call__(self, *args, **kwargs):
            raise AssertionError("tokenised an oversized prompt")

    with pytest.raises(ValueError, match=r"prompt 1 has 2000001 characters, over the limit of 1000000"):
        tokenize_prompts(Refusing(), ["Q: 1+1\nA:", "1" * 2_000_001])
    with pytest.raises(ValueError, match="prompt 0 has 11 characters, over the limit of 10"):
        tokenize_prompts(char_tokenizer, ["Q: 1+1+1\nA:"], max_chars=10)
    assert tokenize_prompts(char_tokenizer, ["Q: 1+1\nA:"], max_chars=10) == [char_tokenizer("Q: 1+1\nA:")["input_ids"]]


# ------------------------------------------------------------------------------ model context
def test_check_context_formula(char_gpt2):
    config = char_gpt2.config
    assert config.max_position_embeddings == 256  # GPT-2's n_positions, read through the config
    check_context(config, [200, 10], 56)  # 200 + 56 = 256 fits exactly
    with pytest.raises(ValueError, match=r"prompt 0 has 200 tokens; with max_new_tokens=57 that is 257, over the "
                                         r"model's context of 256 tokens .* lower max_new_tokens to 56"):
        check_context(config, [200, 10], 57)
    check_context(None, [10_000], 10_000)  # no config: nothing to check
    check_context(type("NoContext", (), {})(), [10_000], 10_000)


def test_long_generation_on_gpt2_is_refused_before_the_index_error(char_gpt2, char_tokenizer):
    prompt = "Q: " + "1+" * 100 + "1\nA:"
    enc = char_tokenizer(prompt, return_tensors="pt")
    with pytest.raises(IndexError):  # what the check prevents: GPT-2 runs out of position embeddings
        char_gpt2.generate(**enc, max_new_tokens=100, do_sample=False, pad_token_id=char_tokenizer.pad_token_id)
    pop = Population(char_gpt2, sigma=0.05, tokenizer=char_tokenizer)
    with pytest.raises(ValueError, match="over the model's context of 256 tokens"):
        pop.generate(prompt, minds=2, max_new_tokens=100)
    with pytest.raises(ValueError, match="over the model's context of 256 tokens"):
        pop.generate(enc["input_ids"], minds=[0], max_new_tokens=100)
    with pytest.raises(ValueError, match="over the model's context of 256 tokens"):
        generate_completions(char_gpt2, char_tokenizer, [prompt], max_new_tokens=100)
    assert len(pop.generate(prompt, minds=2, max_new_tokens=4, do_sample=False)) == 2  # a fitting call still runs


# ------------------------------------------------------------------------------ many minds in batches
def test_population_generate_batches_many_minds(char_qwen2, char_tokenizer, monkeypatch):
    pop = Population(char_qwen2, sigma=0.5, seed=0, tokenizer=char_tokenizer)
    prompts = ["Q: 1+2\nA:", "Q: 3-1+4\nA:"]
    kw = {"max_new_tokens": 6, "do_sample": False}
    one_batch = pop.generate(prompts, minds=5, batch_size=64, **kw)
    assert len(set(one_batch)) > 1  # the minds differ, so a routing slip between batches would show
    sizes = []
    generate = char_qwen2.generate

    def counting(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(char_qwen2, "generate", counting)
    texts, minds = pop.generate(prompts, minds=5, batch_size=3, return_minds=True, **kw)
    assert sizes == [3, 3, 3, 1]
    assert texts == one_batch
    assert minds == [0, 1, 2, 3, 4] * 2
    with pytest.raises(ValueError, match="batch_size=0"):
        pop.generate(prompts, minds=2, batch_size=0, **kw)


def test_harness_vote_generates_in_batches(char_qwen2, char_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from manyminds.harness import ManyMindsLM

    char_qwen2.save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    prompts = ["Q: 1+2\nA:", "Q: 3-1+4\nA:"]
    context = tokenize_prompts(char_tokenizer, prompts)
    pad = char_tokenizer.pad_token_id
    width = max(len(c) for c in context)
    context = torch.tensor([[pad] * (width - len(c)) + c for c in context])  # [2, T] left-padded
    mask = (context != pad).long()

    def vote(max_batch_size):
        lm = ManyMindsLM(pretrained=str(tmp_path), minds=5, sigma=0.5, device="cpu", batch_size=2,
                         max_batch_size=max_batch_size)
        sizes = []
        generate = lm.model.generate

        def counting(*args, **kwargs):
            sizes.append(kwargs["input_ids"].shape[0])
            return generate(*args, **kwargs)

        monkeypatch.setattr(lm.model, "generate", counting)
        out = lm._model_generate(context, width + 6, ["\n\n"], attention_mask=mask, do_sample=False)
        return out, lm.votes, sizes

    whole, whole_votes, whole_sizes = vote(64)
    assert whole_sizes == [10]
    assert len({t for v in whole_votes for t in v["continuations"]}) > 1  # the minds differ
    chunked, chunked_votes, sizes = vote(4)
    assert sizes == [4, 4, 2]
    assert chunked_votes == whole_votes
    assert chunked.shape[0] == 2
    for a, b in zip(chunked, whole):  # same tokens; only right padding may differ
        n = min(len(a), len(b))
        assert torch.equal(a[:n], b[:n]) and set(a[n:].tolist()) <= {pad} and set(b[n:].tolist()) <= {pad}
