"""The settings of an ensemble of K LoRA members, and which modules of a model they wrap.

:class:`EnsembleLoRAConfig` holds the fields (names as in PEFT's ``LoraConfig``);
:func:`match_target_modules` resolves ``target_modules`` on a model as PEFT matches them, and
:func:`default_target_modules` gives PEFT's default targets of an architecture.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

INITS = ("peft", "diverse")


def conv1d_class() -> type | None:
    """transformers' GPT-2 ``Conv1D`` (a linear map whose weight is stored ``[in, out]``)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always ships it
        return None
    return Conv1D


def lora_able_kinds() -> tuple[type, ...]:
    """The module classes a member can wrap: ``nn.Linear`` and, if importable, ``Conv1D``."""
    return tuple(k for k in (nn.Linear, conv1d_class()) if k is not None)


def default_target_modules(model: nn.Module) -> list[str]:
    """PEFT's default LoRA targets for ``model.config.model_type`` (e.g. q_proj/v_proj, GPT-2 c_attn).

    Raises:
        ValueError: the architecture has no PEFT default; the message lists the linear modules.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MAPPING:
        return list(MAPPING[model_type])
    raise ValueError(
        f"no default LoRA target modules for model_type={model_type!r}; pass target_modules=[...] "
        f"from the linear modules that exist: {', '.join(linear_module_names(model))}")


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted unique leaf names (``q_proj``, ``c_attn``, ...) of the LoRA-able modules of ``model``."""
    kinds = lora_able_kinds()
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if isinstance(mod, kinds) and name})


def match_target_modules(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Full names of the modules of ``model`` that ``target_modules`` selects, as PEFT matches them.

    A string is a regular expression that must match the whole module name; a list selects every
    module whose name equals an entry or ends with ``"." + entry``.

    Raises:
        ValueError: nothing matches (the message lists what exists).
        TypeError: a match is not a ``nn.Linear``/``Conv1D``.
    """
    kinds = lora_able_kinds()
    names = []
    for name, module in model.named_modules():
        if not name:
            continue
        if isinstance(target_modules, str):
            hit = re.fullmatch(target_modules, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in target_modules)
        if not hit:
            continue
        if not isinstance(module, kinds):
            # a container such as "self_attn" matched by suffix: PEFT skips those silently, we say so
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}, not nn.Linear or Conv1D; "
                f"choose from: {', '.join(linear_module_names(model))}")
        names.append(name)
    if not names:
        raise ValueError(
            f"target_modules={target_modules!r} matched no module of {type(model).__name__}; "
            f"LoRA-able modules that exist: {', '.join(linear_module_names(model))}")
    return names


@dataclass
class EnsembleLoRAConfig:
    """Settings of an :class:`~manyminds.ensemble.EnsembleLoRA` (option names as in PEFT's
    ``LoraConfig``).

    The one place of these fields and their defaults: ``EnsembleLoRA(model, **fields)`` takes them,
    and the Renyi trainers' configs inherit them (through
    :class:`~manyminds.training.common.EnsembleArguments`). The initialization seed is not among
    them: an ``EnsembleLoRA`` takes ``seed=``, a trainer uses ``TrainingArguments.seed``.
    """

    num_members: int = field(default=4, metadata={"help": "K, the number of LoRA members (>= 1)."})
    r: int = field(default=8, metadata={"help": "LoRA rank of every member (>= 1)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: scale = lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names (suffix match) or a regex; None = PEFT's default "
                                        "for the architecture (e.g. q_proj,v_proj; c_attn for GPT-2)."})
    init: str = field(default="peft", metadata={
        "help": "'peft': B = 0 (every member starts as the base), A kaiming-uniform per member; "
                "'diverse': B ~ N(0, init_std^2) too, so members differ from the first step."})
    init_std: float = field(default=1e-2, metadata={"help": "Std of B when init='diverse'."})

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:      # a config that also inherits TrainingArguments: its checks first
            parent()
        self.check_lora_fields()

    def check_lora_fields(self) -> None:
        """Raise a one-line ``ValueError`` naming the first invalid LoRA field."""
        if not isinstance(self.num_members, int) or self.num_members < 1:
            raise ValueError(f"num_members must be an integer >= 1, got {self.num_members!r}")
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"rank r must be an integer >= 1, got {self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
