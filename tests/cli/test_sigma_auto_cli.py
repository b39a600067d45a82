"""``--sigma auto`` on the command line: the shared parser (``parse_sigma_option``), the resolver that
announces the calibrated sigma (``resolve_sigmas``), ``manyminds generate --sigma auto`` and the
``sigma`` column of ``manyminds zoo list``."""

import json
import re

import pytest
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.cli.common import CLIError, parse_sigma_option, resolve_sigmas

from .conftest import error_line

runner = CliRunner()
PROMPT = "Q: 3+4-2\nA:"


@pytest.mark.parametrize("values, expected", [
    (["0.02"], [0.02]),
    (["auto"], ["auto"]),
    (["AUTO"], ["auto"]),
    (["0"], [0.0]),
    (["0.01,0.02", "auto"], [0.01, 0.02, "auto"]),
    (["auto", "0.05", "auto"], ["auto", 0.05]),
])
def test_parse_sigma_option(values, expected):
    assert parse_sigma_option(values) == expected


@pytest.mark.parametrize("values, message", [
    (["foo"], "--sigma takes a number or 'auto', got 'foo'"),
    (["0.02,x"], "--sigma takes a number or 'auto', got 'x'"),
    ([""], "--sigma takes a number or 'auto', got nothing"),
    ([], "--sigma takes a number or 'auto', got nothing"),
    (["-1"], "--sigma must be finite and >= 0, or 'auto'; got '-1'"),
    (["nan"], "--sigma must be finite and >= 0"),
    (["inf"], "--sigma must be finite and >= 0"),
])
def test_parse_sigma_option_refuses_bad_values_naming_the_fix(values, message):
    with pytest.raises(CLIError, match=re.escape(message)):
        parse_sigma_option(values)


def test_resolve_sigmas_without_auto_needs_no_model(capsys):
    assert resolve_sigmas([0.01, 0.2], None, None, "x") == [0.01, 0.2]
    assert capsys.readouterr().err == ""


def test_resolve_sigmas_announces_the_auto_sigma(monkeypatch, tmp_path, capsys):
    import manyminds

    monkeypatch.setenv("MANYMINDS_CACHE", str(tmp_path))
    model, tok = manyminds.load("tiny-arith")
    capsys.readouterr()  # the loading bar
    assert resolve_sigmas(["auto", 0.02], model, tok, "tiny-arith") == [0.119, 0.02]
    err = capsys.readouterr().err
    assert re.search(r"^sigma auto = 0\.1190 \(the zoo's documented sigma for tiny-arith, cached at "
                     + re.escape(str(tmp_path / "sigma")) + r"/tiny-arith-\w+\.json\)$", err.strip()), err


def test_generate_sigma_auto_prints_the_line_and_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MANYMINDS_CACHE", raising=False)
    out = tmp_path / "answers.jsonl"
    for _ in range(2):  # the second run reads the cache
        result = runner.invoke(app, ["generate", "--sigma", "auto", "--minds", "2", "--max-new-tokens", "12",
                                     "--out", str(out), PROMPT], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("sigma auto = ")]
        expected = (r"sigma auto = 0\.1190 \(the zoo's documented sigma for tiny-arith, cached at "
                    + re.escape(str(tmp_path / "home" / "sigma")) + r"/tiny-arith-\w+\.json\)")
        assert len(lines) == 1 and re.fullmatch(expected, lines[0]), result.output
        assert "majority vote" in result.output
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["sigma"] for r in records] == [0.119, 0.119] and [r["mind"] for r in records] == [0, 1]
    assert len(list((tmp_path / "home" / "sigma").glob("tiny-arith-*.json"))) == 1


def test_generate_sigma_auto_calibrates_a_model_folder_once(monkeypatch, tmp_path, model_dir):
    from manyminds.population import sigma_cache

    calls = []
    real = sigma_cache.calibrate_sigma

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sigma_cache, "calibrate_sigma", spy)
    monkeypatch.setenv("MANYMINDS_CACHE", str(tmp_path))
    for _ in range(2):
        result = runner.invoke(app, ["generate", "--model", str(model_dir), "--sigma", "auto", "--minds", "2",
                                     "--max-new-tokens", "4", "--norms", "final", PROMPT], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert f"(calibrated for {model_dir}, cached at {tmp_path / 'sigma'}" in result.output
    assert len(calls) == 1 and calls[0]["norms"] == "final"


@pytest.mark.parametrize("sigma, fix", [("foo", "--sigma takes a number or 'auto', got 'foo'"),
                                        ("0.1,0.2", "generate runs one sigma")])
def test_generate_bad_sigma_is_one_line(sigma, fix):
    line = error_line(runner.invoke(app, ["generate", "--sigma", sigma, PROMPT]))
    assert fix in line


def test_generate_plain_number_still_works(monkeypatch, tmp_path):
    monkeypatch.setenv("MANYMINDS_CACHE", str(tmp_path))
    result = runner.invoke(app, ["generate", "--sigma", "0.05", "--minds", "2", "--max-new-tokens", "4", PROMPT],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "sigma auto" not in result.output and "sigma=0.05" in result.output
    assert not (tmp_path / "sigma").exists()


def test_zoo_list_shows_each_models_sigma(monkeypatch, tmp_path):
    from manyminds.zoo.registry import SIGMA

    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    result = runner.invoke(app, ["zoo", "list"], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "sigma (auto)" in result.output
    for name, sigma in SIGMA.items():
        row = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert (" - " if sigma is None else f" {sigma:g} ") in row, row


@pytest.mark.parametrize("command", [
    ["eval", "--n", "2", "--k", "2", "--sigma", "auto", "--sigma", "0.05"],
    ["demo", "--problems", "2", "--minds", "2", "--sigmas", "0.05,auto", "--no-semantic"],
])
def test_eval_and_demo_take_sigma_auto(command, monkeypatch, tmp_path):
    """``--sigma auto`` in eval / ``--sigmas ...,auto`` in demo: the documented sigma of the zoo model
    becomes one minds condition beside the numbers given."""
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MANYMINDS_CACHE", raising=False)
    out_dir = tmp_path / command[0]
    result = runner.invoke(app, [*command, "--max-new-tokens", "8", "--out-dir", str(out_dir)],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "sigma auto = 0.1190 (the zoo's documented sigma for tiny-arith" in result.output
    payload = json.loads((out_dir / "results.json").read_text())
    minds = sorted(c["sigma"] for c in payload["conditions"] if c["kind"] == "minds")
    assert minds == [0.05, 0.119]


def test_demo_bad_sigmas_name_auto(tmp_path):
    result = runner.invoke(app, ["demo", "--model", str(tmp_path / "none"), "--sigmas", "0.1,foo"])
    assert result.exit_code != 0 and "--sigmas takes comma-separated numbers" in result.output
