"""Math of population GRPO as free functions: tensors (or lists) in, tensors (or numbers) out."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from manyminds.metrics import unique_answers


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


def group_unique_answers(answers: Sequence[str | None], num_generations: int) -> list[int]:
    """Number of distinct final answers in each group of ``num_generations`` consecutive rollouts.

    ``None`` (no answer extracted) does not count. Returns ``[N / G]`` counts in ``0..G``.
    """
    _check_groups(len(answers), num_generations)
    return [unique_answers(answers[i:i + num_generations]) for i in range(0, len(answers), num_generations)]


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
