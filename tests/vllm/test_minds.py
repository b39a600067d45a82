"""Population minds inside vLLM == the same minds on the Hugging Face model (greedy tokens)."""

import functools
import gc
import os

import pytest

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from vllm import SamplingParams

import manyminds.vllm as mv
from manyminds.population import MindSpec, Population, find_norm_layers

from .conftest import hf_tokens as hf_tokens_of

NEW = 10
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
PROMPT = "hello world number 0"


hf_tokens = functools.partial(hf_tokens_of, new=NEW)  # greedy NEW tokens, HF model under a mind


@pytest.fixture(scope="module", params=["eager", "compiled"])
def engine(request, tiny_llama):
    directory, model, tokenizer = tiny_llama
    llm = mv.make_llm(directory, dtype="float32", max_model_len=512, enforce_eager=request.param == "eager")
    yield request.param, llm, model, tokenizer
    del llm
    gc.collect()


def test_mixed_batch_matches_hf(engine):
    mode, llm, model, tokenizer = engine
    pop = Population(model, sigma=0.3, seed=0)
    plain = hf_tokens(model, tokenizer, PROMPT)
    ref = {m: hf_tokens(model, tokenizer, PROMPT, pop, m) for m in (3, 7)}
    assert ref[3] != plain and ref[7] != plain and ref[3] != ref[7]  # the minds change greedy tokens
    before = llm.collective_rpc("manyminds_stats")[0]["mind_steps"]
    outs = mv.generate(llm, PROMPT, minds=[-1, 3, 7, 3], population=pop, sampling_params=GREEDY)
    assert mv.token_ids(outs) == [plain, ref[3], ref[7], ref[3]]
    assert llm.collective_rpc("manyminds_stats")[0]["mind_steps"] > before
    if mode == "compiled":  # the op really ran inside the compiled graph
        assert llm.llm_engine.vllm_config.compilation_config.mode != 0


def test_plain_engine_output_unchanged(engine):
    _, llm, model, tokenizer = engine
    outs = llm.generate([PROMPT], GREEDY, use_tqdm=False)
    assert mv.token_ids(outs) == [hf_tokens(model, tokenizer, PROMPT)]


def test_spec_kwargs_per_layer_sigma_final_and_multiplicative(engine):
    mode, llm, model, tokenizer = engine
    if mode != "eager":
        pytest.skip("spec variants are engine-independent; the eager engine covers them")
    sigmas = [0.05, 0.4, 0.1, 0.5, 0.3]
    cases = [{"sigma": sigmas, "seed": 5}, {"sigma": 0.6, "seed": 1, "norms": "final"},
             {"sigma": 0.3, "seed": 2, "noise": "multiplicative"}]
    for kwargs in cases:
        pop = Population(model, **kwargs)
        ref = hf_tokens(model, tokenizer, PROMPT, pop, 4)
        assert ref != hf_tokens(model, tokenizer, PROMPT), kwargs
        outs = mv.generate(llm, [PROMPT], minds=[4], sampling_params=GREEDY, **kwargs)
        assert mv.token_ids(outs) == [ref], kwargs


def test_engine_norms_match_hf_keys(engine, tiny_llama):
    _, llm, model, _ = engine
    layout = mv.engine_layout(llm)
    hf = find_norm_layers(model)
    assert [layout["names"][k] for k in layout["selections"]["all"]["keys"]] == [n.name for n in hf]
    assert layout["selections"]["all"]["keys"] == [n.key for n in hf]


def test_prefix_cache_is_salted_per_mind(engine, monkeypatch):
    from manyminds.vllm import _guard

    mode, llm, model, tokenizer = engine
    if mode != "eager":
        pytest.skip("the cache logic is engine-independent; the eager engine covers it")
    block = llm.llm_engine.vllm_config.cache_config.block_size
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 15)
    n = len(tokenizer(prompt).input_ids)
    assert n > block + 8, (n, block)  # the shared prefix fills at least one cache block
    pop = Population(model, sigma=0.3, seed=0)
    ref = {m: hf_tokens(model, tokenizer, prompt, pop, m) for m in (-1, 1, 2)}
    assert len({tuple(v) for v in ref.values()}) == 3
    llm.reset_prefix_cache()
    # Without the salt a mind reuses the plain model's cached prefix: wrong tokens (admission and the
    # engine's own guard bypassed) ...
    rows, params = mv.mind_requests([prompt, prompt], [None, pop.spec(1)], GREEDY)
    assert mv.token_ids(llm.generate(rows[:1], params[:1], use_tqdm=False)) == [ref[-1]]
    unsalted = [{k: v for k, v in rows[1].items() if k != "cache_salt"}]
    guarded = llm.llm_engine.add_request
    llm.llm_engine.add_request = llm.llm_engine._manyminds_add_request
    try:
        with monkeypatch.context() as patch:
            patch.setattr(_guard, "_admit", lambda layout, request: None)
            assert mv.token_ids(llm.generate(unsalted, params[1:], use_tqdm=False)) != [ref[1]]
    finally:
        llm.llm_engine.add_request = guarded
    # ... and the engine salts an unsalted mind request at admission (also a raw string prompt).
    llm.reset_prefix_cache()
    assert mv.token_ids(llm.generate(rows[:1], params[:1], use_tqdm=False)) == [ref[-1]]
    assert mv.token_ids(llm.generate(unsalted, params[1:], use_tqdm=False)) == [ref[1]]
    assert mv.token_ids(llm.generate([prompt], params[1:], use_tqdm=False)) == [ref[1]]
    assert mv.token_ids(llm.generate(rows[:1], params[:1], use_tqdm=False)) == [ref[-1]]  # plain blocks intact
    # With it (what generate does), each mind gets its own blocks, in any order and mixed.
    llm.reset_prefix_cache()
    for minds in ([-1], [1], [2], [1, -1, 2], [2, 1]):
        outs = mv.generate(llm, prompt, minds=minds, population=pop, sampling_params=GREEDY)
        assert mv.token_ids(outs) == [ref[m] for m in minds], minds


def test_bad_input_one_line_errors(engine, tiny_llama):
    mode, llm, _model, _tokenizer = engine
    if mode != "eager":
        pytest.skip("checks are engine-independent")
    wrong = MindSpec(seed=0, mind=1, sigma=0.1, num_layers=7, width=128)
    with pytest.raises(ValueError, match="perturbed norms") as err:
        mv.generate(llm, PROMPT, minds=[1], population=_FixedSpec(wrong), sampling_params=GREEDY)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sigma values"):
        mv.generate(llm, PROMPT, minds=[1], sigma=[0.1, 0.2], sampling_params=GREEDY)
    with pytest.raises(ValueError, match="include_qk_norms=True"):
        mv.generate(llm, PROMPT, minds=[1], sigma=0.1, include_qk_norms=True, sampling_params=GREEDY)
    with pytest.raises(ValueError, match="population=pop, or sigma"):
        mv.generate(llm, PROMPT, minds=[1], sampling_params=GREEDY)
    with pytest.raises(ValueError, match="one id per prompt"):
        mv.generate(llm, [PROMPT, PROMPT], minds=[1, 2, 3], sigma=0.1, sampling_params=GREEDY)


class _FixedSpec:
    """A stand-in population whose spec was made for another model."""

    def __init__(self, spec):
        self._spec = spec

    def spec(self, mind):
        return MindSpec(**{**self._spec.to_dict(), "mind": mind})


@pytest.mark.parametrize("raw, match", [
    ("x", "bad mind spec"),                                                     # not a spec at all
    ({"seed": 0, "mind": 1, "sigma": [0.1, 0.2], "num_layers": 5, "width": 128}, "sigma"),  # wrong length
    ({"seed": 0, "mind": 1, "sigma": 0.1, "include_qk_norms": True}, "include_qk_norms=True"),
    ({"seed": 0, "mind": 1, "sigma": 0.1, "norms": "nope"}, "bad mind spec"),
])
def test_bad_spec_is_refused_at_admission_and_the_engine_keeps_serving(engine, raw, match):
    """A malformed mind in raw SamplingParams (no helper in between) is refused before it reaches the
    worker, where an exception inside the model forward would stop the engine for every request."""
    from vllm import SamplingParams

    mode, llm, model, tokenizer = engine
    if mode != "eager":
        pytest.skip("admission is engine-independent")
    pop = Population(model, sigma=0.3, seed=0)
    good = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True,
                          extra_args={mv.EXTRA_ARGS_KEY: pop.spec(2).to_dict()})
    bad = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True, extra_args={mv.EXTRA_ARGS_KEY: raw})
    with pytest.raises(ValueError, match=match) as err:
        llm.generate([PROMPT, PROMPT, PROMPT], [good, bad, good], use_tqdm=False)
    message = str(err.value)
    del err  # the traceback holds this frame (and the engine): drop it now, not at a later garbage collection
    assert "\n" not in message
    # the engine still serves, and the good request gives its mind's tokens
    assert mv.token_ids(llm.generate([PROMPT], [good], use_tqdm=False)) == [hf_tokens(model, tokenizer, PROMPT, pop, 2)]
    assert llm.llm_engine.get_num_unfinished_requests() == 0  # nothing of the refused call is left running
