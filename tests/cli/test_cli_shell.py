"""The shell of the ``manyminds`` command: cheap to start, one-line errors, tables at 80 columns."""

from __future__ import annotations

import subprocess
import sys

from rich.console import Console
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.cli.grpo import grpo_history_table
from manyminds.cli.renyi import ensemble_table

runner = CliRunner()
HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


def _imported_after(code: str) -> list[str]:
    script = f"{code}; import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_the_package_imports_no_heavy_library():
    assert _imported_after("import manyminds.cli") == []
    assert _imported_after("import manyminds; manyminds.__all__") == []
    # the lazy names still resolve
    assert "torch" in _imported_after("import manyminds; manyminds.Population")


def test_help_and_an_unknown_command_answer_without_heavy_imports():
    script = "import sys; from manyminds.cli import main; sys.argv = ['manyminds', '--help']; main()"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "sft" in out.stdout and "grpo" in out.stdout
    result = runner.invoke(app, ["gpro"])
    assert result.exit_code == 2


def test_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["sft", "--data", str(tmp_path / "missing.jsonl")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: dataset file")
    result = runner.invoke(app, ["--verbose", "sft", "--data", str(tmp_path / "missing.jsonl")])
    assert result.exit_code != 0 and result.exception is not None  # raised, so a traceback is shown


def _render(table) -> str:
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


def test_tables_are_readable_at_80_columns():
    history = [{"step": s, "reward": 0.5, "reward_std": 0.25, "frac_reward_zero_std": 0.125,
                "minds/unique_answers_per_group": 3.5, "entropy": 1.25, "loss": -0.0123} for s in (1, 2)]
    text = _render(grpo_history_table(history))
    assert "…" not in text and "zero-std" in text and "-0.012" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    logs = [{"loss": 1.0, "effective_members": 3.9, **{f"member_{k}/{m}": 0.5 for k in range(8)
                                                       for m in ("nll", "responsibility", "route_share")}}]
    text = _render(ensemble_table("alpha-Renyi SFT: K=8, alpha=0.8", logs, 8))
    assert "…" not in text and "effective members" in text and "share" in text
    assert max(len(line) for line in text.splitlines()) <= 80
