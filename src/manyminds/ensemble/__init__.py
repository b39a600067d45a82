"""Soft specialists: K LoRA members on one frozen base, trained with the alpha-Renyi objective.

- :class:`EnsembleLoRA`: K-member LoRA layers wrapping their targets, explicit routing contexts
  (``all_members``, ``members``, ``disabled``), PEFT save/load. Split as PEFT splits LoRA:
  :mod:`~manyminds.ensemble.config` (:class:`EnsembleLoRAConfig`, target-module matching),
  :mod:`~manyminds.ensemble.layer` (:class:`EnsembleLoRALinear`, routing),
  :mod:`~manyminds.ensemble.model` (:class:`EnsembleLoRA`) and
  :mod:`~manyminds.ensemble.save_and_load` (member folders: save, check, load).
- :func:`renyi_loss`, :func:`renyi_dpo_loss`, :func:`gaussian_prior`: the objectives.
- :mod:`manyminds.ensemble.uncertainty`: total / aleatoric / epistemic, risk-coverage, AUROC.
- :mod:`manyminds.ensemble.decoding`: mixture decoding, per-member generation, the members' majority vote
  (:func:`member_majority`, over :func:`manyminds.metrics.majority_share`).
"""

from .config import EnsembleLoRAConfig, default_target_modules, match_target_modules
from .decoding import (
    MixtureOutput,
    generate_members,
    generate_texts,
    member_majority,
    mixture_generate,
)
from .layer import EnsembleLoRALinear
from .model import EnsembleLoRA
from .objectives import (
    bradley_terry_logp,
    effective_members,
    gaussian_prior,
    renyi_dpo_loss,
    renyi_loss,
    renyi_value,
    responsibility_entropy,
)
from .uncertainty import (
    answer_disagreement,
    auroc,
    base_completion_logps,
    completion_logps,
    logp_variance,
    risk_coverage,
    selective_answer,
    sequence_uncertainty,
    token_uncertainty,
)

__all__ = [
    "EnsembleLoRA",
    "EnsembleLoRAConfig",
    "EnsembleLoRALinear",
    "MixtureOutput",
    "answer_disagreement",
    "auroc",
    "base_completion_logps",
    "bradley_terry_logp",
    "completion_logps",
    "default_target_modules",
    "effective_members",
    "gaussian_prior",
    "generate_members",
    "generate_texts",
    "logp_variance",
    "match_target_modules",
    "member_majority",
    "mixture_generate",
    "renyi_dpo_loss",
    "renyi_loss",
    "renyi_value",
    "responsibility_entropy",
    "risk_coverage",
    "selective_answer",
    "sequence_uncertainty",
    "token_uncertainty",
]
