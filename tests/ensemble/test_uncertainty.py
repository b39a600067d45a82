import math

import pytest
import torch

from manyminds.ensemble import (
    EnsembleLoRA,
    answer_disagreement,
    auroc,
    base_completion_logps,
    completion_logps,
    logp_variance,
    risk_coverage,
    selective_answer,
    sequence_uncertainty,
    token_uncertainty,
)
from manyminds.rows import selected_log_probs


def _entropy(p):
    return -(p * p.log()).sum(-1)


def test_token_decomposition_against_manual():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 4, 5, generator=g, dtype=torch.float64)
    out = token_uncertainty(logits)
    p = logits.softmax(-1)
    total = _entropy(p.mean(0))
    aleatoric = _entropy(p).mean(0)
    torch.testing.assert_close(out["total"].double(), total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["aleatoric"].double(), aleatoric, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["epistemic"].double(), total - aleatoric, rtol=1e-4, atol=1e-6)
    # identical members: no epistemic uncertainty
    same = token_uncertainty(logits[:1].repeat(3, 1, 1, 1))
    assert same["epistemic"].abs().max() < 1e-5
    # members that are confident about different tokens: epistemic = log K
    one_hot = torch.full((2, 1, 1, 2), -1e4)
    one_hot[0, ..., 0] = 0
    one_hot[1, ..., 1] = 0
    assert abs(token_uncertainty(one_hot)["epistemic"].item() - math.log(2)) < 1e-5


def test_sequence_level_helpers():
    logp = torch.tensor([[-1.0, -5.0], [-1.0, -1.0], [-1.0, -3.0]])
    torch.testing.assert_close(logp_variance(logp), torch.tensor([0.0, 8 / 3]))
    answers = [["4", "4", None], ["4", "5", None], ["4", "6", "1"]]
    assert answer_disagreement(answers) == [0.0, pytest.approx(2 / 3), pytest.approx(2 / 3)]


def test_auroc_and_risk_coverage():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    # brute-force Mann-Whitney on random scores with ties
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 5, (40,), generator=g).double()
    y = torch.randint(0, 2, (40,), generator=g)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean()
    assert abs(auroc(s, y) - brute.item()) < 1e-9
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [1, 1])
    rc = risk_coverage([0.9, 0.1, 0.5, 0.3], [0, 1, 1, 0])
    torch.testing.assert_close(rc["coverage"], torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(rc["risk"], torch.tensor([0.0, 0.5, 1 / 3, 0.5], dtype=torch.float64))
    assert rc["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    assert selective_answer(torch.tensor([0.9, 0.1]), 0.5).tolist() == [False, True]


def test_sequence_uncertainty_on_ensemble(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=3, r=4, init="diverse", init_std=0.5)
    ids = torch.randint(3, 64, (2, 7))
    attn = torch.ones_like(ids)
    comp = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    out = sequence_uncertainty(ens, ids, attn, comp)
    assert out["member_logps"].shape == (3, 2)
    # member log-likelihoods agree with separate per-member passes
    with torch.no_grad(), ens.members([1, 1]):
        logits = ens(input_ids=ids).logits[:, :-1].log_softmax(-1)
    single = (logits.gather(-1, ids[:, 1:, None])[..., 0] * comp[:, 1:]).sum(1)
    torch.testing.assert_close(out["member_logps"][1], single, rtol=1e-5, atol=1e-5)
    assert (out["epistemic"] > 0).all() and (out["logp_variance"] > 0).all()
    with torch.no_grad():  # identical members: epistemic 0
        for layer in ens.lora_layers.values():
            layer.lora_A.copy_(layer.lora_A[:1].expand_as(layer.lora_A))
            layer.lora_B.copy_(layer.lora_B[:1].expand_as(layer.lora_B))
    same = sequence_uncertainty(ens, ids, attn, comp)
    assert same["epistemic"].abs().max() < 1e-5 and same["logp_variance"].abs().max() < 1e-8


def _old_token_uncertainty(member_logits):
    """The straightforward formula (a float copy of all [K, B, T, V] logits), as a reference."""
    K = member_logits.shape[0]
    logq = torch.log_softmax(member_logits, dim=-1)
    aleatoric = -(logq.exp() * logq).sum(-1).mean(0)
    log_mix = torch.logsumexp(logq, dim=0) - math.log(K)
    total = -(log_mix.exp() * log_mix).sum(-1)
    return {"total": total, "aleatoric": aleatoric, "epistemic": (total - aleatoric).clamp_min(0.0)}


@pytest.mark.parametrize("chunk_elements", [1, 3 * 11 * 2, 3 * 11 * 5, 2**24])
def test_chunked_token_uncertainty_equals_full_formula(chunk_elements):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 5, 11, generator=g, dtype=torch.float64) * 3   # [K, B, T, V]
    ref = _old_token_uncertainty(logits)
    # a non-contiguous view, as sequence_uncertainty passes it (logits[:, :-1] split by member)
    view = torch.cat([logits, logits[:, :, :1]], 2)[:, :, :-1]
    assert not view.is_contiguous()
    out = token_uncertainty(view, chunk_elements=chunk_elements)
    for key in ("total", "aleatoric", "epistemic"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-12, atol=1e-12)
    # float32 / bfloat16 logits: float32 results close to the float64 reference
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        low = token_uncertainty(logits.to(dtype), chunk_elements=chunk_elements)
        ref_low = _old_token_uncertainty(logits.to(dtype).double())
        assert low["total"].dtype == torch.float32
        torch.testing.assert_close(low["total"].double(), ref_low["total"], rtol=tol, atol=tol)
    # [K, B, V]: one position per row
    step = token_uncertainty(logits[:, :, 0], chunk_elements=chunk_elements)
    torch.testing.assert_close(step["epistemic"], ref["epistemic"][:, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk_elements", [1, 7, 11 * 5, 2**24])
def test_selected_log_probs_equals_log_softmax(chunk_elements):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, 11, generator=g, dtype=torch.float64) * 4        # [N, T, V]
    labels = torch.randint(0, 11, (3, 5), generator=g)
    ref = logits[:, :-1].log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    out = selected_log_probs(logits[:, :-1], labels, block_elements=chunk_elements)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    half = selected_log_probs(logits[:, :-1].bfloat16(), labels, block_elements=chunk_elements)
    assert half.dtype == torch.float32
    ref_half = logits[:, :-1].bfloat16().double().log_softmax(-1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(half.double(), ref_half, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"logits \[N, T, V\] and index \[N, L<=T\]"):
        selected_log_probs(logits[:, :4], labels)


def test_completion_logps_is_one_all_member_pass(tiny_qwen2):
    ens = EnsembleLoRA(tiny_qwen2, num_members=2, r=4, init="diverse", init_std=0.5)
    ids = torch.randint(3, 64, (2, 6), generator=torch.Generator().manual_seed(4))
    comp = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        token_logps = completion_logps(ens, ids, torch.ones_like(ids), comp, chunk_elements=64)
        for k in range(2):
            with ens.members([k, k]):
                logq = ens(input_ids=ids).logits[:, :-1].double().log_softmax(-1)
            ref = logq.gather(-1, ids[:, 1:, None])[..., 0] * comp[:, 1:]
            torch.testing.assert_close(token_logps[k].double(), ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(token_logps[0], token_logps[1], atol=1e-4)
        with ens.disabled():
            base = ens(input_ids=ids).logits[:, :-1].double().log_softmax(-1)
        ref_base = base.gather(-1, ids[:, 1:, None])[..., 0] * comp[:, 1:]
        torch.testing.assert_close(base_completion_logps(ens, ids, torch.ones_like(ids), comp).double(),
                                   ref_base, rtol=1e-5, atol=1e-5)
