"""The alpha-Renyi trainers at K = 3 against a float64 reference written out from DESIGN.md section 3.

At K = 1 (``test_reference.py``) every responsibility is 1 and token and sequence routing coincide,
so a trainer that pairs the wrong member with the wrong row, routes per sequence when asked per token,
or mixes up chosen and rejected rows would still match TRL there. Here K = 3 members with different
("diverse") initial factors, and the reference computes, independently of the trainers' code path:

* the members' per-token log-probs from K separate forwards of the un-repeated batch, member ``k``
  routed with ``ensemble.members([k] * B)``, float64 ``log_softmax`` of the full logits (the trainers
  cut the logits with ``logits_to_keep`` and score them blockwise), masked to completion tokens;
* the loss written out from the formula, ``l = -(1/alpha) log((1/K) sum_k p_k^alpha)`` per example
  (sequence routing: ``p_k`` = the completion's likelihood) or per completion token (token routing:
  summed over the completion), the alpha -> 0 limit ``mean_k -log p_k``; averaged over the batch;
* DPO: per member the Bradley-Terry log-likelihood
  ``log sigmoid(beta ((log pi_k(y_w) - log pi_ref(y_w)) - (log pi_k(y_l) - log pi_ref(y_l))))`` with
  ``pi_ref`` = the base with every adapter off (``members([-1] * 2B)``), then the same Renyi loss;
* plus the Gaussian prior ``lambda * sum ||theta||^2 / (2 sigma_p^2)`` over all members' LoRA tensors
  (on: lambda = 1e-4, whose gradient is still ~100x the tolerance);

and the LoRA gradients by autograd of that reference. The trainer's ``compute_loss`` and the
gradients after ``loss.backward()`` must agree with it to ~1e-8. Everything is float64 except the
prior, which ``gaussian_prior`` sums in float32 (``p.float()``): relative error ~3e-8 of the prior's
value, ~3e-9 at lambda = 1e-4, inside the tolerance (at lambda = 1e-2 it would not be).
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model
from manyminds.rows import pad_rows
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer

K = 3
TARGETS = ["q_proj", "v_proj", "down_proj", "lm_head"]
PRIOR_WEIGHT, PRIOR_SIGMA = 1e-4, 0.7   # lambda as the authors' prototype; sigma_p != 1 shows
BETA = 0.5
TOL = 1e-8

# completions of different lengths: right padding, and masks that differ per row
SFT_ROWS = [("1+2=", "3"), ("17+25=", "042"), ("9*9=", "81")]
DPO_ROWS = [("1+2=", "3", "4"), ("17+25=", "42", "043"), ("9*9=", "81", "18")]

COMMON = {"num_members": K, "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": TARGETS,
          "init": "diverse", "init_std": 0.5, "prior_weight": PRIOR_WEIGHT, "prior_sigma": PRIOR_SIGMA,
          "alpha_warmup_steps": 0, "max_steps": 1, "per_device_train_batch_size": len(SFT_ROWS),
          "use_cpu": True, "disable_tqdm": True, "report_to": "none", "seed": 0, "save_strategy": "no"}


def _base():
    """A tiny float64 Qwen2 with the char tokenizer's vocabulary; the same weights on every call."""
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, dtype=torch.float64)


def _batch(rows_ids: list[list[int]], rows_mask: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``completion_mask`` ``[N, T]`` (built here, not by
    the trainers' collators)."""
    return {"input_ids": pad_rows(rows_ids, pad),
            "attention_mask": pad_rows([[1] * len(r) for r in rows_ids], 0),
            "completion_mask": pad_rows(rows_mask, 0)}


def _member_token_logps(ensemble, batch, member: int) -> torch.Tensor:
    """``[N, T-1]`` float64 log-probs of every next token under ``member`` (-1 = base), one plain
    forward of the batch; 0 outside the completion."""
    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with ensemble.members([member] * ids.shape[0]):
        logits = ensemble(input_ids=ids, attention_mask=attn, use_cache=False).logits   # [N, T, V]
    logq = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    token = logq.gather(-1, ids[:, 1:, None]).squeeze(-1)                               # [N, T-1]
    return token * comp[:, 1:].double()


def _renyi(logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """``-(1/alpha) log((1/K) sum_k exp(alpha logp_k))`` over dim 0; ``alpha = 0``: ``-mean_k logp_k``."""
    if alpha == 0:
        return -logp.mean(0)
    return -(torch.logsumexp(alpha * logp, dim=0) - math.log(logp.shape[0])) / alpha


def _prior(ensemble) -> torch.Tensor:
    return PRIOR_WEIGHT * sum(p.double().pow(2).sum() for p in ensemble.lora_parameters()) / (2 * PRIOR_SIGMA**2)


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


def _assert_trainer_matches(trainer, batch, reference_loss: torch.Tensor, reference_grads: list) -> None:
    """``compute_loss`` on ``batch`` and the LoRA gradients of its ``backward()`` equal the reference."""
    params = list(trainer.ensemble.lora_parameters())
    for p in params:
        p.grad = None
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss.detach(), reference_loss.detach(), rtol=0, atol=TOL)
    for i, (p, g) in enumerate(zip(params, reference_grads, strict=True)):
        assert p.grad is not None, f"LoRA tensor {i} got no gradient"
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=TOL, msg=f"LoRA tensor {i} {tuple(p.shape)}")


def _assert_members_differ(token_logps: torch.Tensor) -> None:
    """``[K, N, T-1]``: every member scores every row differently, so pairing matters (habit 9)."""
    seq = token_logps.sum(-1)                                                           # [K, N]
    for k in range(1, seq.shape[0]):
        assert (seq[k] - seq[0]).abs().min() > 1e-2, seq
    # rows differ too: a member scored on the wrong row shows in the loss itself
    assert (seq[:, 1:] - seq[:, :1]).abs().min() > 1e-2, seq


# ---------------------------------------------------------------------------------------------- SFT
@pytest.fixture(scope="module")
def sft_setup(tmp_path_factory):
    tok = build_tokenizer()
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in SFT_ROWS])
    trainers = {}
    for routing in ("sequence", "token"):
        for alpha in (0.7, 0.0):
            args = RenyiSFTConfig(output_dir=str(tmp_path_factory.mktemp("sft")), routing=routing,
                                  alpha=alpha, **COMMON)
            trainers[routing, alpha] = RenyiSFTTrainer(_base(), args, train_dataset=data, processing_class=tok)
    first = next(iter(trainers.values()))
    ds = first.train_dataset
    batch = _batch(list(ds["input_ids"]), list(ds["completion_mask"]), tok.pad_token_id)
    assert batch["attention_mask"].sum(1).unique().numel() == len(SFT_ROWS)      # padding is exercised
    return trainers, batch


def _sft_reference(ensemble, batch, alpha: float, routing: str):
    """(loss, per-member token log-probs [K, B, T-1]) from K separate member forwards."""
    token = torch.stack([_member_token_logps(ensemble, batch, k) for k in range(K)])   # [K, B, T-1]
    mask = batch["completion_mask"][:, 1:].double()                                    # [B, T-1]
    if routing == "token":
        per_example = (_renyi(token, alpha) * mask).sum(-1)                             # [B]
    else:
        per_example = _renyi(token.sum(-1), alpha)                                      # [B]
    return per_example.mean() + _prior(ensemble), token


@pytest.mark.parametrize("alpha", [0.7, 0.0], ids=["alpha0.7", "alpha0"])
@pytest.mark.parametrize("routing", ["sequence", "token"])
def test_sft_loss_and_gradients_match_reference(sft_setup, routing, alpha):
    trainers, batch = sft_setup
    trainer = trainers[routing, alpha]
    ens = trainer.ensemble
    params = list(ens.lora_parameters())
    loss, token = _sft_reference(ens, batch, alpha, routing)
    _assert_members_differ(token.detach())
    if alpha > 0:
        # the two routings are different objectives here (at alpha = 0 both are the mean NLL)
        other, _ = _sft_reference(ens, batch, alpha, "sequence" if routing == "token" else "token")
        assert abs(other.item() - loss.item()) > 1e-3
        # responsibilities are far from uniform, so a wrong member-row pairing moves the gradients
        w = torch.softmax(alpha * token.detach().sum(-1), 0)
        assert (w.amax(0) - w.amin(0)).min() > 0.05, w
    # the prior's gradient is far above the tolerance: dropping it would show
    prior_grads = _grads(_prior(ens), params)
    assert max(g.abs().max().item() for g in prior_grads) > 100 * TOL
    _assert_trainer_matches(trainer, batch, loss, _grads(loss, params))


# ---------------------------------------------------------------------------------------------- DPO
@pytest.fixture(scope="module")
def dpo_setup(tmp_path_factory):
    tok = build_tokenizer()
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in DPO_ROWS])
    trainers = {}
    for alpha in (0.7, 0.0):
        args = RenyiDPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), beta=BETA, alpha=alpha, **COMMON)
        trainers[alpha] = RenyiDPOTrainer(_base(), args, train_dataset=data, processing_class=tok)
    ds = trainers[0.7].train_dataset
    # chosen rows then rejected rows, as the trainer expects
    batch = _batch(list(ds["chosen_ids"]) + list(ds["rejected_ids"]),
                   list(ds["chosen_mask"]) + list(ds["rejected_mask"]),
                   tok.pad_token_id)
    return trainers, batch


def _dpo_reference(ensemble, batch, alpha: float):
    """(loss, Bradley-Terry log-likelihoods [K, B], policy sequence log-probs [K, 2B])."""
    B = batch["input_ids"].shape[0] // 2
    with torch.no_grad():
        ref = _member_token_logps(ensemble, batch, -1).sum(-1)                          # [2B]
    policy = torch.stack([_member_token_logps(ensemble, batch, k).sum(-1) for k in range(K)])  # [K, 2B]
    margin = (policy[:, :B] - ref[:B]) - (policy[:, B:] - ref[B:])                       # [K, B]
    bt = torch.nn.functional.logsigmoid(BETA * margin)                                  # [K, B]
    return _renyi(bt, alpha).mean() + _prior(ensemble), bt, policy, ref


@pytest.mark.parametrize("alpha", [0.7, 0.0], ids=["alpha0.7", "alpha0"])
def test_dpo_loss_and_gradients_match_reference(dpo_setup, alpha):
    trainers, batch = dpo_setup
    trainer = trainers[alpha]
    ens = trainer.ensemble
    params = list(ens.lora_parameters())
    loss, bt, policy, ref = _dpo_reference(ens, batch, alpha)
    B = len(DPO_ROWS)
    # members differ from each other and from the base, and the Bradley-Terry terms differ per member
    _assert_members_differ(policy.detach()[..., None])
    assert (policy.detach() - ref).abs().min() > 1e-2
    assert (bt.detach() - bt.detach()[:1]).abs()[1:].min() > 1e-3, bt
    # the reference matters: the same loss with the policy's own member 0 as reference is different
    swapped = _renyi(torch.nn.functional.logsigmoid(
        BETA * ((policy[:, :B] - policy[0, :B]) - (policy[:, B:] - policy[0, B:]))), alpha).mean()
    assert abs(swapped.item() - (loss - _prior(ens)).item()) > 1e-3
    # chosen and rejected are not interchangeable
    flipped = _renyi(torch.nn.functional.logsigmoid(-BETA * ((policy[:, :B] - ref[:B]) - (policy[:, B:] - ref[B:]))),
                     alpha).mean()
    assert abs(flipped.item() - (loss - _prior(ens)).item()) > 1e-3
    _assert_trainer_matches(trainer, batch, loss, _grads(loss, params))


# ------------------------------------------------------------------------------------ routing metrics
def _logged(trainer, batch) -> dict[str, float]:
    """The per-step metrics ``compute_loss`` records for ``batch`` (one call, nothing else logged)."""
    for metrics in trainer._metrics.values():
        metrics.clear()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    (mode,) = [m for m, metrics in trainer._metrics.items() if metrics]
    return {key: values[0] for key, values in trainer._metrics[mode].items()}


def _routing_reference(w: torch.Tensor) -> dict[str, float]:
    """Metrics of per-example responsibilities ``w [K, B]`` (see ``EnsembleTrainerMixin._record_routing``)."""
    entropy = -(w * w.clamp_min(1e-30).log()).sum(0)                                  # [B]
    is_top = (w >= w.amax(0) - 1e-9).double()                                          # ties shared evenly
    share = (is_top / is_top.sum(0)).mean(1)                                           # [K]
    out = {"responsibility_entropy": entropy.mean().item(), "effective_members": entropy.exp().mean().item()}
    for k in range(w.shape[0]):
        out[f"member_{k}/responsibility"] = w[k].mean().item()
        out[f"member_{k}/route_share"] = share[k].item()
    return out


def _assert_metrics(logged: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


@pytest.mark.parametrize("routing, alpha", [("sequence", 0.7), ("sequence", 0.0), ("token", 0.0), ("token", 0.7)])
def test_sft_routing_metrics_match_reference(sft_setup, routing, alpha):
    """``member_k/nll`` (per completion token), the responsibilities (token routing: averaged over
    each example's completion tokens), their entropy, effective members and route shares."""
    trainers, batch = sft_setup
    trainer = trainers[routing, alpha]
    with torch.no_grad():
        _, token = _sft_reference(trainer.ensemble, batch, alpha, routing)           # [K, B, T-1]
    mask = batch["completion_mask"][:, 1:].double()                                    # [B, T-1]
    if routing == "token":
        w_token = torch.softmax(alpha * token, 0)                                      # [K, B, T-1]
        w = (w_token * mask).sum(-1) / mask.sum(-1)                                    # [K, B]
    else:
        w = torch.softmax(alpha * token.sum(-1), 0)                                    # [K, B]
    expected = _routing_reference(w)
    for k in range(K):
        expected[f"member_{k}/nll"] = (-token[k].sum() / mask.sum()).item()
    expected["prior"] = _prior(trainer.ensemble).item()
    if alpha > 0:   # the responsibilities are not uniform, so the metrics say something
        assert expected["effective_members"] < K - 0.05
    _assert_metrics(_logged(trainer, batch), expected)


@pytest.mark.parametrize("alpha", [0.7, 0.0], ids=["alpha0.7", "alpha0"])
def test_dpo_metrics_match_reference(dpo_setup, alpha):
    """``member_k/nll`` (the member's mean Bradley-Terry NLL), ``rewards/margin``, ``rewards/accuracy``
    and the routing metrics of ``w = softmax_k(alpha * BT log-likelihood)``."""
    trainers, batch = dpo_setup
    trainer = trainers[alpha]
    B = len(DPO_ROWS)
    with torch.no_grad():
        _, bt, policy, ref = _dpo_reference(trainer.ensemble, batch, alpha)
    margin = BETA * ((policy[:, :B] - ref[:B]) - (policy[:, B:] - ref[B:]))            # [K, B]
    expected = _routing_reference(torch.softmax(alpha * bt, 0))
    for k in range(K):
        expected[f"member_{k}/nll"] = -bt[k].mean().item()
    expected["rewards/margin"] = margin.mean().item()
    expected["rewards/accuracy"] = (margin > 0).double().mean().item()
    assert 0 < expected["rewards/accuracy"] < 1    # some member-pairs each way: the sign is checked
    _assert_metrics(_logged(trainer, batch), expected)
