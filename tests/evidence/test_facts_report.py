"""docs/real-lm.md section 4 is what ``examples/facts_report.py`` computes from the committed raw
answers: every number there comes from those files through the library's evaluation path."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _report():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec = importlib.util.spec_from_file_location("facts_report", ROOT / "examples" / "facts_report.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "examples"))


def test_the_docs_block_equals_what_the_raw_files_give():
    report = _report()
    if not (report.RUNS / "test").is_dir():
        pytest.fail("docs/data/facts/runs/test is missing: commit the raw answers of examples/facts_runs.py")
    assert report.main(["--check"]) == 0, "run: python examples/facts_report.py"


def test_a_changed_raw_answer_changes_the_block(tmp_path, monkeypatch):
    """The check can fail: flip one greedy test answer to a wrong one and the block differs."""
    report = _report()
    runs = tmp_path / "runs"
    for split in ("dev", "test"):
        (runs / split).mkdir(parents=True)
        for f in (report.RUNS / split).glob("*.jsonl"):
            (runs / split / f.name).write_text(f.read_text())
    greedy = runs / "test" / "greedy_s0.jsonl"
    rows = [json.loads(line) for line in greedy.read_text().splitlines()]
    from manyminds.tasks.short_answer import is_correct

    first_right = next(r for r in rows if is_correct(r["completions"][0], r["accepted"]))
    first_right["completions"] = ["I do not know."]
    greedy.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(report, "RUNS", runs)
    assert report.main(["--check"]) == 1
