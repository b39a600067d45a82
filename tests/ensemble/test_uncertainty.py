import math

import pytest
import torch

from manyminds.ensemble import (
    EnsembleLoRA,
    answer_disagreement,
    auroc,
    logp_variance,
    risk_coverage,
    selective_answer,
    sequence_uncertainty,
    token_uncertainty,
)


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
    assert (out["epistemic"] >= 0).all()
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
    with ens.disabled():  # one model: all members identical, epistemic 0
        base = sequence_uncertainty(ens, ids, attn, comp)
    assert base["epistemic"].abs().max() < 1e-5
