"""What the alpha-Renyi SFT and DPO trainers share: the ensemble settings, dataset columns,
tokenization and padding, per-step routing metrics, and atomic checkpoints of all members.

Checkpoints: ``checkpoint-N/`` holds every member as a PEFT adapter (``members/member_{k}``), the
optimizer, scheduler, RNG states and trainer state. The whole folder is first written under
``.staging/`` and renamed into place, so a run killed while saving leaves the previous
checkpoint as the latest one and nothing half-written under a ``checkpoint-N`` name.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from manyminds.ensemble.lora import EnsembleLoRA
from manyminds.ensemble.objectives import effective_members, gaussian_prior, responsibility_entropy

MEMBERS_DIR = "members"
STAGING_DIR = ".staging"


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
    max_length: int | None = field(default=512, metadata={"help": "Truncate prompt+completion to this many tokens."})
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
        for module in ensemble.model.modules():
            if isinstance(module, nn.Dropout):
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


def encode_pair(tokenizer, prompt: str, completion: str, max_length: int | None) -> dict:
    """``prompt + completion + eos`` ids and a 0/1 completion mask (1 on completion and eos)."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    ids, mask = p + c, [0] * len(p) + [1] * len(c)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad integer lists to ``[N, T_max]``."""
    T = max(len(r) for r in rows)
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def sequence_token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next token: logits ``[N, T, V]``, ids ``[N, T]`` -> ``[N, T-1]``."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    return torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class EnsembleTrainerMixin:
    """Checkpointing, prior, metrics and logging shared by the Renyi trainers.

    Override points used (transformers 5.x): ``compute_loss`` (in the subclasses), ``log``,
    ``_save`` (write the members as PEFT adapters instead of a full state dict),
    ``_load_from_checkpoint`` and ``_save_checkpoint`` (written under ``.staging`` and renamed).
    """

    ensemble: EnsembleLoRA

    def _init_ensemble_trainer(self, model, args, train_dataset, eval_dataset, processing_class,
                               kwargs: dict, prepare, collator) -> None:
        """The shared ``__init__``: wrap ``model`` in an ensemble, tokenize the datasets with
        ``prepare(dataset, tokenizer, max_length)``, default to ``collator(pad_id)``, then
        ``Trainer.__init__`` on the ensemble."""
        if processing_class is None:
            raise ValueError(f"{type(self).__name__} needs processing_class=<tokenizer>")
        self.ensemble = build_ensemble(model, args)
        if train_dataset is not None:
            train_dataset = prepare(train_dataset, processing_class, args.max_length)
        if eval_dataset is not None:
            eval_dataset = prepare(eval_dataset, processing_class, args.max_length)
        pad = processing_class.pad_token_id
        pad = processing_class.eos_token_id if pad is None else pad
        kwargs.setdefault("data_collator", collator(pad))
        super().__init__(model=self.ensemble, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        self.model_accepts_loss_kwargs = False  # per-batch mean: the Trainer divides by GA steps
        self.can_return_loss = True  # evaluate() reports eval_loss although batches carry no labels
        self._init_metrics()

    def _init_metrics(self) -> None:
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                           "eval": defaultdict(list)}

    def _prior(self) -> torch.Tensor:
        if self.args.prior_weight == 0:
            return torch.zeros((), device=self.args.device)
        return gaussian_prior(self.ensemble.lora_parameters(), self.args.prior_weight,
                              self.args.prior_sigma)

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

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        if getattr(self, "_staging", False):
            return os.path.join(run_dir, STAGING_DIR)
        return run_dir

    def _save_checkpoint(self, model: nn.Module, trial) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        if self.args.should_save and os.path.isdir(staging_root):
            shutil.rmtree(staging_root)             # leftovers of a run killed while saving
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        if not self.args.should_save:
            return
        final = os.path.join(run_dir, name)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(os.path.join(staging_root, name), final)
        shutil.rmtree(staging_root, ignore_errors=True)
        rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` folder in ``output_dir`` (staging leftovers ignored)."""
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
            if step > best_step and (child / "trainer_state.json").exists():
                best, best_step = str(child), step
    return best

