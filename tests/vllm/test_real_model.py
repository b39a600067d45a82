"""Real model shapes in vLLM: mind ``m`` == mind ``m`` in transformers.

- In CI: a random-init model of Qwen2-0.5B's real attention and width (hidden 896, 14 query heads
  of head_dim 64 over 2 KV heads, q/k/v biases, rope_theta 1e6, tied embeddings) with 2 layers and
  a small vocabulary and MLP, so vLLM's CPU attention runs its real head size and grouping in
  seconds (the other vLLM tests use head_dim 32 and widths up to 128).
- Slow: the real LM the zoo converts (smollm2-135m-instruct, head_dim 64, ~1 min on 2 cores),
  skipped where it has not been converted (``manyminds.load("smollm2-135m-instruct")`` does).
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
from manyminds.zoo.models import random_model

MODEL = Path.home() / ".cache" / "manyminds" / "models" / "smollm2-135m-instruct"
# Qwen2-0.5B (manyminds.zoo.models.FAMILIES["qwen2-0.5b"]) cut to 2 layers, a 512-token vocabulary
# and a 1024-wide MLP: every attention and norm shape stays the real one.
QWEN2_05B_SMALL = {"num_hidden_layers": 2, "intermediate_size": 1024,
                   "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_id": 2,
                   "pad_token_id": 0}


def test_qwen2_05b_shapes_minds_match_transformers(tmp_path):
    """Greedy tokens and their log-probs under minds -1, 3, 7 for two prompts of different lengths
    in one vLLM batch == transformers, row by row."""
    model = random_model("qwen2-0.5b", vocab_size=512, seed=0, **QWEN2_05B_SMALL)
    config = model.config
    heads = (config.num_attention_heads, config.num_key_value_heads)
    assert config.hidden_size == 896 and heads == (14, 2)
    assert config.hidden_size // config.num_attention_heads == 64
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random init leaves the q/k/v biases at zero; make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5, generator=gen)
    model.save_pretrained(tmp_path)
    prompts = [[5, 17, 33, 200, 90, 64, 11, 7],
               [300, 12, 451, 77, 8, 19, 250, 3, 41, 99, 160, 23, 4]]
    minds = (-1, 3, 7)
    pop = Population(model, sigma=0.5, seed=0)
    new = 8

    def hf(prompt, mind):
        ids = torch.tensor([prompt])
        with pop.minds([mind]), torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, pad_token_id=0,
                                 output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, ids.shape[1]:].tolist()
        logps = [torch.log_softmax(step[0].double(), -1)[t].item()
                 for step, t in zip(out.logits, tokens)]
        return tokens, logps

    ref = {(p, m): hf(prompt, m) for p, prompt in enumerate(prompts) for m in minds}
    for p in range(len(prompts)):  # the minds change what the model writes
        assert ref[(p, 3)][0] != ref[(p, -1)][0] and ref[(p, 7)][0] != ref[(p, -1)][0]
    llm = mv.make_llm(tmp_path, dtype="float32", max_model_len=256, enforce_eager=True,
                      skip_tokenizer_init=True)
    try:
        params = SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True, detokenize=False,
                                logprobs=1)
        rows = [(p, m) for p in range(len(prompts)) for m in minds]
        outs = mv.generate(llm, [prompts[p] for p, _ in rows], minds=[m for _, m in rows],
                           population=pop, sampling_params=params)
        assert mv.token_ids(outs) == [ref[row][0] for row in rows]
        for row, out in zip(rows, outs):
            got = [step[t].logprob for step, t in zip(out.outputs[0].logprobs, ref[row][0])]
            assert got == pytest.approx(ref[row][1], abs=1e-4), row  # float32: measured 2e-6 apart
    finally:
        del llm
        gc.collect()


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
