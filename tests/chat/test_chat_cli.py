"""``--chat/--no-chat`` of ``manyminds generate`` / ``eval`` and the conversational form of the tasks."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.tasks import load_task

from .conftest import make_chat_tokenizer


@pytest.fixture
def chat_dir(tmp_path, chat_model):
    path = tmp_path / "tiny-chat"
    tok = make_chat_tokenizer()
    chat_model.generation_config.eos_token_id = tok.eos_token_id
    chat_model.generation_config.pad_token_id = tok.pad_token_id
    chat_model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_wraps_the_prompt_as_a_user_message_when_the_model_chats(chat_dir, tmp_path):
    out = tmp_path / "auto.jsonl"
    args = ["generate", "--model", str(chat_dir), "--minds", "2", "--sigma", "0.3", "--max-new-tokens", "4"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "Q: 1+2\nA:"])
    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in _records(out)] == [[{"role": "user", "content": "Q: 1+2\nA:"}]] * 2
    raw = tmp_path / "raw.jsonl"
    result = CliRunner().invoke(app, [*args, "--no-chat", "--out", str(raw), "Q: 1+2\nA:"])
    assert result.exit_code == 0, result.output
    assert [r["prompt"] for r in _records(raw)] == ["Q: 1+2\nA:"] * 2


def test_chat_on_a_model_without_a_template_is_one_line(tmp_path, char_qwen2, char_tokenizer):
    path = tmp_path / "plain"
    char_qwen2.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    result = CliRunner().invoke(app, ["generate", "--model", str(path), "--chat", "Q: 1+2\nA:"])
    assert result.exit_code == 2 and "has none" in result.output and "drop --chat" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_eval_chat_uses_the_tasks_conversational_form(chat_dir, tmp_path):
    common = ["eval", "--model", str(chat_dir), "--task", "arith", "--n", "2", "--k", "2", "--max-new-tokens", "4",
              "--json"]
    result = CliRunner().invoke(app, [*common, "--out-dir", str(tmp_path / "chat")])
    assert result.exit_code == 0, result.output
    rows = _records(tmp_path / "chat" / "results.jsonl")
    assert rows[0]["prompt"] == load_task("arith", split="test", n=2, conversational=True)[0]["prompt"]
    assert json.loads((tmp_path / "chat" / "results.json").read_text())["chat"] is True
    result = CliRunner().invoke(app, [*common, "--no-chat", "--out-dir", str(tmp_path / "text")])
    assert result.exit_code == 0, result.output
    assert _records(tmp_path / "text" / "results.jsonl")[0]["prompt"] == load_task("arith", split="test", n=2)[0]["prompt"]


def test_tasks_have_a_conversational_form():
    text = load_task("prefs", n=3, seed=1)
    chat = load_task("prefs", n=3, seed=1, conversational=True)
    assert chat.column_names == text.column_names
    for t, c in zip(text, chat):
        assert c["prompt"] == [{"role": "user", "content": t["prompt"]}]
        assert c["chosen"] == [{"role": "assistant", "content": t["chosen"].lstrip()}]
        assert c["rejected"] == [{"role": "assistant", "content": t["rejected"].lstrip()}]
        assert (c["answer"], c["kind"], c["group"]) == (t["answer"], t["kind"], t["group"])
    row = load_task("conflict", n=1, conversational=True, digits=2)[0]
    assert row["completion"][0]["role"] == "assistant" and isinstance(row["conflicting"], bool)
    with pytest.raises(TypeError, match="conversational must be True or False"):
        load_task("arith", n=1, conversational="yes")


def test_demo_and_eval_agree_in_chat_form(chat_dir, tmp_path):
    common = ["--model", str(chat_dir), "--max-new-tokens", "4", "--temperature", "1.0", "--seed", "0"]
    # a chat model's demo runs facts by default; ask for arith, which eval runs by default
    out = CliRunner().invoke(app, ["demo", *common, "--task", "arith", "--problems", "2", "--minds", "2",
                                   "--sigmas", "0.5", "--no-semantic", "--out-dir", str(tmp_path / "demo")])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(app, ["eval", *common, "--n", "2", "--k", "2", "--sigma", "0.5",
                                   "--out-dir", str(tmp_path / "eval")])
    assert out.exit_code == 0, out.output
    demo, ev = (_records(tmp_path / name / "results.jsonl") for name in ("demo", "eval"))
    assert demo == ev and demo[0]["prompt"][0]["role"] == "user"
