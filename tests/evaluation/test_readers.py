"""Readers in the evaluation path: free-form short answers (facts) scored, voted and compared, and
minds matched to temperatures of a sweep."""

import pytest

from manyminds.evaluation import EvalConfig, condition_plan
from manyminds.evaluation.core import EvalResult
from manyminds.evaluation.intervals import comparisons_vs_baselines, matched_temperatures
from manyminds.evaluation.readers import FINAL_ANSWER, SHORT_ANSWER, reader_for
from manyminds.evaluation.scoring import score_condition
from manyminds.tasks.short_answer import answer_key

Q = "What is the capital of Australia?"


def test_answer_key_drops_question_words_filler_and_trailing_clauses():
    assert answer_key("The capital of Australia is Canberra, a planned city.", Q) == "canberra"
    assert answer_key("Canberra is the capital of Australia.", Q) == "canberra"
    assert answer_key("It is Sydney (the largest city).", Q) == "sydney"
    assert answer_key("Australia.", Q) == "australia"  # nothing but question words: the clause itself
    assert answer_key("   ", Q) is None


def test_short_reader_scores_votes_and_majority_without_gold_in_the_key():
    grid = [["The capital of Australia is Sydney.", "Sydney, of course.", "The capital of Australia is Canberra.",
             "It is Canberra, not Sydney."]]
    c = score_condition("minds", "minds", grid, [["Canberra"]], reader=SHORT_ANSWER, questions=[Q])
    rec = c.per_prompt[0]
    assert rec["answers"] == ["sydney", "sydney", "canberra", "canberra"]
    assert rec["correct"] == [0.0, 0.0, 1.0, 1.0]
    assert c.pass_at_1 == 0.5 and c.pass_at_k == 1.0 and c.unique_answers == 2.0
    # a 2-2 tie goes to the first answer (metrics.majority_vote): Sydney, wrong
    assert rec["majority"] == "sydney" and rec["majority_correct"] == 0.0 and c.majority_at_k == 0.0
    grid[0][1] = "Canberra."
    c = score_condition("minds", "minds", grid, [["Canberra"]], reader=SHORT_ANSWER, questions=[Q])
    assert c.per_prompt[0]["majority"] == "canberra" and c.majority_at_k == 1.0


def test_final_reader_is_the_hash_line_reader():
    grid = [["x #### 4", "y #### 4", "z #### 5"]]
    c = score_condition("m", "minds", grid, ["4.0"])
    assert c.per_prompt[0]["correct"] == [1.0, 1.0, 0.0] and c.majority_at_k == 1.0
    # the short reader on the same text would not read '####' answers as keys
    assert reader_for(None, ["prompt", "answer"]) is FINAL_ANSWER
    assert reader_for("auto", ["prompt", "answer", "accepted"]) is SHORT_ANSWER
    with pytest.raises(ValueError, match="unknown reader 'long'; use one of: auto, final, short"):
        reader_for("long")


def test_temperature_sweep_in_the_plan_and_bad_values():
    plan = condition_plan(EvalConfig(k=2, sigmas=(0.01,), temperature=0.7, temperatures=(0.3, 0.7, 1.0)))
    assert [c["name"] for c in plan] == ["greedy", "temperature 0.7", "temperature 0.3", "temperature 1",
                                         "minds sigma=0.01"]
    with pytest.raises(ValueError, match="temperatures must be finite and > 0"):
        EvalConfig(temperatures=(0.0,))
    with pytest.raises(ValueError, match="reader must be auto, final or short"):
        EvalConfig(reader="x")


def _result(conditions):
    """An EvalResult of hand-made conditions over 4 problems (grids of k = 2 draws)."""
    out = []
    for name, kind, grid in conditions:
        out.append(score_condition(name, kind, grid, ["1"] * len(grid)))
    return EvalResult(config=EvalConfig(k=2), conditions=out, prompts=["p"] * 4, answers=["1"] * 4)


def test_minds_are_compared_with_the_temperature_matched_in_diversity_and_in_accuracy():
    right, wrong = "#### 1", "#### 2"
    result = _result([
        ("greedy", "greedy", [[right]] * 4),
        # T=0.3: accurate, never diverse; T=1: diverse, half right
        ("temperature 0.3", "samples", [[right, right]] * 4),
        ("temperature 1", "samples", [[right, "#### 3"]] * 4),
        # minds: diverse like T=1 (2 answers per problem) and accurate like T=1 (half right)
        ("minds sigma=0.01", "minds", [[right, wrong]] * 4),
        # minds: as accurate as T=0.3 and as diverse as T=0.3
        ("minds sigma=0.001", "minds", [[right, right]] * 4),
    ])
    matched = matched_temperatures(result)
    assert matched == {"minds sigma=0.01": {"diversity": "temperature 1", "accuracy": "temperature 1"},
                       "minds sigma=0.001": {"diversity": "temperature 0.3", "accuracy": "temperature 0.3"}}
    rows = [r for r in comparisons_vs_baselines(result, n_boot=200) if r.get("match")]
    assert {(r["condition"], r["baseline"], r["match"]) for r in rows} == {
        ("minds sigma=0.01", "temperature 1", "diversity+accuracy"),
        ("minds sigma=0.001", "temperature 0.3", "diversity+accuracy")}


def test_one_temperature_keeps_the_plain_comparison():
    result = _result([("greedy", "greedy", [["#### 1"]] * 4), ("temperature 1", "samples", [["#### 1", "#### 2"]] * 4),
                      ("minds sigma=0.01", "minds", [["#### 1", "#### 1"]] * 4)])
    rows = comparisons_vs_baselines(result, n_boot=200)
    assert [(r["condition"], r["baseline"]) for r in rows] == [
        ("temperature 1", "greedy"), ("temperature 1", "greedy"), ("minds sigma=0.01", "greedy"),
        ("minds sigma=0.01", "greedy"), ("minds sigma=0.01", "temperature 1"), ("minds sigma=0.01", "temperature 1")]
    assert not any(r.get("match") for r in rows)


def test_demo_on_facts_reads_free_form_answers_and_draws_the_frontiers(tmp_path):
    """``manyminds demo --task facts`` with a temperature sweep: the short reader's keys and verdicts
    in results.jsonl (recomputed here from the completions), matched comparisons, frontiers.png."""
    import json

    from typer.testing import CliRunner

    from manyminds.cli import app
    from manyminds.tasks import load_task
    from manyminds.tasks.short_answer import is_correct

    out_dir = tmp_path / "demo"
    out = CliRunner().invoke(app, ["demo", "--model", "tiny-arith", "--task", "facts", "--problems", "4",
                                   "--minds", "2", "--sigmas", "0.05", "--temperatures", "0.3,1.5",
                                   "--no-semantic", "--out-dir", str(out_dir)], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert "facts test, 4 problems" in out.stdout and max(map(len, out.stdout.splitlines())) <= 80
    assert (out_dir / "frontiers.png").stat().st_size > 0
    payload = json.loads((out_dir / "results.json").read_text())
    names = [c["name"] for c in payload["conditions"]]
    assert names == ["greedy", "temperature 0.7", "temperature 0.3", "temperature 1.5", "minds sigma=0.05"]
    assert all(r.get("match") for r in payload["comparisons"] if r["baseline"].startswith("temperature"))
    accepted = {r["prompt"]: r["accepted"] for r in load_task("facts", split="test")}
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        for cond in row["conditions"].values():
            assert cond["answers"] == [answer_key(c, row["prompt"]) for c in cond["completions"]]
            assert cond["correct"] == [float(is_correct(c, accepted[row["prompt"]])) for c in cond["completions"]]


def test_demo_bad_task_and_temperatures_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from manyminds.cli import app

    for bad, message in ((["--task", "poems"], "--task takes arith or facts"),
                         (["--temperatures", "0.3,x"], "--temperatures takes comma-separated numbers")):
        out = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "none"), *bad])
        assert out.exit_code != 0 and message in out.output, out.output
