"""``manyminds critical-alpha``: from a saved ensemble member, a PEFT adapter or a briefly trained adapter;
the printed value is the library's; bad input ends in one line that says what to pass."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from manyminds.cli import app
from manyminds.ensemble import EnsembleLoRA
from manyminds.tasks import load_task
from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model

runner = CliRunner()
# damping large enough for V + damping to be positive definite at untrained adapters of a random model
FAST = ["--n", "4", "--damping", "1000", "--iters", "2", "--cg-iters", "3"]


def _model():
    tok = build_tokenizer()
    return random_model("llama", vocab_size=VOCAB_SIZE, seed=0, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("critical_model")
    _model().save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_member_of_a_saved_ensemble_matches_the_library(model_dir, tmp_path):
    from manyminds.training.critical import critical_alpha

    ens = EnsembleLoRA(_model(), num_members=2, r=1, lora_alpha=2, target_modules=["v_proj"], init="diverse",
                       init_std=0.3, seed=0)
    ens.save_members(tmp_path / "run" / "members")
    out = tmp_path / "res.json"
    result = runner.invoke(app, ["critical-alpha", "--model", str(model_dir), "--adapter", str(tmp_path / "run"),
                                 "--member", "1", "--alpha", "0.8", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "alpha*" in result.output and "lambda_max" in result.output and "alpha = 0.8" in result.output
    got = json.loads(out.read_text())
    want = critical_alpha(ens, build_tokenizer(), load_task("conflict", n=512, seed=0), max_examples=4, damping=1000,
                          iters=2, cg_iters=3, member=1)
    assert got["member"] == 1 and got["lambda_max"] == pytest.approx(want.lambda_max, rel=1e-5)


def test_peft_adapter_and_a_briefly_trained_adapter(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)  # PEFT draws the random init from the global RNG: fix it (some draws give an indefinite V)
    peft_model = get_peft_model(_model(), LoraConfig(r=1, target_modules=["v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "peft")
    result = runner.invoke(app, ["critical-alpha", "--model", str(model_dir), "--adapter", str(tmp_path / "peft"),
                                 *FAST])
    assert result.exit_code == 0, result.output
    assert "alpha*" in result.output
    result = runner.invoke(app, ["critical-alpha", "--model", str(model_dir), "--steps", "2", "--train-n", "8",
                                 "--r", "1", "--target-modules", "v_proj", "--batch-size", "4", *FAST])
    assert result.exit_code == 0, result.output
    assert "power iterations" in result.output


@pytest.mark.parametrize("args, message", [
    (["--adapter", "/no/such/folder"], "no such folder"),
    (["--adapter", "{model_dir}"], "neither adapter_config.json nor member_0/; pass a PEFT LoRA adapter"),
    (["--member", "1"], "--member picks a member of --adapter's ensemble"),
    (["--task", "nope"], "unknown task 'nope'"),
])
def test_bad_input_says_what_to_pass(model_dir, args, message):
    args = [a.format(model_dir=model_dir) for a in args]
    line = _error_line(runner.invoke(app, ["critical-alpha", "--model", str(model_dir), *args, *FAST]))
    assert message in line
