"""critical_alpha on a model against dense V and J built in float64 (issue 19).

With ``l_i(theta) = log p(completion_i | prompt_i)`` of N examples and P adapter parameters
(ensemble/stability.py, DESIGN.md section 3):

    V = -(1/N) sum_i Hess l_i          [P, P]
    J =  (1/N) sum_i g_i g_i^T         [P, P],  g_i = grad l_i
    lambda_max = top eigenvalue of S^{-1/2} J S^{-1/2},  S = V + damping I
    alpha* = 1 / lambda_max

The reference writes this out independently of critical_alpha's code path: each example tokenised
on its own (no padding, no collator), one unpadded forward per example with eager attention
(critical_alpha runs batched SDPA), float64 ``log_softmax`` summed over the completion tokens,
``g_i`` and ``Hess l_i`` by ``torch.autograd.functional`` on the flat vector of the adapter's
entries (for member k of a K = 2 ensemble: only the slices ``[k]``, the other member's tensors
held fixed), and ``S^{-1/2}`` from the eigendecomposition of S.

The model: a tiny random Llama in float64 with a rank-1 LoRA on q_proj and v_proj of both layers
(P = 224), at a random ("diverse") initial point. That point is not a minimum of the NLL (V has
negative eigenvalues), so the damping is chosen from the dense V: ``ceil(1.5 |lambda_min(V)|) + 1``
makes S positive definite (checked) with a condition number ~5, and lambda_max is still ~2x its
value with V replaced by I.

Tolerance: the top two eigenvalues of the pencil differ >15x, so the Rayleigh quotient of power
iteration gains >2 digits per step and ``tol = 1e-6`` (relative change between steps) stops within
~1e-8 of its limit; CG solves to a 1e-6 residual, which enters the Rayleigh quotient squared. What
remains is critical_alpha's ``log_softmax`` in float32 (``logits.float()``, a downcast for this
float64 model), ~1e-7 relative. Hence ``rel = 1e-5``; every planted defect tried moves lambda_max
by over 10%.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.func import functional_call

from manyminds.ensemble import EnsembleLoRA
from manyminds.tasks import load_task
from manyminds.training.critical import critical_alpha
from manyminds.zoo.charlm import VOCAB_SIZE
from manyminds.zoo.models import random_model

N = 6
# batch_size 4 of N = 6: two batches, the first right-padded (the rows differ in length)
SETTINGS = {"iters": 25, "cg_iters": 100, "tol": 1e-6, "batch_size": 4}
REL = 1e-5


def _ensemble(K: int, seed: int) -> EnsembleLoRA:
    model = random_model("llama", vocab_size=VOCAB_SIZE, seed=0, dtype=torch.float64)
    targets = ["q_proj", "v_proj"]
    return EnsembleLoRA(model, num_members=K, r=1, lora_alpha=2, target_modules=targets,
                        init="diverse", init_std=0.3, seed=seed)


def _dense_v_j(ensemble: EnsembleLoRA, tokenizer, rows,
               member: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``V`` and ``J`` ``[P, P]`` in float64 over member ``member``'s slices of the LoRA
    tensors."""
    fixed = {n: p.detach() for n, p in ensemble.named_parameters() if p.requires_grad}  # [K, ...]
    shapes = {n: p[member].shape for n, p in fixed.items()}
    theta0 = torch.cat([p[member].reshape(-1) for p in fixed.values()])                 # [P]

    def loglik(theta: torch.Tensor, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
        params, start = {}, 0
        for name, p in fixed.items():  # member's slice from theta, the other members as they are
            piece = theta[start:start + shapes[name].numel()].reshape(shapes[name])
            start += shapes[name].numel()
            params[name] = torch.stack([piece if k == member else p[k] for k in range(len(p))])
        with ensemble.members([member]):
            kwargs = {"input_ids": ids[None], "use_cache": False}
            out = functional_call(ensemble, params, (), kwargs)
        logps = out.logits[0, :-1].double().log_softmax(-1)              # [T-1, vocab]: token t+1
        logps = logps.gather(-1, ids[1:, None]).squeeze(-1)              # [T-1]
        return logps[prompt_len - 1:].sum()                              # the completion tokens

    grads, hessians = [], []
    attention = ensemble.model.config._attn_implementation
    ensemble.model.set_attn_implementation("eager")
    try:
        for row in rows:
            prompt = tokenizer(row["prompt"]).input_ids
            ids = tokenizer(row["prompt"] + row["completion"]).input_ids + [tokenizer.eos_token_id]
            assert ids[:len(prompt)] == prompt  # one token per character: the prompt is a prefix
            f = functools.partial(loglik, ids=torch.tensor(ids), prompt_len=len(prompt))  # -> l_i
            grads.append(torch.autograd.functional.jacobian(f, theta0))                    # [P]
            hessians.append(torch.autograd.functional.hessian(f, theta0, vectorize=True))  # [P, P]
    finally:
        ensemble.model.set_attn_implementation(attention)
    g = torch.stack(grads)                                                                 # [N, P]
    return -torch.stack(hessians).mean(0), g.T @ g / len(rows)


def _damping(V: torch.Tensor) -> float:
    """``ceil(1.5 |lambda_min(V)|) + 1``: ``V + damping I`` is positive definite with its smallest
    eigenvalue >= 1, and its condition number stays ~5 (a few CG steps per solve)."""
    return float(math.ceil(1.5 * max(-float(torch.linalg.eigvalsh(V)[0]), 0.0))) + 1.0


def _lambda_max(V: torch.Tensor, J: torch.Tensor, damping: float) -> float:
    """Top eigenvalue of ``S^{-1/2} J S^{-1/2}``, ``S = V + damping I`` (positive definite)."""
    w, Q = torch.linalg.eigh(V + damping * torch.eye(len(V), dtype=V.dtype))
    assert w.min() >= 1, f"V + damping is not safely positive definite (min {w.min():.3g})"
    s_inv_half = Q @ torch.diag(w.rsqrt()) @ Q.T
    return float(torch.linalg.eigvalsh(s_inv_half @ J @ s_inv_half)[-1])


def test_critical_alpha_matches_dense_v_and_j(char_tokenizer):
    rows = load_task("conflict", n=N, seed=0)
    ensemble = _ensemble(1, seed=1)
    V, J = _dense_v_j(ensemble, char_tokenizer, rows, member=0)
    assert V.shape == (224, 224)
    assert float(torch.linalg.eigvalsh(V)[0]) < 0  # not a minimum: the damping matters too
    damping = _damping(V)
    expected = _lambda_max(V, J, damping)
    # the sides differ without V: V = I (or a plain J) would give a different top eigenvalue
    assert expected != pytest.approx(float(torch.linalg.eigvalsh(J)[-1]) / (1 + damping), rel=0.1)

    res = critical_alpha(ensemble, char_tokenizer, rows, damping=damping, **SETTINGS)
    assert res.converged and res.num_examples == N and res.num_params == 224
    assert res.lambda_max == pytest.approx(expected, rel=REL)
    assert res.alpha_star == pytest.approx(1 / expected, rel=REL)


def test_member_of_a_pair_matches_dense_v_and_j_of_its_slices(char_tokenizer):
    """member=1 of a K=2 ensemble: V and J over member 1's slices, the rows run member 1. Member 0's
    dense value differs, so routing the rows to the wrong member would show."""
    rows = load_task("conflict", n=N, seed=0)
    pair = _ensemble(2, seed=0)
    V, J = _dense_v_j(pair, char_tokenizer, rows, member=1)
    V0, J0 = _dense_v_j(pair, char_tokenizer, rows, member=0)
    damping = max(_damping(V), _damping(V0))
    expected = _lambda_max(V, J, damping)
    assert _lambda_max(V0, J0, damping) != pytest.approx(expected, rel=0.1)

    res = critical_alpha(pair, char_tokenizer, rows, member=1, damping=damping, **SETTINGS)
    assert res.converged and res.num_params == 224
    assert res.lambda_max == pytest.approx(expected, rel=REL)
