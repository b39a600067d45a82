"""``manyminds grpo`` / ``manyminds eval`` and manyminds.evaluation (tiny random model: fast)."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.evaluation import EvalConfig, evaluate, score_draws
from manyminds.tasks import load_task

runner = CliRunner()


def test_score_draws():
    completions = [["#### 1", "#### 2", "#### 2"], ["#### 5", "x", "#### 5"]]
    s = score_draws("samples", "samples", completions, ["2", "7"], k=3)
    assert s.pass_at_1 == pytest.approx((2 / 3 + 0) / 2)
    assert s.pass_at_k == 0.5 and s.majority_at_k == 0.5
    assert s.unique_answers == 1.5 and s.answer_rate == pytest.approx(5 / 6)


def test_evaluate_sigma_zero_minds_equal_greedy(make_model, char_tokenizer):
    model, tok = make_model(), char_tokenizer
    rows = load_task("arith", split="test", n=6, seed=0)
    zero_result = evaluate(model, tok, rows, EvalConfig(k=3, sigma=0.0, max_new_tokens=12))
    zero = zero_result.to_dict()
    # with sigma = 0 every mind is the mean model: the same greedy answer three times
    assert zero["minds"]["pass@1"] == zero["greedy"]["pass@1"] == zero["minds"]["majority@3"]
    assert zero["minds"]["unique_answers"] <= 1.0
    assert all(len(set(draws)) == 1 and draws[0] == g[0] for draws, g in
               zip(zero_result.completions["minds"], zero_result.completions["greedy"]))
    noisy = evaluate(model, tok, rows, EvalConfig(k=3, sigma=1.0, max_new_tokens=12))
    d = noisy.to_dict()
    assert d["minds"]["pass@3"] >= d["minds"]["pass@1"] and d["samples"]["pass@3"] >= d["samples"]["pass@1"]
    assert noisy.completions["minds"] != zero_result.completions["minds"]  # the minds differ from the mean model
    with pytest.raises(ValueError, match="'prompt' and 'answer'"):
        evaluate(model, tok, rows.remove_columns("answer"), EvalConfig(k=2))


def test_eval_cli_json_and_table(random_model_path, tmp_path):
    args = ["eval", "--model", str(random_model_path), "--n", "4", "--k", "2", "--max-new-tokens", "8"]
    out = runner.invoke(app, [*args, "--json", "--save", str(tmp_path / "r.json")])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout[out.stdout.index("{"):])
    assert set(result) >= {"greedy", "samples", "minds", "config", "n_prompts"}
    assert json.loads((tmp_path / "r.json").read_text())["minds"] == result["minds"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0 and "majority@2" in out.stdout
    out = runner.invoke(app, [*args, "--k", "0"])
    assert out.exit_code == 2 and "k must be >= 1" in out.output


def test_grpo_cli_trains_checkpoints_and_resumes(random_model_path, tmp_path):
    out_dir = tmp_path / "run"
    base = ["grpo", "--model", str(random_model_path), "--n", "8", "--num-generations", "2",
            "--prompts-per-step", "2", "--max-completion-length", "8", "--save-steps", "1",
            "--output-dir", str(out_dir), "--learning-rate", "1e-3"]
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
    (["--num-generations", "1"], "num_generations must be >= 2"),
    (["--dataset", "nope.txt"], "--dataset must be"),
])
def test_grpo_cli_bad_input(random_model_path, tmp_path, bad, message):
    out = runner.invoke(app, ["grpo", "--model", str(random_model_path), "--output-dir", str(tmp_path), *bad])
    assert out.exit_code == 2 and message in out.output
    assert not os.path.exists(tmp_path / "checkpoint-1")


def test_grpo_cli_label_requiring_reward_without_answer(random_model_path, tmp_path):
    rows = load_task("arith", n=4).remove_columns("answer")
    path = tmp_path / "rows.jsonl"
    rows.to_json(str(path))
    out = runner.invoke(app, ["grpo", "--model", str(random_model_path), "--dataset", str(path),
                              "--output-dir", str(tmp_path / "o")])
    assert out.exit_code == 2 and "'answer' column" in out.output
