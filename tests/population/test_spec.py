"""MindSpec: one type for sigma (a tuple of floats), one validation, and a wire form that still reads the
scalar sigma of older specs."""

import json

import numpy as np
import pytest
import torch

from manyminds.population import MindSpec, Population
from manyminds.zoo.models import random_model


@pytest.mark.parametrize("given", [0.1, np.float64(0.1), [0.1], (0.1,)])
def test_one_sigma_type(given):
    spec = MindSpec(seed=0, mind=1, sigma=given)
    assert type(spec.sigma) is tuple and spec.sigma == (0.1,) and type(spec.sigma[0]) is float
    # one value, however given, is one spec: the worker's table key and the client's dedup agree
    assert spec == MindSpec(seed=0, mind=1, sigma=0.1) and hash(spec) == hash(MindSpec(seed=0, mind=1, sigma=0.1))


def test_per_norm_sigma_is_a_tuple_and_layer_sigmas_repeats_one_value():
    spec = MindSpec(seed=0, mind=1, sigma=[0.1, 0, 2], num_layers=3)
    assert spec.sigma == (0.1, 0.0, 2.0) and spec.layer_sigmas(3) == (0.1, 0.0, 2.0)
    assert MindSpec(seed=0, mind=1, sigma=0.5).layer_sigmas(4) == (0.5, 0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="3 sigma values but the model perturbs 4 norms") as err:
        spec.layer_sigmas(4)
    assert "\n" not in str(err.value)


def test_wire_form_is_a_list_and_the_scalar_form_still_reads():
    spec = MindSpec(seed=3, mind=2, sigma=0.25, norms="blocks", num_layers=4, width=32, base_sigma=0.25)
    wire = json.loads(json.dumps(spec.to_dict()))
    assert wire["sigma"] == [0.25] and MindSpec.from_dict(wire) == spec
    old = {**wire, "sigma": 0.25}  # what specs (exported minds, requests) carried before sigma had one type
    assert MindSpec.from_dict(old) == spec
    per_norm = MindSpec(seed=3, mind=2, sigma=[0.1, 0.2, 0.3, 0.4], num_layers=4)
    assert MindSpec.from_dict(json.loads(json.dumps(per_norm.to_dict()))) == per_norm


def test_is_plain():
    assert MindSpec(seed=0, mind=-1, sigma=0.3).is_plain
    assert MindSpec(seed=0, mind=4, sigma=[0.0, 0.0]).is_plain
    assert not MindSpec(seed=0, mind=4, sigma=[0.0, 0.1]).is_plain
    assert not MindSpec(seed=0, mind=0, sigma=0.1).is_plain


@pytest.mark.parametrize("bad, error, match", [
    ({"sigma": []}, TypeError, "non-empty sequence of floats"),
    ({"sigma": [0.1, True]}, TypeError, "non-empty sequence of floats"),
    ({"sigma": "0.1"}, TypeError, "sigma must be a float"),
    ({"sigma": [0.1, float("nan")]}, ValueError, "finite and >= 0"),
    ({"sigma": float("inf")}, ValueError, "finite and >= 0"),
    ({"sigma": 0.1, "include_qk_norms": []}, TypeError, "include_qk_norms must be true or false"),
    ({"sigma": 0.1, "include_qk_norms": "yes"}, TypeError, "include_qk_norms must be true or false"),
    ({"sigma": [0.1, 0.2], "num_layers": 3}, ValueError, "2 sigma values for 3 perturbed norms"),
    ({"sigma": 0.1, "num_layers": 0}, ValueError, "num_layers must be >= 1"),
    ({"sigma": 0.1, "width": 2.5}, TypeError, "width must be an int"),
    ({"sigma": 0.1, "base_sigma": "x"}, TypeError, "base_sigma must be a float"),
    ({"sigma": 0.1, "sigma_scale": "weight"}, ValueError, "needs one value per layer"),
])
def test_bad_field_is_one_line(bad, error, match):
    with pytest.raises(error, match=match) as err:
        MindSpec.from_dict({"seed": 0, "mind": 1, **bad})
    assert "\n" not in str(err.value)


def test_population_spec_round_trips_through_the_scalar_and_list_forms():
    model = random_model("qwen2")
    pop = Population(model, sigma=0.07, seed=5)
    spec = pop.spec(2)
    assert spec.sigma == (0.07,) and spec.base_sigma == pytest.approx(0.07)
    for wire in (spec.to_dict(), {**spec.to_dict(), "sigma": 0.07}):
        other = Population.from_spec(model, json.loads(json.dumps(wire)))
        assert other.sigma == pytest.approx(0.07) and other.base_sigma == pytest.approx(0.07)
        assert all(torch.equal(pop.offsets(2, layer), other.offsets(2, layer)) for layer in range(pop.num_layers))
    weighted = Population(model, sigma=0.07, seed=5, sigma_scale="weight")  # per-layer values, one per norm
    assert weighted.spec(2).sigma == tuple(weighted.sigmas) and len(weighted.spec(2).sigma) == weighted.num_layers
