"""Argument errors of ``manyminds sft|dpo|grpo`` come before transformers / TRL / torch are imported.

The fast check (:mod:`manyminds.cli.fast_check`) works from a committed list of each command's fields and
option strings; the first tests rebuild that list from the real ``TrlParser`` and compare, so a
stale list fails here. The others run the ``manyminds`` entry point in a fresh interpreter and assert
that it printed one ``error:`` line, exited with 2, and never imported torch (not on wall-clock time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manyminds.cli import _fields, fast_check, fields
from manyminds.cli.common import CLIError

HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


# ------------------------------------------------------------------------- the committed list
def test_committed_list_matches_the_config_dataclasses():
    """A stale ``_fields.py`` fails: regenerate it with ``python -m manyminds.cli.fields --write``."""
    assert "learning_rate" in _fields.FIELDS["sft"] and "mind_sigma" in _fields.FIELDS["grpo"]
    assert _fields.EXTRA_OPTIONS["grpo"]["--sigma"] == "mind_sigma"
    assert fields.render() == fields.GENERATED.read_text(), \
        "src/manyminds/cli/_fields.py is stale; run `python -m manyminds.cli.fields --write`"


@pytest.mark.parametrize("command", fast_check.COMMANDS)
def test_option_strings_are_exactly_the_parsers(command):
    from manyminds.cli.train_args import make_parser

    parser = make_parser(command)
    real = {option: a.dest for a in parser._actions if a.dest != "help" for option in a.option_strings}
    assert fast_check.option_fields(command) == real


@pytest.mark.parametrize("argv", [
    ["--learning_rate", "1e-3"], ["--learning-rate=1e-3"], ["--lr", "1e-3"], ["--learning_rat", "1e-3"],
    ["--no_dataloader_pin_memory"], ["--bf16", "false"], ["--learning_ratee", "1"], ["--lerning_rate", "1"],
    ["--mod", "x"], ["--model", "x"], ["--num_mem", "2"], ["--steps=2"], ["--seed", "1", "--", "--bogus"],
])
def test_fast_check_accepts_exactly_what_the_parser_accepts(argv):
    """Abbreviations are accepted when unique, refused when ambiguous or unknown, as argparse does."""
    from manyminds.cli.train_args import make_parser

    parser = make_parser("sft")
    try:
        _, unknown = parser.parse_known_args(argv)
        parser_ok = not [u for u in unknown if u.startswith("--") and u != "--"]
    except CLIError:  # make_parser's error(): an ambiguous abbreviation
        parser_ok = False
    try:
        fast_check.check_arguments("sft", argv)
        fast_ok = True
    except CLIError:
        fast_ok = False
    assert fast_ok == parser_ok, argv


def test_task_is_checked_only_without_data(tmp_path):
    fast_check.check_arguments("sft", ["--task", "conflcit", "--data", "rows.jsonl"])  # --data wins
    fast_check.check_arguments("sft", ["--task=prefs"])
    config = tmp_path / "run.yaml"
    config.write_text("task: arith\n")
    fast_check.check_arguments("sft", ["--task", "conflict"], str(config))  # the command line overrides
    with pytest.raises(CLIError, match="unknown task 'conflcit'"):
        fast_check.check_arguments("sft", ["--task", "conflcit"], str(config))
    config.write_text("task: arth\n")
    with pytest.raises(CLIError, match=r"unknown task 'arth' \(did you mean arith\?\)"):
        fast_check.check_arguments("grpo", [], str(config))
    fast_check.check_arguments("grpo", ["--task", "arith"], str(config))


# -------------------------------------------------------------------------- the real command
_SCRIPT = """
import sys
from manyminds.cli import main
sys.argv = ["manyminds", *{argv!r}]
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
sys.exit(code)
"""


def _run(argv: list[str], cwd: Path) -> tuple[int, str, list[str]]:
    """``(exit code, stderr, heavy modules imported)`` of ``manyminds *argv`` in a fresh interpreter."""
    script = "import json" + _SCRIPT.format(argv=list(argv), heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd,
                         check=False, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})
    return out.returncode, out.stderr, json.loads(out.stdout.strip().splitlines()[-1])


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv, message", [
    (["sft", "--learning_ratee", "1"],
     ("unknown option --learning_ratee (did you mean --learning_rate, --logging_strategy?); "
      "`manyminds sft --help` lists every option")),
    (["dpo", "--num-memebrs", "2"], "unknown option --num-memebrs (did you mean --num-members"),
    (["grpo", "--mod", "x"], "ambiguous option: --mod could match --model,"),
    (["sft", "--task", "conflcit"], ("unknown task 'conflcit' (did you mean conflict?); valid tasks: arith, "
                                     "conflict, prefs, mental")),
    (["dpo", "--config", "missing.yaml"], "config file missing.yaml does not exist; pass an existing YAML file"),
    (["grpo", "--config", "YAML:mind_sigma: 0.02\n\nlerning_rate: 0.1\n"],
     ("run.yaml: unknown option 'lerning_rate' (did you mean learning_rate, logging_strategy?) on line 3; "
      "the keys are the fields")),
    (["grpo", "--config", "YAML:lr: 0.1\n"], ("unknown option 'lr' (did you mean learning_rate? --lr is a "
                                              "command-line alias) on line 1")),
    (["grpo", "--config=YAML:mind_sigma: 0.02\nnum_generations: [4\nmax_steps: 3\n"],
     "run.yaml:3:10: YAML does not parse (expected ',' or ']', but got ':'); fix the file at that line"),
    (["sft", "--config", "YAML:- a list\n"], "run.yaml must hold a YAML mapping of option names to values"),
    (["sft", "--config", "YAML:task: conflcit\n"], "unknown task 'conflcit' (did you mean conflict?)"),
])
def test_argument_errors_are_one_line_without_importing_torch(tmp_path, argv, message):
    argv = [a.replace(a[a.index("YAML:"):], _yaml(tmp_path, a.split("YAML:", 1)[1])) if "YAML:" in a else a
            for a in argv]
    code, stderr, heavy = _run(argv, tmp_path)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0], lines[0]
    assert heavy == [], f"imported {heavy} before the error"


def test_value_errors_still_go_through_the_dataclasses(tmp_path):
    """The fast check knows names, not values: --learning_rate -1 passes it and the dataclass refuses it
    (the slow path: the parser imports TRL), so the comparison above is not vacuous."""
    code, stderr, heavy = _run(["sft", "--learning_rate", "-1"], tmp_path)
    assert code == 2 and "learning_rate must be > 0" in stderr, stderr
    assert "trl" in heavy


def test_check_and_write_regenerate_a_stale_list(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "_fields.py"
    stale.write_text(fields.GENERATED.read_text().replace('"mind_sigma", ', "", 1))
    monkeypatch.setattr(fields, "GENERATED", stale)
    assert fields.main(["--check"]) == 1
    assert "is stale; run `python -m manyminds.cli.fields --write`" in capsys.readouterr().err
    assert fields.main(["--write"]) == 0 and fields.main(["--check"]) == 0
    assert '"mind_sigma", ' in stale.read_text()
