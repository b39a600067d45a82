"""``auto_sigma``: a model's calibrated sigma, measured once and cached (cache hit / miss, weights
fingerprint, corrupted cache, the zoo's documented sigma), on the shipped ``tiny-arith`` model."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

import manyminds
from manyminds.population import (
    CalibrationConfig,
    CalibrationWarning,
    auto_sigma,
    auto_sigma_record,
    sigma_cache,
)
from manyminds.population.calibrate import calibrate_sigma
from manyminds.zoo import ZOO
from manyminds.zoo.registry import SIGMA, documented_sigma


@pytest.fixture(scope="module")
def arith():
    model, tok = manyminds.load("tiny-arith")
    return model, tok


@pytest.fixture
def calls(monkeypatch):
    """Every call of the real ``calibrate_sigma`` made by ``auto_sigma`` (its keyword arguments)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return calibrate_sigma(*args, **kwargs)

    monkeypatch.setattr(sigma_cache, "calibrate_sigma", spy)
    return seen


@pytest.fixture
def fake_calls(monkeypatch):
    """``calibrate_sigma`` replaced by a stub (for the cache's own logic): ``sigma = 0.5 sqrt(target_kl)``."""
    seen = []

    def stub(model, tokenizer, config, **kwargs):
        seen.append(kwargs)
        return SimpleNamespace(sigma=0.5 * math.sqrt(config.target_kl), kl=config.target_kl, reached=True)

    monkeypatch.setattr(sigma_cache, "calibrate_sigma", stub)
    return seen


def _perturbed(model):
    """A copy of ``model`` with one weight matrix moved (a "fine-tune")."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    return other


def test_second_call_reads_the_cache_and_does_not_calibrate(arith, calls, tmp_path):
    model, tok = arith
    first = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path)
    assert len(calls) == 1 and first.source == "calibrated" and not first.cached
    # the sigma calibrate_sigma picks at the defaults (docs/population.md: 0.119)
    assert 0.10 < first.sigma < 0.14 and first.reached
    record = json.loads(first.path.read_text())
    assert first.path.parent == tmp_path and record["sigma"] == first.sigma and record["model_id"] == "my-arith"

    again = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path)
    assert len(calls) == 1, "a second call must not calibrate again"
    assert again.cached and again.sigma == first.sigma and again.path == first.path
    assert auto_sigma(model, tok, model_id="my-arith", cache_dir=tmp_path) == first.sigma and len(calls) == 1


def test_changed_weights_or_settings_recalibrate(arith, fake_calls, tmp_path):
    model, tok = arith
    calls = fake_calls
    first = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path)
    tuned = auto_sigma_record(_perturbed(model), tok, model_id="my-arith", cache_dir=tmp_path)
    assert len(calls) == 2 and not tuned.cached and tuned.path != first.path
    assert sigma_cache.weights_fingerprint(_perturbed(model)) != sigma_cache.weights_fingerprint(model)
    other_target = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path, config={"target_kl": 0.1})
    assert len(calls) == 3 and other_target.sigma > first.sigma  # KL grows with sigma
    final_only = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path, norms="final")
    assert len(calls) == 4 and calls[-1]["norms"] == "final" and final_only.path != first.path
    # each one is cached on its own
    for kwargs in ({}, {"config": {"target_kl": 0.1}}, {"norms": "final"}):
        assert auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path, **kwargs).cached
    assert len(calls) == 4


def test_fingerprint_sees_dtype_and_extra_parameters(arith):
    model, _ = arith
    base = sigma_cache.weights_fingerprint(model)
    assert sigma_cache.weights_fingerprint(copy.deepcopy(model)) == base  # a copy is the same model
    assert sigma_cache.weights_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) != base

    class Adapted(torch.nn.Module):  # a PEFT-style wrapper: the same base model, plus its own parameters
        def __init__(self, base):
            super().__init__()
            self.base, self.adapter = base, torch.nn.Linear(2, 2)

        def get_base_model(self):
            return self.base

    assert sigma_cache.weights_fingerprint(Adapted(model)) != base


@pytest.mark.parametrize("garbage", [
    "not json {", "", "[1, 2]", "{}", "null",
    '{"format": 1, "key": "KEY", "sigma": "0.1", "source": "calibrated"}',
    '{"format": 1, "key": "KEY", "sigma": -0.5, "source": "calibrated"}',
    '{"format": 1, "key": "KEY", "sigma": NaN, "source": "calibrated"}',
    '{"format": 1, "key": "KEY", "sigma": 0.5, "source": "mystery"}',
])
def test_corrupted_cache_is_recalibrated_and_rewritten(arith, fake_calls, tmp_path, garbage):
    model, tok = arith
    calls = fake_calls
    first = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path)
    key = json.loads(first.path.read_text())["key"]
    first.path.write_text(garbage.replace("KEY", key))
    again = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path)
    assert len(calls) == 2 and not again.cached and again.sigma == first.sigma
    assert json.loads(first.path.read_text())["sigma"] == first.sigma  # rewritten, intact
    assert auto_sigma_record(model, tok, model_id="my-arith", cache_dir=tmp_path).cached and len(calls) == 2


def test_cache_that_cannot_be_written_warns_and_still_answers(arith, fake_calls, tmp_path):
    model, tok = arith
    calls = fake_calls
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.warns(CalibrationWarning, match="could not cache the calibrated sigma"):
        found = auto_sigma_record(model, tok, model_id="my-arith", cache_dir=blocked / "sigma")
    assert found.path is None and found.sigma == pytest.approx(0.5 * math.sqrt(0.05)) and len(calls) == 1


def test_unmodified_zoo_model_gets_the_documented_sigma_without_calibrating(arith, calls, tmp_path):
    model, tok = arith
    found = auto_sigma_record(model, tok, model_id="tiny-arith", cache_dir=tmp_path)
    assert calls == [] and found.source == "zoo" and found.sigma == SIGMA["tiny-arith"] == 0.119
    assert json.loads(found.path.read_text())["source"] == "zoo"
    assert auto_sigma_record(model, tok, model_id="tiny-arith", cache_dir=tmp_path).cached and calls == []
    # the documented value agrees with a calibration of the same weights (docs/population.md)
    measured = auto_sigma(model, tok, model_id="tiny-arith-measured", cache_dir=tmp_path)
    assert len(calls) == 1 and math.isclose(measured, SIGMA["tiny-arith"], rel_tol=0.01)


def test_modified_zoo_model_or_other_settings_are_calibrated(arith, fake_calls, tmp_path):
    model, tok = arith
    calls = fake_calls
    tuned = auto_sigma_record(_perturbed(model), tok, model_id="tiny-arith", cache_dir=tmp_path)
    assert len(calls) == 1 and tuned.source == "calibrated"
    final_only = auto_sigma_record(model, tok, model_id="tiny-arith", cache_dir=tmp_path, norms="final")
    assert len(calls) == 2 and final_only.source == "calibrated"
    # the curve-only settings do not change the sigma: the zoo's value still applies
    curve = auto_sigma_record(model, tok, model_id="tiny-arith", cache_dir=tmp_path,
                              config=CalibrationConfig(curve_factors=(0.5, 1.0, 2.0)))
    assert len(calls) == 2 and curve.source == "zoo"


def test_every_zoo_model_documents_its_sigma():
    assert set(SIGMA) == set(ZOO)
    for name in ZOO:
        sigma = documented_sigma(name)
        assert sigma is None or (isinstance(sigma, float) and 0 < sigma < 1), name
    # the shipped default, the converted pretrained model and the test models' recipe are measured
    # (docs/population.md, "sigma calibration" and "--sigma auto"); tiny-arith-gpt2 is not yet
    assert (SIGMA["tiny-arith"], SIGMA["smollm2-135m-instruct"], SIGMA["micro-arith"]) == (0.119, 0.005, 0.141)
    assert documented_sigma("not-a-zoo-model") is None


def test_cache_folder_follows_the_environment(arith, monkeypatch, tmp_path):
    model, tok = arith
    monkeypatch.delenv("MANYMINDS_CACHE", raising=False)
    monkeypatch.setenv("MANYMINDS_HOME", str(tmp_path / "home"))
    assert sigma_cache.sigma_cache_dir() == tmp_path / "home" / "sigma"
    monkeypatch.setenv("MANYMINDS_CACHE", str(tmp_path / "cache"))
    found = auto_sigma_record(model, tok, model_id="tiny-arith")
    assert found.path.parent == tmp_path / "cache" / "sigma" and found.path.name.startswith("tiny-arith-")


def test_model_id_is_required(arith, tmp_path):
    model, tok = arith
    with pytest.raises(ValueError, match="model_id"):
        auto_sigma(model, tok, model_id="", cache_dir=tmp_path)
