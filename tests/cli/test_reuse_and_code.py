"""``manyminds sft|dpo|grpo``: a used output folder is never mixed with a new run (run ids), and code
named on the command line (a dotted reward path, a config's ``env:``) is announced and checked.

Tiny random models saved in-process: every run is a step or two on CPU.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.cli.common import CLIError
from manyminds.cli.grpo import reward_functions
from manyminds.cli.run_dir import check_output_dir
from manyminds.cli.train_args import parse
from manyminds.rewards import answer_reward
from manyminds.training.common import RUN_ID_FILE, read_run_id, write_run_id

from .conftest import error_line

runner = CliRunner()


def _config(out, resume=None):
    return SimpleNamespace(output_dir=str(out), resume_from_checkpoint=resume)


# ----------------------------------------------------------------------------- output folder checks
def test_non_empty_output_dir_needs_resume_or_overwrite(tmp_path):
    assert check_output_dir(_config(tmp_path / "new"), overwrite=False)  # missing folder: a fresh run id
    assert check_output_dir(_config(tmp_path), overwrite=False)  # empty folder
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(CLIError, match="--resume .*--overwrite_output_dir"):
        check_output_dir(_config(tmp_path), overwrite=False)
    first, second = (check_output_dir(_config(tmp_path), overwrite=True) for _ in range(2))
    assert first != second  # every new run gets its own id


def test_resume_keeps_the_run_id_and_refuses_another_runs_checkpoints(tmp_path):
    write_run_id(tmp_path, "run-a")
    (tmp_path / "checkpoint-1").mkdir()
    write_run_id(tmp_path / "checkpoint-1", "run-a")
    assert check_output_dir(_config(tmp_path, "last"), overwrite=False) == "run-a"
    (tmp_path / "checkpoint-9").mkdir()
    write_run_id(tmp_path / "checkpoint-9", "run-b")
    with pytest.raises(CLIError, match="checkpoint-9 belongs to run run-b, not to run run-a"):
        check_output_dir(_config(tmp_path, "last"), overwrite=False)
    # a checkpoint named explicitly is checked too
    other = tmp_path.parent / f"{tmp_path.name}_other" / "checkpoint-3"
    other.mkdir(parents=True)
    write_run_id(other, "run-c")
    (tmp_path / "checkpoint-9" / RUN_ID_FILE).unlink()
    with pytest.raises(CLIError, match="belongs to run run-c"):
        check_output_dir(_config(tmp_path, str(other)), overwrite=False)
    # ... and in an empty folder it continues its own run
    assert check_output_dir(_config(tmp_path / "fresh", str(other)), overwrite=False) == "run-c"


def test_sft_reuse_is_refused_overwrite_starts_a_new_run(model_dir, tmp_path):
    out = tmp_path / "sft"
    args = ["sft", "--model", str(model_dir), "--steps", "1", "--save_steps", "1", "--num_examples", "4",
            "--members", "2", "--output_dir", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run_id = read_run_id(out)
    assert run_id and read_run_id(out / "checkpoint-1") == run_id  # recorded next to the completion marker
    assert (out / "checkpoint-1" / "checkpoint_complete").exists()

    line = error_line(runner.invoke(app, args))  # the same command again: refused, nothing touched
    assert "is not empty" in line and "--resume" in line and "--overwrite_output_dir" in line
    assert read_run_id(out) == run_id

    (out / "checkpoint-7").mkdir()  # an old run's leftover: deleted when a new run overwrites the folder
    result = runner.invoke(app, [*args, "--overwrite_output_dir"])
    assert result.exit_code == 0, result.output
    assert "deleted 2 checkpoint folder(s)" in " ".join(result.output.split())
    new_id = read_run_id(out)
    assert new_id and new_id != run_id and read_run_id(out / "checkpoint-1") == new_id
    assert not (out / "checkpoint-7").exists()

    write_run_id(out / "checkpoint-1", "someone-else")  # resuming another run's checkpoint is refused
    line = error_line(runner.invoke(app, [*args, "--resume"]))
    assert "belongs to run someone-else" in line


def test_grpo_checkpoints_carry_the_run_id(model_dir, tmp_path):
    out = tmp_path / "grpo"
    result = runner.invoke(app, ["grpo", "--model", str(model_dir), "--n", "4", "--num_generations", "2",
                                 "--per_device_train_batch_size", "4", "--max_completion_length", "4", "--steps",
                                 "1", "--save_steps", "1", "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint-1" / "mind_state.json").exists()
    assert read_run_id(out) and read_run_id(out / "checkpoint-1") == read_run_id(out)


# ------------------------------------------------------------------------------------ code as code
def test_dotted_reward_is_announced_and_must_be_callable(capsys):
    with pytest.raises(TypeError, match="'math.pi' is a float, not a function"):
        reward_functions(["math.pi"])
    assert reward_functions(["os.path.join"]) == [os.path.join]
    assert "importing reward os.path.join" in " ".join(capsys.readouterr().err.split())
    assert reward_functions(["answer"]) == [answer_reward] and "importing" not in capsys.readouterr().err


def test_grpo_cli_refuses_a_non_callable_reward(model_dir, tmp_path):
    result = runner.invoke(app, ["grpo", "--model", str(model_dir), "--reward_funcs", "math.pi", "--output_dir",
                                 str(tmp_path / "o")])
    assert result.exit_code == 2 and "'math.pi' is a float, not a function" in result.output, result.output
    assert "Traceback" not in result.output


def test_config_env_is_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MANYMINDS_TEST_ENV", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"env": {"MANYMINDS_TEST_ENV": "1"}, "max_steps": 1}))
    try:
        parse("sft", ["--config", str(path)])
        import os

        assert os.environ["MANYMINDS_TEST_ENV"] == "1"
    finally:
        monkeypatch.delenv("MANYMINDS_TEST_ENV", raising=False)  # TrlParser set it directly
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path} set environment variables MANYMINDS_TEST_ENV" in err
    path.write_text(yaml.safe_dump({"max_steps": 1}))  # no env: no notice
    parse("sft", ["--config", str(path)])
    assert "environment" not in capsys.readouterr().err
