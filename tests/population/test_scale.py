"""sigma_scale: absolute vs weight-scaled offsets, their spec, export and round trips."""

import json
import math

import pytest
import torch

from manyminds.population import MindSpec, Population, export_mind
from manyminds.population.scale import layer_scales, norm_gain_rms
from manyminds.zoo.models import random_model


def _spread_norm_weights(model, seed=0):
    """Give every norm a different gain scale (random-init norms are all ones, so rms(w) = 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in Population(model, sigma=0.0).layers:
            w = layer.module.weight
            w.copy_((torch.rand(w.shape, generator=gen) * 0.5 + 0.05) * float(torch.rand(1, generator=gen) * 3 + 0.02))
    return model


@pytest.fixture
def llama():
    return _spread_norm_weights(random_model("llama", vocab_size=64, seed=0))


def test_weight_scale_is_sigma_times_weight_rms(llama):
    pop = Population(llama, sigma=0.05, sigma_scale="weight")
    # independent reference: float64 sqrt(mean w^2) of each perturbed norm's weight
    want = [0.05 * math.sqrt(sum(float(v) ** 2 for v in layer.module.weight.detach().double()) / layer.width)
            for layer in pop.layers]
    assert len({round(w, 6) for w in want}) > 1  # the layers really differ
    assert pop.sigmas == pytest.approx(want, rel=1e-9)
    assert pop.base_sigma == 0.05
    absolute = Population(llama, sigma=0.05)
    assert absolute.sigmas == [0.05] * absolute.num_layers
    # the offsets follow: z_l = sigma_l * eps_l
    for i in range(pop.num_layers):
        ratio = pop.offsets(3, i).double() / absolute.offsets(3, i).double()
        assert torch.allclose(ratio, torch.full_like(ratio, want[i] / 0.05), rtol=1e-5)


def test_weightless_norm_counts_one_and_gemma_gain(llama):
    layer = Population(llama, sigma=0.0).layers[0]
    saved = layer.module.weight
    try:
        del layer.module.weight
        layer.module.weight = None
        assert norm_gain_rms(layer) == 1.0
    finally:
        layer.module.weight = saved
    gemma = _spread_norm_weights(random_model("gemma", vocab_size=64, seed=0))  # Gemma norms scale by (1 + w)
    pop = Population(gemma, sigma=0.1, sigma_scale="weight")
    for layer, sigma in zip(pop.layers, pop.sigmas):
        gain = 1.0 + layer.module.weight.detach().double()
        assert sigma == pytest.approx(0.1 * float(gain.pow(2).mean().sqrt()), rel=1e-9)


def test_bad_sigma_scale_inputs(llama):
    with pytest.raises(ValueError, match="sigma_scale must be one of"):
        Population(llama, sigma=0.02, sigma_scale="relative")
    with pytest.raises(ValueError, match="already relative"):
        Population(llama, sigma=0.02, sigma_scale="weight", noise="multiplicative")
    with pytest.raises(TypeError, match="calibrated_population"):
        Population(llama, sigma="auto")
    layer = Population(llama, sigma=0.0).layers[0]
    saved = layer.module.weight
    try:
        layer.module.weight = torch.nn.Parameter(torch.empty(0))  # a ZeRO-3 partition: no local values
        with pytest.raises(ValueError, match="sharded"):
            layer_scales([layer], "weight")
    finally:
        layer.module.weight = saved


def test_spec_records_resolved_sigmas_and_round_trips(llama, ids_batch):
    pop = Population(llama, sigma=0.05, sigma_scale="weight", seed=7)
    spec = pop.spec(2)
    assert spec.sigma == tuple(pop.sigmas) and spec.sigma_scale == "weight" and spec.base_sigma == 0.05
    back = MindSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    # a consumer that reads spec.sigma only (absolute per-layer values) rebuilds the same mind
    plain_consumer = Population(llama, sigma=list(spec.sigma), seed=spec.seed)
    rebuilt = Population.from_spec(llama, back)
    assert rebuilt.spec(2) == spec
    with torch.no_grad():
        with pop.minds([2] * 3):
            want = llama(ids_batch).logits
        with rebuilt.minds([2] * 3):
            got = llama(ids_batch).logits
        with plain_consumer.minds([2] * 3):
            got2 = llama(ids_batch).logits
        with Population(llama, sigma=0.05, seed=7).minds([2] * 3):
            absolute = llama(ids_batch).logits
    assert (want - absolute).abs().max() > 1e-3  # the scaling matters
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got2, want, rtol=0, atol=0)
    # a hand-made spec cannot claim weight scaling with one float (it would be read as absolute)
    with pytest.raises(ValueError, match="one value per layer"):
        MindSpec(seed=0, mind=0, sigma=0.05, sigma_scale="weight")


def test_export_of_weight_scaled_mind_matches_live_mind(llama, ids_batch, tmp_path):
    from transformers import AutoModelForCausalLM

    pop = Population(llama, sigma=0.2, sigma_scale="weight", norms="blocks")
    path = export_mind(pop, 1, tmp_path / "mind-1")
    meta = json.loads((path / "manyminds_mind.json").read_text())
    assert meta["sigma"] == pytest.approx(pop.sigmas) and meta["sigma_scale"] == "weight"
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        with pop.minds([1] * 3):
            want = llama(ids_batch).logits
        got = loaded(ids_batch).logits
        plain = llama(ids_batch).logits
    assert (want - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gain_form_comes_from_the_family_table_and_the_probe_only_outside_it(monkeypatch):
    """Gemma's ``1 + w`` is read from population/families.py; a family outside it is probed."""
    from manyminds.population import families

    gemma = _spread_norm_weights(random_model("gemma", vocab_size=64, seed=0))

    def want(gain_of_w):
        return [0.1 * float(gain_of_w(layer.module.weight.detach().double()).pow(2).mean().sqrt())
                for layer in Population(gemma, sigma=0.0).layers]

    one_plus, plain = want(lambda w: 1 + w), want(lambda w: w)
    assert all(abs(a - b) > 1e-3 for a, b in zip(one_plus, plain))  # the gain form matters

    def no_probe(norm):
        raise AssertionError("a family in the table is not probed")

    def sigmas():
        return Population(gemma, sigma=0.1, sigma_scale="weight").sigmas

    monkeypatch.setattr(families, "scales_by_one_plus_weight", no_probe)
    assert sigmas() == pytest.approx(one_plus, rel=1e-12)
    monkeypatch.setitem(families.RULES, "gemma", families.RULES["llama"])  # a (wrong) rule counts
    assert sigmas() == pytest.approx(plain, rel=1e-12)
    monkeypatch.undo()  # the real probe and table again
    monkeypatch.delitem(families.RULES, "gemma")  # outside the table: the probe decides
    assert all(layer.gain is None for layer in Population(gemma, sigma=0.0).layers)
    assert sigmas() == pytest.approx(one_plus, rel=1e-12)
