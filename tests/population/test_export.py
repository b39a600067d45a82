"""Mind export: the checkpoint loads with plain from_pretrained and reproduces the mind."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from manyminds.population import MindExportError, Population, export_mind
from manyminds.zoo.models import random_model

X = torch.randint(4, 64, (2, 9), generator=torch.Generator().manual_seed(3))

# (family, norms, noise) that fold exactly
EXACT = [("llama", "blocks", "additive"), ("qwen2", "blocks", "additive"), ("mistral", "blocks", "additive"),
         ("gpt2", "all", "additive"), ("opt", "all", "additive"), ("phi", "all", "additive"),
         ("qwen2", "all", "multiplicative"), ("gemma", "all", "multiplicative"),
         ("qwen3", "all", "multiplicative")]


def _logits(model, ids=X):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize(("family", "norms", "noise"), EXACT)
def test_export_reproduces_mind(tmp_path, family, norms, noise):
    model = random_model(family)
    pop = Population(model, sigma=0.1, seed=5, norms=norms, noise=noise)
    with pop.minds([7, 7]):
        want = _logits(model)
    base = _logits(model)
    assert (want - base).abs().max() > 1e-3  # the mind is not the base model
    path = export_mind(pop, 7, tmp_path / "mind7")
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.testing.assert_close(_logits(loaded), want, rtol=0, atol=1e-5)
    assert torch.equal(_logits(model), base)  # the population's model is untouched
    meta = json.loads((path / "manyminds_mind.json").read_text())
    assert meta["mind"] == 7 and meta["seed"] == 5 and meta["noise"] == noise
    assert list(tmp_path.iterdir()) == [path]  # no temporary folder left behind
    assert (path / "model.safetensors").exists()


def test_qwen2_switches_to_llama_with_biases(tmp_path):
    model = random_model("qwen2")
    path = export_mind(model, 2, tmp_path / "m", sigma=0.05, norms="blocks")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["attention_bias"] and config["mlp_bias"]


def test_llama_switches_on_biases_in_place(tmp_path):
    path = export_mind(random_model("llama"), 0, tmp_path / "m", sigma=0.05, norms="blocks")
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["attention_bias"] and config["mlp_bias"]


def test_export_with_tokenizer_and_overwrite(tmp_path, char_qwen2, char_tokenizer):
    pop = Population(char_qwen2, sigma=0.05, norms="blocks")
    path = export_mind(pop, 1, tmp_path / "m", tokenizer=char_tokenizer)
    assert (path / "tokenizer_config.json").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_mind(pop, 1, path)
    export_mind(pop, 2, path, overwrite=True)
    assert json.loads((path / "manyminds_mind.json").read_text())["mind"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize(("family", "norms", "match"), [
    ("llama", "all", "lm_head, which has no bias.*norms='blocks'"),
    ("qwen2", "all", "lm_head, which has no bias.*norms='blocks'"),
    ("gemma", "blocks", "mlp.gate_proj.*have no bias.*noise='multiplicative'"),
    ("qwen3", "blocks", "mlp.gate_proj.*noise='multiplicative'"),
])
def test_impossible_folds_raise(tmp_path, family, norms, match):
    with pytest.raises(MindExportError, match=match):
        export_mind(random_model(family), 0, tmp_path / "m", sigma=0.05, norms=norms)
    assert not any(tmp_path.iterdir())


def test_export_rejects_population_kwargs_with_population(tmp_path, tiny_gpt2):
    with pytest.raises(TypeError, match="Population"):
        export_mind(Population(tiny_gpt2), 0, tmp_path / "m", sigma=0.1)


def test_export_refuses_unmerged_adapters_and_qk_norms(tmp_path, tiny_qwen2):
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(tiny_qwen2, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(MindExportError, match="merge_and_unload"):
        export_mind(Population(wrapped, norms="blocks"), 0, tmp_path / "m")
    with pytest.raises(MindExportError, match="include_qk_norms=False"):
        export_mind(Population(random_model("qwen3"), noise="multiplicative", include_qk_norms=True), 0,
                    tmp_path / "q")
    assert not any(tmp_path.iterdir())


def test_export_unperturbed_mind_is_the_base_model(tmp_path, tiny_gpt2):
    path = export_mind(tiny_gpt2, -1, tmp_path / "base", sigma=0.1)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.testing.assert_close(_logits(loaded), _logits(tiny_gpt2), rtol=0, atol=1e-6)


def test_export_reads_bias_flags_and_llama_rebuild_from_the_family_table(monkeypatch):
    """Qwen2 folds by the Llama rebuild its rule allows; a family outside the table gets today's
    structural path (the same rebuild); a rule without the rebuild, or without Llama's mlp_bias
    flag, cannot fold."""
    from manyminds.population import families
    from manyminds.population.export import fold_mind

    def fold(model):
        return fold_mind(Population(model, sigma=0.1, norms="blocks"), 0)

    pre = ("input_layernorm", "post_attention_layernorm", "norm")
    qwen2, llama = random_model("qwen2"), random_model("llama")
    assert type(fold(qwen2)).__name__ == "LlamaForCausalLM"
    assert fold(llama).config.mlp_bias
    monkeypatch.delitem(families.RULES, "qwen2")
    assert type(fold(qwen2)).__name__ == "LlamaForCausalLM"
    monkeypatch.setitem(families.RULES, "qwen2", families.NormRule(pre))
    with pytest.raises(MindExportError, match="mlp.gate_proj.*no bias"):
        fold(qwen2)
    no_mlp_flag = families.NormRule(pre, bias_flags=("attention_bias",))
    monkeypatch.setitem(families.RULES, "llama", no_mlp_flag)
    with pytest.raises(MindExportError, match="mlp.gate_proj.*no bias"):
        fold(llama)
