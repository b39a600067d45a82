"""``manyminds grpo`` / ``manyminds eval`` (tiny random model: fast); the evaluation module itself is
tested in tests/test_evaluation.py."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.tasks import load_task

runner = CliRunner()


def test_eval_cli_json_table_jsonl(random_model_path, tmp_path):
    out_dir = tmp_path / "eval"
    args = ["eval", "--model", str(random_model_path), "--n", "4", "--k", "2", "--max-new-tokens", "8",
            "--out-dir", str(out_dir)]
    out = runner.invoke(app, [*args, "--json", "--save", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert [c["name"] for c in result["conditions"]] == ["greedy", "temperature 1", "minds sigma=0.02"]
    assert result["n_prompts"] == 4 and result["config"]["k"] == 2
    assert json.loads((tmp_path / "r.json").read_text())["conditions"] == result["conditions"]
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) >= {"prompt", "answer", "conditions"}
    minds = rows[0]["conditions"]["minds sigma=0.02"]
    assert minds["ids"] == [0, 1] and len(minds["answers"]) == 2 and "votes" in minds and "correct" in minds
    out = runner.invoke(app, args)
    assert out.exit_code == 0 and "maj@k" in out.stdout


@pytest.mark.parametrize("bad, message", [
    (["--k", "0"], "k must be >= 1"),
    (["--task", "arihtm"], "unknown task 'arihtm'"),
    (["--data", "missing.jsonl"], "missing.jsonl"),
    (["--sigma", "-1"], "sigma must be finite"),
])
def test_eval_cli_bad_input_is_one_line(random_model_path, tmp_path, bad, message):
    out = runner.invoke(app, ["eval", "--model", str(random_model_path), "--n", "2", "--out-dir",
                              str(tmp_path / "o"), *bad])
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_grpo_cli_trains_checkpoints_and_resumes(random_model_path, tmp_path):
    out_dir = tmp_path / "run"
    base = ["grpo", "--model", str(random_model_path), "--n", "8", "--num_generations", "2",
            "--per_device_train_batch_size", "4", "--max_completion_length", "8", "--save_steps", "1",
            "--output_dir", str(out_dir), "--learning_rate", "1e-3"]
    out = runner.invoke(app, [*base, "--steps", "2"])
    assert out.exit_code == 0, out.output
    assert (out_dir / "checkpoint-2" / "mind_state.json").exists()
    assert (out_dir / "final" / "config.json").exists()
    state = json.loads((out_dir / "checkpoint-2" / "mind_state.json").read_text())
    assert state["mind_calls"] == 2
    out = runner.invoke(app, [*base, "--steps", "3", "--resume"])
    assert out.exit_code == 0, out.output
    assert "resuming" in out.output and (out_dir / "checkpoint-3").exists()
    assert json.loads((out_dir / "checkpoint-3" / "mind_state.json").read_text())["mind_calls"] == 3


@pytest.mark.parametrize("bad, message", [
    (["--sigma", "-1"], "mind_sigma must be >= 0"),
    (["--num_generations", "1"], "num_generations must be >= 2"),
    (["--data", "nope.txt"], "dataset file nope.txt does not exist"),
])
def test_grpo_cli_bad_input(random_model_path, tmp_path, bad, message):
    out = runner.invoke(app, ["grpo", "--model", str(random_model_path), "--output_dir", str(tmp_path), *bad])
    assert out.exit_code == 2 and message in out.output
    assert not os.path.exists(tmp_path / "checkpoint-1")


def test_grpo_cli_label_requiring_reward_without_answer(random_model_path, tmp_path):
    rows = load_task("arith", n=4).remove_columns("answer")
    path = tmp_path / "rows.jsonl"
    rows.to_json(str(path))
    out = runner.invoke(app, ["grpo", "--model", str(random_model_path), "--data", str(path),
                              "--output_dir", str(tmp_path / "o")])
    assert out.exit_code == 2 and "'answer' column" in out.output
