"""Dead members: what the Renyi trainers watch in their responsibilities during training.

- :class:`DeadMemberMonitor` (run by the trainers' ``log``, configured by the ``dead_member_*``
  fields of :class:`~manyminds.training.common.EnsembleArguments`): a member whose mean
  responsibility over a logging window stays below ``dead_member_share`` for
  ``dead_member_patience`` windows in a row is dead. It is logged (``dead_members``, the number dead
  now; ``member_reinits``, re-initialisations so far) with a warning, and with
  ``dead_member_action="reinit"`` re-initialised by :func:`reinit_member` from the living member
  with the largest share.

The critical alpha logged during training (:class:`~manyminds.training.critical.CriticalAlphaCallback`)
lives with its estimator in :mod:`manyminds.training.critical`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from manyminds.ensemble.model import EnsembleLoRA

__all__ = ["DeadMemberMonitor", "reinit_member"]


class DeadMemberMonitor:
    """Counts, per member, consecutive logging windows with a responsibility share below ``share``.

    Args:
        num_members: K.
        share: threshold on a member's mean responsibility in a window (0 = never dead).
        patience: windows in a row below ``share`` before the member is dead (>= 1).
    """

    def __init__(self, num_members: int, share: float, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.share, self.patience = float(share), int(patience)
        self.below = [0] * num_members          # consecutive windows below the threshold
        self.reinits = 0

    def update(self, shares: Sequence[float]) -> tuple[list[int], list[int]]:
        """Feed one window's mean responsibilities ``[K]``; returns ``(dead, newly_dead)`` member ids.

        ``newly_dead`` are the members that reached ``patience`` windows in this very update (the
        ones to warn about or re-initialise once).
        """
        if len(shares) != len(self.below):
            raise ValueError(f"expected {len(self.below)} shares, got {len(shares)}")
        newly = []
        for k, s in enumerate(shares):
            self.below[k] = self.below[k] + 1 if s < self.share else 0
            if self.below[k] == self.patience:
                newly.append(k)
        dead = [k for k, n in enumerate(self.below) if n >= self.patience]
        return dead, newly

    def revived(self, member: int) -> None:
        """Reset ``member``'s count after a re-initialisation."""
        self.below[member] = 0
        self.reinits += 1


@torch.no_grad()
def reinit_member(ensemble: EnsembleLoRA, dead: int, donor: int, noise: float, generator: torch.Generator,
                  optimizer: torch.optim.Optimizer | None = None) -> None:
    """Re-initialise member ``dead`` as a copy of member ``donor`` plus small noise.

    For every LoRA tensor ``P`` (``[K, ...]``): ``P[dead] = P[donor] + noise * rms(P[donor]) * eps``
    with ``eps ~ N(0, 1)`` from ``generator`` (a pure function of its seed; the global RNG is
    untouched). The optimizer's per-parameter state (Adam's ``exp_avg``, ``exp_avg_sq``; any tensor
    state shaped like ``P``) of the dead member becomes the donor's as well: zeroed moments under
    Adam's shared step counter (bias correction already ~1) would make the clone's first steps about
    ``1/sqrt(1 - beta2)`` / ``1/(1 - beta1)`` ~ 3x larger than the donor's, so the clone continues
    with the donor's step sizes instead. With alpha > 0 the two copies then split the donor's data:
    the noise breaks the tie and the responsibilities push them apart.

    Args:
        ensemble: the ensemble (K >= 2).
        dead, donor: member ids, different.
        noise: relative noise (0 = exact copy; the members then stay equal).
        generator: CPU generator for the noise.
        optimizer: the training optimizer (an accelerate wrapper is unwrapped), or ``None``.
    """
    K = ensemble.num_members
    if not (0 <= dead < K and 0 <= donor < K) or dead == donor:
        raise ValueError(f"dead and donor must be two different members in [0, {K - 1}], got {dead}, {donor}")
    inner = getattr(optimizer, "optimizer", optimizer)
    for p in ensemble.lora_parameters():
        src = p[donor]
        rms = src.float().pow(2).mean().sqrt()
        eps = torch.randn(src.shape, generator=generator, dtype=torch.float32).to(p.device)
        p[dead].copy_(src + (noise * rms * eps).to(p.dtype))
        state = inner.state.get(p, {}) if inner is not None else {}
        for value in state.values():
            if torch.is_tensor(value) and value.shape == p.shape:
                value[dead].copy_(value[donor])
