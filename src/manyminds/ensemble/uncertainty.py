"""Uncertainty from an ensemble's disagreement: token-level decomposition, sequence-level
disagreement, selective answering (risk-coverage) and AUROC.

Token level, for the members' next-token distributions ``p_k``:

    total     = H[ mean_k p_k ]
    aleatoric = mean_k H[ p_k ]
    epistemic = total - aleatoric      (the mutual information between token and member, >= 0)

Memory: the logits of K members are ``[K, B, T, V]``; nothing here makes a float32 copy of them.
Entropies and selected-token log-probs are computed in float32 on blocks of at most
``chunk_elements`` logits (default :data:`CHUNK_ELEMENTS`, 64 MiB in float32).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

from manyminds.rows import LOGPS_BLOCK_ELEMENTS, logit_blocks, selected_log_probs

from .model import EnsembleLoRA

CHUNK_ELEMENTS = LOGPS_BLOCK_ELEMENTS
"""Default float32 elements per chunk of logits (64 MiB): bounds the extra memory of the functions below."""


def token_uncertainty(member_logits: torch.Tensor, mask: torch.Tensor | None = None,
                      chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, torch.Tensor]:
    """Total / aleatoric / epistemic uncertainty per position.

    With ``log p_k = log_softmax(logits_k)``:
    ``aleatoric = mean_k H[p_k]``, ``total = H[mean_k p_k]``, ``epistemic = total - aleatoric``
    (clamped at 0). Computed in float32 on blocks of positions, so the extra memory is one block of
    at most ``chunk_elements`` logits, never a float32 copy of ``[K, B, T, V]``.

    Args:
        member_logits: ``[K, B, T, V]`` (or ``[K, B, V]``) logits of each member; any float dtype,
            may be a non-contiguous view.
        mask: optional ``[B, T]`` 0/1; masked positions are set to 0.
        chunk_elements: float32 logits per block (default 2**24).

    Returns:
        dict with ``total``, ``aleatoric``, ``epistemic``, each ``[B, T]`` (``[B]`` for 3-D input), nats.
    """
    squeeze = member_logits.dim() == 3
    x = member_logits.unsqueeze(2) if squeeze else member_logits      # [K, B, T, V]
    if x.dim() != 4:
        raise ValueError(f"member_logits must be [K, B, T, V] or [K, B, V], got {tuple(member_logits.shape)}")
    K, B, T, V = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    total = torch.empty(B, T, dtype=dtype, device=x.device)
    aleatoric = torch.empty(B, T, dtype=dtype, device=x.device)
    for rows, cols in logit_blocks(B, T, K * V, chunk_elements):
        logq = torch.log_softmax(x[:, rows, cols].to(dtype), dim=-1)   # [K, b, t, V]
        aleatoric[rows, cols] = -(logq.exp() * logq).sum(-1).mean(0)   # [b, t]
        log_mix = torch.logsumexp(logq, dim=0) - math.log(K)           # [b, t, V]
        total[rows, cols] = -(log_mix.exp() * log_mix).sum(-1)
    epistemic = (total - aleatoric).clamp_min(0.0)
    out = {"total": total, "aleatoric": aleatoric, "epistemic": epistemic}
    if squeeze:
        out = {key: value.squeeze(1) for key, value in out.items()}
    if mask is not None:
        out = {key: value * mask.to(value.dtype) for key, value in out.items()}
    return out


def logp_variance(logp: torch.Tensor) -> torch.Tensor:
    """Variance across members of sequence log-likelihoods: ``[K, B] -> [B]`` (population variance)."""
    return logp.float().var(dim=0, unbiased=False)


def answer_disagreement(answers: Sequence[Sequence[str | None]]) -> list[float]:
    """Share of members that disagree with the majority final answer, per example.

    Args:
        answers: ``answers[k][b]``, member k's final answer to example b (``None`` = no answer;
            counts as its own, always-disagreeing vote).

    Returns:
        ``1 - (votes of the most common non-None answer) / K`` per example, in [0, 1 - 1/K].
    """
    K = len(answers)
    if K == 0:
        raise ValueError("answers must hold at least one member")
    out = []
    for column in zip(*answers):
        counts = Counter(a for a in column if a is not None)
        top = counts.most_common(1)[0][1] if counts else 0
        out.append(1.0 - top / K)
    return out


def risk_coverage(uncertainty: Sequence[float] | torch.Tensor, correct: Sequence[float] | torch.Tensor
                  ) -> dict[str, torch.Tensor | float]:
    """Selective answering: answer the most certain examples first, abstain on the rest.

    Args:
        uncertainty: ``[N]`` (higher = less certain).
        correct: ``[N]`` 1/0 (or a score in [0, 1]).

    Returns:
        dict with ``coverage [N]`` (fraction answered, 1/N .. 1), ``risk [N]`` (error rate among the
        answered), ``thresholds [N]`` (answer iff uncertainty <= threshold) and ``aurc`` (area under
        the risk-coverage curve, mean of risk; lower is better).
    """
    u = torch.as_tensor(uncertainty, dtype=torch.float64)
    c = torch.as_tensor(correct, dtype=torch.float64)
    if u.shape != c.shape or u.dim() != 1 or u.numel() == 0:
        raise ValueError(f"uncertainty and correct must be 1-D of equal length, got "
                         f"{tuple(u.shape)} and {tuple(c.shape)}")
    order = torch.argsort(u, stable=True)
    errors = 1.0 - c[order]
    n = torch.arange(1, u.numel() + 1, dtype=torch.float64)
    risk = errors.cumsum(0) / n
    return {"coverage": n / u.numel(), "risk": risk, "thresholds": u[order],
            "aurc": float(risk.mean())}


def selective_answer(uncertainty: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean ``[N]``: answer (True) where ``uncertainty <= threshold``, abstain elsewhere."""
    return torch.as_tensor(uncertainty) <= threshold


def auroc(scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling ``labels == 1`` from ``labels == 0``.

    The Mann-Whitney statistic with average ranks for ties: 1 = perfect, 0.5 = chance.
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs at least one positive and one negative label")
    order = torch.argsort(s, stable=True)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, s.numel() + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse = torch.unique(s, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(s))
    ranks = (sums / counts)[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def completion_logps(ensemble: EnsembleLoRA, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, return_logits: bool = False,
                     chunk_elements: int = CHUNK_ELEMENTS):
    """Every member's log-likelihood of the completion tokens, in one batched forward pass.

    Runs the K-repeated batch under ``ensemble.all_members()``; log-probs of the selected tokens
    only (:func:`manyminds.rows.selected_log_probs`), so no float32 copy of the ``[K*B, T, V]`` logits is made.

    Args:
        input_ids, attention_mask, completion_mask: ``[B, T]`` (prompt + completion, right padded;
            ``completion_mask`` is 1 on completion tokens).
        return_logits: also return the members' next-token logits ``[K, B, T-1, V]`` (a view of the
            model's output, in its dtype).
        chunk_elements: float32 logits per block of the log-prob computation.

    Returns:
        ``token_logps [K, B, T-1]`` float32 (0 outside the completion) and, if asked, the logits.
    """
    K = ensemble.num_members
    B, T = input_ids.shape
    rep = EnsembleLoRA.repeat_batch({"input_ids": input_ids, "attention_mask": attention_mask}, K)
    with ensemble.all_members():
        logits = ensemble(**rep).logits[:, :-1]                         # [K*B, T-1, V] model dtype
    labels = input_ids[:, 1:].repeat(K, 1)                              # [K*B, T-1]
    token_logps = selected_log_probs(logits, labels, chunk_elements)   # [K*B, T-1]
    mask = completion_mask[:, 1:].to(token_logps.dtype)
    token_logps = token_logps.view(K, B, T - 1) * mask                  # [K, B, T-1]
    if return_logits:
        return token_logps, logits.view(K, B, T - 1, logits.shape[-1])  # splits dim 0: no copy
    return token_logps


@torch.no_grad()
def base_completion_logps(ensemble: EnsembleLoRA, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          completion_mask: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS
                          ) -> torch.Tensor:
    """The base model's (adapters off) per-token completion log-probs ``[B, T-1]``, one pass of B rows."""
    with ensemble.disabled():
        logits = ensemble(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_logps = selected_log_probs(logits, input_ids[:, 1:], chunk_elements)
    return token_logps * completion_mask[:, 1:].to(token_logps.dtype)


@torch.no_grad()
def sequence_uncertainty(ensemble: EnsembleLoRA, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, completion_mask: torch.Tensor,
                         chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, torch.Tensor]:
    """Per-example uncertainty of given completions under the ensemble (one K*B forward pass).

    Returns:
        dict of ``[B]`` tensors: ``total``, ``aleatoric``, ``epistemic`` (token values averaged over
        the completion tokens), ``logp_variance`` (variance across members of the summed
        log-likelihood), and ``member_logps [K, B]``.
    """
    token_logps, logits = completion_logps(ensemble, input_ids, attention_mask, completion_mask,
                                           return_logits=True, chunk_elements=chunk_elements)
    mask = completion_mask[:, 1:].float()
    tok = token_uncertainty(logits, mask, chunk_elements)
    n = mask.sum(1).clamp_min(1.0)
    logp = token_logps.sum(-1)                                          # [K, B]
    return {"total": tok["total"].sum(1) / n, "aleatoric": tok["aleatoric"].sum(1) / n,
            "epistemic": tok["epistemic"].sum(1) / n, "logp_variance": logp_variance(logp),
            "member_logps": logp}
