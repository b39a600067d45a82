import importlib.util
import json

import pytest
from typer.testing import CliRunner

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.cli import app
from manyminds.zoo.models import random_model

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_model")
    random_model("qwen2", vocab_size=VOCAB_SIZE).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def test_sft_then_uncertainty(model_dir, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["sft", "--model", str(model_dir), "--members", "2", "--steps", "2",
                                 "--n", "16", "--per_device_train_batch_size", "4", "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "alpha-Renyi SFT" in result.output and "effective" in result.output
    assert (out / "members" / "member_1" / "adapter_config.json").exists()
    run = json.loads((out / "manyminds_ensemble.json").read_text())
    assert run["num_members"] == 2
    # resume: the run is complete, so --resume picks up the last checkpoint and does nothing more
    result = runner.invoke(app, ["sft", "--model", str(model_dir), "--members", "2", "--steps", "2",
                                 "--n", "16", "--per_device_train_batch_size", "4", "--output_dir", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    jsonl = tmp_path / "u.jsonl"
    result = runner.invoke(app, ["uncertainty", str(out), "--n", "4", "--max-new-tokens", "4",
                                 "--output", str(jsonl), "--out-dir", str(tmp_path / "unc")])
    assert result.exit_code == 0, result.output
    assert "auroc_epistem" in result.output
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 4 and len(rows[0]["conditions"]["members"]["answers"]) == 2


def test_dpo_on_jsonl(model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": "Q: 1+1\nA:", "chosen": " #### 2", "rejected": " #### 3"})
                              for _ in range(4)))
    result = runner.invoke(app, ["dpo", "--model", str(model_dir), "--data", str(data), "--members", "2",
                                 "--steps", "1", "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "alpha-Renyi DPO" in result.output


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1.5"], "alpha must be in"),
    (["--members", "0"], "num_members"),
    (["--r", "0"], "rank"),
    (["--target_modules", "nope"], "q_proj"),
])
def test_bad_input(model_dir, tmp_path, args, message):
    result = runner.invoke(app, ["sft", "--model", str(model_dir), "--steps", "1", "--n", "4",
                                 "--output-dir", str(tmp_path / "x"), *args])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())


def test_missing_column_is_named(model_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "Q: 1+1\nA:", "chosen": " #### 2"}) + "\n")
    result = runner.invoke(app, ["dpo", "--model", str(model_dir), "--data", str(data), "--steps", "1",
                                 "--output-dir", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "missing column 'rejected'" in " ".join(result.output.split())


def test_uncertainty_writes_jsonl_json_and_plot(model_dir, tmp_path):
    """Members saved in-process (no training): one JSONL row per prompt, the summary, a risk-coverage PNG."""
    import manyminds
    from manyminds.ensemble import EnsembleLoRA

    base, _ = manyminds.load(str(model_dir))
    EnsembleLoRA(base, num_members=2, r=2, init="diverse", init_std=0.5).save_members(tmp_path / "ens" / "members")
    jsonl, out_dir = tmp_path / "u.jsonl", tmp_path / "unc"
    result = runner.invoke(app, ["uncertainty", str(tmp_path / "ens"), "--model", str(model_dir), "--task",
                                 "conflict", "--n", "4", "--max-new-tokens", "4", "--output", str(jsonl),
                                 "--out-dir", str(out_dir)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert rows == [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]["conditions"]) == {"members", "mixture"}
    members = rows[0]["conditions"]["members"]
    assert members["ids"] == [0, 1] and len(members["answers"]) == 2 and "votes" in members
    assert {"epistemic", "max_epistemic", "disagreement", "reference_epistemic"} <= set(rows[0]["uncertainty"])
    assert isinstance(rows[0]["conflicting"], bool)
    summary = json.loads((out_dir / "results.json").read_text())["summary"]
    assert "mixture_accuracy" in summary and "majority_accuracy" in summary
    if importlib.util.find_spec("matplotlib"):
        assert (out_dir / "risk_coverage.png").stat().st_size > 1000
    result = runner.invoke(app, ["uncertainty", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no ensemble folder" in result.output
