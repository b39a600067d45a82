"""What the alpha-Renyi SFT and DPO trainers share: the ensemble settings, dataset columns,
tokenization and padding, per-step routing metrics, and atomic checkpoints of all members.

Checkpoints: ``checkpoint-N/`` holds every member as a PEFT adapter (``members/member_{k}``), the
optimizer, scheduler, RNG states and trainer state, written by transformers' own checkpointing
(so ``best_model_checkpoint``, ``save_total_limit`` and ``load_best_model_at_end`` work as in any
Trainer). A callback then writes the completion marker ``checkpoint-N/checkpoint_complete``
(atomically, once everything else is on disk); :func:`last_checkpoint` and
``train(resume_from_checkpoint=True)`` only pick a checkpoint that has it, so a run killed while
saving never resumes from a half-written ``checkpoint-N``.
"""

from __future__ import annotations

import inspect
import os
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from manyminds.ensemble.lora import EnsembleLoRA
from manyminds.ensemble.objectives import effective_members, gaussian_prior, responsibility_entropy

MEMBERS_DIR = "members"
COMPLETE_MARKER = "checkpoint_complete"  # written last: a checkpoint-N without it is incomplete


@dataclass
class EnsembleArguments:
    """Ensemble and objective settings shared by :class:`RenyiSFTConfig` and :class:`RenyiDPOConfig`."""

    num_members: int = field(default=4, metadata={"help": "K, the number of LoRA members (>= 1)."})
    alpha: float = field(default=0.8, metadata={
        "help": "Renyi order in [0, 1]: 0 = deep ensemble (each member fits all data), "
                "1 = mixture likelihood (complementary specialists)."})
    r: int = field(default=8, metadata={"help": "LoRA rank of every member (>= 1)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scale numerator (scale = lora_alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "Target module names (suffix match); None = PEFT's default for the architecture."})
    init: str = field(default="peft", metadata={
        "help": "'peft' (B = 0, members start as the base) or 'diverse' (small random B)."})
    init_std: float = field(default=1e-2, metadata={"help": "Std of B for init='diverse'."})
    routing: str = field(default="sequence", metadata={
        "help": "'sequence': one responsibility per example; 'token': one per completion token."})
    prior_weight: float = field(default=1e-4, metadata={"help": "lambda of the Gaussian prior (L2) term."})
    prior_sigma: float = field(default=1.0, metadata={"help": "sigma_p of the Gaussian prior."})
    max_length: int | None = field(default=512, metadata={
        "help": "Token budget of prompt+completion: the prompt is cut from the left, the completion kept "
                "(cut from the right only if it alone is longer); None = no truncation."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Set the base model's dropout to 0 (stable reference and responsibilities)."})

    def check_ensemble_arguments(self) -> None:
        if not isinstance(self.num_members, int) or self.num_members < 1:
            raise ValueError(f"num_members must be an integer >= 1, got {self.num_members!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (0 = deep ensemble, 1 = mixture), got {self.alpha}")
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"rank r must be an integer >= 1, got {self.r!r}")
        if self.routing not in ("sequence", "token"):
            raise ValueError(f"routing must be 'sequence' or 'token', got {self.routing!r}")
        if self.prior_sigma <= 0 or self.prior_weight < 0:
            raise ValueError("prior_sigma must be > 0 and prior_weight >= 0")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a prompt token and a completion token) or None, "
                             f"got {self.max_length}")


def ensemble_field_names() -> list[str]:
    return [f.name for f in fields(EnsembleArguments)]


def build_ensemble(model: nn.Module, args: EnsembleArguments) -> EnsembleLoRA:
    """An :class:`EnsembleLoRA` from ``args`` (or ``model`` itself if it already is one)."""
    if isinstance(model, EnsembleLoRA):
        if model.num_members != args.num_members or model.r != args.r:
            raise ValueError(f"the ensemble has K={model.num_members}, r={model.r} but the config "
                             f"asks for num_members={args.num_members}, r={args.r}")
        ensemble = model
    else:
        ensemble = EnsembleLoRA(model, num_members=args.num_members, r=args.r,
                                lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                target_modules=args.target_modules, init=args.init,
                                init_std=args.init_std, seed=args.seed)
    if args.disable_dropout:
        # the base model's dropout only: the members' lora_dropout (inside their wrappers) stays
        lora_dropout = {id(layer.dropout) for layer in ensemble.lora_layers.values()}
        for module in ensemble.model.modules():
            if isinstance(module, nn.Dropout) and id(module) not in lora_dropout:
                module.p = 0.0
    return ensemble


def require_columns(dataset, needed: list[str], purpose: str) -> None:
    """Raise a one-line error naming the first column of ``needed`` that ``dataset`` lacks."""
    have = list(dataset.column_names)
    for name in needed:
        if name not in have:
            raise ValueError(f"dataset is missing column {name!r} ({purpose}); it has: {', '.join(have)}")


def _as_text(tokenizer, value, prompt: bool) -> str:
    """Plain text of a TRL column value: a string, or a conversation (list of messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and (not value or isinstance(value[0], dict)):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("conversational columns need a tokenizer with a chat_template")
        return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=prompt)
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def truncate_prompt_left(prompt_ids: list[int], completions: list[list[int]], max_length: int | None,
                         bos_token_id: int | None = None) -> tuple[list[int], list[list[int]]]:
    """Fit ``prompt + completion`` into ``max_length`` tokens for every completion of one prompt.

    The prompt is cut from the left, keeping its end next to the completion (and its leading BOS
    token, if it has one and room allows), as TRL's ``truncation_mode="keep_end"`` does for the
    prompt; the completions stay whole. Only when the longest completion alone does not fit is
    the prompt cut to its last token and each completion cut from the right, keeping its start
    (TRL's ``keep_start``). At least one prompt token is kept when the prompt is not empty, so
    the first completion token is still predicted, and at least one completion token survives
    (``max_length >= 2``). All completions share the same truncated prompt (a DPO pair compares
    ``y_w`` and ``y_l`` in the same context).

    Args:
        prompt_ids: token ids of the prompt (may be empty).
        completions: token ids of each completion (each non-empty).
        max_length: the token budget of ``prompt + completion``; ``None`` keeps everything.
        bos_token_id: kept at position 0 if the prompt starts with it.

    Returns:
        ``(prompt_ids, completions)`` with ``len(prompt_ids) + len(c) <= max_length`` for each ``c``.
    """
    if max_length is None:
        return list(prompt_ids), [list(c) for c in completions]
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (a prompt token and a completion token), got {max_length}")
    longest = max(len(c) for c in completions)
    room = max(max_length - longest, min(1, len(prompt_ids)))   # prompt tokens kept
    if room < len(prompt_ids):
        keep_bos = bos_token_id is not None and prompt_ids[0] == bos_token_id and room >= 2
        head = list(prompt_ids[:1]) if keep_bos else []
        prompt_ids = head + list(prompt_ids[len(prompt_ids) - (room - len(head)):])
    budget = max_length - len(prompt_ids)
    return list(prompt_ids), [list(c[:budget]) for c in completions]


def encode_completions(tokenizer, prompt: str, completions: list[str], max_length: int | None) -> list[dict]:
    """``prompt + completion + eos`` ids and a 0/1 completion mask (1 on completion and eos) for
    each completion, truncated by :func:`truncate_prompt_left` (one shared prompt)."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    cs = []
    for completion in completions:
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            c = c + [tokenizer.eos_token_id]
        if not c:
            raise ValueError("empty completion (and no eos token): nothing to train on")
        cs.append(c)
    p, cs = truncate_prompt_left(p, cs, max_length, tokenizer.bos_token_id)
    return [{"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)} for c in cs]


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int | None) -> dict:
    """``prompt + completion + eos`` ids and a 0/1 completion mask (1 on completion and eos).

    Over ``max_length`` the prompt is cut from the left and the completion kept
    (:func:`truncate_prompt_left`)."""
    return encode_completions(tokenizer, prompt, [completion], max_length)[0]


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad integer lists to ``[N, T_max]``."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


LOGPS_BLOCK_ELEMENTS = 1 << 24
"""Default size of one block of :func:`selected_log_probs` in logits (16 Mi elements = 64 MiB in float32)."""


def _logit_blocks(rows: int, positions: int, vocab: int, block_elements: int):
    """``(row slice, position slice)`` pairs covering ``[rows, positions]`` in blocks of about
    ``block_elements`` logits: whole rows when a row fits, else spans of one row."""
    span = max(1, block_elements // max(1, vocab))          # positions per block
    if span >= positions:
        step = max(1, span // max(1, positions))            # whole rows per block
        for r in range(0, rows, step):
            yield slice(r, min(rows, r + step)), slice(None)
    else:
        for r in range(rows):
            for t in range(0, positions, span):
                yield slice(r, r + 1), slice(t, min(positions, t + span))


class _SelectedLogProbs(torch.autograd.Function):
    """``logp[n, t] = logits[n, t, index[n, t]] - logsumexp_v logits[n, t, v]`` block by block.

    Forward upcasts one block at a time (float32, or float64 for float64 logits) and keeps only
    the per-position ``logsumexp`` ``[N, L]`` besides the logits themselves; backward recomputes
    the softmax block by block: ``d logp[n, t] / d logits[n, t, v] = 1[v = index[n, t]] - softmax_v``.
    Positions ``t >= L`` of the logits get a zero gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor, block_elements: int) -> torch.Tensor:
        N, L = index.shape
        V = logits.shape[-1]
        compute = torch.promote_types(logits.dtype, torch.float32)
        logps = torch.empty(N, L, dtype=compute, device=logits.device)
        lse = torch.empty(N, L, dtype=compute, device=logits.device)
        for rows, pos in _logit_blocks(N, L, V, block_elements):
            x = logits[:, :L][rows, pos].to(compute)                 # [n, l, V], one block
            lse[rows, pos] = torch.logsumexp(x, dim=-1)
            logps[rows, pos] = x.gather(-1, index[rows, pos].unsqueeze(-1)).squeeze(-1) - lse[rows, pos]
        ctx.save_for_backward(logits, index, lse)
        ctx.block_elements = block_elements
        return logps

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logps: torch.Tensor):
        logits, index, lse = ctx.saved_tensors
        N, L = index.shape
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format)   # [N, T, V]
        grad[:, L:] = 0
        g = grad_logps.to(lse.dtype)
        for rows, pos in _logit_blocks(N, L, logits.shape[-1], ctx.block_elements):
            x = logits[:, :L][rows, pos].to(lse.dtype)
            block = torch.exp(x - lse[rows, pos].unsqueeze(-1))          # softmax, [n, l, V]
            block.mul_(-g[rows, pos].unsqueeze(-1))
            block.scatter_add_(-1, index[rows, pos].unsqueeze(-1), g[rows, pos].unsqueeze(-1))
            grad[:, :L][rows, pos] = block.to(grad.dtype)
        return grad, None, None


def selected_log_probs(logits: torch.Tensor, index: torch.Tensor,
                       block_elements: int = LOGPS_BLOCK_ELEMENTS) -> torch.Tensor:
    """``log_softmax(logits)`` at ``index``, without a full-vocabulary copy of the logits.

    ``logp[n, t] = logits[n, t, index[n, t]] - logsumexp_v logits[n, t, v]`` for
    ``t < L = index.shape[1]`` (``logits[:, L:]`` are ignored and get a zero gradient).

    Same technique as TRL's ``selective_log_softmax`` (gather minus logsumexp, one block at a
    time), but always computed in float32 (float64 for float64 logits), also for bf16/fp16
    logits, and with a backward that recomputes the softmax block by block instead of keeping
    an upcast copy for autograd: extra memory is the ``[N, L]`` logsumexp plus a few float32
    blocks of ``block_elements`` logits, forward and backward; the gradient itself is
    ``[N, T, V]`` in the logits' dtype, as for any loss on the logits.

    Args:
        logits: ``[N, T, V]``, any float dtype (a non-contiguous view is fine; it is not copied).
        index: ``[N, L]`` integer ids in ``[0, V)`` with ``L <= T``.
        block_elements: logits per block (default 16 Mi: 64 MiB in float32).

    Returns:
        ``[N, L]`` log-probs in float32 (float64 for float64 logits).
    """
    if logits.dim() != 3 or index.dim() != 2 or index.shape[0] != logits.shape[0] \
            or index.shape[1] > logits.shape[1]:
        raise ValueError(f"need logits [N, T, V] and index [N, L<=T], got {tuple(logits.shape)} "
                         f"and {tuple(index.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if block_elements < 1:
        raise ValueError(f"block_elements must be >= 1, got {block_elements}")
    return _SelectedLogProbs.apply(logits, index.long(), int(block_elements))


def sequence_token_logps(logits: torch.Tensor, input_ids: torch.Tensor,
                         block_elements: int = LOGPS_BLOCK_ELEMENTS) -> torch.Tensor:
    """Log-prob of each next token: logits ``[N, T, V]``, ids ``[N, T]`` -> ``[N, T-1]``.

    ``logp[n, t] = log_softmax(logits[n, t])[input_ids[n, t + 1]]``, computed in float32 by
    :func:`selected_log_probs` (no float32 copy of all logits; the logits at the last position
    are unused). With ``logits_to_keep=L`` the model returns the last ``L`` positions: pass
    ``input_ids[:, -L:]`` to get the log-probs of the last ``L - 1`` tokens.
    """
    if input_ids.shape != logits.shape[:2]:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} must match the logits' [N, T] "
                         f"{tuple(logits.shape[:2])}")
    return selected_log_probs(logits, input_ids[:, 1:], block_elements)


def completion_logits_to_keep(completion_mask: torch.Tensor) -> int:
    """How many trailing positions of logits the next-token log-probs of the completions need.

    With ``s`` the first position where any row of ``completion_mask [B, T]`` is 1 (at least 1:
    position 0 is never predicted), the logits at positions ``s - 1 .. T - 1`` suffice, i.e.
    ``logits_to_keep = T - s + 1``; the prompt before ``s - 1`` needs no ``lm_head``. Exact for
    any padding side, since rows are cut at the batch's earliest completion token. Returns ``T``
    (keep all) when the mask is all zero.
    """
    T = completion_mask.shape[1]
    predicted = completion_mask[:, 1:].bool().any(0).nonzero()         # positions t + 1 >= 1
    if predicted.numel() == 0:
        return T
    return T - int(predicted[0, 0])


def model_accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes transformers' ``logits_to_keep`` argument."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def completion_logits_kwargs(model: nn.Module, completion_mask: torch.Tensor) -> tuple[int, dict]:
    """``(L, forward kwargs)`` so that ``model(..., **kwargs).logits`` is ``[N, L, V]``: the last
    ``L =`` :func:`completion_logits_to_keep` positions where ``model`` takes ``logits_to_keep``,
    else all ``T`` positions and no kwargs. Score them with
    ``sequence_token_logps(logits, input_ids[:, T - L:])``."""
    T = completion_mask.shape[1]
    keep = completion_logits_to_keep(completion_mask) if model_accepts_logits_to_keep(model) else T
    return keep, ({"logits_to_keep": keep} if keep < T else {})


class EnsembleTrainerMixin:
    """Checkpointing, prior, metrics and logging shared by the Renyi trainers.

    Override points used (transformers 5.x): ``compute_loss`` (in the subclasses), ``log``,
    ``train`` (resume only from a complete checkpoint), and the model I/O hooks, since the model is
    an :class:`EnsembleLoRA`, not a ``PreTrainedModel``: ``_save`` (write the members as PEFT
    adapters instead of a full state dict), ``_load_from_checkpoint`` and ``_load_best_model``
    (read them back). Checkpoints themselves are transformers' own ``_save_checkpoint``; the
    completion marker comes from :class:`CheckpointCompletionCallback`.
    """

    ensemble: EnsembleLoRA

    def _init_ensemble_trainer(self, model, args, train_dataset, eval_dataset, processing_class,
                               kwargs: dict, prepare, collator) -> None:
        """The shared ``__init__``: wrap ``model`` in an ensemble, tokenize the datasets with
        ``prepare(dataset, tokenizer, max_length)``, default to ``collator(pad_id)``, then
        ``Trainer.__init__`` on the ensemble."""
        if processing_class is None:
            raise ValueError(f"{type(self).__name__} needs processing_class=<tokenizer>")
        if train_dataset is not None:
            train_dataset = prepare(train_dataset, processing_class, args.max_length)
        if eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, processing_class, args.max_length)
        # wrap the model only once the datasets are valid: a refused dataset leaves it untouched
        self.ensemble = build_ensemble(model, args)
        pad = processing_class.pad_token_id
        pad = processing_class.eos_token_id if pad is None else pad
        kwargs.setdefault("data_collator", collator(pad))
        super().__init__(model=self.ensemble, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        self.model_accepts_loss_kwargs = False  # per-batch mean: the Trainer divides by GA steps
        self.can_return_loss = True  # evaluate() reports eval_loss although batches carry no labels
        self.add_callback(CheckpointCompletionCallback(lambda: self._get_output_dir(getattr(self, "_trial", None))))
        self._init_metrics()
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if args.prior_weight > 0 and plugin is not None and getattr(plugin, "zero_stage", None) == 3:
            raise ValueError("DeepSpeed ZeRO-3 partitions the LoRA members outside the forward pass, where the "
                             "Gaussian prior is computed; set prior_weight=0, or shard with FSDP2 instead")

    def _init_metrics(self) -> None:
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                           "eval": defaultdict(list)}

    def _prior(self) -> torch.Tensor:
        """The Gaussian prior of all members' LoRA tensors (a scalar, with its gradient).

        Under FSDP the tensors are shards outside the forward pass (DTensors under FSDP2): each rank
        takes the prior of its own shard, so its gradient reaches exactly the local shard, and the
        value is all-reduced so every rank logs and optimises the full prior,
        ``prior = local + (sum_ranks local - local).detach()``.
        """
        if self.args.prior_weight == 0:
            return torch.zeros((), device=self.args.device)
        params = list(self.ensemble.lora_parameters())
        sharded = self.accelerator.distributed_type == DistributedType.FSDP
        if sharded:
            params = [p.to_local() if hasattr(p, "to_local") else p for p in params]
        prior = gaussian_prior(params, self.args.prior_weight, self.args.prior_sigma)
        if sharded and torch.distributed.is_available() and torch.distributed.is_initialized():
            total = prior.detach().clone()
            torch.distributed.all_reduce(total)
            prior = prior + (total - prior.detach())
        return prior

    @torch.no_grad()
    def _record_routing(self, responsibilities: torch.Tensor, member_nll: torch.Tensor,
                        prior: torch.Tensor) -> None:
        """Per-step metrics: per-member NLL, responsibility entropy, effective members, routing."""
        mode = "train" if self.model.training else "eval"
        m = self._metrics[mode]
        w = responsibilities.float()                            # [K, B] or [K, B, T]
        K = w.shape[0]
        w_seq = w if w.dim() == 2 else w.mean(-1)               # token routing: mean per example
        m["responsibility_entropy"].append(responsibility_entropy(w_seq).mean().item())
        m["effective_members"].append(effective_members(w_seq).mean().item())
        m["prior"].append(float(prior))
        # member(s) taking each example: the largest responsibility, ties shared evenly
        is_top = (w_seq >= w_seq.amax(0, keepdim=True) - 1e-6).float()   # [K, B]
        share = (is_top / is_top.sum(0, keepdim=True)).mean(1)             # [K]
        for k in range(K):
            m[f"member_{k}/nll"].append(member_nll[k].item())
            m[f"member_{k}/responsibility"].append(w_seq[k].mean().item())
            m[f"member_{k}/route_share"].append(share[k].item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(v) / len(v) for key, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs = {**logs, **metrics}
        super().log(logs, start_time)
        self._metrics[mode].clear()

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self.ensemble.save_members(os.path.join(output_dir, MEMBERS_DIR))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        members = os.path.join(resume_from_checkpoint, MEMBERS_DIR)
        if not os.path.isdir(members):
            raise ValueError(f"{resume_from_checkpoint} has no {MEMBERS_DIR}/ folder: not a checkpoint "
                             f"of a Renyi trainer")
        self.ensemble.load_members(members)

    def _load_best_model(self) -> None:
        """Load the members of ``state.best_model_checkpoint`` (``load_best_model_at_end``).

        transformers' own version looks for a full state dict or a single PEFT adapter, finds
        neither in a Renyi checkpoint and keeps the last step's members with only a warning.
        """
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """``Trainer.train``, resuming only from a complete checkpoint.

        ``resume_from_checkpoint=True`` picks the newest checkpoint that has its completion marker
        (:func:`last_checkpoint`), where transformers alone takes the newest ``checkpoint-N``
        folder, complete or not; an explicit path without the marker is refused.
        """
        if resume_from_checkpoint is True:
            found = last_checkpoint(self.args.output_dir)
            if found is None:
                raise ValueError(f"no complete checkpoint in {self.args.output_dir} (a checkpoint-N is complete "
                                 f"once it holds {COMPLETE_MARKER}); pass resume_from_checkpoint=None to start "
                                 f"from scratch")
            resume_from_checkpoint = found
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)) and \
                not os.path.exists(os.path.join(resume_from_checkpoint, COMPLETE_MARKER)):
            raise ValueError(f"{resume_from_checkpoint} is not a complete checkpoint (no {COMPLETE_MARKER}: the run "
                             f"was stopped while saving it); resume from last_checkpoint(output_dir), or create "
                             f"the file if you know the checkpoint is whole")
        return super().train(resume_from_checkpoint, *args, **kwargs)


class CheckpointCompletionCallback(TrainerCallback):
    """Marks ``checkpoint-N`` complete once the Trainer has written all of it.

    ``on_save`` runs after transformers' checkpointing has written the members, optimizer,
    scheduler, RNG and trainer state: only then does ``checkpoint-N/checkpoint_complete`` appear
    (temp file + rename, so it exists whole or not at all). A marker left in a ``checkpoint-N``
    that is about to be written again (a run resumed from an earlier checkpoint) is removed
    first, so it never vouches for a mix of old and new files.

    Args:
        run_dir: returns the folder holding the ``checkpoint-N`` folders (the trainer's output
            folder, or its trial's folder during a hyper-parameter search).
    """

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def _folder(self, state) -> str:
        return os.path.join(self.run_dir(), f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _drop_stale_marker(self, args, state) -> None:
        marker = os.path.join(self._folder(state), COMPLETE_MARKER)
        if args.should_save and os.path.exists(marker):
            os.remove(marker)

    def on_step_end(self, args, state, control, **kwargs):
        # before this step's save; save_strategy="best" only decides after evaluating, later in the step
        if control.should_save or args.save_strategy == "best":
            self._drop_stale_marker(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:     # save_strategy="epoch" (a save earlier in this step has reset it)
            self._drop_stale_marker(args, state)

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        folder = self._folder(state)
        tmp = os.path.join(folder, COMPLETE_MARKER + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{state.global_step}\n")
        os.replace(tmp, os.path.join(folder, COMPLETE_MARKER))


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir``: one holding the completion
    marker (``checkpoint_complete``) that :class:`CheckpointCompletionCallback` writes last.
    ``None`` if there is none."""
    best, best_step = None, -1
    path = Path(output_dir)
    if not path.is_dir():
        return None
    for child in path.iterdir():
        if child.is_dir() and child.name.startswith(PREFIX_CHECKPOINT_DIR + "-"):
            try:
                step = int(child.name.split("-")[-1])
            except ValueError:
                continue
            if step > best_step and (child / COMPLETE_MARKER).exists():
                best, best_step = str(child), step
    return best

