"""What the Renyi trainers watch during training: dead members and the critical alpha.

- :class:`DeadMemberMonitor` (run by the trainers' ``log``, configured by the ``dead_member_*``
  fields of :class:`~manyminds.training.common.EnsembleArguments`): a member whose mean
  responsibility over a logging window stays below ``dead_member_share`` for
  ``dead_member_patience`` windows in a row is dead. It is logged (``dead_members``, the number dead
  now; ``member_reinits``, re-initialisations so far) with a warning, and with
  ``dead_member_action="reinit"`` re-initialised by :func:`reinit_member` from the living member
  with the largest share.
- :class:`CriticalAlphaCallback`: every ``every`` optimizer steps, ``alpha*`` of
  :func:`~manyminds.training.critical.critical_alpha` at each chosen member viewed as a single
  adapter, logged as ``member_{k}/alpha_star`` (NaN when the member is not at a minimum of the NLL,
  counted in ``critical_alpha/indefinite``).

Neither changes training when it only watches: the callback evaluates without dropout, with its own
random generator and ``torch.autograd.grad`` (no ``.grad`` is touched), and restores the train mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from manyminds.ensemble.lora import EnsembleLoRA
from manyminds.ensemble.stability import CurvatureError

logger = logging.getLogger(__name__)

__all__ = ["CriticalAlphaCallback", "DeadMemberMonitor", "reinit_member"]


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


class CriticalAlphaCallback(TrainerCallback):
    """Log ``alpha*`` at chosen members every ``every`` optimizer steps of a Renyi trainer.

    At step ``s`` with ``s % every == 0`` (and at the last step), for each ``k`` in ``members``:
    ``alpha*`` of member k viewed as one adapter (the other members are held fixed and play no
    role), on the first ``max_examples`` rows of ``dataset``. Logged with the next log line as
    ``member_{k}/alpha_star`` and ``member_{k}/lambda_max``; a member that is not at a minimum of its
    NLL (``V + damping`` indefinite, the usual case early in training) logs NaN and adds one to
    ``critical_alpha/indefinite``. The results are also kept in :attr:`history`
    (``(step, member, CriticalAlpha | None)``).

    Cost: each estimate is ``iters`` power iterations of up to ``cg_iters`` Hessian-vector products
    over ``max_examples`` rows; keep ``every`` large.

    Args:
        dataset: TRL-format SFT rows (as :func:`~manyminds.training.critical.critical_alpha` takes).
        tokenizer: the tokenizer.
        every: steps between estimates (>= 1).
        members: member ids (default: member 0 only).
        max_examples, damping, iters, cg_iters, tol: as in ``critical_alpha``.
    """

    def __init__(self, dataset, tokenizer, every: int = 100, members: Sequence[int] = (0,), *,
                 max_examples: int = 64, damping: float = 1e-2, iters: int = 10, cg_iters: int = 30,
                 tol: float = 1e-3):
        if every < 1:
            raise ValueError(f"every must be >= 1 optimizer step, got {every}")
        if not members:
            raise ValueError("members must name at least one member id, e.g. members=(0,)")
        self.dataset, self.tokenizer, self.every = dataset, tokenizer, int(every)
        self.members = [int(k) for k in members]
        self.kwargs = {"max_examples": max_examples, "damping": damping, "iters": iters,
                       "cg_iters": cg_iters, "tol": tol}
        self.history: list[tuple[int, int, object]] = []
        self._pending: dict[str, float] = {}

    def pop_logs(self) -> dict[str, float]:
        """The metrics computed since the last log (the Renyi trainers' ``log`` merges them)."""
        out, self._pending = self._pending, {}
        return out

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        from .critical import critical_alpha

        if not isinstance(model, EnsembleLoRA):
            raise TypeError(f"CriticalAlphaCallback runs on the Renyi trainers' EnsembleLoRA, got "
                            f"{type(model).__name__}")
        bad = [k for k in self.members if not 0 <= k < model.num_members]
        if bad:
            raise ValueError(f"members {bad} out of range for K={model.num_members}")
        indefinite = 0
        for k in self.members:
            try:
                res = critical_alpha(model, self.tokenizer, self.dataset, member=k, **self.kwargs)
            except CurvatureError:
                res, indefinite = None, indefinite + 1
            self.history.append((step, k, res))
            self._pending[f"member_{k}/alpha_star"] = res.alpha_star if res is not None else math.nan
            self._pending[f"member_{k}/lambda_max"] = res.lambda_max if res is not None else math.nan
        self._pending["critical_alpha/indefinite"] = float(indefinite)
