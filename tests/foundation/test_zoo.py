import json
import os
import subprocess
import sys

import pytest
import torch

from manyminds import zoo
from manyminds.tasks import load_task
from manyminds.zoo import recipes
from manyminds.zoo.charlm import build_tokenizer


def test_tokenizer_roundtrip(tmp_path):
    tok = build_tokenizer()
    text = "Q: 12+34-5\nA: 12+34=46, 46-5=41\n#### 41"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(text, add_special_tokens=False).input_ids == ids
    assert tok2.decode(ids + [tok2.eos_token_id], skip_special_tokens=True) == text


def test_trained_tiny_is_real_and_loads_with_auto_classes(trained_tiny_path):
    # A separate process loads the checkpoint with plain transformers Auto classes, no custom code.
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "p=sys.argv[1]; m=AutoModelForCausalLM.from_pretrained(p); t=AutoTokenizer.from_pretrained(p);"
        "enc=t(['Q: 1+2\\nA:'], return_tensors='pt', add_special_tokens=False);"
        "p2='Q: 4-5+3\\nA: 4-5+3=-1+3=2\\n#### 2';"
        "print(type(m).__name__, m(**enc).logits.shape[-1], t.decode(t(p2, add_special_tokens=False).input_ids) == p2)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(trained_tiny_path)], capture_output=True, text=True,
                         check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.stdout.split() == ["LlamaForCausalLM", "128", "True"]  # the char tokenizer round-trips
    assert (trained_tiny_path / "model.safetensors").exists()


def test_trained_tiny_learned_the_format(trained_tiny):
    model, tok = trained_tiny
    enc = tok(["Q: 12+34\nA:"], return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    text = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
    assert "####" in text  # a random model would essentially never produce the marker


def test_build_is_cached_and_corruption_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    from manyminds.zoo.charlm import TrainSettings

    fast = zoo.ZooEntry("fast", "llama", dict(zoo.ZOO["micro-arith"].config, num_hidden_layers=1),
                        TrainSettings(steps=3, batch_size=4), eval_problems=8)
    monkeypatch.setitem(zoo.ZOO, "fast", fast)
    scored = []  # (prompts scored, the real scorer's accuracy) per build
    real_scorer = recipes.greedy_accuracy

    def scorer(model, tokenizer, rows, **kwargs):
        scored.append(([r["prompt"] for r in rows], real_scorer(model, tokenizer, rows, **kwargs)))
        return 0.375  # not the real value: the marker must record what the scorer returns

    monkeypatch.setattr(recipes, "greedy_accuracy", scorer)
    path = zoo.build("fast", show_progress=False)
    marker = zoo.read_marker(path)
    assert marker["arith_test_greedy_accuracy"] == 0.375 and marker["eval_problems"] == 8
    held_out = [r["prompt"] for r in load_task("arith", "test", n=8, seed=0)]
    assert scored == [(held_out, 0.0)]  # the 8 held-out test problems; 3 training steps solve none
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert zoo.build("fast", show_progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not rebuilt
    # half-written weights: hash mismatch -> not loadable as built, rebuilt on demand
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert zoo.read_marker(path) is None and not zoo.is_built("fast")
    zoo.build("fast", show_progress=False)
    assert zoo.read_marker(path) is not None
    # no marker at all (a build killed before the rename leaves only a hidden temp folder)
    (path / zoo.MARKER).unlink()
    assert not zoo.is_built("fast")
    model, _ = zoo.load("fast")
    assert zoo.is_built("fast") and model.config.model_type == "llama"
    # a changed recipe makes the cached entry stale
    monkeypatch.setitem(zoo.ZOO, "fast", zoo.ZooEntry("fast", "llama", fast.config, TrainSettings(steps=2, batch_size=4), eval_problems=8))
    assert zoo.read_marker(path) is not None and not zoo.is_built("fast")
    zoo.build("fast", show_progress=False)
    assert zoo.is_built("fast") and zoo.read_marker(path)["train"]["steps"] == 2
    assert not [p for p in tmp_path.joinpath("models").iterdir() if p.name.startswith(".")]


def test_build_deterministic(monkeypatch, tmp_path):
    from manyminds.zoo.charlm import TrainSettings

    fast = zoo.ZooEntry("fast", "llama", dict(zoo.ZOO["micro-arith"].config, num_hidden_layers=1),
                        TrainSettings(steps=3, batch_size=4), eval_problems=8)
    monkeypatch.setitem(zoo.ZOO, "fast", fast)
    shas = []
    for sub in ("a", "b"):
        monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path / sub))
        shas.append(zoo.read_marker(zoo.build("fast", show_progress=False))["sha256"])
    assert shas[0] == shas[1]


def test_load_local_dir_and_errors(trained_tiny_path, tmp_path):
    model, tok = zoo.load(str(trained_tiny_path))
    assert model.training is False and tok.pad_token_id == 0
    with pytest.raises(ValueError, match="valid names"):
        zoo.build("nope")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        zoo.load(str(tmp_path / "missing_dir"))


def test_load_hub_unreachable_says_so(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="without network pass a local model folder"):
        zoo.load("some-org/some-model-that-is-not-cached")


def test_gpt2_family_builds(monkeypatch, tmp_path):
    from manyminds.zoo.charlm import TrainSettings

    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    entry = zoo.ZOO["tiny-arith-gpt2"]
    monkeypatch.setitem(zoo.ZOO, "g", zoo.ZooEntry("g", entry.family, dict(entry.config, n_layer=1, n_embd=32),
                                                   TrainSettings(steps=2, batch_size=4), eval_problems=8))
    model, _ = zoo.load("g")
    assert model.config.model_type == "gpt2"


def test_cli_zoo_and_tasks(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from manyminds.cli import app

    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "list"])
    assert res.exit_code == 0 and "tiny-arith" in res.output
    res = runner.invoke(app, ["tasks", "show", "conflict", "--n", "3"])
    assert res.exit_code == 0 and "convention" in res.output
    res = runner.invoke(app, ["tasks", "show", "nope"])
    assert res.exit_code == 2 and "valid tasks" in res.output
    res = runner.invoke(app, ["zoo", "build", "nope"])
    assert res.exit_code == 2 and "valid names" in res.output


@pytest.mark.slow
def test_default_model_accuracy_in_range(monkeypatch, tmp_path):
    """The full default build (a few minutes): held-out greedy accuracy within [40%, 85%]."""
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path))
    marker = zoo.read_marker(zoo.build("tiny-arith", show_progress=False))
    assert 0.40 <= marker["arith_test_greedy_accuracy"] <= 0.85
    assert json.loads((tmp_path / "models" / "tiny-arith" / "config.json").read_text())["model_type"] == "llama"


def test_qwen2_as_llama_is_exact():
    from manyminds.zoo.models import random_model

    qwen = random_model("qwen2", vocab_size=64, seed=3)
    with torch.no_grad():  # random-init Qwen2 biases are zero; make them matter
        for layer in qwen.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    ids = torch.randint(0, 64, (3, 9), generator=torch.Generator().manual_seed(0))
    llama = recipes.qwen2_as_llama(qwen)
    assert type(llama).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(llama(ids).logits, qwen(ids).logits, rtol=0, atol=1e-5)
    plain = random_model("llama", vocab_size=64, seed=3)  # without the biases the two differ
    assert not torch.allclose(plain(ids).logits, qwen(ids).logits, atol=1e-3)
    with pytest.raises(ValueError, match="takes a Qwen2 model"):
        recipes.qwen2_as_llama(plain)
