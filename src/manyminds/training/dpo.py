"""alpha-Renyi DPO of a K-member LoRA ensemble: a thin ``transformers.Trainer`` subclass.

Per batch: the reference log-probs ``log pi_ref(y_w), log pi_ref(y_l)`` come from the base with the
adapters off (one forward pass of the 2B chosen+rejected rows, shared by all members); the
policy log-probs of all K members come from one forward pass of the K-repeated batch. The loss is
:func:`manyminds.ensemble.renyi_dpo_loss` (per-member Bradley-Terry likelihood) plus the prior.

Dataset columns (TRL conventions): ``prompt``, ``chosen``, ``rejected`` (strings or conversations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import Trainer

from manyminds.ensemble.objectives import renyi_dpo_loss
from manyminds.rows import encode_completions, pad_rows, sequence_token_logps

from .common import (
    EnsembleTrainerMixin,
    RenyiTrainingArguments,
    completion_logits_kwargs,
    require_columns,
)


@dataclass
class RenyiDPOConfig(RenyiTrainingArguments):
    """``TrainingArguments`` plus the ensemble settings (:class:`RenyiTrainingArguments`) and DPO's
    ``beta``, with ``output_dir="runs/dpo"``."""

    beta: float = field(default=0.1, metadata={"help": "DPO temperature beta (> 0)."})
    output_dir: str | None = field(default="runs/dpo", metadata={
        "help": "Checkpoints and the final members (members/member_k) go here."})

    def __post_init__(self):
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.routing != "sequence":
            raise ValueError("DPO routes whole preference pairs: routing must be 'sequence'")


def prepare_dpo_dataset(dataset, tokenizer, max_length: int | None):
    """Tokenize prompt/chosen/rejected to ``chosen_ids``, ``chosen_mask``, ``rejected_ids``, ``rejected_mask``.

    Over ``max_length`` the prompt is cut from the left (the same cut for both responses) and the
    responses kept whole, or cut from the right if one alone is too long (:func:`truncate_prompt_left`).
    """
    if {"chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        return dataset
    require_columns(dataset, ["prompt", "chosen", "rejected"], "DPO needs prompt, chosen, rejected")

    def fn(row):
        # strings or conversations, tokenised as TRL's DPOTrainer does; one prompt, cut from the left
        # if needed, shared by both responses
        chosen, rejected = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]], max_length)
        return {"chosen_ids": chosen["input_ids"], "chosen_mask": chosen["completion_mask"],
                "rejected_ids": rejected["input_ids"], "rejected_mask": rejected["completion_mask"]}

    return dataset.map(fn, desc="tokenizing")


class DPOCollator:
    """Stacks chosen then rejected rows: ``input_ids``, ``attention_mask``, ``completion_mask`` ``[2B, T]``."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        masks = [r["chosen_mask"] for r in rows] + [r["rejected_mask"] for r in rows]
        return {"input_ids": pad_rows(ids, self.pad_token_id),
                "attention_mask": pad_rows([[1] * len(i) for i in ids], 0),
                "completion_mask": pad_rows(masks, 0)}


class RenyiDPOTrainer(EnsembleTrainerMixin, Trainer):
    """alpha-Renyi DPO: reference = the base with adapters disabled, computed once per batch.

    Logged per step besides the parent's metrics and those of :class:`RenyiSFTTrainer`
    (``member_{k}/nll`` is the member's Bradley-Terry NLL here): ``rewards/margin`` (mean over
    members), ``rewards/accuracy`` (share of member-pair with a positive margin).
    """

    def __init__(self, model, args: RenyiDPOConfig, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        self._init_ensemble_trainer(model, args, train_dataset, eval_dataset, processing_class, kwargs,
                                    prepare=prepare_dpo_dataset, collator=DPOCollator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        K = self.ensemble.num_members
        ids, attn, comp = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        N = ids.shape[0]                     # 2B: chosen rows then rejected rows
        B = N // 2
        # logits only from the batch's first response token on (the prompt needs no lm_head)
        keep, trim = completion_logits_kwargs(self.ensemble.model, comp)
        ids_kept = ids[:, ids.shape[1] - keep:]                                    # [2B, keep]
        mask = comp[:, ids.shape[1] - keep + 1:].float()                           # [2B, keep-1]
        with torch.no_grad(), self.ensemble.disabled():
            ref = model(input_ids=ids, attention_mask=attn, use_cache=False, **trim).logits
            ref_logps = (sequence_token_logps(ref, ids_kept) * mask).sum(-1)       # [2B]
        with self.ensemble.all_members():   # K*B member-major rows; checkpoint replays keep the mode
            outputs = model(input_ids=ids.repeat(K, 1), attention_mask=attn.repeat(K, 1),
                            use_cache=False, **trim)
        logps = (sequence_token_logps(outputs.logits, ids_kept.repeat(K, 1)).view(K, N, -1)
                 * mask).sum(-1)                                                   # [K, 2B]
        chosen, rejected = logps[:, :B], logps[:, B:]                              # [K, B] each
        loss, w = renyi_dpo_loss(chosen, rejected, ref_logps[:B], ref_logps[B:],
                                 beta=self.args.beta, alpha=self.current_alpha())
        prior = self._prior()
        loss = loss + prior
        with torch.no_grad():
            margin = self.args.beta * ((chosen - ref_logps[:B]) - (rejected - ref_logps[B:]))  # [K, B]
            bt_nll_sum = torch.nn.functional.softplus(-margin).sum(1)              # [K]
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["rewards/margin"].append(margin.mean().item())
            self._metrics[mode]["rewards/accuracy"].append((margin > 0).float().mean().item())
        self._record_routing(w, bt_nll_sum, torch.tensor(float(B), device=bt_nll_sum.device), prior.detach())
        return (loss, outputs) if return_outputs else loss
