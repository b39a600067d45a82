"""The critical alpha of the alpha-Renyi objective: when spreading the members pays.

At a single-point solution ``theta`` (all K members equal, e.g. one trained adapter), with the
per-example log-likelihoods ``l_i(theta) = log p(y_i | x_i)`` of N examples,

    V = -(1/N) sum_i Hess l_i(theta)                (observed information)
    J =  (1/N) sum_i grad l_i grad l_i^T           (outer product of the scores)

moving the members apart lowers the alpha-Renyi loss when ``V - alpha J`` is not positive
definite (arXiv 2605.27747), i.e. for ``alpha > alpha*`` with

    alpha* = 1 / lambda_max(V^{-1/2} J V^{-1/2}) = 1 / lambda_max of the pencil J v = lambda V v.

A well-specified model has ``V = J`` (lambda_max = 1: no spreading below alpha = 1); data the
model cannot fit with one point (conflicting annotators) make J exceed V in some direction and
push alpha* below 1.

Everything is matrix-free: ``V v`` is a Hessian-vector product (double backward), ``J v`` a
Jacobian-vector product followed by a vector-Jacobian product of the vector ``[l_i]``, and the
top generalized eigenvalue comes from power iteration on ``(V + delta I)^{-1} J`` with conjugate
gradients for the solves. No ``[P, P]`` or ``[N, P]`` matrix is formed. ``delta`` (damping)
regularizes the flat directions that every LoRA has (``A -> S A``, ``B -> B S^{-1}`` leaves every
``l_i`` unchanged, so V and J both vanish there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["CriticalAlpha", "CurvatureError", "critical_alpha_from_loglik", "fisher_vp", "hessian_vp"]

# A function of nothing that returns the log-likelihoods [b] of one batch, computed from the
# current values of the parameters (with autograd on).
BatchLoglik = Callable[[], torch.Tensor]


class CurvatureError(ValueError):
    """``V + delta I`` is not positive definite: the parameters are not at a minimum of the NLL."""


@dataclass(frozen=True)
class CriticalAlpha:
    """Result of :func:`critical_alpha_from_loglik`.

    Attributes:
        alpha_star: ``1 / lambda_max`` (``inf`` when lambda_max <= 0).
        lambda_max: top eigenvalue of ``(V + delta I)^{-1} J``.
        iterations: power iterations run.
        converged: whether the relative change of lambda fell below ``tol``.
        damping: ``delta``.
        num_examples: N.
        num_params: P, the number of scalar parameters.
    """

    alpha_star: float
    lambda_max: float
    iterations: int
    converged: bool
    damping: float
    num_examples: int
    num_params: int


def _flat_dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(xs, ys))


def hessian_vp(batches: Iterable[BatchLoglik], params: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
               num_examples: int) -> list[torch.Tensor]:
    """``V v = -(1/N) sum_i Hess l_i v``, summed batch by batch (double backward)."""
    out = [torch.zeros_like(p) for p in params]
    for batch in batches:
        loss = -batch().sum() / num_examples
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(_flat_dot(grads, v), params, allow_unused=True)
        for o, h in zip(out, hv):
            if h is not None:
                o.add_(h.to(o.dtype))
    return out


def fisher_vp(batches: Iterable[BatchLoglik], params: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
              num_examples: int) -> list[torch.Tensor]:
    """``J v = (1/N) sum_i g_i (g_i . v)`` with ``g_i = grad l_i``, never forming ``[N, P]``.

    Per batch: ``c = [g_i . v]`` is the derivative in ``w`` of ``grad(sum_i w_i l_i) . v`` (a
    Jacobian-vector product by the double-backward trick), then ``sum_i c_i g_i = grad(sum_i c_i l_i)``.
    """
    out = [torch.zeros_like(p) for p in params]
    for batch in batches:
        loglik = batch()                                               # [b]
        w = torch.zeros_like(loglik, requires_grad=True)               # [b]
        g_w = torch.autograd.grad((w * loglik).sum(), params, create_graph=True)  # sum_i w_i g_i
        (c,) = torch.autograd.grad(_flat_dot(g_w, v), w, retain_graph=True)        # [b]: g_i . v
        jv = torch.autograd.grad((c.detach().to(loglik.dtype) * loglik).sum(), params, allow_unused=True)
        for o, j in zip(out, jv):
            if j is not None:
                o.add_(j.to(o.dtype) / num_examples)
    return out


def _cg(matvec, b: list[torch.Tensor], iters: int, tol: float) -> list[torch.Tensor]:
    """Solve ``A x = b`` for a symmetric positive-definite operator by conjugate gradients."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in r]
    rr = _flat_dot(r, r)
    b_norm = math.sqrt(float(rr))
    if b_norm == 0:
        return x
    for _ in range(iters):
        ap = matvec(p)
        curvature = _flat_dot(p, ap)
        if not curvature > 0:
            raise CurvatureError(
                f"V + damping is not positive definite (p^T V p = {float(curvature):.3g}): the parameters are "
                "not at a minimum of the NLL; train the adapter longer or raise damping")
        step = rr / curvature
        x = [xi + step * pi for xi, pi in zip(x, p)]
        r = [ri - step * api for ri, api in zip(r, ap)]
        rr_new = _flat_dot(r, r)
        if math.sqrt(float(rr_new)) <= tol * b_norm:
            break
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_new
    return x


def critical_alpha_from_loglik(batches: Sequence[BatchLoglik], params: Sequence[torch.Tensor], *,
                               num_examples: int, damping: float = 1e-4, iters: int = 30,
                               cg_iters: int = 50, tol: float = 1e-4, seed: int = 0,
                               mask: Sequence[torch.Tensor] | None = None) -> CriticalAlpha:
    """Estimate ``alpha* = 1 / lambda_max(V^{-1/2} J V^{-1/2})`` at ``params``.

    Args:
        batches: callables, each returning the log-likelihoods ``[b]`` of one batch of examples from
            the current ``params`` (the batches together hold ``num_examples`` examples).
        params: the trainable tensors (``requires_grad=True``), e.g. one LoRA adapter's A and B.
        num_examples: N.
        damping: ``delta`` added to V (flat directions of the parameterization).
        iters: maximum power iterations; ``cg_iters``: conjugate-gradient steps per solve.
        tol: stop when lambda changes by less than ``tol`` (relative).
        seed: seed of the random start vector (a CPU generator; the global RNG is untouched).
        mask: optional 0/1 tensors shaped like ``params``: the estimate runs in the subspace of the
            entries that are 1 (e.g. one member's slice ``[k]`` of an ensemble's ``[K, ...]`` LoRA
            tensors). The log-likelihoods must not depend on the other entries: then ``V v`` and
            ``J v`` of a vector inside the subspace stay inside it, and so does every iterate.

    Raises:
        ValueError: no trainable parameter, or bad settings.
        CurvatureError: ``V + delta I`` is not positive definite at ``params``.
    """
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise ValueError("critical alpha needs the trainable parameters of one adapter (tensors with "
                         "requires_grad=True), e.g. the LoRA A/B tensors of a trained PEFT model")
    if num_examples < 1 or damping < 0 or iters < 1 or cg_iters < 1:
        raise ValueError("num_examples, iters and cg_iters must be >= 1 and damping >= 0")
    if mask is not None and (len(mask) != len(params) or any(m.shape != p.shape for m, p in zip(mask, params))):
        raise ValueError("mask must hold one tensor shaped like each parameter")
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.device, p.dtype) for p in params]
    if mask is not None:
        v = [vi * m.to(vi.device, vi.dtype) for vi, m in zip(v, mask)]

    def v_damped(x):
        return [h + damping * xi for h, xi in zip(hessian_vp(batches, params, x, num_examples), x)]

    lam, converged, it = 0.0, False, 0
    for it in range(1, iters + 1):
        jv = fisher_vp(batches, params, v, num_examples)
        x = _cg(v_damped, jv, cg_iters, tol=1e-6)                       # (V + delta)^{-1} J v
        vx = v_damped(x)
        denom = float(_flat_dot(x, vx))
        new = float(_flat_dot(x, fisher_vp(batches, params, x, num_examples))) / denom if denom > 0 else 0.0
        norm = math.sqrt(max(denom, 1e-300))
        v = [xi / norm for xi in x]                                      # V-normalized
        if it > 1 and abs(new - lam) <= tol * max(abs(new), 1e-12):
            lam, converged = new, True
            break
        lam = new
    return CriticalAlpha(alpha_star=1.0 / lam if lam > 0 else float("inf"), lambda_max=lam, iterations=it,
                         converged=converged, damping=damping, num_examples=num_examples,
                         num_params=sum(p.numel() for p in params) if mask is None
                         else int(sum(float(m.sum()) for m in mask)))
