"""The shipped real LM (smollm2-135m-instruct, head_dim 64) in vLLM: mind ``m`` == mind ``m`` in transformers.

Slow (loads the 135M model in both engines, ~1 min on 2 cores); skipped where the zoo has not
converted it yet (``manyminds.load("smollm2-135m-instruct")`` does).
"""

import gc
import os
from pathlib import Path

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from vllm import SamplingParams

import manyminds.vllm as mv
from manyminds.population import Population

MODEL = Path.home() / ".cache" / "manyminds" / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="smollm2-135m-instruct not converted here")
def test_smollm2_minds_match_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 8? Answer briefly."}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    pop = Population(model, sigma=0.3, seed=0)
    new = 12

    def hf(mind):
        with pop.minds([mind]), torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False)
        return out[0, ids.shape[1]:].tolist()

    ref = {m: hf(m) for m in (-1, 0, 1)}
    assert ref[0] != ref[-1] and ref[1] != ref[-1]
    llm = mv.make_llm(MODEL, dtype="float32", max_model_len=256, enforce_eager=True)
    try:
        # min_tokens masks EOS as transformers' min_new_tokens does (ignore_eos alone would let it be chosen)
        params = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0, ignore_eos=True)
        outs = mv.generate(llm, [{"prompt_token_ids": ids[0].tolist()}], minds=[-1, 0, 1], population=pop,
                           sampling_params=params)
        assert mv.token_ids(outs) == [ref[-1], ref[0], ref[1]]
    finally:
        del llm
        gc.collect()
