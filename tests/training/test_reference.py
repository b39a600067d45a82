"""Trainer-level references: the alpha-Renyi trainers at K = 1 against the standard tools.

At K = 1 the alpha-Renyi objectives lose their ensemble part (one member, responsibility 1), so

* :class:`RenyiSFTTrainer` must train exactly like a plain PEFT LoRA run of ``trl.SFTTrainer``
  (completion-only loss) on the same rows, and
* :class:`RenyiDPOTrainer` must train exactly like ``trl.DPOTrainer`` with ``loss_type="sigmoid"``
  on a PEFT LoRA model (reference = the base with the adapter disabled, as ours).

Both sides start from the same base weights and the same LoRA factors: TRL builds its adapter from
``peft_config`` and member 0 of the ensemble is copied into it before training. They read the rows
in dataset order (``train_sampling_strategy="sequential"``), tokenize them to the same ids (checked),
and use AdamW at a constant, high learning rate with no warm-up, no weight decay and the Trainer's
gradient clipping (max_grad_norm=1, active in the SFT test). The models are tiny
float64 Qwen2s; TRL's fused LM head still accumulates its log-softmax statistics in float32, so
the two sides agree to ~1e-7 while the LoRA tensors move by ~1e-1. Each test first asserts that
training moved every LoRA tensor, then compares the per-step losses and the final LoRA tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from tokenizers import processors

from manyminds.zoo.charlm import VOCAB_SIZE, build_tokenizer
from manyminds.zoo.models import random_model
from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer

trl = pytest.importorskip("trl")

TARGETS = ["q_proj", "v_proj", "down_proj"]
R, LORA_ALPHA = 4, 8
STEPS, BATCH, LR = 4, 2, 2e-2

# Shared by both sides of every comparison (TrainingArguments fields). bf16=False matters: TRL's
# configs default to bf16=True, which on CPU turns on bf16 autocast and TRL's fused LM head then
# projects in bf16 even for a float64 model.
COMMON = {"bf16": False, "max_steps": STEPS, "per_device_train_batch_size": BATCH, "learning_rate": LR,
          "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
          "train_sampling_strategy": "sequential", "logging_steps": 1, "save_strategy": "no",
          "report_to": "none", "use_cpu": True, "disable_tqdm": True, "seed": 0}

# prompt -> completion, every completion 3 characters (+ eos = 4 tokens, see test_sft_matches_trl_sft).
SFT_ROWS = [("1+2=", "003"), ("17+25=", "042"), ("9*9=", "081"), ("100-1=", "099"),
            ("6*7=", "042"), ("3+3+3=", "009"), ("50/2=", "025"), ("8-8=", "000")]
DPO_ROWS = [("1+2=", "3", "4"), ("17+25=", "42", "43"), ("9*9=", "81", "18"), ("100-1=", "99", "9"),
            ("6*7=", "42", "24"), ("3+3+3=", "9", "333"), ("50/2=", "25", "52"), ("8-8=", "0", "16")]


def _tokenizer(bos: bool):
    """The zoo's char tokenizer; ``bos=True`` makes it prepend ``<bos>`` like Llama's tokenizers do."""
    tok = build_tokenizer()
    if bos:
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


def _base():
    """A tiny float64 Qwen2 with the char tokenizer's vocabulary; the same weights on every call."""
    return random_model("qwen2", vocab_size=VOCAB_SIZE, seed=0, dtype=torch.float64)


def _ensemble_args(**kw) -> dict:
    """Our K = 1 settings: the same LoRA as the PEFT side, 'diverse' init so A and B both move from step 1."""
    return dict(num_members=1, r=R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                init="diverse", init_std=0.1, prior_weight=0.0, **kw)


def _lora_config() -> LoraConfig:
    """The PEFT twin of :func:`_ensemble_args`' LoRA (scale lora_alpha / r, no dropout, same targets)."""
    return LoraConfig(r=R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")


def _copy_member_into(ensemble, peft_model) -> None:
    """Overwrite the PEFT adapter in place with member 0 of ``ensemble`` (before any optimizer exists)."""
    member = ensemble.member_state_dict(0)
    result = set_peft_model_state_dict(peft_model, member)
    assert not result.unexpected_keys, result.unexpected_keys
    copied = _peft_lora(peft_model)
    assert copied.keys() == member.keys()
    for name, value in copied.items():
        assert torch.equal(value, member[name]), name


def _peft_lora(peft_model) -> dict[str, torch.Tensor]:
    """The adapter under ``member_state_dict``'s names (``base_model.model.<module>.lora_A.weight``)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def _member(ensemble) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ensemble.member_state_dict(0).items()}


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _assert_moved(before: dict, after: dict) -> None:
    """Training changed every LoRA tensor by far more than the tolerance of the comparison."""
    for name, value in before.items():
        assert (after[name] - value).abs().max() > 1e-3, f"{name} did not move"


def _assert_same_lora(ours: dict, theirs: dict) -> None:
    """Equal up to TRL's float32 LM-head statistics (~1e-7 here; the tensors moved by ~1e-1)."""
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def _assert_same_sft_tokens(ours, ref, tok, bos: bool) -> None:
    """Ours: ``input_ids`` + ``completion_mask``; TRL: ``input_ids`` + ``labels`` (-100 off the completion)."""
    assert ours.train_dataset["input_ids"] == ref.train_dataset["input_ids"]
    trl_mask = [[int(t != -100) for t in row] for row in ref.train_dataset["labels"]]
    assert ours.train_dataset["completion_mask"] == trl_mask
    for row in ours.train_dataset["input_ids"]:
        assert (row[0] == tok.bos_token_id) == bos and row.count(tok.bos_token_id) == int(bos)
        assert row[-1] == tok.eos_token_id and row.count(tok.eos_token_id) == 1


def _assert_same_dpo_tokens(ours, ref, tok, bos: bool) -> None:
    """Ours: whole ``{chosen,rejected}_ids`` + masks; TRL: ``prompt_ids`` and ``{chosen,rejected}_ids`` apart."""
    for row_ours, row_trl in zip(ours.train_dataset, ref.train_dataset, strict=True):
        prompt = row_trl["prompt_ids"]
        for key in ("chosen", "rejected"):
            ids = row_ours[f"{key}_ids"]
            assert ids == prompt + row_trl[f"{key}_ids"]
            assert row_ours[f"{key}_mask"] == [0] * len(prompt) + [1] * len(row_trl[f"{key}_ids"])
            assert (ids[0] == tok.bos_token_id) == bos and ids.count(tok.bos_token_id) == int(bos)
            assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1


def _sft_pair(tmp_path, tok, L: int):
    """(ours, TRL) SFT trainers on SFT_ROWS, TRL's adapter = our member 0 (see test_sft_matches_trl_sft)."""
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in SFT_ROWS])
    ours = RenyiSFTTrainer(_base(), RenyiSFTConfig(output_dir=str(tmp_path / "ours"),
                                                   **_ensemble_args(), **COMMON),
                           train_dataset=data, processing_class=tok)
    ref = trl.SFTTrainer(_base(), trl.SFTConfig(output_dir=str(tmp_path / "trl"), completion_only_loss=True,
                                                adam_epsilon=1e-8 / L, max_grad_norm=1.0 / L, **COMMON),
                         train_dataset=data, processing_class=tok, peft_config=_lora_config())
    _copy_member_into(ours.ensemble, ref.model)
    return ours, ref


def _dpo_pair(tmp_path, tok, beta: float, precompute_ref: bool = False):
    """(ours, TRL) DPO trainers on DPO_ROWS, TRL's adapter = our member 0 (see test_dpo_matches_trl_dpo)."""
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in DPO_ROWS])
    ours = RenyiDPOTrainer(_base(), RenyiDPOConfig(output_dir=str(tmp_path / "ours"), beta=beta,
                                                   **_ensemble_args(), **COMMON),
                           train_dataset=data, processing_class=tok)
    ref = trl.DPOTrainer(_base(), args=trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta,
                                                     loss_type="sigmoid",
                                                     precompute_ref_log_probs=precompute_ref, **COMMON),
                         train_dataset=data, processing_class=tok, peft_config=_lora_config())
    # Only on this path (peft_config) is TRL's reference the base with the adapter disabled; given an
    # already wrapped PeftModel, TRL adds a frozen copy of the adapter as a "ref" adapter instead.
    assert list(ref.model.peft_config) == ["default"]
    _copy_member_into(ours.ensemble, ref.model)
    return ours, ref


@pytest.mark.parametrize("bos", [False, True], ids=["char", "char+bos"])
def test_token_ids_match_trl(tmp_path, bos):
    """Both sides build the same ids: BOS once where the tokenizer adds one, eos appended once."""
    tok = _tokenizer(bos)
    _assert_same_sft_tokens(*_sft_pair(tmp_path / "sft", tok, L=4), tok, bos)
    _assert_same_dpo_tokens(*_dpo_pair(tmp_path / "dpo", tok, beta=0.5), tok, bos)


def _train_both(ours, ref):
    """Train both trainers; check our member moved; return its final tensors and both loss curves."""
    before = _member(ours.ensemble)
    ours.train()
    ref.train()
    after = _member(ours.ensemble)
    _assert_moved(before, after)
    ours_losses, trl_losses = _losses(ours), _losses(ref)
    assert len(ours_losses) == len(trl_losses) == STEPS
    return after, ours_losses, trl_losses


def test_sft_matches_trl_sft(tmp_path):
    """Renyi SFT at K = 1 == ``trl.SFTTrainer`` on a PEFT LoRA model (completion-only loss).

    Ours: ``mean_b sum_t -log p(y_t)`` over completion tokens (+ eos); TRL: the same sum over the
    batch divided by the number of completion tokens. With every completion L = 4 tokens, TRL's
    loss is exactly ``ours / L`` (a power of two, so the scaling is exact in floating point), and
    AdamW with weight decay 0 is invariant to a loss scale c when ``eps`` and ``max_grad_norm``
    are scaled by c too (``m -> c m``, ``sqrt(v) -> c sqrt(v)``, clipping thresholds the scaled
    norm). So the reference is stock ``SFTTrainer`` with ``adam_epsilon / L`` and
    ``max_grad_norm / L``, and its logged losses times L equal ours. (Stock rather than a
    ``compute_loss_func`` with our normalisation: that hook is deprecated in TRL 1.16 and would
    make the reference partly ours.)
    """
    tok, L = _tokenizer(bos=True), 4
    ours, ref = _sft_pair(tmp_path, tok, L)
    _assert_same_sft_tokens(ours, ref, tok, bos=True)
    assert all(sum(mask) == L for mask in ours.train_dataset["completion_mask"])

    after, ours_losses, trl_losses = _train_both(ours, ref)
    assert ours.state.log_history[0]["grad_norm"] > ours.args.max_grad_norm   # clipping took part
    torch.testing.assert_close(torch.tensor(ours_losses), L * torch.tensor(trl_losses), rtol=1e-5, atol=1e-6)
    _assert_same_lora(after, _peft_lora(ref.model))


@pytest.mark.parametrize("precompute_ref", [False, True], ids=["ref-per-step", "ref-precomputed"])
def test_dpo_matches_trl_dpo(tmp_path, precompute_ref):
    """Renyi DPO at K = 1 == ``trl.DPOTrainer(loss_type="sigmoid")`` on a PEFT LoRA model.

    Both: ``mean_b -log sigmoid(beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))))``
    with sequence log-probs summed over completion tokens (+ eos) and the reference = the base with
    the adapter disabled (TRL's reference on its ``peft_config`` path; see :func:`_dpo_pair`). Ours recomputes the reference every step; TRL either does the same or
    precomputes it once before training (``precompute_ref_log_probs``): the base is frozen, so
    both give the same numbers. No loss rescaling is needed (both average over pairs).
    """
    tok = _tokenizer(bos=True)
    ours, ref = _dpo_pair(tmp_path, tok, beta=0.5, precompute_ref=precompute_ref)
    _assert_same_dpo_tokens(ours, ref, tok, bos=True)

    after, ours_losses, trl_losses = _train_both(ours, ref)
    # the initial adapter is not the base ('diverse' init), so the choice of reference shows from step 1
    assert abs(ours_losses[0] - math.log(2)) > 1e-3
    assert max(ours_losses) - min(ours_losses) > 1e-2
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(trl_losses), rtol=1e-5, atol=1e-6)
    _assert_same_lora(after, _peft_lora(ref.model))
