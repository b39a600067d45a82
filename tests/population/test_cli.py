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


def test_demo_writes_table_jsonl_json_and_plot(tmp_path):
    """On the shipped tiny-arith model (it solves most of these problems greedily, and noisier minds
    fewer), so the pass rates in results.json are not all 0 or 1 and recomputing them from the
    completions in results.jsonl can tell a mean from a max or one condition from another."""
    pytest.importorskip("matplotlib")
    from manyminds.tasks import extract_answer, normalize_answer

    out_dir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--model", "tiny-arith", "--problems", "3", "--minds",
                                      "3", "--sigmas", "0.2,0.3", "--max-new-tokens", "32",
                                      "--no-semantic", "--out-dir", str(out_dir)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out_dir / "results.json").read_text())
    names = [r["name"] for r in payload["conditions"]]
    assert names == ["greedy", "temperature 0.7", "minds sigma=0.2", "minds sigma=0.3"]
    assert [r["k"] for r in payload["conditions"]] == [1, 3, 3, 3]
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]["conditions"]) == set(names)
    for r in payload["conditions"]:
        # draw j of prompt p is correct when its final answer is the normalised gold answer
        correct = [[extract_answer(c) == normalize_answer(row["answer"])
                    for c in row["conditions"][r["name"]]["completions"]] for row in rows]
        assert [len(c) for c in correct] == [r["k"]] * 3 and r["problems"] == 3
        assert r["pass_at_1"] == pytest.approx(sum(map(sum, correct)) / (3 * r["k"]))
        assert r["pass_at_k"] == pytest.approx(sum(map(any, correct)) / 3)  # n = k: any correct
    assert any(r["pass_at_1"] < r["pass_at_k"] for r in payload["conditions"])  # draws disagree
    assert (out_dir / "sigma_sweep.png").stat().st_size > 1000
    assert "| minds sigma=0.3 |" in (out_dir / "results.md").read_text()


def test_demo_refuses_bad_sigmas(model_dir):
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
