"""The table of norm rules (population/families.py) against the models transformers ships: on a
tiny random model of every family in the table, the rule finds what the structural rule finds,
declares the gain form the probe measures, and folds what export really folds; and adding a
family is one entry."""

import math
import warnings

import pytest
import torch
import transformers

from manyminds.population import MindExportError, Population, find_norm_layers
from manyminds.population.export import fold_mind
from manyminds.population.families import (
    RULES,
    STRUCTURAL,
    NormRule,
    rule_of,
    scales_by_one_plus_weight,
)
from manyminds.population.norms import _is_norm, _width, hidden_size_of
from manyminds.zoo.models import FAMILIES, llama_equivalent_config, random_model

_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
         "max_position_embeddings": 256, "vocab_size": 64, "pad_token_id": 0, "bos_token_id": 1,
         "eos_token_id": 2}
_SIGLIP = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
# What a transformers build that lacks a family, or cannot make it tiny, raises.
_BUILD_ERRORS = (KeyError, ValueError, TypeError, AttributeError, AssertionError, ImportError)
X = torch.randint(4, 64, (2, 7), generator=torch.Generator().manual_seed(0))


def _tiny(model_type: str):
    """A tiny random-init causal LM whose ``config.model_type`` is ``model_type`` (the zoo's shape
    where it has the family; a multimodal Gemma-3 with a tiny SigLIP tower)."""
    if model_type in FAMILIES:
        return random_model(model_type)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        try:
            if model_type == "gemma3":
                text = transformers.Gemma3TextConfig(**_TINY)
                config = transformers.Gemma3Config(text_config=text, vision_config=_SIGLIP,
                                                   mm_tokens_per_image=4)
            else:
                config = transformers.AutoConfig.for_model(model_type, **_TINY)
            model = transformers.AutoModelForCausalLM.from_config(config)
        except _BUILD_ERRORS as err:
            pytest.skip(f"tiny {model_type} does not build: {type(err).__name__}: {err}")
    assert model.config.model_type == model_type
    return model.eval()


def _leaf(name):
    return name.rpartition(".")[2]


def _found(model):
    """What find_norm_layers reports with q/k norms: per selection, (name, key, kind, width) of
    each layer, or the error."""
    out = {}
    for norms in ("all", "final"):
        try:
            layers = find_norm_layers(model, norms, include_qk_norms=True)
            out[norms] = [(n.name, n.key, n.kind, n.width) for n in layers]
        except ValueError as err:
            out[norms] = str(err)
    return out


@pytest.mark.parametrize("model_type", sorted(RULES))
def test_rule_agrees_with_the_structure(model_type, monkeypatch):
    model = _tiny(model_type)
    rule = RULES[model_type]
    assert rule_of(model) is rule and rule is not STRUCTURAL
    table = _found(model)
    # which norms: the rule's names are what the model has
    selection = "all" if isinstance(table["all"], list) else "final"
    layers = find_norm_layers(model, selection, include_qk_norms=True)
    assert {_leaf(n.name) for n in layers if n.kind != "qk"} == set(rule.perturbed)
    assert {_leaf(n.name) for n in layers if n.kind == "qk"} == rule.qk_norms
    hidden = hidden_size_of(model)
    chosen = {n.name for n in layers}
    left = {_leaf(name) for name, m in model.named_modules()
            if name and _is_norm(m) and name not in chosen and _width(m) == hidden}
    assert left == rule.branch_outputs  # hidden-width norms left alone: the branch outputs
    # gain form: the probe measures what the rule declares
    for layer in layers:
        assert layer.gain == rule.gain
        if isinstance(getattr(layer.module, "weight", None), torch.Tensor):
            assert scales_by_one_plus_weight(layer.module) == (rule.gain == "1 + w"), layer.name
    # fold: the flags the config has, the Llama rebuild where one exists
    assert rule.bias_flags == tuple(f for f in STRUCTURAL.bias_flags if hasattr(model.config, f))
    assert rule.as_llama == (llama_equivalent_config(model.config) is not None)
    # the structural rule (what a family outside the table gets) finds the same norms, same keys
    monkeypatch.delitem(RULES, model_type)
    assert rule_of(model) is STRUCTURAL
    assert _found(model) == table


def _mind_logits(pop, mind=3):
    with torch.no_grad(), pop.minds([mind] * X.shape[0]):
        return pop.model(X).logits


def _folds(model, norms, noise):
    pop = Population(model, sigma=0.2, seed=1, norms=norms, noise=noise)
    want = _mind_logits(pop)
    with torch.no_grad():
        assert (want - model(X).logits).abs().max() > 1e-3  # the mind is not the base model
    try:
        folded = fold_mind(pop, 3)
    except MindExportError as err:
        return str(err)
    with torch.no_grad():
        torch.testing.assert_close(folded(X).logits, want, rtol=0, atol=1e-4)
    return True


@pytest.mark.parametrize("model_type", sorted(RULES))
def test_rule_fold_is_what_export_folds(model_type):
    model = _tiny(model_type)
    rule = RULES[model_type]
    try:
        find_norm_layers(model, "blocks")
        blocks = "blocks"
    except ValueError:
        blocks = "final"  # no block norm to perturb (OLMo-2): `fold` is about the final norm
    gains = _folds(model, "all" if blocks == "blocks" else "final", "multiplicative")
    layers = find_norm_layers(model, blocks)
    if all(isinstance(getattr(n.module, "weight", None), torch.Tensor) for n in layers):
        assert gains is True, gains  # gain noise scales the norm's weight, in every family
    else:
        assert "no weight" in gains  # OLMo's weightless LayerNorm
    additive = _folds(model, blocks, "additive")
    if rule.fold is None:
        assert isinstance(additive, str), "the rule says fold=None, but the additive mind folded"
    else:
        assert additive is True, additive
    if rule.fold == "norm bias":
        assert _folds(model, "all", "additive") is True
    elif rule.fold == "reader bias":
        assert "lm_head" in _folds(model, "all", "additive")


def test_a_new_family_is_one_entry(monkeypatch):
    """Registering a rule for a model_type changes which norms are perturbed, the gain that
    sigma_scale="weight" reads and the flags export switches on, with nothing else touched."""
    model = random_model("llama")
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("norm"):
                module.weight.uniform_(0.2, 0.9, generator=torch.Generator().manual_seed(len(name)))
    model.config.model_type = "toyfam"
    assert rule_of(model) is STRUCTURAL

    def rms(layer, shift):  # float64 reference: 0.1 * sqrt(mean_i (shift + w_i)^2)
        w = [float(v) for v in layer.module.weight.detach().double()]
        return 0.1 * math.sqrt(sum((shift + v) ** 2 for v in w) / len(w))

    before = Population(model, sigma=0.1, sigma_scale="weight")
    assert [_leaf(n) for n in before.layer_names] == [
        "input_layernorm", "post_attention_layernorm"] * 2 + ["norm"]
    assert before.sigmas == pytest.approx([rms(layer, 0) for layer in before.layers], rel=1e-12)
    assert isinstance(fold_mind(Population(model, sigma=0.1, norms="blocks"), 0), torch.nn.Module)

    monkeypatch.setitem(RULES, "toyfam", NormRule(("input_layernorm", "norm"),
                                                  branch_outputs={"post_attention_layernorm"},
                                                  gain="1 + w", fold=None))
    after = Population(model, sigma=0.1, sigma_scale="weight")
    assert [_leaf(n) for n in after.layer_names] == ["input_layernorm", "input_layernorm", "norm"]
    assert after.sigmas == pytest.approx([rms(layer, 1) for layer in after.layers], rel=1e-12)
    with pytest.raises(MindExportError, match="no bias"):  # the rule switches no bias flag on
        fold_mind(Population(model, sigma=0.1, norms="blocks"), 0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"gain": "w + 1"}, "gain must be one of"),
    ({"gain": None}, "gain must be one of"),  # only the structural rule probes
    ({"fold": "bias"}, "fold must be one of"),
    ({"branch_outputs": {"norm"}}, "under two kinds"),
])
def test_bad_rules_raise(kwargs, match):
    NormRule(("norm",))  # a valid rule
    with pytest.raises(ValueError, match=match):
        NormRule(("norm",), **kwargs)
