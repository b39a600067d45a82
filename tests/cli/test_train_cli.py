"""``manyminds sft|dpo|grpo``: the config dataclasses are the CLI (TrlParser), YAML configs, and bad input.

Tiny random models saved in-process: every run is a few steps on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from manyminds.cli import app

from .conftest import error_line

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
REWARD = "_cli_rewards.text_hash_reward"
runner = CliRunner()


@pytest.fixture
def rewards_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _python_grpo(yaml_path: Path, model_dir: Path, out: Path, **overrides):
    """The run of ``manyminds grpo --config yaml_path`` written out in Python (library API only)."""
    import importlib

    import manyminds
    from manyminds.tasks import load_task
    from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer

    cfg = yaml.safe_load(yaml_path.read_text())
    names = {f.name for f in dataclasses.fields(PopulationGRPOConfig)}
    config = PopulationGRPOConfig(**{**{k: v for k, v in cfg.items() if k in names}, "output_dir": str(out),
                                     **overrides})
    module, attr = REWARD.rsplit(".", 1)
    reward = getattr(importlib.import_module(module), attr)
    model, tok = manyminds.load(str(model_dir))
    rows = load_task(cfg["task"], split="train", n=cfg["num_examples"], seed=0)
    trainer = PopulationGRPOTrainer(model, reward_funcs=[reward], args=config, train_dataset=rows,
                                    processing_class=tok)
    trainer.train()
    return _params(model), trainer.state.log_history


def test_grpo_yaml_cli_equals_python(model_dir, tmp_path, rewards_on_path):
    """Done-when: `manyminds grpo --config examples/grpo.yaml --max_steps 3` == the same run from Python."""
    from transformers import AutoModelForCausalLM

    yaml_path = EXAMPLES / "grpo.yaml"
    result = runner.invoke(app, ["grpo", "--config", str(yaml_path), "--max_steps", "3", "--model", str(model_dir),
                                 "--reward_funcs", REWARD, "--output_dir", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "training log" in result.output and "{'loss'" not in result.output  # no raw TRL log dicts
    cli = _params(AutoModelForCausalLM.from_pretrained(tmp_path / "cli" / "final"))
    init = _params(AutoModelForCausalLM.from_pretrained(model_dir))
    py, history = _python_grpo(yaml_path, model_dir, tmp_path / "py", max_steps=3)
    other, _ = _python_grpo(yaml_path, model_dir, tmp_path / "other", max_steps=3, seed=1)
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]
    # the comparison can fail: training moved the weights, and another seed moves them elsewhere
    assert any(not torch.equal(cli[n], init[n]) for n in cli)
    assert any(not torch.equal(other[n], py[n]) for n in py)
    for name in cli:
        torch.testing.assert_close(cli[name], py[name], rtol=0, atol=1e-6, msg=name)


def test_grpo_python_config_needs_no_bf16_flag_on_cpu():
    """The README's Python example on a CPU machine: TRL's bf16=True default would refuse to start."""
    from manyminds.training import PopulationGRPOConfig

    if torch.cuda.is_available():
        pytest.skip("the CPU default only")
    assert PopulationGRPOConfig().bf16 is False
    assert PopulationGRPOConfig().output_dir == os.path.join("runs", "grpo")
    with pytest.raises(ValueError, match="bf16"):
        PopulationGRPOConfig(bf16=True)  # an explicit request is passed on, and refused by transformers


def test_sft_yaml_overrides_resume_and_table(model_dir, tmp_path):
    out = tmp_path / "sft"
    args = ["sft", "--config", str(EXAMPLES / "sft.yaml"), "--model", str(model_dir), "--max_steps", "2",
            "--num_examples", "8", "--members", "2", "--output_dir", str(out)]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "alpha-Renyi SFT: K=2" in result.output and "effective members" in result.output
    assert "…" not in result.output  # readable at 80 columns
    run = json.loads((out / "manyminds_ensemble.json").read_text())
    assert run["num_members"] == 2 and run["alpha"] == 0.8 and run["task"] == "conflict"
    assert (out / "members" / "member_1" / "adapter_config.json").exists()
    # --resume: the run is complete, the newest checkpoint is picked and nothing more is trained
    result = runner.invoke(app, [*args, "--save_steps", "1", "--resume"])
    assert result.exit_code == 0, result.output


def test_dpo_on_jsonl_with_yaml(model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": "Q: 1+1\nA:", "chosen": " #### 2", "rejected": " #### 3"})
                              for _ in range(4)))
    result = runner.invoke(app, ["dpo", "--config", str(EXAMPLES / "dpo.yaml"), "--model", str(model_dir),
                                 "--data", str(data), "--steps", "1", "--members", "2",
                                 "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "alpha-Renyi DPO: K=2" in result.output


def test_help_lists_the_dataclass_fields():
    result = runner.invoke(app, ["grpo", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in ("--mind_sigma", "--learning_rate", "--num_generations", "--model_name_or_path", "--reward_funcs",
                   "--steps MAX_STEPS alias of --max_steps"):
        assert option in text, option
    result = runner.invoke(app, ["sft", "--help"])
    assert result.exit_code == 0 and "--num_members" in result.output and "--alpha" in result.output


@pytest.mark.parametrize("command", ["sft", "dpo", "grpo"])
def test_trust_remote_code_is_a_field_of_the_trainer_config(command):
    """One option, in one place for every command: the trainer's config, as in TRL's configs."""
    from manyminds.cli.train_args import make_parser, parse

    owners = [a for a in make_parser(command)._actions if "--trust_remote_code" in a.option_strings]
    assert len(owners) == 1
    *script_args, config = parse(command, ["--trust_remote_code", "true", "--output_dir", "unused"])
    assert config.trust_remote_code is True
    assert not any(hasattr(args, "trust_remote_code") for args in script_args)


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command, args, message", [
    ("sft", ["--task", "conflcit"], "unknown task 'conflcit' (did you mean conflict?)"),
    ("sft", ["--learning_rate", "-1"], "learning_rate must be > 0"),
    ("sft", ["--lr", "0"], "learning_rate must be > 0"),
    ("sft", ["--lerning_rate", "1e-3"], "unknown option --lerning_rate (did you mean --learning_rate"),
    ("sft", ["--alpha", "1.5"], "alpha must be in"),
    ("sft", ["--members", "0"], "num_members"),
    ("sft", ["--r", "0"], "rank r must be"),
    ("grpo", ["--steps", "-1"], "argument --steps: takes optimizer steps >= 1"),
    ("grpo", ["--max_steps", "-5"], "max_steps must be >= 1, or -1"),
    ("grpo", ["--max_steps", "0"], "max_steps must be >= 1, or -1"),
    ("grpo", ["--sigma", "-1"], "mind_sigma must be >= 0"),
    ("grpo", ["--num_generations", "1"], "num_generations must be >= 2"),
    ("grpo", ["--reward_funcs", "answr"], "unknown reward 'answr' (did you mean answer?)"),
    ("dpo", ["--config", "missing.yaml"], "config file missing.yaml does not exist"),
])
def test_bad_arguments_end_in_one_line(model_dir, tmp_path, command, args, message):
    result = runner.invoke(app, [command, "--model", str(model_dir), "--output_dir", str(tmp_path / "o"), *args])
    line = error_line(result)
    assert message in line, line
    assert not (tmp_path / "o").exists()  # nothing started


def test_bad_yaml_names_file_and_line(model_dir, tmp_path):
    path = _yaml(tmp_path, "mind_sigma: 0.02\nnum_generations: [4\nmax_steps: 3\n")
    line = error_line(runner.invoke(app, ["grpo", "--config", path]))
    assert f"{path}:3:" in line and "YAML does not parse" in line
    path = _yaml(tmp_path, "mind_sigma: 0.02\nlerning_rate: 0.1\n")
    line = error_line(runner.invoke(app, ["grpo", "--config", path]))
    assert f"{path}: unknown option 'lerning_rate' (did you mean learning_rate" in line
    path = _yaml(tmp_path, "learning_rate: -0.5\n")
    line = error_line(runner.invoke(app, ["grpo", "--config", path]))
    assert "learning_rate must be > 0" in line and path in line


def test_bad_data_and_model_files_are_named(model_dir, tmp_path):
    line = error_line(runner.invoke(app, ["sft", "--model", str(model_dir), "--data", str(tmp_path / "missing.jsonl")]))
    assert f"dataset file {tmp_path / 'missing.jsonl'} does not exist" in line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": \n')
    line = error_line(runner.invoke(app, ["sft", "--model", str(model_dir), "--data", str(bad)]))
    assert f"{bad} is not a valid .jsonl dataset" in line
    rows = tmp_path / "no_answer.jsonl"
    rows.write_text(json.dumps({"prompt": "Q: 1+1\nA:"}) + "\n")
    result = runner.invoke(app, ["grpo", "--model", str(model_dir), "--data", str(rows), "--output_dir",
                                 str(tmp_path / "o")])
    assert "'answer' column" in error_line(result) and result.exit_code == 2


def test_missing_and_corrupt_models_fail_at_once(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    line = error_line(runner.invoke(app, ["sft", "--model", "runs/does-not-exist"]))
    assert "no model folder at runs/does-not-exist" in line
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in Path(model_dir).iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    line = error_line(runner.invoke(app, ["sft", "--model", str(corrupt), "--max_steps", "1"]))
    assert f"{weights} is corrupt or truncated" in line
