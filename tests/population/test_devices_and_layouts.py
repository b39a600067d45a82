"""Minds that do not depend on the device or dtype, norm widths of partitioned weights, and
post-norm layouts perturbed where B-Trans means (norm outputs that feed linear layers)."""

import pytest
import torch

from manyminds.population import Population, find_norm_layers
from manyminds.population.export import _trace_readers
from manyminds.population.noise import standard_noise
from manyminds.zoo.models import POST_NORM_FAMILIES, TINY_FAMILIES, random_model

# ----------------------------------------------------------------------------- device independence


def test_noise_is_drawn_on_the_cpu_for_every_device():
    """A generator on the target device draws another stream (CUDA's differs from the CPU's); the
    noise must not depend on it. The meta device has no generator at all: only a CPU draw moved
    there can give it a tensor."""
    with pytest.raises(RuntimeError):
        torch.Generator(device="meta")  # why the old per-device draw could not be device-independent
    eps = standard_noise(0, 5, 3, 32, device="meta")
    assert eps.device.type == "meta" and eps.shape == (32,)


def test_noise_values_are_pinned():
    """Mind 5 of seed 0 on layer key 3 is the same mind on every machine and torch build we pin:
    golden values of torch's CPU generator stream (a change of that stream would silently turn
    every saved mind id into another mind)."""
    eps = standard_noise(0, 5, 3, 32)
    expected = torch.tensor([0.805411, -0.33464, 0.114242, -0.168444])
    torch.testing.assert_close(eps[:4], expected, atol=2e-6, rtol=0)
    assert eps[-1].item() == pytest.approx(-2.103804, abs=2e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_offsets_equal_across_dtypes_up_to_rounding(dtype):
    base = random_model("llama")
    other = random_model("llama", dtype=dtype)
    pop32, pop = Population(base, sigma=0.1, seed=3), Population(other, sigma=0.1, seed=3)
    for layer in range(pop.num_layers):
        ref = pop32.offsets(4, layer)
        got = pop.offsets(4, layer)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref.to(dtype), atol=0, rtol=0)


def test_offsets_follow_the_model_to_another_device_unchanged():
    """Offsets are cached per device; moving the model gives the same values (here CPU -> meta)."""
    model = random_model("qwen2")
    pop = Population(model, sigma=0.05, seed=1)
    cpu = pop.offsets(2, 0)
    model.to("meta")
    moved = pop.offsets(2, 0)
    assert moved.device.type == "meta" and moved.shape == cpu.shape
    model.to_empty(device="cpu")  # offsets depend on (seed, mind, layer, sigma), not on weights
    assert torch.equal(pop.offsets(2, 0), cpu)


# ----------------------------------------------------------------------------- partitioned weights


def test_widths_of_partitioned_norm_weights():
    """ZeRO-3 partitions a norm weight to zero elements on most ranks and keeps its full shape in
    ``weight.ds_shape``; FSDP1 leaves a flat slice of any length, or an empty one. Widths come from the full shape, then the
    hidden size, never from the empty local shard."""
    model = random_model("llama")
    expected = [(layer.name, layer.width) for layer in find_norm_layers(model)]
    norms = dict(model.named_modules())
    for i, (name, _) in enumerate(expected):
        module = norms[name]
        empty = torch.nn.Parameter(torch.empty(0))
        if i % 3 == 0:
            empty.ds_shape = torch.Size([model.config.hidden_size])
        elif i % 3 == 1:  # FSDP1 with use_orig_params: a flat slice of the rank's shard, any length
            empty = torch.nn.Parameter(torch.ones(7))
            empty._fsdp_flattened = True
        module.weight = empty
    assert [(layer.name, layer.width) for layer in find_norm_layers(model)] == expected


# ----------------------------------------------------------------------------- layouts


def _readers(model, layers):
    return _trace_readers(model, {id(layer.module): layer.name for layer in layers})


@pytest.mark.parametrize("family", [*TINY_FAMILIES, "gemma2", "glm4"])
def test_every_perturbed_norm_feeds_a_linear_layer(family):
    """B-Trans perturbs the inputs of linear layers; a traced forward shows that every perturbed
    norm's output is read by at least one linear layer (q/k/v, gate/up, fc1, lm_head)."""
    model = random_model(family)
    layers = find_norm_layers(model)
    readers = _readers(model, layers)
    assert all(readers[layer.name] for layer in layers), {k: v for k, v in readers.items() if not v}


@pytest.mark.parametrize("family", POST_NORM_FAMILIES)
def test_branch_output_norms_are_not_perturbed(family):
    """Post-norm layouts: the norms on branch outputs feed no linear layer (shown by the trace)
    and are left out; without the rule they would be perturbed."""
    model = random_model(family)
    everything = [module for name, module in model.named_modules()
                  if name.endswith("layernorm") and module.weight.shape[-1] == model.config.hidden_size]
    names = {id(m): n for n, m in model.named_modules()}
    readers = _trace_readers(model, {id(m): names[id(m)] for m in everything})
    unread = {name for name, lin in readers.items() if not lin}
    assert unread, "the family has branch-output norms"
    if family == "olmo2":
        with pytest.raises(ValueError, match="norms='final'"):
            find_norm_layers(model)
        layers = find_norm_layers(model, norms="final")
        assert [layer.name for layer in layers] == ["model.norm"]
        return
    chosen = {layer.name for layer in find_norm_layers(model)}
    assert not chosen & unread
    assert chosen == {name for name, lin in readers.items() if lin} | {"model.norm"}


def test_gemma2_minds_change_outputs_and_restore():
    model = random_model("gemma2")
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(ids).logits
        pop = Population(model, sigma=0.1, seed=0)
        with pop.minds([0, 1]):
            mind = model(ids).logits
        after = model(ids).logits
    assert not torch.allclose(plain, mind)
    assert torch.equal(plain, after)


# ----------------------------------------------------------------------------- mind specs


def test_spec_rebuilds_the_same_mind_on_a_copy():
    import copy
    import json

    model = random_model("qwen2")
    pop = Population(model, sigma=0.07, seed=11, norms="blocks")
    spec = json.loads(json.dumps(pop.spec(3).to_dict()))  # travels as JSON (export metadata, vLLM requests)
    other = Population.from_spec(copy.deepcopy(model), spec)
    assert other.seed == 11 and other.norms == "blocks" and other.sigma == pytest.approx(0.07)
    for layer in range(pop.num_layers):
        assert torch.equal(pop.offsets(3, layer), other.offsets(3, layer))


def test_spec_for_a_model_with_other_norms_is_refused():
    spec = Population(random_model("qwen2"), sigma=0.05).spec(0)
    with pytest.raises(ValueError, match="made for a model with 5 perturbed norms of width 32.*has 7 of width 32"):
        Population.from_spec(random_model("qwen2", num_hidden_layers=3), spec)
    with pytest.raises(ValueError, match="width 48"):
        Population.from_spec(random_model("qwen2", hidden_size=48), spec)


@pytest.mark.parametrize("bad, match", [
    ({"seed": 0, "mind": 0}, "missing key"),
    ({"seed": 0, "mind": 0, "sigma": 0.1, "sigmaa": 1}, "unknown key.*valid keys"),
    ({"seed": 0, "mind": -2, "sigma": 0.1}, "mind must be >= 0"),
    ({"seed": 0, "mind": 0, "sigma": -0.1}, "finite and >= 0"),
    ({"seed": 0, "mind": 0, "sigma": 0.1, "norms": "some"}, "norms must be one of"),
    ({"seed": "0", "mind": 0, "sigma": 0.1}, "seed must be an int"),
])
def test_bad_spec_is_one_clear_error(bad, match):
    from manyminds.population import MindSpec

    with pytest.raises((ValueError, TypeError), match=match):
        MindSpec.from_dict(bad)
