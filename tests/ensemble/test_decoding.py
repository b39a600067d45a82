import math

import torch

from manyminds.ensemble import (
    EnsembleLoRA,
    generate_members,
    generate_texts,
    majority_vote,
    mixture_generate,
)


def _ensemble(model):
    return EnsembleLoRA(model, num_members=3, r=4, init="diverse", init_std=0.5, seed=2)


@torch.no_grad()
def _mixture_greedy_no_cache(ens, ids, steps):
    """Reference: recompute the full K-repeated forward each step, average probabilities, argmax."""
    K = ens.num_members
    seq = ids
    for _ in range(steps):
        logits = ens(input_ids=seq.repeat(K, 1)).logits[:, -1].view(K, seq.shape[0], -1)
        mix = torch.logsumexp(logits.log_softmax(-1), 0) - math.log(K)
        seq = torch.cat([seq, mix.argmax(-1, keepdim=True)], 1)
    return seq


def test_mixture_greedy_matches_reference(tiny_qwen2):
    ens = _ensemble(tiny_qwen2)
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    out = mixture_generate(ens, ids, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    ref = _mixture_greedy_no_cache(ens, ids, 6)
    assert torch.equal(out.sequences, ref)
    assert out.uncertainty["epistemic"].shape == (2, 6)
    assert (out.uncertainty["epistemic"] > 0).all()
    # the mixture is not just member 0's greedy decode
    members = generate_members(ens, ids, max_new_tokens=6, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
    assert members.shape == (3, 2, 11)
    assert any(not torch.equal(members[k], out.sequences) for k in range(3))


def test_mixture_sampling_is_seeded(tiny_qwen2):
    ens = _ensemble(tiny_qwen2)
    ids = torch.randint(3, 64, (2, 4), generator=torch.Generator().manual_seed(1))
    kw = {"max_new_tokens": 8, "temperature": 1.0, "eos_token_id": None, "pad_token_id": 0}
    a = mixture_generate(ens, ids, seed=5, **kw).sequences
    b = mixture_generate(ens, ids, seed=5, **kw).sequences
    assert torch.equal(a, b)


def test_generate_members_equals_member_routing(tiny_qwen2):
    ens = _ensemble(tiny_qwen2)
    ids = torch.randint(3, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    members = generate_members(ens, ids, max_new_tokens=5, do_sample=False, eos_token_id=None,
                               pad_token_id=0)
    for k in range(3):
        with ens.members([k, k]):
            single = ens.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                  do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(members[k], single)


def test_generate_texts_with_tokenizer(char_qwen2, char_tokenizer):
    ens = _ensemble(char_qwen2)
    prompts = ["Q: 1+2\nA:", "Q: 12+3\nA:"]
    mixed = generate_texts(ens, char_tokenizer, prompts, mode="mixture", max_new_tokens=4)
    per_member = generate_texts(ens, char_tokenizer, prompts, mode="members", max_new_tokens=4)
    assert len(mixed) == 2 and all(isinstance(t, str) for t in mixed)
    assert len(per_member) == 3 and all(len(m) == 2 for m in per_member)


def test_majority_vote():
    assert majority_vote(["4", "5", "4", None]) == ("4", 0.5)
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote(["7", "8"]) == ("7", 0.5)


def test_single_member_has_no_epistemic_uncertainty(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=1, r=4, init="diverse", init_std=0.5)
    ids = torch.randint(3, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    out = mixture_generate(ens, ids, max_new_tokens=4, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out.uncertainty["epistemic"], torch.zeros(2, 4))
    assert (out.uncertainty["total"] > 0).all()
