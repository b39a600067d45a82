"""Math of population GRPO as free functions: tensors (or lists) in, tensors (or numbers) out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from manyminds.metrics import unique_answers
from manyminds.rows import group_rows


def truncated_importance_ratio(target_logps: torch.Tensor, behaviour_logps: torch.Tensor,
                               mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token truncated importance ratio ``w = min(exp(log p_target - log p_behaviour), cap)``.

    The rollouts were sampled by their minds (behaviour) but the update uses the mean model's
    log-probs (target); weighting each token's loss by ``w = min(p_mean / p_mind, cap)`` corrects
    the mismatch, truncated at ``cap`` to bound the variance (TRL's ``token_truncate`` vLLM
    correction, Ionides 2008).

    Args:
        target_logps: ``[B, T]`` log-probs of the sampled tokens under the mean model.
        behaviour_logps: ``[B, T]`` log-probs under each row's own mind.
        mask: ``[B, T]`` completion mask; masked tokens get ``w = 1`` (whatever their log-probs,
            ``-inf`` included).
        cap: truncation ``> 0``.

    Returns:
        ``[B, T]`` tensor in the log-probs' dtype, detached, in ``[0, cap]``.
    """
    if target_logps.shape != behaviour_logps.shape or target_logps.shape != mask.shape:
        raise ValueError(f"shape mismatch: target {tuple(target_logps.shape)}, behaviour "
                         f"{tuple(behaviour_logps.shape)}, mask {tuple(mask.shape)}")
    if not cap > 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    diff = (target_logps - behaviour_logps).detach()
    diff = torch.where(mask.bool(), diff, torch.zeros_like(diff))  # not diff * mask: inf * 0 = nan
    return torch.exp(diff).clamp(max=cap)


def mind_log_weights(target_logps: torch.Tensor, behaviour_logps: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Per-rollout log sequence weight ``log w_b = sum_t mask_bt * (log p_target - log p_behaviour)``.

    ``w_b = prod_t p_mean(y_t) / p_mind(y_t)`` is what a sequence-level importance correction (TRL's
    ``sequence_mask`` / ``sequence_truncate``) would multiply rollout ``b``'s loss by if it compared
    the mean model with the mind that sampled it; a diagnostic of how off-policy the minds are.

    Args:
        target_logps, behaviour_logps: ``[B, T]`` log-probs of the sampled tokens.
        mask: ``[B, T]`` completion mask.

    Returns:
        ``[B]`` float tensor, detached.
    """
    diff = (target_logps - behaviour_logps).detach()
    return torch.where(mask.bool(), diff, torch.zeros_like(diff)).sum(dim=1)


def mind_kl(mind_logps: torch.Tensor, mean_logps: torch.Tensor, mask: torch.Tensor) -> float:
    """Monte-Carlo estimate of the mean per-token ``KL(p_mind || p_mean)`` from the rollouts.

    The tokens were sampled by their minds, so
    ``KL = E_{y ~ mind}[log p_mind(y) - log p_mean(y)] ~= sum_bt m_bt (l^mind_bt - l^mean_bt) / sum_bt m_bt``
    (an unbiased estimate of the per-token KL of the sampled prefixes; it can be slightly negative
    on few tokens).

    Args:
        mind_logps, mean_logps: ``[B, T]`` log-probs of the sampled tokens under the rollout's mind
            and under the mean model.
        mask: ``[B, T]`` completion mask.

    Returns:
        The estimate in nats per token (``nan`` without any completion token).
    """
    valid = mask.bool()
    if not valid.any():
        return float("nan")
    return (mind_logps - mean_logps).detach()[valid].double().mean().item()


def adapted_sigma(sigma: float, kl: float, target: float, rate: float = 0.5,
                  bounds: tuple[float, float] = (1e-6, 10.0)) -> float:
    """One step of the sigma controller that keeps the rollouts' per-token KL(mind || mean) at ``target``.

    For small offsets ``KL ~ c * sigma^2`` (second order in the perturbation), so the sigma that hits
    the target is ``sigma * sqrt(target / kl)``; the step moves part of the way in log space:

        log sigma' = log sigma + rate * 0.5 * (log target - log kl),   clipped to ``bounds``

    (``rate = 1`` jumps to the quadratic estimate; smaller values damp the noise of the KL estimate).
    A KL that is not positive (too few tokens, noise) leaves sigma unchanged.
    """
    import math

    if not (kl > 0 and math.isfinite(kl)):
        return sigma
    new = math.exp(math.log(sigma) + rate * 0.5 * (math.log(target) - math.log(kl)))
    return min(max(new, bounds[0]), bounds[1])


def group_unique_answers(answers: Sequence[str | None], num_generations: int) -> list[int]:
    """Number of distinct final answers in each group of ``num_generations`` consecutive rollouts.

    ``None`` (no answer extracted) does not count. Returns ``[N / G]`` counts in ``0..G``.
    """
    return [unique_answers(group) for group in group_rows(answers, num_generations)]


def zero_variance_fraction(rewards: torch.Tensor, num_generations: int, atol: float = 1e-6) -> float:
    """Fraction of groups whose rewards are all equal (they give GRPO no advantage signal).

    Args:
        rewards: ``[N]`` total reward per rollout, groups of ``num_generations`` consecutive rows.
    """
    _check_groups(rewards.numel(), num_generations)
    grouped = rewards.float().view(-1, num_generations)  # [N/G, G]
    spread = grouped.max(dim=1).values - grouped.min(dim=1).values
    return (spread.abs() <= atol).float().mean().item()


def reward_by_mind(rewards: torch.Tensor, mind_ids: torch.Tensor) -> dict[int, float]:
    """Mean reward of each mind id present in the batch: ``{mind id: mean reward}``.

    Args:
        rewards: ``[N]`` reward per rollout (NaN rows are skipped).
        mind_ids: ``[N]`` mind id per rollout.
    """
    if rewards.numel() != mind_ids.numel():
        raise ValueError(f"{rewards.numel()} rewards but {mind_ids.numel()} mind ids")
    out = {}
    for m in torch.unique(mind_ids).tolist():
        r = rewards[(mind_ids == m) & ~torch.isnan(rewards)]
        if r.numel():
            out[int(m)] = r.float().mean().item()
    return out


def _check_groups(n: int, g: int) -> None:
    if g < 1 or n % g:
        raise ValueError(f"{n} rollouts do not split into groups of {g}")
