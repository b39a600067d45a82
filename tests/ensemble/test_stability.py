"""The critical alpha: matrix-free V v and J v against dense float64 references, and two models
with a known answer (V = J exactly: alpha* = 1; a misspecified Gaussian: alpha* = sigma^2 / var)."""

import pytest
import torch

from manyminds.ensemble.stability import (
    CurvatureError,
    critical_alpha_from_loglik,
    fisher_vp,
    hessian_vp,
)


def _batches(loglik_fn, data, size):
    return [lambda chunk=data[i:i + size]: loglik_fn(chunk) for i in range(0, len(data), size)]


def test_products_match_dense_references():
    """Logistic regression, float64: V v and J v against the dense Hessian and per-example scores."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    y = (torch.rand(12, generator=gen, dtype=torch.float64) < 0.5).double()
    w = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, generator=gen, dtype=torch.float64, requires_grad=True)

    def loglik(idx, w=w, b=b):
        z = X[idx] @ w + b
        return -torch.nn.functional.binary_cross_entropy_with_logits(z, y[idx], reduction="none")

    idx = torch.arange(12)
    batches = _batches(loglik, idx, 5)                         # 3 batches: 5 + 5 + 2
    v = [torch.randn(3, generator=gen, dtype=torch.float64), torch.randn(1, generator=gen, dtype=torch.float64)]

    def flat_loglik(theta):
        return loglik(idx, theta[:3], theta[3:])

    theta = torch.cat([w, b]).detach()
    H = torch.autograd.functional.hessian(lambda t: flat_loglik(t).sum(), theta)          # [4, 4]
    G = torch.autograd.functional.jacobian(flat_loglik, theta)                            # [12, 4]
    V_dense, J_dense = -H / 12, G.T @ G / 12
    flat_v = torch.cat(v)
    torch.testing.assert_close(torch.cat(hessian_vp(batches, [w, b], v, 12)), V_dense @ flat_v)
    torch.testing.assert_close(torch.cat(fisher_vp(batches, [w, b], v, 12)), J_dense @ flat_v)
    assert not torch.allclose(V_dense @ flat_v, J_dense @ flat_v)  # a misfit model: V != J


def test_well_specified_categorical_has_alpha_star_one():
    """Categorical logits at the MLE (softmax(theta) = empirical frequencies): V = diag(p) - p p^T = J
    exactly, so lambda_max = 1 and alpha* = 1 (no spreading below alpha = 1)."""
    counts = torch.tensor([5, 3, 8, 4])
    ys = torch.repeat_interleave(torch.arange(4), counts)
    theta = (counts.double() / counts.sum()).log().requires_grad_(True)

    def loglik(chunk):
        return theta.log_softmax(-1)[chunk]

    res = critical_alpha_from_loglik(_batches(loglik, ys, 7), [theta], num_examples=len(ys), damping=1e-9)
    assert res.converged
    assert res.lambda_max == pytest.approx(1.0, rel=1e-5)
    assert res.alpha_star == pytest.approx(1.0, rel=1e-5)


def test_misspecified_gaussian_has_known_alpha_star():
    """A unit-variance Gaussian location model on data with per-dimension variances 1, 4, 9 (sigma_model = 1):
    V = I and J = diag(var), so lambda_max = 9 and alpha* = 1/9: conflicting data spread the members early."""
    gen = torch.Generator().manual_seed(1)
    raw = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    raw = raw - raw.mean(0)
    evals, evecs = torch.linalg.eigh(raw.T @ raw / len(raw))
    raw = raw @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T           # whitened: covariance exactly I
    ys = raw * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    mu = ys.mean(0).clone().requires_grad_(True)                      # the MLE

    def loglik(chunk):
        return -0.5 * ((chunk - mu) ** 2).sum(-1)

    res = critical_alpha_from_loglik(_batches(loglik, ys, 64), [mu], num_examples=400, damping=0.0)
    assert res.lambda_max == pytest.approx(9.0, rel=1e-4)
    assert res.alpha_star == pytest.approx(1 / 9, rel=1e-4)


def test_not_at_a_minimum_and_bad_input():
    theta = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    with pytest.raises(CurvatureError, match="not at a minimum"):
        critical_alpha_from_loglik([lambda: (theta ** 2).expand(3)], [theta], num_examples=3)  # V = -2
    frozen = torch.zeros(2)
    with pytest.raises(ValueError, match="requires_grad=True"):
        critical_alpha_from_loglik([lambda: frozen], [frozen], num_examples=2)
