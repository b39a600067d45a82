"""sigma calibration (KL target, bisection, curve) and the collapse checks."""

import json
import math
import warnings

import pytest
import torch

from manyminds.population import (
    CalibrationConfig,
    CalibrationWarning,
    MindCollapseWarning,
    Population,
)
from manyminds.population.calibrate import (
    _search,
    answer_diversity,
    build_calibration_data,
    calibrate_sigma,
    calibrated_population,
    mean_token_kl,
    token_kl,
)
from manyminds.population.collapse import is_degenerate, warn_if_collapsed

# small enough for a shared 2-core CPU: 2 minds, 3 texts of 12 tokens, a 3-point curve
FAST = {"minds": 2, "num_texts": 3, "text_tokens": 12, "prompt_tokens": 4, "answer_tokens": 6, "curve_factors": (0.5, 1.0, 2.0),
            "steps": 10, "tolerance": 0.1}


@pytest.fixture(scope="module")
def tiny_arith():
    import manyminds

    model, tok = manyminds.load("tiny-arith")
    return model.eval(), tok


def test_token_kl_matches_float64_reference():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    logp, logq = a.log_softmax(-1), b.log_softmax(-1)
    want = [sum(math.exp(p) * (p - q) for p, q in zip(rp.double().tolist(), rq.double().tolist()))
            for rp, rq in zip(logp, logq)]
    assert token_kl(logp, logq).tolist() == pytest.approx(want, rel=1e-5)
    assert token_kl(logp, logp).abs().max() < 1e-7


def test_answer_diversity():
    assert answer_diversity([[1, 2, 3], [1, 2, 3]]) == 0.0
    assert answer_diversity([[1, 2, 3], [4, 5, 6]]) == 1.0
    # bigrams {12, 23} vs {12, 24}: Jaccard distance 1 - 1/3
    assert answer_diversity([[1, 2, 3], [1, 2, 4]]) == pytest.approx(2 / 3)
    assert answer_diversity([[], []]) == 0.0


def test_search_finds_known_root_and_reports_unreachable():
    config = CalibrationConfig(tolerance=0.02, steps=30)
    calls = []

    def kl_at(s):  # KL ~ sigma^2: 0.1 nats at sigma = 0.03
        calls.append(s)
        return 0.1 * (s / 0.03) ** 2

    sigma, kl, reached, message = _search(kl_at, 0.1, config)
    assert reached and not message and sigma == pytest.approx(0.03, rel=0.011)
    assert len(calls) <= 3  # KL ~ sigma^2: the first secant step lands on it
    calls.clear()
    sigma, kl, reached, _ = _search(lambda s: calls.append(s) or 0.1 * math.expm1(s / 0.05), 0.1, config)
    assert reached and sigma == pytest.approx(0.05 * math.log(2), rel=0.03) and len(calls) <= 8
    sigma, kl, reached, message = _search(lambda s: 1e-3 * s, 0.1, config)
    assert not reached and sigma == config.sigma_max and "not reached" in message and "sigma_max" in message
    assert kl == pytest.approx(1e-3 * config.sigma_max) and f"{kl:.3g}" in message
    sigma, _kl, reached, message = _search(lambda s: 5.0 + s, 0.1, config)
    assert not reached and sigma == config.sigma_min and "sigma_min" in message


def test_mean_token_kl_matches_direct_computation(tiny_arith):
    model, tok = tiny_arith
    config = CalibrationConfig(**FAST)
    data = build_calibration_data(model, tok, config)
    pop = Population(model, sigma=0.0, seed=3)
    assert mean_token_kl(pop, data, 0.0, [0, 1]) == 0.0
    got = mean_token_kl(pop, data, 0.2, [0, 1])
    assert pop.sigmas == [0.0] * pop.num_layers  # unchanged: the minds were those of pop.with_sigma(0.2)
    # independent path: a population built at sigma 0.2, full logits in float64, loop over scored tokens
    ref_pop = Population(model, sigma=0.2, seed=3)
    with torch.no_grad():
        pos = (data.text_mask.cumsum(-1) - 1).clamp_min(0)
        plain = model(data.text_ids, attention_mask=data.text_mask, position_ids=pos).logits.double()
        kls = []
        for m in (0, 1):
            with ref_pop.minds([m] * data.text_ids.shape[0]):
                mind = model(data.text_ids, attention_mask=data.text_mask, position_ids=pos).logits.double()
            for i, t in data.scored.nonzero().tolist():
                p, q = plain[i, t - 1].log_softmax(-1), mind[i, t - 1].log_softmax(-1)
                kls.append(float((p.exp() * (p - q)).sum()))
    want = sum(kls) / len(kls)  # both minds score the same tokens: the mean of the per-mind means
    assert got > 1e-4 and got == pytest.approx(want, rel=1e-4)
    assert mean_token_kl(pop, data, 0.4, [0, 1]) > got  # KL grows with sigma


def test_calibrate_hits_target_and_keeps_rng(tiny_arith):
    model, tok = tiny_arith
    torch.manual_seed(123)
    state = torch.get_rng_state()
    result = calibrate_sigma(model, tok, CalibrationConfig(target_kl=0.05, **FAST), seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the sampled calibration text used a forked RNG
    assert result.reached and abs(math.log(result.kl / 0.05)) <= math.log1p(0.1)
    assert result.search[-1][0] == result.sigma or result.sigma in dict(result.search)
    sigmas = [p.sigma for p in result.curve]
    assert sigmas == sorted(sigmas) and sigmas[0] == 0.0 and result.sigma in sigmas
    assert result.curve[0].coherence == result.plain_coherence and result.curve[0].diversity == 0.0
    kls = [p.kl for p in result.curve]
    assert kls == sorted(kls)
    json.dumps(result.to_dict())  # JSON-able
    assert result.table()[sigmas.index(result.sigma)]["calibrated"]


def test_unreachable_target_warns_or_raises(tiny_arith):
    model, tok = tiny_arith
    config = dict(FAST, target_kl=1e3, sigma_max=0.05, curve_factors=())
    with pytest.warns(CalibrationWarning, match="not reached.*sigma_max"):
        result = calibrate_sigma(model, tok, config)
    assert not result.reached and result.sigma == 0.05 and result.curve == []
    with pytest.raises(ValueError, match="not reached"):
        calibrate_sigma(model, tok, dict(config, strict=True))


def test_calibrated_population(tiny_arith):
    model, tok = tiny_arith
    with pytest.raises(ValueError, match="tokenizer"):
        calibrated_population(model)
    with pytest.raises(ValueError, match="target_kl"):
        calibrated_population(model, tok, {"target_kl": -1})
    with pytest.raises(TypeError, match="chooses sigma itself"):
        calibrated_population(model, tok, sigma=0.1)
    with pytest.raises(TypeError, match="calibrated_population"):
        Population(model, sigma="calibrated")  # the old spelling names the new one
    config = dict(FAST, target_kl=0.05, curve_factors=())
    pop, result = calibrated_population(model, tok, config, sigma_scale="weight")
    base = result.sigma
    weight = Population(model, sigma=base, sigma_scale="weight")  # the same sigma, resolved independently
    assert pop.base_sigma == base and pop.sigmas == weight.sigmas and pop.tokenizer is tok
    assert len(set(pop.sigmas)) > 1  # per-layer scaling applied, not one absolute sigma
    spec = pop.spec(0)
    assert spec.sigma == tuple(pop.sigmas) and spec.base_sigma == base and spec.sigma_scale == "weight"
    start = Population(model, sigma=0.3, sigma_scale="weight", tokenizer=tok)
    same, again = calibrated_population(start, config=config)
    assert same.sigmas == pop.sigmas and again.sigma == base  # deterministic; a population's settings are used
    assert start.base_sigma == 0.3  # the population passed in is not changed


def test_with_sigma_is_a_new_population_with_the_same_noise(tiny_arith):
    model, _ = tiny_arith
    pop = Population(model, sigma=0.1, seed=3, sigma_scale="weight")
    other = pop.with_sigma(0.05)
    fresh = Population(model, sigma=0.05, seed=3, sigma_scale="weight")
    assert pop.base_sigma == 0.1 and other.base_sigma == 0.05 and other.sigmas == fresh.sigmas
    for layer in range(pop.num_layers):
        assert torch.equal(other.offsets(1, layer), fresh.offsets(1, layer))
        assert torch.allclose(other.offsets(1, layer) * 2, pop.offsets(1, layer), rtol=1e-5, atol=0)
    rebuilt = Population.from_spec(model, pop.spec(0)).with_sigma(0.05)  # from_spec keeps the per-layer scaling
    assert rebuilt.sigmas == pytest.approx(fresh.sigmas, rel=1e-12)


def test_is_degenerate():
    assert is_degenerate("and " * 20)
    assert is_degenerate("Hello" + "\n" * 30)
    assert is_degenerate("7+7=" * 10)
    assert not is_degenerate("The cat sat on the mat while the dog slept by the warm fire all afternoon.")
    assert not is_degenerate("4-5=-1\n-1+3=2\n2-5=-3\n#### -3")
    assert not is_degenerate("")


def test_warn_if_collapsed():
    loop = "and " * 20
    with pytest.warns(MindCollapseWarning, match="3 of 4 minds"):
        assert warn_if_collapsed([loop, loop, loop, "fine answer"], [0, 1, 2, 3]) == 0.75
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_collapsed([loop, "ok", "fine", "good"], [0, 1, 2, 3])  # one loop: no warning
        warn_if_collapsed([loop, loop, loop], [0, 1, -1])  # the plain model loops too: not the minds' fault
    with pytest.raises(ValueError, match="one id per text"):
        warn_if_collapsed(["a"], [0, 1])


def test_generate_warns_when_minds_collapse(tiny_arith):
    model, tok = tiny_arith
    pop = Population(model, sigma=50.0, tokenizer=tok)
    with pytest.warns(MindCollapseWarning):
        pop.generate("Q: 4-5+3\nA:", minds=4, max_new_tokens=40)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MindCollapseWarning)
        Population(model, sigma=0.05, tokenizer=tok).generate("Q: 4-5+3\nA:", minds=4, max_new_tokens=40)


def test_cli_calibrate(tmp_path):
    from typer.testing import CliRunner

    from manyminds.cli import app

    out = tmp_path / "cal"
    res = CliRunner().invoke(app, ["calibrate", "--model", "tiny-arith", "--minds", "2", "--num-texts", "3",
                                   "--text-tokens", "12", "--answer-tokens", "6", "--curve", "0.5,1",
                                   "--target-kl", "0.05", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "calibrated sigma" in res.output and "plain model" in res.output
    data = json.loads((out / "calibration.json").read_text())
    assert data["target_kl"] == 0.05 and len(data["curve"]) >= 2
    assert (out / "calibration.png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["calibrate", "--model", "tiny-arith", "--target-kl", "-1"])
    assert bad.exit_code == 2 and "target_kl" in bad.output
