"""The norm rules of model families: the one place to add a family.

A population perturbs the output of every normalization layer of the hidden width that feeds
linear layers (see :mod:`~manyminds.population.norms`). Families differ in three ways, and one
:class:`NormRule` per family, keyed by ``config.model_type`` in :data:`RULES`, says how:

- **which norms**: the leaf names of the perturbed norms (block norms, then the final norm),
  of the norms on a residual branch's *output* (post-norm / "sandwich" layouts: they feed no
  linear layer and are never perturbed) and of the per-head q/k norms (perturbed only with
  ``include_qk_norms=True``);
- **gain form**: the norm computes ``xhat * w`` or, Gemma-style, ``xhat * (1 + w)``
  (``sigma_scale="weight"`` measures sigma in units of the gain; a multiplicative fold writes
  ``(1 + w)(1 + z) - 1``);
- **fold**: how an additive mind becomes an ordinary checkpoint (``"norm bias"``,
  ``"reader bias"`` or ``None``, see :class:`NormRule`), and through which config flags
  (``bias_flags``) or which rebuild (``as_llama``) the reading linear layers get their biases.

A family not in :data:`RULES` gets :data:`STRUCTURAL`, which finds the same things from the
model's structure: q/k norms by name (``q_norm``, ``k_layernorm``, ``query_layernorm``, ...),
branch-output norms by name (:data:`BRANCH_OUTPUT_NORMS`, or ``post_attention_layernorm`` in a
block that also has a ``post_feedforward_layernorm``), the gain form by probing the norm with
``w = 0`` (:func:`scales_by_one_plus_weight`), the bias flags ``attention_bias`` and
``mlp_bias`` where the config has them, and a Llama rebuild where
:func:`~manyminds.zoo.models.llama_equivalent_config` knows one.
``tests/population/test_families.py`` builds a tiny random model of every family in
:data:`RULES` and checks its rule against that structure and against what export really folds.

Adding a family is one entry in :data:`RULES` (see CONTRIBUTING.md, "Adding a model family").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

__all__ = ["BRANCH_OUTPUT_NORMS", "FOLDS", "GAINS", "RULES", "STRUCTURAL", "NormRule",
           "StructuralRule", "rule_of", "scales_by_one_plus_weight", "uses_one_plus_weight"]

GAINS = ("w", "1 + w")
FOLDS = ("norm bias", "reader bias", None)

# Leaf names of norms that normalize a residual branch's output, in any family (structural rule).
BRANCH_OUTPUT_NORMS = frozenset({"post_feedforward_layernorm", "post_self_attn_layernorm",
                                 "post_mlp_layernorm"})

# Last path component of per-head query/key norms (structural rule).
_QK_NAMES = re.compile(r"^(q|k|query|key)_?(norm|layernorm|layer_norm|ln)$", re.IGNORECASE)


@dataclass(frozen=True)
class NormRule:
    """How one model family normalizes, for populations and export.

    Attributes:
        perturbed: leaf names of the norms a population perturbs (``norms="all"``): block norms,
            then the final norm. The code perturbs every norm of the hidden width that is neither
            a branch output nor a q/k norm; this list is the family's contract, which
            ``tests/population/test_families.py`` checks on a tiny model of the family.
        branch_outputs: leaf names of block norms on a residual branch's output (post-norm /
            sandwich layouts); never perturbed.
        qk_norms: leaf names of per-head query/key norms; perturbed only with ``include_qk_norms``.
        gain: ``"w"`` (the norm computes ``xhat * w``) or ``"1 + w"`` (Gemma: ``xhat * (1 + w)``).
        fold: how an additive mind on the block norms (on the final norm when the family has no
            block norm to perturb) is folded into a checkpoint. ``"norm bias"``: the norms have a
            bias, ``b += z``, and every selection folds. ``"reader bias"``: ``W z`` joins the
            biases of the linear layers reading the norm, switched on through ``bias_flags`` or
            the Llama rebuild; the final norm does not fold (``lm_head`` has no bias). ``None``:
            some reader can have no bias, so only multiplicative minds fold (they fold wherever
            the norms have a weight: it is scaled).
        bias_flags: config flags that give a norm's readers biases when switched on (Llama:
            ``attention_bias``, ``mlp_bias``).
        as_llama: the family folds by being rebuilt as the equivalent Llama with biases
            (:func:`manyminds.zoo.models.llama_equivalent_config`: Qwen2, Mistral).

    Raises:
        ValueError: an unknown ``gain`` or ``fold``, or a name listed under two kinds of norm.
    """

    perturbed: tuple[str, ...]
    branch_outputs: frozenset[str] = frozenset()
    qk_norms: frozenset[str] = frozenset()
    gain: str | None = "w"
    fold: str | None = "reader bias"
    bias_flags: tuple[str, ...] = ()
    as_llama: bool = False

    _gains: ClassVar[tuple] = GAINS

    def __post_init__(self):
        for name in ("perturbed", "bias_flags"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("branch_outputs", "qk_norms"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))
        if self.gain not in self._gains:
            raise ValueError(f"NormRule gain must be one of {', '.join(map(repr, GAINS))}, "
                             f"got {self.gain!r}")
        if self.fold not in FOLDS:
            raise ValueError(f"NormRule fold must be one of {', '.join(map(repr, FOLDS))}, "
                             f"got {self.fold!r}")
        perturbed = set(self.perturbed)
        both = (perturbed & self.branch_outputs) | (perturbed & self.qk_norms) | (
            self.branch_outputs & self.qk_norms)
        if both:
            raise ValueError(f"NormRule lists {sorted(both)} under two kinds of norm; list each "
                             "name once (perturbed, branch_outputs or qk_norms)")

    def is_qk(self, leaf: str) -> bool:
        """Whether a norm named ``leaf`` (last path component) is a per-head q/k norm."""
        return leaf in self.qk_norms

    def is_branch_output(self, name: str, all_names: set[str]) -> bool:
        """Whether block norm ``name`` (dotted path; ``all_names``: every module path of the
        model) normalizes a residual branch's output."""
        return name.rpartition(".")[2] in self.branch_outputs


@dataclass(frozen=True)
class StructuralRule(NormRule):
    """The rule of a family not in :data:`RULES`: names and gain read off the model's structure."""

    perturbed: tuple[str, ...] = ()  # every hidden-width norm that is not a branch output / q/k
    gain: str | None = None  # probe the norm (scales_by_one_plus_weight)
    fold: str | None = None  # unknown: export traces the readers and tries the flags
    bias_flags: tuple[str, ...] = ("attention_bias", "mlp_bias")
    as_llama: bool = True  # llama_equivalent_config decides (None for families it does not know)

    _gains: ClassVar[tuple] = (*GAINS, None)

    def is_qk(self, leaf: str) -> bool:
        return bool(_QK_NAMES.match(leaf))

    def is_branch_output(self, name: str, all_names: set[str]) -> bool:
        """:data:`BRANCH_OUTPUT_NORMS`, or ``post_attention_layernorm`` in a block that also has a
        ``post_feedforward_layernorm`` (in Llama-style blocks it is the pre-MLP norm)."""
        parent, _, leaf = name.rpartition(".")
        if leaf in BRANCH_OUTPUT_NORMS:
            return True
        sibling = f"{parent}.post_feedforward_layernorm" if parent else "post_feedforward_layernorm"
        return leaf == "post_attention_layernorm" and sibling in all_names


STRUCTURAL = StructuralRule()

# Shared shapes. Pre-norm blocks: the input norm feeds q/k/v, the post-attention norm the MLP.
_PRE = ("input_layernorm", "post_attention_layernorm", "norm")
_QK = frozenset({"q_norm", "k_norm"})
_SANDWICH = frozenset({"post_attention_layernorm", "post_feedforward_layernorm"})
_LLAMA_FLAGS = ("attention_bias", "mlp_bias")
_ATTN_FLAG = ("attention_bias",)
_GEMMA2 = NormRule(("input_layernorm", "pre_feedforward_layernorm", "norm"), _SANDWICH,
                   gain="1 + w", fold=None, bias_flags=_ATTN_FLAG)
_GEMMA3 = replace(_GEMMA2, qk_norms=_QK)
_OLMO2 = NormRule(("norm",), _SANDWICH, _QK, fold=None, bias_flags=_ATTN_FLAG)

# config.model_type -> rule: one entry per family (see CONTRIBUTING.md, "Adding a model family").
RULES: dict[str, NormRule] = {
    # RMSNorm (no bias), pre-norm blocks
    "llama": NormRule(_PRE, bias_flags=_LLAMA_FLAGS),
    "granite": NormRule(_PRE, bias_flags=_LLAMA_FLAGS),
    "smollm3": NormRule(_PRE, bias_flags=_LLAMA_FLAGS),
    "qwen2": NormRule(_PRE, as_llama=True),
    "mistral": NormRule(_PRE, as_llama=True),  # folds without sliding windows only
    "mixtral": NormRule(_PRE, fold=None),  # MoE experts are not linear layers a bias can join
    "qwen2_moe": NormRule(_PRE, fold=None),
    "phi3": NormRule(_PRE, fold=None),  # fused qkv_proj / gate_up_proj, no bias flag
    "glm": NormRule(_PRE, fold=None, bias_flags=_ATTN_FLAG),
    "qwen3": NormRule(_PRE, qk_norms=_QK, fold=None, bias_flags=_ATTN_FLAG),
    "qwen3_moe": NormRule(_PRE, qk_norms=_QK, fold=None, bias_flags=_ATTN_FLAG),
    "gemma": NormRule(_PRE, gain="1 + w", fold=None, bias_flags=_ATTN_FLAG),
    "olmo": NormRule(_PRE, fold=None, bias_flags=_ATTN_FLAG),  # weightless LayerNorm: no fold
    # post-norm ("sandwich") blocks: the norms on the attention/MLP outputs are left alone
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA3,
    "gemma3": replace(_GEMMA3, bias_flags=()),  # the multimodal config has no attention_bias
    "glm4": NormRule(_PRE, frozenset({"post_self_attn_layernorm", "post_mlp_layernorm"}),
                     fold=None, bias_flags=_ATTN_FLAG),
    "olmo2": _OLMO2,  # no block norm feeds a linear layer: norms="final" only
    "olmo3": _OLMO2,
    # LayerNorm with bias: offsets fold into the norm's bias
    "gpt2": NormRule(("ln_1", "ln_2", "ln_f"), fold="norm bias"),
    "opt": NormRule(("self_attn_layer_norm", "final_layer_norm"), fold="norm bias"),
    "phi": NormRule(("input_layernorm", "final_layernorm"), fold="norm bias"),
    "gpt_neox": NormRule(("input_layernorm", "post_attention_layernorm", "final_layer_norm"),
                         fold="norm bias", bias_flags=_ATTN_FLAG),
    "starcoder2": NormRule(_PRE, fold="norm bias"),
}


def rule_of(model: nn.Module) -> NormRule:
    """The rule of an unwrapped model's family (``model.config.model_type``), else
    :data:`STRUCTURAL`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return RULES.get(model_type, STRUCTURAL) if isinstance(model_type, str) else STRUCTURAL


def scales_by_one_plus_weight(norm: nn.Module) -> bool:
    """Whether ``norm`` computes ``xhat * (1 + w)`` (Gemma) rather than ``xhat * w``: probe it with
    ``w = 0`` (the weight is restored, also after an error)."""
    weight = norm.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.zero_()
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(2, weight.shape[-1], generator=gen).to(weight)  # [2, W]
            return bool(norm(x).abs().max() > 0)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def uses_one_plus_weight(gain: str | None, norm: nn.Module) -> bool:
    """Whether ``norm`` scales by ``1 + w``: from its family's ``gain``, or probed when ``None``."""
    return scales_by_one_plus_weight(norm) if gain is None else gain == "1 + w"
