"""``manyminds eval`` / ``demo``: --seeds, --confidence, the interval and paired tables at 80 columns,
results.jsonl per seed; and the user-facing warnings shown without --verbose (CliRunner)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.evaluation.stats import bootstrap_interval, mcnemar_exact

runner = CliRunner()
MINDS = "minds sigma=0.2"


def test_eval_seeds_prints_intervals_and_paired_tests_in_80_columns(tmp_path):
    out_dir = tmp_path / "eval"
    out = runner.invoke(app, ["eval", "--model", "tiny-arith", "--n", "6", "--k", "3", "--sigma", "0.2",
                              "--max-new-tokens", "32", "--no-chat", "--seeds", "2", "--confidence", "0.9",
                              "--out-dir", str(out_dir)], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert max(map(len, text.splitlines())) <= 80 and "…" not in text
    assert "mean of 2 seeds" in text and "maj@k 90% CI" in text and "paired differences" in text
    payload = json.loads((out_dir / "results.json").read_text())
    assert payload["seeds"] == 2 and payload["confidence"] == 0.9
    assert payload["seed_list"] == [{"seed": 0, "mind_seed": 0}, {"seed": 1, "mind_seed": 1}]
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["seed"] for r in rows] == [0] * 6 + [1] * 6
    first, second = rows[:6], rows[6:]
    # a second seed draws other minds (and greedy decoding stays what it was)
    assert [r["conditions"][MINDS]["completions"] for r in first] != \
        [r["conditions"][MINDS]["completions"] for r in second]
    assert [r["conditions"]["greedy"]["completions"] for r in first] == \
        [r["conditions"]["greedy"]["completions"] for r in second]
    # the printed numbers come from these rows: seed-averaged per-problem majority, bootstrapped
    maj = np.array([[r["conditions"][MINDS]["majority_correct"] for r in part] for part in (first, second)])
    entry = payload["intervals"][MINDS]["majority_at_k"]
    assert entry["method"] == "bootstrap" and entry["value"] == pytest.approx(maj.mean())
    assert (entry["low"], entry["high"]) == pytest.approx(bootstrap_interval(maj.mean(axis=0), 0.9), abs=1e-12)
    means = {c["name"]: c for c in payload["conditions"]}
    assert means[MINDS]["majority_at_k"] == pytest.approx(maj.mean())
    assert [c["majority_at_k"] for c in payload["per_seed"][1] if c["name"] == MINDS] == \
        [pytest.approx(maj[1].mean())]
    compared = {(r["condition"], r["baseline"], r["metric"]) for r in payload["comparisons"]}
    assert (MINDS, "greedy", "majority_at_k") in compared and (MINDS, "temperature 1", "pass_at_1") in compared
    assert f"{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]" in text


def test_eval_one_seed_uses_wilson_and_mcnemar(tmp_path):
    out_dir = tmp_path / "eval"
    out = runner.invoke(app, ["eval", "--model", "tiny-arith", "--n", "8", "--k", "3", "--sigma", "0.3",
                              "--max-new-tokens", "32", "--no-chat", "--json", "--out-dir", str(out_dir)])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout[out.stdout.index("{"):])
    rows = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["seed"] for r in rows} == {0}
    name = "minds sigma=0.3"
    a = [r["conditions"][name]["majority_correct"] for r in rows]
    b = [r["conditions"]["greedy"]["majority_correct"] for r in rows]
    row = next(r for r in payload["comparisons"]
               if (r["condition"], r["baseline"], r["metric"]) == (name, "greedy", "majority_at_k"))
    assert row["test"] == "mcnemar" and row["p"] == pytest.approx(mcnemar_exact(a, b), abs=1e-12)
    assert payload["intervals"]["greedy"]["pass_at_1"]["method"] == "wilson"


@pytest.mark.parametrize("command", [["eval", "--n", "2"], ["demo", "--problems", "2"]])
@pytest.mark.parametrize("bad, message", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--confidence", "1.5"], "--confidence must be in (0, 1)"),
    (["--confidence", "0"], "--confidence must be in (0, 1)"),
])
def test_bad_seeds_and_confidence_are_one_line_before_loading(command, bad, message, tmp_path):
    # the model folder does not exist: the option is refused before any model is looked up
    out = runner.invoke(app, [*command, "--model", str(tmp_path / "no_model"), *bad])
    assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_generate_shows_the_collapse_warning_without_verbose():
    out = runner.invoke(app, ["generate", "--sigma", "1e9", "--minds", "2", "Q: 1+2\nA:"])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.stderr.splitlines() if "degenerate repetition" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: 2 of 2 minds' answers")
    assert "MindCollapseWarning" not in out.output and "collapse.py" not in out.output  # one line, no source


def test_calibration_warning_is_one_line_and_other_warnings_stay_hidden(capsys):
    from manyminds.cli.common import setup_quiet
    from manyminds.population import CalibrationWarning

    with warnings.catch_warnings():
        setup_quiet(False)
        warnings.warn("target KL not reached;\n raise sigma_max", CalibrationWarning)
        warnings.warn("a library's own chatter", UserWarning)
        warnings.warn("target KL not reached;\n raise sigma_max", CalibrationWarning)  # shown once
    err = capsys.readouterr().err
    assert err == "warning: target KL not reached; raise sigma_max\n"
