"""The critical alpha of a model, a LoRA adapter and an SFT dataset.

:func:`critical_alpha` estimates ``alpha* = 1 / lambda_max(V^{-1/2} J V^{-1/2})`` at one trained
adapter (a PEFT LoRA model, or a K = 1 :class:`~manyminds.ensemble.EnsembleLoRA`) from the
sequence log-likelihoods ``log p(completion | prompt)`` of the examples, with the matrix-free
estimator of :mod:`manyminds.ensemble.stability`. Above ``alpha*`` the alpha-Renyi objective gains
from spreading K members away from that single solution; below it, they stay together.

    >>> res = critical_alpha(peft_model, tokenizer, load_task("conflict", n=64))
    >>> res.alpha_star
"""

from __future__ import annotations

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from manyminds.ensemble.lora import EnsembleLoRA
from manyminds.ensemble.stability import CriticalAlpha, critical_alpha_from_loglik

from .sft import SFTCollator, prepare_sft_dataset

__all__ = ["critical_alpha"]


def _adapter_parameters(model: nn.Module) -> list:
    if isinstance(model, EnsembleLoRA):
        if model.num_members != 1:
            raise ValueError(f"critical alpha is defined at a single solution: pass one adapter (a K=1 ensemble "
                             f"or a PEFT LoRA model), not a K={model.num_members} ensemble")
        return list(model.lora_parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameters: pass a trained LoRA adapter, e.g. "
                         "peft.get_peft_model(model, LoraConfig(...)) trained with SFT, or a K=1 EnsembleLoRA")
    return params


def critical_alpha(model: nn.Module, tokenizer, dataset, *, max_examples: int = 64, batch_size: int = 16,
                   max_length: int | None = 512, damping: float = 1e-4, iters: int = 30, cg_iters: int = 50,
                   tol: float = 1e-4, seed: int = 0) -> CriticalAlpha:
    """``alpha*`` at ``model``'s trainable adapter on the first ``max_examples`` rows of ``dataset``.

    Args:
        model: a PEFT LoRA model (its trainable parameters are the adapter) or a K=1 ``EnsembleLoRA``.
        tokenizer: the tokenizer.
        dataset: TRL-format SFT data (``prompt`` + ``completion``, ``text`` or ``messages``).
        max_examples: N, examples used (the first N rows).
        batch_size: rows per forward.
        max_length, damping, iters, cg_iters, tol, seed: see
            :func:`~manyminds.ensemble.stability.critical_alpha_from_loglik`.

    Raises:
        ValueError: no trainable adapter, or a K > 1 ensemble.
        CurvatureError: the adapter is not at a minimum of the NLL (train longer or raise ``damping``).
    """
    params = _adapter_parameters(model)
    n = min(max_examples, len(dataset))
    if n < 1:
        raise ValueError("critical alpha needs at least one example")
    rows = prepare_sft_dataset(dataset.select(range(n)), tokenizer, max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = SFTCollator(pad)
    device = params[0].device
    batches = [collate([rows[j] for j in range(i, min(i + batch_size, n))]) for i in range(0, n, batch_size)]

    def loglik_of(batch):
        def run():
            ids = batch["input_ids"].to(device)
            mask = batch["completion_mask"][:, 1:].to(device)
            kwargs = {"input_ids": ids, "attention_mask": batch["attention_mask"].to(device), "use_cache": False}
            if isinstance(model, EnsembleLoRA):
                with model.members([0] * ids.shape[0]):
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
                                              seed=seed)
    finally:
        model.train(was_training)
