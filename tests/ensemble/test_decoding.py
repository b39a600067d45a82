import math

import pytest
import torch

from manyminds.ensemble import (
    EnsembleLoRA,
    generate_members,
    generate_texts,
    mixture_generate,
    token_uncertainty,
)
from manyminds.ensemble.decoding import MixtureLogitsProcessor
from manyminds.metrics import majority_share


def _ensemble(model):
    return EnsembleLoRA(model, num_members=3, r=4, init="diverse", init_std=0.5, seed=2)


@torch.no_grad()
def _mixture_greedy_no_cache(ens, ids, steps):
    """Reference: recompute the full K-repeated forward each step, average probabilities, argmax."""
    K = ens.num_members
    seq = ids
    for _ in range(steps):
        with ens.all_members():
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


def test_mixture_sampling_is_seeded_and_samples(tiny_qwen2):
    ens = _ensemble(tiny_qwen2)
    ids = torch.randint(3, 64, (2, 4), generator=torch.Generator().manual_seed(1))
    kw = {"max_new_tokens": 8, "temperature": 1.0, "eos_token_id": None, "pad_token_id": 0}
    runs = {seed: mixture_generate(ens, ids, seed=seed, **kw).sequences for seed in (5, 6, 7)}
    assert torch.equal(mixture_generate(ens, ids, seed=5, **kw).sequences, runs[5])   # reproducible
    # sampling, not greedy: other seeds give other completions (fails if temperature is ignored)
    assert not torch.equal(runs[5], runs[6]) and not torch.equal(runs[6], runs[7])
    greedy = mixture_generate(ens, ids, max_new_tokens=8, eos_token_id=None, pad_token_id=0).sequences
    assert any(not torch.equal(run, greedy) for run in runs.values())


def test_mixture_sampling_follows_the_tempered_mixture():
    """Empirical token frequencies = mean_k softmax(logits_k / temperature), by hand."""
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0],     # member 0
                           [-1.0, 1.5, 0.5, 0.0]])    # member 1
    B, temperature = 20000, 2.0
    scores = logits[:, None, :].expand(2, B, 4).reshape(2 * B, 4)      # [K*B, V], member-major
    processor = MixtureLogitsProcessor(2, temperature=temperature, seed=3, chunk_elements=2 * 4 * 999)
    forced = processor(torch.zeros(2 * B, 1, dtype=torch.long), scores)
    chosen = forced.argmax(-1).view(2, B)
    assert torch.equal(chosen[0], chosen[1])                            # the same token for all K copies
    freq = torch.bincount(chosen[0], minlength=4).double() / B
    expected = (logits.double() / temperature).softmax(-1).mean(0)
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.015)
    at_one = (logits.double()).softmax(-1).mean(0)
    assert (freq - at_one).abs().max() > 0.05                           # the temperature is applied
    step = processor.steps[0]
    torch.testing.assert_close(step["logp"].exp().double(), expected[chosen[0]], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        MixtureLogitsProcessor(2, temperature=-1.0)


def test_mixture_processor_chunks_equal_one_block():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3 * 5, 7, generator=g)                        # K=3, B=5, V=7
    whole = MixtureLogitsProcessor(3, temperature=0.0)
    blocks = MixtureLogitsProcessor(3, temperature=0.0, chunk_elements=1)
    assert torch.equal(whole(None, scores), blocks(None, scores))
    for key in ("total", "aleatoric", "epistemic", "logp"):
        torch.testing.assert_close(whole.steps[0][key], blocks.steps[0][key], rtol=0, atol=0)
    # and the float64 formula of token_uncertainty
    ref = token_uncertainty(scores.double().view(3, 5, 7))
    torch.testing.assert_close(whole.steps[0]["epistemic"].double(), ref["epistemic"], rtol=1e-4, atol=1e-6)


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


def test_majority_share():
    assert majority_share(["4", "5", "4", None]) == ("4", 0.5)
    assert majority_share([None, None]) == (None, 0.0)
    assert majority_share(["7", "8"]) == ("7", 0.5)


def test_single_member_has_no_epistemic_uncertainty(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=1, r=4, init="diverse", init_std=0.5)
    ids = torch.randint(3, 64, (2, 4), generator=torch.Generator().manual_seed(3))
    out = mixture_generate(ens, ids, max_new_tokens=4, eos_token_id=None, pad_token_id=0)
    assert torch.equal(out.uncertainty["epistemic"], torch.zeros(2, 4))
    # total = aleatoric = the entropy of the one member's next-token distribution at each step
    with torch.no_grad(), ens.members([0, 0]):
        logq = ens(input_ids=out.sequences).logits[:, 3:-1].double().log_softmax(-1)   # [2, 4, V]
    entropy = -(logq.exp() * logq).sum(-1)
    for key in ("total", "aleatoric"):
        torch.testing.assert_close(out.uncertainty[key].double(), entropy, rtol=0, atol=1e-5)
