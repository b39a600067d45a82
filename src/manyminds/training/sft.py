"""alpha-Renyi SFT of a K-member LoRA ensemble: a thin ``transformers.Trainer`` subclass.

Each batch is repeated K times member-major and run in one forward pass; the members'
completion log-likelihoods ``logp [K, B]`` (or per token ``[K, B, T]`` with token routing) go to
:func:`manyminds.ensemble.renyi_loss`, plus the Gaussian prior on the LoRA parameters.

Dataset columns (TRL conventions): ``prompt`` + ``completion`` (strings or conversations),
``text`` (language modelling on the whole text), or ``messages`` (the last message is the
completion; needs a chat template). Extra columns are kept on the dataset but not collated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import Trainer

from manyminds.ensemble.objectives import renyi_loss
from manyminds.rows import encode_pair, pad_rows, sequence_token_logps

from .common import (
    EnsembleTrainerMixin,
    RenyiTrainingArguments,
    completion_logits_kwargs,
    require_columns,
)


@dataclass
class RenyiSFTConfig(RenyiTrainingArguments):
    """``TrainingArguments`` plus the ensemble settings (:class:`RenyiTrainingArguments`), with
    ``output_dir="runs/sft"``."""

    output_dir: str | None = field(default="runs/sft", metadata={
        "help": "Checkpoints and the final members (members/member_k) go here."})


def prepare_sft_dataset(dataset, tokenizer, max_length: int | None):
    """Tokenize a TRL-format SFT dataset to ``input_ids`` and ``completion_mask`` columns."""
    cols = dataset.column_names
    if "input_ids" in cols and "completion_mask" in cols:
        return dataset
    if "messages" in cols and "prompt" not in cols:
        def fn(row):  # the last message is the completion (the chat template applied once, as TRL)
            messages = row["messages"]
            return encode_pair(tokenizer, messages[:-1], messages[-1:], max_length)
    elif "text" in cols and "prompt" not in cols:
        def fn(row):
            return encode_pair(tokenizer, "", row["text"], max_length)
    else:
        require_columns(dataset, ["prompt", "completion"],
                        "SFT needs prompt+completion, text, or messages")

        def fn(row):  # strings or conversations, tokenised as TRL's SFTTrainer does
            return encode_pair(tokenizer, row["prompt"], row["completion"], max_length)
    return dataset.map(fn, desc="tokenizing")


class SFTCollator:
    """Right-pads ``input_ids`` / ``completion_mask`` and builds ``attention_mask``: ``[B, T]`` each."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        ids = [r["input_ids"] for r in rows]
        return {"input_ids": pad_rows(ids, self.pad_token_id),
                "attention_mask": pad_rows([[1] * len(i) for i in ids], 0),
                "completion_mask": pad_rows([r["completion_mask"] for r in rows], 0)}


class RenyiSFTTrainer(EnsembleTrainerMixin, Trainer):
    """alpha-Renyi SFT: K LoRA members on a frozen base, one batched forward pass per step.

    Args:
        model: a causal LM (wrapped in an :class:`EnsembleLoRA` built from ``args``) or an
            existing ``EnsembleLoRA``.
        args: :class:`RenyiSFTConfig`.
        train_dataset, eval_dataset: TRL-format datasets (see module docstring).
        processing_class: the tokenizer.

    Logged per step besides the parent's metrics: ``loss``, ``member_{k}/nll`` (per completion
    token), ``responsibility_entropy``, ``effective_members``, ``member_{k}/responsibility`` and
    ``member_{k}/route_share`` (fraction of examples whose largest responsibility is member k).
    """

    def __init__(self, model, args: RenyiSFTConfig, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        self._init_ensemble_trainer(model, args, train_dataset, eval_dataset, processing_class, kwargs,
                                    prepare=prepare_sft_dataset, collator=SFTCollator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        K = self.ensemble.num_members
        ids, attn, comp = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
        B, T = ids.shape
        # logits only from the batch's first completion token on (the prompt needs no lm_head)
        keep, trim = completion_logits_kwargs(self.ensemble.model, comp)
        with self.ensemble.all_members():   # K*B member-major rows; checkpoint replays keep the mode
            outputs = model(input_ids=ids.repeat(K, 1), attention_mask=attn.repeat(K, 1),
                            use_cache=False, **trim)
        token_logps = sequence_token_logps(outputs.logits, ids[:, T - keep:].repeat(K, 1))  # [K*B, keep-1]
        token_logps = F.pad(token_logps, (T - keep, 0))                       # [K*B, T-1], 0 on the prompt
        mask = comp[:, 1:].to(token_logps.dtype)                               # [B, T-1]
        token_logps = token_logps.view(K, B, T - 1) * mask                     # [K, B, T-1]
        if self.args.routing == "token":
            loss, w = renyi_loss(token_logps, self.current_alpha(), mask=mask)
        else:
            loss, w = renyi_loss(token_logps.sum(-1), self.current_alpha())
        prior = self._prior()
        loss = loss + prior
        n_tokens = mask.sum().clamp_min(1.0)
        self._record_routing(w, -token_logps.detach().sum((1, 2)), n_tokens, prior.detach(), mask=mask)
        return (loss, outputs) if return_outputs else loss
