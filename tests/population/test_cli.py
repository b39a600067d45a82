"""``manyminds generate`` and ``manyminds demo`` on a tiny saved model (CliRunner)."""

import json

import pytest
from typer.testing import CliRunner

from manyminds.cli import app


@pytest.fixture
def model_dir(tmp_path, char_qwen2, char_tokenizer):
    path = tmp_path / "tiny"
    char_qwen2.generation_config.eos_token_id = char_tokenizer.eos_token_id
    char_qwen2.generation_config.pad_token_id = char_tokenizer.pad_token_id
    char_qwen2.save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return path


def test_generate_prints_one_answer_per_mind(model_dir, tmp_path):
    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--minds", "3", "--sigma", "0.3",
                                      "--max-new-tokens", "6", "--out", str(out), "Q: 1+2\nA:"])
    assert result.exit_code == 0, result.output
    assert "majority vote" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mind"] for r in records] == [0, 1, 2]
    assert set(records[0]) == {"prompt", "mind", "sigma", "seed", "text", "answer"}
    assert all(r["prompt"] == "Q: 1+2\nA:" and r["sigma"] == 0.3 for r in records)


def test_generate_bad_input_is_a_clear_error(model_dir):
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--sigma", "-1", "x"])
    assert result.exit_code == 2 and "sigma must be finite and >= 0" in result.output
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--norms", "some", "x"])
    assert result.exit_code == 2 and "norms must be one of" in result.output
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), ""])
    assert result.exit_code == 2 and "empty prompt" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_generate_warns_about_a_literal_backslash_n(model_dir):
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--minds", "2", "--max-new-tokens",
                                      "2", "Q: 1+2\\nA:"])
    assert result.exit_code == 0, result.output
    assert "literal \\n" in result.output and "$'" in result.output
    result = CliRunner().invoke(app, ["generate", "--model", str(model_dir), "--minds", "2", "--max-new-tokens",
                                      "2", "Q: 1+2\nA:"])
    assert result.exit_code == 0 and "warning" not in result.output


def test_missing_model_folder_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = CliRunner().invoke(app, ["generate", "--model", "runs/does-not-exist", "x"])
    assert result.exit_code == 2 and "no model folder at runs/does-not-exist" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_demo_writes_table_jsonl_json_and_plot(model_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--model", str(model_dir), "--problems", "3", "--minds", "2",
                                      "--sigmas", "0.05,0.5", "--max-new-tokens", "4", "--no-semantic",
                                      "--out-dir", str(out_dir)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out_dir / "results.json").read_text())
    names = [r["name"] for r in payload["conditions"]]
    assert names == ["greedy", "temperature 0.7", "minds sigma=0.05", "minds sigma=0.5"]
    for r in payload["conditions"]:
        assert 0 <= r["pass_at_1"] <= r["pass_at_k"] <= 1
        assert r["problems"] == 3
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]["conditions"]) == set(names)
    assert len(rows[0]["conditions"]["minds sigma=0.5"]["completions"]) == 2
    assert (out_dir / "sigma_sweep.png").stat().st_size > 1000
    assert "| minds sigma=0.5 |" in (out_dir / "results.md").read_text()
    result = CliRunner().invoke(app, ["demo", "--model", str(model_dir), "--sigmas", "0,-1"])
    assert result.exit_code != 0 and "positive numbers" in result.output


def test_demo_default_output_is_under_runs(model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["demo", "--model", str(model_dir), "--problems", "1", "--minds", "2",
                                      "--sigmas", "0.5", "--max-new-tokens", "2", "--no-semantic"])
    assert result.exit_code == 0, result.output
    assert (work / "runs" / "demo" / "results.jsonl").exists()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
