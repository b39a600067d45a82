"""The alpha-Renyi ensemble objectives (DESIGN.md section 3) as free functions: tensors in, tensors out.

For K members with per-example log-likelihoods ``logp[k, b] = log p_k(y_b | x_b)``:

    l_alpha(b) = -(1/alpha) * log( (1/K) * sum_k exp(alpha * logp[k, b]) ),   alpha in (0, 1]
    l_0(b)     = (1/K) * sum_k -logp[k, b]                                    (the alpha -> 0 limit)

and the gradient is exact in closed form: ``d l_alpha / d logp[k, b] = -w[k, b]`` with the
responsibilities ``w[:, b] = softmax_k(alpha * logp[:, b])``. The loss is implemented as the
surrogate ``-sum_k stopgrad(w_k) logp_k`` (whose gradient is exactly that of ``l_alpha``) plus the
detached difference to the exact value, so the returned scalar also *equals* ``l_alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1] (0 = deep ensemble, 1 = mixture), got {alpha}")
    return alpha


def renyi_value(logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exact ``l_alpha`` per element: ``[K, ...] -> [...]`` (no gradient tricks; differentiable).

    ``-(1/alpha) log mean_k exp(alpha logp_k)``, computed without cancellation for small alpha:
    with ``m = mean_k logp_k`` and ``d_k = logp_k - m`` it is ``-m - (1/alpha) log mean_k exp(alpha d_k)``;
    the last term uses ``log1p(mean expm1(alpha d))`` when ``alpha * spread(d) < 1`` and logsumexp
    otherwise. ``alpha = 0`` gives the limit ``-mean_k logp_k``.
    """
    alpha = _check_alpha(alpha)
    K = logp.shape[0]
    m = logp.mean(0)
    if alpha == 0.0:
        return -m
    d = logp - m                                                     # [K, ...]
    spread = d.amax(0) - d.amin(0)
    small = alpha * spread < 1.0
    # expm1 path: exact to rounding for small alpha*d (guard the exp from overflowing where unused)
    d_safe = torch.where(small.unsqueeze(0), d, torch.zeros_like(d))
    log_mean_small = torch.log1p(torch.expm1(alpha * d_safe).mean(0))
    log_mean_large = torch.logsumexp(alpha * d, dim=0) - math.log(K)
    log_mean = torch.where(small, log_mean_small, log_mean_large)
    return -m - log_mean / alpha


def renyi_loss(logp: torch.Tensor, alpha: float, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The alpha-Renyi ensemble loss and the responsibilities.

    Args:
        logp: ``[K, B]`` sequence log-likelihoods of each member (sequence-level routing), or
            ``[K, B, T]`` per-token log-probs (token-level routing: one responsibility per token).
        alpha: in [0, 1]; 0 = deep ensemble (mean NLL, uniform w), 1 = mixture likelihood.
        mask: optional ``[B, T]`` (or ``[B]``) 0/1 weights of the elements after the member axis;
            masked elements contribute nothing (token-level: padding and prompt tokens).

    Returns:
        ``(loss, responsibilities)``: ``loss`` is a scalar equal to
        ``mean_b sum_t mask * l_alpha`` with exactly the gradient of that quantity;
        ``responsibilities`` has the shape of ``logp``, detached, summing to 1 over the member axis
        (``softmax_k(alpha * logp)``; uniform ``1/K`` at alpha = 0).

    Stable for log-likelihoods down to -1e4 and below (softmax/logsumexp, no exp of raw logp).
    """
    alpha = _check_alpha(alpha)
    if logp.dim() < 2:
        raise ValueError(f"logp must be [K, B] or [K, B, T], got shape {tuple(logp.shape)}")
    K = logp.shape[0]
    with torch.no_grad():
        if alpha == 0.0:
            w = torch.full_like(logp, 1.0 / K)
        else:
            w = torch.softmax(alpha * logp.detach(), dim=0)
        value = renyi_value(logp.detach(), alpha)                     # [B, ...]
    surrogate = -(w * logp).sum(0)                                   # [B, ...]
    if mask is not None:
        mask = mask.to(logp.dtype)
        surrogate = surrogate * mask
        value = value * mask
    batch = logp.shape[1]
    surrogate = surrogate.reshape(batch, -1).sum(1).mean()
    value = value.reshape(batch, -1).sum(1).mean()
    # value of l_alpha, gradient of the surrogate (identical to the gradient of l_alpha)
    loss = surrogate + (value - surrogate).detach()
    return loss, w


def bradley_terry_logp(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                       ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
                       beta: float = 0.1) -> torch.Tensor:
    """Per-member DPO Bradley-Terry log-likelihood ``[K, B]``.

    ``log sigma(beta * [(log pi_k(y_w) - log pi_ref(y_w)) - (log pi_k(y_l) - log pi_ref(y_l))])``,
    with ``policy_*: [K, B]`` and ``ref_*: [B]`` (broadcast over members).
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return F.logsigmoid(beta * margin)


def renyi_dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                   ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
                   beta: float = 0.1, alpha: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha-Renyi DPO: :func:`renyi_loss` of the per-member Bradley-Terry log-likelihoods.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``[K, B]`` summed response log-probs per member.
        ref_chosen_logps, ref_rejected_logps: ``[B]`` reference (base, adapters off), shared.
        beta: DPO temperature (default 0.1).
        alpha: Renyi order in [0, 1] (default 0.8).

    Returns:
        ``(loss, responsibilities [K, B])``. At K = 1 this is TRL's sigmoid DPO loss.
    """
    if policy_chosen_logps.shape != policy_rejected_logps.shape or policy_chosen_logps.dim() != 2:
        raise ValueError("policy log-probs must both be [K, B], got "
                         f"{tuple(policy_chosen_logps.shape)} and {tuple(policy_rejected_logps.shape)}")
    logp = bradley_terry_logp(policy_chosen_logps, policy_rejected_logps,
                              ref_chosen_logps, ref_rejected_logps, beta)
    return renyi_loss(logp, alpha)


def gaussian_prior(parameters: Iterable[torch.Tensor], prior_weight: float = 1e-4,
                   prior_sigma: float = 1.0) -> torch.Tensor:
    """Gaussian prior on the LoRA parameters as an L2 penalty: ``lambda * sum ||theta||^2 / (2 sigma_p^2)``.

    Args:
        parameters: the members' LoRA tensors (e.g. ``ensemble.lora_parameters()``, A ``[K, r, in]``
            and B ``[K, out, r]``: the sum runs over all members).
        prior_weight: lambda (default 1e-4, the authors' prototype).
        prior_sigma: sigma_p (default 1).
    """
    if prior_sigma <= 0:
        raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
    total = None
    for p in parameters:
        term = p.to(torch.promote_types(p.dtype, torch.float32)).pow(2).sum()  # bf16 up, float64 kept
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return prior_weight * total / (2.0 * prior_sigma**2)


def responsibility_entropy(responsibilities: torch.Tensor) -> torch.Tensor:
    """Entropy over members of the responsibilities ``[K, ...] -> [...]`` (nats; log K = uniform)."""
    w = responsibilities.clamp_min(1e-30)
    return -(responsibilities * w.log()).sum(0)


def effective_members(responsibilities: torch.Tensor) -> torch.Tensor:
    """Effective number of members per example, ``exp(entropy)`` in [1, K]: ``[K, ...] -> [...]``."""
    return responsibility_entropy(responsibilities).exp()
