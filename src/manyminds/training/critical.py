"""The critical alpha of a model, a LoRA adapter and an SFT dataset.

:func:`critical_alpha` estimates ``alpha* = 1 / lambda_max(V^{-1/2} J V^{-1/2})`` at one trained
adapter (a PEFT LoRA model, or a K = 1 :class:`~manyminds.ensemble.EnsembleLoRA`) from the
sequence log-likelihoods ``log p(completion | prompt)`` of the examples, with the matrix-free
estimator of :mod:`manyminds.ensemble.stability`. Above ``alpha*`` the alpha-Renyi objective gains
from spreading K members away from that single solution; below it, they stay together.

    >>> res = critical_alpha(peft_model, tokenizer, load_task("conflict", n=64))
    >>> res.alpha_star

:class:`CriticalAlphaCallback` logs ``alpha*`` of chosen members during Renyi training (as
``member_{k}/alpha_star``; NaN, counted in ``critical_alpha/indefinite``, when the member is not at
a minimum of its NLL). It does not change training: it evaluates without dropout, with its own
random generator and ``torch.autograd.grad`` (no ``.grad`` is touched), and restores the train mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import TrainerCallback

from manyminds.ensemble.model import EnsembleLoRA
from manyminds.ensemble.stability import CriticalAlpha, CurvatureError, critical_alpha_from_loglik
from manyminds.rows import pad_id_of

from .sft import SFTCollator, prepare_sft_dataset

__all__ = ["CriticalAlphaCallback", "critical_alpha", "describe", "train_single_adapter"]


def _adapter_parameters(model: nn.Module, member: int | None) -> tuple[list, list | None]:
    """``(params, mask)``: the trainable adapter tensors, and for one member of a K > 1 ensemble the
    0/1 masks of its slices ``[member]`` (else ``None``)."""
    if isinstance(model, EnsembleLoRA):
        params = list(model.lora_parameters())
        if member is None:
            if model.num_members != 1:
                raise ValueError(f"critical alpha is defined at a single solution: pass one adapter (a K=1 "
                                 f"ensemble or a PEFT LoRA model), or member=k to view member k of this "
                                 f"K={model.num_members} ensemble as one")
            return params, None
        if not 0 <= member < model.num_members:
            raise ValueError(f"member must be in [0, {model.num_members - 1}], got {member}")
        masks = []
        for p in params:
            m = torch.zeros_like(p)
            m[member] = 1
            masks.append(m)
        return params, masks
    if member is not None:
        raise ValueError(f"member={member} selects a member of an EnsembleLoRA; {type(model).__name__} is one "
                         f"adapter: leave member unset")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters: pass a trained LoRA adapter, e.g. "
                         "peft.get_peft_model(model, LoraConfig(...)) trained with SFT, or a K=1 EnsembleLoRA")
    return params, None


def critical_alpha(model: nn.Module, tokenizer, dataset, *, max_examples: int = 64, batch_size: int = 16,
                   max_length: int | None = 512, damping: float = 1e-4, iters: int = 30, cg_iters: int = 50,
                   tol: float = 1e-4, seed: int = 0, member: int | None = None) -> CriticalAlpha:
    """``alpha*`` at ``model``'s trainable adapter on the first ``max_examples`` rows of ``dataset``.

    Args:
        model: a PEFT LoRA model (its trainable parameters are the adapter), a K=1 ``EnsembleLoRA``,
            or a K > 1 ``EnsembleLoRA`` with ``member``.
        tokenizer: the tokenizer.
        dataset: TRL-format SFT data (``prompt`` + ``completion``, ``text`` or ``messages``).
        max_examples: N, examples used (the first N rows).
        batch_size: rows per forward.
        max_length, damping, iters, cg_iters, tol, seed: see
            :func:`~manyminds.ensemble.stability.critical_alpha_from_loglik`.
        member: for a K > 1 ensemble, the member viewed as the single adapter (its rows run member
            ``member``; the other members' tensors are held fixed and play no role).

    Raises:
        ValueError: no trainable adapter, or a K > 1 ensemble without ``member``.
        CurvatureError: the adapter is not at a minimum of the NLL (train longer or raise ``damping``).
    """
    params, mask = _adapter_parameters(model, member)
    n = min(max_examples, len(dataset))
    if n < 1:
        raise ValueError("critical alpha needs at least one example")
    rows = prepare_sft_dataset(dataset.select(range(n)), tokenizer, max_length)
    collate = SFTCollator(pad_id_of(tokenizer))
    device = params[0].device
    batches = [collate([rows[j] for j in range(i, min(i + batch_size, n))]) for i in range(0, n, batch_size)]

    def loglik_of(batch):
        def run():
            ids = batch["input_ids"].to(device)
            mask = batch["completion_mask"][:, 1:].to(device)
            kwargs = {"input_ids": ids, "attention_mask": batch["attention_mask"].to(device), "use_cache": False}
            if isinstance(model, EnsembleLoRA):
                with model.members([member or 0] * ids.shape[0]):
                    logits = model(**kwargs).logits
            else:
                logits = model(**kwargs).logits
            # plain log_softmax + gather: twice differentiable (the trainers' memory-lean log-probs
            # have a hand-written backward, which double backward cannot go through)
            logps = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, T-1]
            return (logps * mask).sum(-1)                                  # [b]: log p(completion | prompt)
        return run

    was_training = model.training
    model.eval()  # no dropout: V and J of one deterministic function
    try:
        # the math SDPA kernel is twice differentiable (the fused CPU/CUDA kernels are not)
        with sdpa_kernel([SDPBackend.MATH]):
            return critical_alpha_from_loglik([loglik_of(b) for b in batches], params, num_examples=n,
                                              damping=damping, iters=iters, cg_iters=cg_iters, tol=tol,
                                              seed=seed, mask=mask)
    finally:
        model.train(was_training)


def train_single_adapter(model: nn.Module, tokenizer, dataset, *, steps: int = 200, r: int = 4,
                         lora_alpha: float | None = None, target_modules=None, learning_rate: float = 3e-3,
                         batch_size: int = 16, seed: int = 0, output_dir: str | None = None,
                         **config) -> EnsembleLoRA:
    """Train one LoRA adapter (a K = 1 Renyi SFT, i.e. plain SFT: at K = 1 every alpha gives the
    NLL) for ``steps`` optimizer steps at a constant learning rate, as the single solution at which
    :func:`critical_alpha` is evaluated.

    Returns:
        The K = 1 :class:`~manyminds.ensemble.EnsembleLoRA` wrapping ``model`` (its adapter trained).
    """
    import tempfile

    from .sft import RenyiSFTConfig, RenyiSFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = RenyiSFTConfig(output_dir=output_dir or tmp, num_members=1, alpha=0.0, r=r,
                              lora_alpha=lora_alpha if lora_alpha is not None else 2 * r,
                              target_modules=target_modules, max_steps=steps, per_device_train_batch_size=batch_size,
                              learning_rate=learning_rate, lr_scheduler_type="constant", save_strategy="no",
                              logging_steps=max(1, steps // 5), disable_tqdm=True, seed=seed,
                              dataloader_pin_memory=False, report_to="none", **config)
        trainer = RenyiSFTTrainer(model, args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    return trainer.ensemble


def describe(result: CriticalAlpha, alpha: float | None = None) -> str:
    """One sentence on what ``result`` means, for ``alpha`` if given."""
    star = result.alpha_star
    if alpha is None:
        if star >= 1:
            return (f"alpha* = {star:.3g} >= 1: no alpha in [0, 1] makes spreading the members pay at this "
                    "solution (the data look well specified for one adapter)")
        return f"members gain from spreading for alpha > {star:.3g}; below it they stay together"
    if alpha > star:
        return (f"alpha = {alpha:g} > alpha* = {star:.3g}: spreading pays, expect members to specialise "
                f"(alpha / alpha* = {alpha / star:.2f})")
    return (f"alpha = {alpha:g} <= alpha* = {star:.3g}: the single solution is stable, expect members to stay "
            f"together (raise alpha above {star:.3g} for specialists)" if star <= 1 else
            f"alpha = {alpha:g} <= alpha* = {star:.3g}: no alpha in [0, 1] spreads the members here")


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
        dataset: TRL-format SFT rows (as :func:`critical_alpha` takes).
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
