import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from manyminds.ensemble import (
    effective_members,
    gaussian_prior,
    renyi_dpo_loss,
    renyi_loss,
    responsibility_entropy,
)


def reference_renyi(logp64: torch.Tensor, alpha: float) -> torch.Tensor:
    """Independent float64 formula: mean_b -(1/alpha) log((1/K) sum_k p_k^alpha), alpha=0 limit."""
    K = logp64.shape[0]
    if alpha == 0:
        return (-logp64.mean(0)).mean()
    return (-(1 / alpha) * (torch.logsumexp(alpha * logp64, 0) - math.log(K))).mean()


def mp_renyi(logp: torch.Tensor, alpha: float) -> float:
    """The same value with 60-digit arithmetic (mpmath ships with torch's sympy dependency)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    K, B = logp.shape
    total = mpmath.mpf(0)
    for b in range(B):
        col = [mpmath.mpf(float(v)) for v in logp[:, b]]
        if alpha == 0:
            total += -sum(col) / K
        else:
            a = mpmath.mpf(alpha)
            # log of the mean directly: mpmath's exponent range keeps exp(a v) exact for a v << 0,
            # where log1p(mean expm1(a v)) would cancel away all 60 digits (a v ~ -133)
            total += -(1 / a) * mpmath.log(sum(mpmath.exp(a * v) for v in col) / K)
    return float(total / B)


def _check(logp: torch.Tensor, alpha: float, atol=1e-6):
    x = logp.clone().requires_grad_(True)
    loss, w = renyi_loss(x, alpha)
    loss.backward()
    ref_x = logp.double().clone().requires_grad_(True)
    ref = reference_renyi(ref_x, alpha)
    ref.backward()
    exact = mp_renyi(logp, alpha)   # the float64 formula cancels catastrophically for tiny alpha
    scale = max(1.0, abs(exact))
    assert abs(loss.item() - exact) <= atol * scale
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(w.sum(0), torch.ones(logp.shape[1], dtype=w.dtype))


@pytest.mark.parametrize("alpha", [0.0, 1e-6, 0.01, 0.5, 0.8, 1.0])
def test_renyi_matches_float64_reference(alpha):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 5, generator=g, dtype=torch.float64) * 30
    _check(logp, alpha)
    _check(logp.float(), alpha, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.one_of(st.just(0.0), st.floats(1e-12, 1.0)),
       st.lists(st.floats(-1e4, 0.0), min_size=24, max_size=24))
def test_renyi_property(K, B, alpha, values):
    logp = torch.tensor(values[:K * B], dtype=torch.float64).view(K, B)
    _check(logp, alpha)


def test_limits_and_stability():
    logp = torch.tensor([[-1e4, -3.0], [-2.0, -1e4 + 1]], dtype=torch.float32)
    loss0, w0 = renyi_loss(logp, 0.0)
    assert torch.equal(w0, torch.full_like(logp, 0.5))
    torch.testing.assert_close(loss0, (-logp).mean(0).mean())
    loss1, w1 = renyi_loss(logp, 1.0)
    assert torch.isfinite(loss1) and torch.isfinite(w1).all()
    # alpha = 1: -log mean_k p_k, dominated by the better member
    expected = -(torch.logsumexp(logp.double(), 0) - math.log(2)).mean()
    assert abs(loss1.item() - expected.item()) < 1e-3
    assert w1[1, 0] > 0.999 and w1[0, 1] > 0.999
    # small alpha approaches the alpha = 0 limit continuously
    small, _ = renyi_loss(logp[:, 1:] / 100, 1e-9)  # differs by ~alpha*var/2
    zero, _ = renyi_loss(logp[:, 1:] / 100, 0.0)
    assert abs(small.item() - zero.item()) < 1e-4


def test_loss_decreases_with_alpha_and_k1_is_nll():
    logp = -torch.rand(3, 4, dtype=torch.float64) * 5
    values = [renyi_loss(logp, a)[0].item() for a in (0.0, 0.3, 0.7, 1.0)]
    assert values == sorted(values, reverse=True)          # Renyi bound tightens with alpha
    one = logp[:1]
    for a in (0.0, 0.5, 1.0):
        torch.testing.assert_close(renyi_loss(one, a)[0], -one.mean())


def test_token_level_routing_with_mask():
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(3, 2, 5, generator=g, dtype=torch.float64) * 4
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    loss, w = renyi_loss(x, 0.7, mask=mask)
    loss.backward()
    ref_x = logp.clone().requires_grad_(True)
    per_token = -(1 / 0.7) * (torch.logsumexp(0.7 * ref_x, 0) - math.log(3))   # [B, T]
    ref = (per_token * mask).sum(1).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, ref_x.grad)
    assert w.shape == logp.shape
    assert (x.grad[:, 0, 3:] == 0).all()


def test_dpo_against_reference_and_k1():
    g = torch.Generator().manual_seed(2)
    pc, pr = (-torch.rand(3, 4, generator=g, dtype=torch.float64) * 20 for _ in range(2))
    rc, rr = (-torch.rand(4, generator=g, dtype=torch.float64) * 20 for _ in range(2))
    beta, alpha = 0.5, 0.8
    x_c, x_r = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    loss, _w = renyi_dpo_loss(x_c, x_r, rc, rr, beta=beta, alpha=alpha)
    loss.backward()
    y_c, y_r = pc.clone().requires_grad_(True), pr.clone().requires_grad_(True)
    bt = torch.log(torch.sigmoid(beta * ((y_c - rc) - (y_r - rr))))
    ref = (-(1 / alpha) * (torch.logsumexp(alpha * bt, 0) - math.log(3))).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x_c.grad, y_c.grad)
    torch.testing.assert_close(x_r.grad, y_r.grad)
    # K = 1 is the standard sigmoid DPO loss
    one, _ = renyi_dpo_loss(pc[:1], pr[:1], rc, rr, beta=beta, alpha=alpha)
    dpo = -torch.nn.functional.logsigmoid(beta * ((pc[0] - rc) - (pr[0] - rr))).mean()
    torch.testing.assert_close(one, dpo)


def test_gradient_by_finite_differences():
    logp = torch.tensor([[-3.0, -1.0], [-2.0, -4.0], [-0.5, -6.0]], dtype=torch.float64)
    x = logp.clone().requires_grad_(True)
    renyi_loss(x, 0.6)[0].backward()
    eps = 1e-6
    for idx in [(0, 0), (1, 1), (2, 0)]:
        up, down = logp.clone(), logp.clone()
        up[idx] += eps
        down[idx] -= eps
        fd = (renyi_loss(up, 0.6)[0] - renyi_loss(down, 0.6)[0]) / (2 * eps)
        assert abs(fd.item() - x.grad[idx].item()) < 1e-6


def test_prior_and_routing_stats():
    a = torch.ones(2, 3, 4)
    b = torch.full((2, 5, 3), 2.0)
    torch.testing.assert_close(gaussian_prior([a, b]), torch.tensor(1e-4 * (24 + 120) / 2))
    torch.testing.assert_close(gaussian_prior([a], prior_weight=1.0, prior_sigma=2.0),
                               torch.tensor(24 / 8.0))
    w = torch.tensor([[0.5, 1.0], [0.5, 0.0]])
    torch.testing.assert_close(responsibility_entropy(w), torch.tensor([math.log(2), 0.0]))
    torch.testing.assert_close(effective_members(w), torch.tensor([2.0, 1.0]))


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_alpha_outside_range(alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        renyi_loss(torch.zeros(2, 2), alpha)
