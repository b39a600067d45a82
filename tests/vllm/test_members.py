"""Ensemble members served as vLLM LoRA requests == the members of the EnsembleLoRA they were saved from."""

import gc
import os

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

from transformers import AutoModelForCausalLM
from vllm import SamplingParams

import manyminds.vllm as mv
from manyminds.ensemble import EnsembleLoRA
from manyminds.ensemble.uncertainty import completion_logps
from manyminds.rows import encode_pair, pad_rows

NEW = 10
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
PROMPTS = ["hello world number 0", "once upon a time"]


@pytest.fixture(scope="module")
def saved_members(tiny_llama, tmp_path_factory):
    directory, _, tokenizer = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ens = EnsembleLoRA(model, num_members=3, r=4, lora_alpha=8, init="diverse", init_std=0.5, seed=0)
    for layer in ens.lora_layers.values():  # diverse A and B: members differ from the base and each other
        with torch.no_grad():
            layer.lora_A.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    members_dir = tmp_path_factory.mktemp("members")
    ens.save_members(members_dir)
    return directory, ens, tokenizer, str(members_dir)


def hf_member_tokens(ens, tokenizer, prompt, member):
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with ens.members([member]), torch.no_grad():
        out = ens.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                 min_new_tokens=NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_members_as_lora_requests_match_ensemble(saved_members):
    directory, ens, tokenizer, members_dir = saved_members
    ref = [[hf_member_tokens(ens, tokenizer, p, k) for p in PROMPTS] for k in range(3)]
    base = [hf_member_tokens(ens, tokenizer, p, -1) for p in PROMPTS]
    assert all(ref[k] != base for k in range(3)) and ref[0] != ref[1] != ref[2]
    llm = mv.make_member_llm(directory, members_dir, dtype="float32", max_model_len=256, enforce_eager=True)
    try:
        outputs = mv.generate_members(llm, PROMPTS, members_dir, sampling_params=GREEDY)
        assert [mv.token_ids(row) for row in outputs] == ref
        # disagreement from the outputs: on any text, K members with K distinct answers disagree by 1 - 1/K
        d = mv.member_disagreement(outputs, answer=lambda text: text[:3])
        assert len(d) == len(PROMPTS) and all(0.0 <= x <= 1 - 1 / 3 + 1e-9 for x in d)
        same = [[type("O", (), {"outputs": [type("C", (), {"text": "#### 4"})()]})()] for _ in range(3)]
        assert mv.member_disagreement(same) == [0.0]
        # sequence log-likelihoods of given completions, scored by each member in vLLM == HF
        completions = [" the quick brown fox", " numbers one two"]
        got = mv.member_logp_variance(llm, PROMPTS, completions, members_dir)
        # the trainers' rows (TRL's rule: prompt + completion + eos, the prompt = the common prefix)
        pairs = [encode_pair(tokenizer, p, c, None) for p, c in zip(PROMPTS, completions)]
        assert got["input_ids"] == [r["input_ids"] for r in pairs]
        input_ids = pad_rows([r["input_ids"] for r in pairs], tokenizer.pad_token_id)
        attention = pad_rows([[1] * len(r["input_ids"]) for r in pairs], 0)
        completion_mask = pad_rows([r["completion_mask"] for r in pairs], 0)
        ref_logps = completion_logps(ens, input_ids, attention, completion_mask).sum(-1).double()  # [K, B]
        torch.testing.assert_close(got["member_logps"], ref_logps, atol=2e-3, rtol=1e-4)
        assert got["logp_variance"].shape == (len(PROMPTS),) and bool((got["logp_variance"] > 0).all())
        # members and minds in one batch: [member 1 + mind 3, member 2 alone, mind 5 on the base, member 1
        # + mind 5], each row against transformers under both contexts (members(...) and minds(...))
        from manyminds.population import Population

        population = Population(ens.model, sigma=0.3, seed=4)

        def hf(member, mind):
            ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
            with ens.members([member]), population.minds([mind]), torch.no_grad():
                out = ens.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                                         min_new_tokens=NEW, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            return out[0, ids.shape[1]:].tolist()

        rows = [(1, 3), (2, -1), (-1, 5), (1, 5)]
        expected = [hf(member, mind) for member, mind in rows]
        assert expected[0] != ref[1][0] and expected[2] != base[0] and expected[3] != expected[0]  # minds matter
        loras = mv.member_requests(members_dir, [1, 2, 1, 1])
        loras[2] = None  # the base model's row
        mixed = mv.generate(llm, [PROMPTS[0]] * 4, minds=[m for _, m in rows], population=population,
                            sampling_params=GREEDY, lora_request=loras)
        assert mv.token_ids(mixed) == expected
    finally:
        del llm
        gc.collect()


def test_member_requests_bad_member(saved_members):
    _, _, _, members_dir = saved_members
    with pytest.raises(ValueError, match="holds members 0..2"):
        mv.member_requests(members_dir, [3])
