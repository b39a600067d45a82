"""What the alpha-Renyi SFT and DPO trainers share: the ensemble settings, dataset columns,
tokenization and padding, per-step routing metrics, and atomic checkpoints of all members.

Checkpoints: ``checkpoint-N/`` holds every member as a PEFT adapter (``members/member_{k}``), the
optimizer, scheduler, RNG states and trainer state, written by transformers' own checkpointing
(so ``best_model_checkpoint``, ``save_total_limit`` and ``load_best_model_at_end`` work as in any
Trainer). A callback then writes the completion marker ``checkpoint-N/checkpoint_complete``
(atomically, once everything else is on disk); :func:`last_checkpoint` and
``train(resume_from_checkpoint=True)`` only pick a checkpoint that has it, so a run killed while
saving never resumes from a half-written ``checkpoint-N``.

Run ids: ``manyminds sft|dpo|grpo`` write ``output_dir/run_id.json`` (``RUN_ID_FILE``) when a run
starts; the callbacks copy it into each ``checkpoint-N`` (before the completion marker), so that
``--resume`` can tell the checkpoints of this run from an older run's in the same folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from manyminds.ensemble.config import EnsembleLoRAConfig
from manyminds.ensemble.model import EnsembleLoRA
from manyminds.ensemble.objectives import effective_members, gaussian_prior, responsibility_entropy
from manyminds.files import atomic_write_text
from manyminds.rows import completion_logits_to_keep, pad_id_of
from manyminds.upstream import check_overrides

from .callbacks import DeadMemberMonitor, reinit_member

logger = logging.getLogger(__name__)

MEMBERS_DIR = "members"
COMPLETE_MARKER = "checkpoint_complete"  # written last: a checkpoint-N without it is incomplete
RUN_ID_FILE = "run_id.json"  # {"run_id": ...}: the run that wrote output_dir, and each checkpoint-N in it


@dataclass
class EnsembleArguments(EnsembleLoRAConfig):
    """The ensemble's LoRA fields (inherited from :class:`~manyminds.ensemble.EnsembleLoRAConfig`,
    defaults included) plus the objective's settings; shared by :class:`RenyiSFTConfig` and
    :class:`RenyiDPOConfig`. The members' initialization seed is ``TrainingArguments.seed``."""

    alpha: float = field(default=0.8, metadata={
        "help": "Renyi order in [0, 1]: 0 = deep ensemble (each member fits all data), "
                "1 = mixture likelihood (complementary specialists)."})
    routing: str = field(default="sequence", metadata={
        "help": "'sequence': one responsibility per example; 'token': one per completion token."})
    prior_weight: float = field(default=1e-4, metadata={"help": "lambda of the Gaussian prior (L2) term."})
    prior_sigma: float = field(default=1.0, metadata={"help": "sigma_p of the Gaussian prior."})
    max_length: int | None = field(default=512, metadata={
        "help": "Token budget of prompt+completion: the prompt is cut from the left, the completion kept "
                "(cut from the right only if it alone is longer); None = no truncation."})
    disable_dropout: bool = field(default=True, metadata={
        "help": "Set the base model's dropout to 0 (stable reference and responsibilities)."})
    alpha_warmup_steps: int = field(default=0, metadata={
        "help": "Raise alpha linearly from 0 to `alpha` over the first N optimizer steps (0 = off): members "
                "first all fit the data (a deep ensemble), then specialise; the objective ends at `alpha`."})
    dead_member_share: float = field(default=0.02, metadata={
        "help": "A member is dead when its mean responsibility over a logging window stays below this "
                "share (uniform = 1/num_members) for `dead_member_patience` windows in a row; 0 = never."})
    dead_member_patience: int = field(default=3, metadata={
        "help": "Consecutive logging windows below `dead_member_share` before a member counts as dead."})
    dead_member_action: str = field(default="warn", metadata={
        "help": "'warn': log a warning and the metric dead_members; 'reinit': also re-initialise each dead "
                "member from the living member with the largest share (copy + noise, donor's optimizer state)."})
    reinit_noise: float = field(default=0.01, metadata={
        "help": "Noise of a re-initialised member, relative to the RMS of each copied LoRA tensor."})

    def check_ensemble_arguments(self) -> None:
        """The objective's checks (the LoRA fields are checked by ``EnsembleLoRAConfig.__post_init__``)."""
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] (0 = deep ensemble, 1 = mixture), got {self.alpha}")
        if self.routing not in ("sequence", "token"):
            raise ValueError(f"routing must be 'sequence' or 'token', got {self.routing!r}")
        if self.prior_sigma <= 0 or self.prior_weight < 0:
            raise ValueError("prior_sigma must be > 0 and prior_weight >= 0")
        if self.alpha_warmup_steps < 0:
            raise ValueError(f"alpha_warmup_steps must be >= 0 (0 = no warm-up), got {self.alpha_warmup_steps}")
        if not 0.0 <= self.dead_member_share < 1.0 / self.num_members:
            raise ValueError(f"dead_member_share must be in [0, 1/num_members) = [0, {1.0 / self.num_members:.3g}) "
                             f"(0 = no detection), got {self.dead_member_share}")
        if self.dead_member_patience < 1:
            raise ValueError(f"dead_member_patience must be >= 1 logging window, got {self.dead_member_patience}")
        if self.dead_member_action not in ("warn", "reinit"):
            raise ValueError(f"dead_member_action must be 'warn' or 'reinit', got {self.dead_member_action!r}")
        if self.dead_member_action == "reinit" and self.num_members < 2:
            raise ValueError("dead_member_action='reinit' needs num_members >= 2 (a living member to copy)")
        if not self.reinit_noise >= 0:
            raise ValueError(f"reinit_noise must be >= 0, got {self.reinit_noise}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2 (a prompt token and a completion token) or None, "
                             f"got {self.max_length}")


def check_training_numbers(args) -> None:
    """Refuse impossible ``TrainingArguments`` numbers that transformers would accept silently.

    ``max_steps``: >= 1, or -1 to train ``num_train_epochs`` epochs (transformers reads 0 and any
    negative number as "epochs"); ``learning_rate`` > 0; batch size, accumulation steps >= 1;
    ``logging_steps`` / ``save_steps`` > 0 (a fraction < 1 is a share of the run, as in transformers).
    """
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"max_steps must be >= 1, or -1 to train for num_train_epochs epochs; got {args.max_steps}")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"num_train_epochs must be > 0 when max_steps is -1, got {args.num_train_epochs}")
    if not args.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {args.learning_rate}")
    if args.per_device_train_batch_size < 1:
        raise ValueError(f"per_device_train_batch_size must be >= 1, got {args.per_device_train_batch_size}")
    if args.gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be >= 1, got {args.gradient_accumulation_steps}")
    if args.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {args.weight_decay}")
    for name in ("logging_steps", "save_steps"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@dataclass
class RenyiTrainingArguments(EnsembleArguments, TrainingArguments):
    """``TrainingArguments`` plus the ensemble settings: the base of :class:`RenyiSFTConfig` and
    :class:`RenyiDPOConfig`.

    Defaults differing from ``TrainingArguments``: ``learning_rate=1e-4``, ``remove_unused_columns=False``
    (the collator needs the tokenized columns), ``report_to="none"``. ``trust_remote_code`` is where
    TRL's configs have it (the trainers take a loaded model; ``manyminds sft`` / ``dpo`` load it).
    """

    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the LoRA members."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep dataset columns."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "External loggers."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Let transformers run the model repository's own code when the model is loaded by name "
                "(as TRL's SFTConfig / DPOConfig; only for repositories you trust)."})

    def __post_init__(self):
        check_training_numbers(self)  # before transformers' own checks, which accept impossible numbers
        super().__post_init__()
        self.check_ensemble_arguments()


def build_ensemble(model: nn.Module, args: EnsembleArguments) -> EnsembleLoRA:
    """An :class:`EnsembleLoRA` from ``args`` (or ``model`` itself if it already is one)."""
    if isinstance(model, EnsembleLoRA):
        if model.num_members != args.num_members or model.r != args.r:
            raise ValueError(f"the ensemble has K={model.num_members}, r={model.r} but the config "
                             f"asks for num_members={args.num_members}, r={args.r}")
        ensemble = model
    else:
        lora = {f.name: getattr(args, f.name) for f in fields(EnsembleLoRAConfig)}
        ensemble = EnsembleLoRA(model, **lora, seed=args.seed)
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
        check_overrides("transformers")  # _save, _load_from_checkpoint, _load_best_model below
        if processing_class is None:
            raise ValueError(f"{type(self).__name__} needs processing_class=<tokenizer>")
        if train_dataset is not None:
            train_dataset = prepare(train_dataset, processing_class, args.max_length)
        if eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, processing_class, args.max_length)
        # wrap the model only once the datasets are valid: a refused dataset leaves it untouched
        self.ensemble = build_ensemble(model, args)
        kwargs.setdefault("data_collator", collator(pad_id_of(processing_class)))
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
        self._dead_monitor = DeadMemberMonitor(self.ensemble.num_members, self.args.dead_member_share,
                                               self.args.dead_member_patience)
        self._reinit_generator = torch.Generator().manual_seed(self.args.seed)

    def current_alpha(self) -> float:
        """The Renyi order of this step: ``alpha * min(1, global_step / alpha_warmup_steps)``
        (``alpha`` itself without warm-up). Step 0 trains at alpha = 0 (a deep ensemble)."""
        warmup = self.args.alpha_warmup_steps
        if warmup <= 0:
            return float(self.args.alpha)
        return float(self.args.alpha) * min(1.0, self.state.global_step / warmup)

    def _check_dead_members(self, metrics: dict[str, float]) -> dict[str, float]:
        """Feed the window's mean responsibilities to the monitor; warn about, and with
        ``dead_member_action="reinit"`` re-initialise, members that just died. Returns the metrics
        ``dead_members`` and ``member_reinits``."""
        K = self.ensemble.num_members
        keys = [f"member_{k}/responsibility" for k in range(K)]
        if self.args.dead_member_share <= 0 or K < 2 or not all(key in metrics for key in keys):
            return {}
        shares = [metrics[key] for key in keys]
        dead, newly = self._dead_monitor.update(shares)
        for k in newly:
            living = [j for j in range(K) if j not in dead]
            message = (f"member {k} is dead: its responsibility stayed below {self.args.dead_member_share:g} for "
                       f"{self.args.dead_member_patience} logging windows (step {self.state.global_step}, "
                       f"shares {', '.join(f'{x:.3f}' for x in shares)})")
            if self.args.dead_member_action == "reinit" and living:
                donor = max(living, key=lambda j: shares[j])
                reinit_member(self.ensemble, k, donor, self.args.reinit_noise, self._reinit_generator,
                              self.optimizer)
                self._dead_monitor.revived(k)
                message += f"; re-initialised from member {donor}"
            else:
                message += "; set dead_member_action='reinit' or alpha_warmup_steps to keep members alive"
            logger.warning(message)
        return {"dead_members": float(sum(n >= self._dead_monitor.patience for n in self._dead_monitor.below)),
                "member_reinits": float(self._dead_monitor.reinits)}

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
    def _record_routing(self, responsibilities: torch.Tensor, member_nll_sum: torch.Tensor, count: torch.Tensor,
                        prior: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Per-step metrics: per-member NLL, responsibility entropy, effective members, routing.

        Token routing: ``responsibilities`` ``[K, B, T]`` are averaged per example over its completion
        tokens (``mask`` ``[B, T]``); prompt and padding positions (uniform ``1/K``) are left out."""
        mode = "train" if self.model.training else "eval"
        m = self._metrics[mode]
        w = responsibilities.float()                            # [K, B] or [K, B, T]
        K = w.shape[0]
        if w.dim() == 2:
            w_seq = w
        elif mask is None:
            w_seq = w.mean(-1)
        else:                                                   # mean over each example's completion tokens
            weight = mask.to(w.dtype)                           # [B, T]
            w_seq = (w * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)
        # every process' examples (a collective: each process records every step), so the metrics are
        # the global batch's, as on one process: member_nll[k] = sum of NLLs / count over all processes
        w_seq = self.accelerator.gather(w_seq.detach().T.contiguous()).T       # [K, B_global]
        sums = self.accelerator.gather(member_nll_sum.detach().double().reshape(1, -1)).sum(0)   # [K]
        member_nll = sums / self.accelerator.gather(count.detach().double().reshape(1)).sum().clamp_min(1.0)
        m["responsibility_entropy"].append(responsibility_entropy(w_seq).mean().item())
        m["effective_members"].append(effective_members(w_seq).mean().item())
        m["prior"].append(float(prior))
        if self.args.alpha_warmup_steps > 0:
            m["alpha"].append(self.current_alpha())            # the alpha this step trained with
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
        elif "loss" in logs:  # a training log line (not the end-of-training summary)
            metrics.update(self._check_dead_members(metrics))
            for callback in self.callback_handler.callbacks:  # e.g. CriticalAlphaCallback's alpha*
                if hasattr(callback, "pop_logs"):
                    metrics.update(callback.pop_logs())
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
        copy_run_id(args.output_dir, folder)  # before the marker: a complete checkpoint names its run
        atomic_write_text(os.path.join(folder, COMPLETE_MARKER), f"{state.global_step}\n")


def write_run_id(folder: str | os.PathLike, run_id: str, **extra) -> None:
    """Write ``folder/run_id.json`` = ``{"run_id": run_id, **extra}`` atomically (temp file + rename)."""
    atomic_write_text(os.path.join(folder, RUN_ID_FILE), json.dumps({"run_id": run_id, **extra}))


def read_run_id(folder: str | os.PathLike) -> str | None:
    """The run id in ``folder/run_id.json``, or ``None`` when there is none (or it does not parse)."""
    try:
        with open(os.path.join(folder, RUN_ID_FILE)) as f:
            run_id = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(run_id) if run_id else None


def copy_run_id(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> None:
    """Record ``run_dir``'s run id in ``checkpoint`` (nothing when ``run_dir`` has none: library runs)."""
    run_id = read_run_id(run_dir)
    if run_id is not None and os.path.isdir(checkpoint):
        write_run_id(checkpoint, run_id)


def last_checkpoint(output_dir: str | os.PathLike, marker: str = COMPLETE_MARKER) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir``, or ``None`` if there is none.

    Complete = it holds ``marker``, a file its trainer writes last (atomically: temp file + rename),
    after transformers has written the weights, optimizer and trainer state: ``checkpoint_complete``
    from :class:`CheckpointCompletionCallback` for the Renyi trainers, ``mind_state.json`` for
    :class:`~manyminds.training.PopulationGRPOTrainer` (``MIND_STATE_FILE``). A checkpoint cut off
    by a crash never counts."""
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
            if step > best_step and (child / marker).exists():
                best, best_step = str(child), step
    return best
