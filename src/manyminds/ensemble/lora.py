"""K LoRA members on one frozen base: K-member layers that wrap their targets, routing contexts,
PEFT interop.

Every target module ``y = W x (+ b)`` (``nn.Linear`` or transformers' GPT-2 ``Conv1D``) is replaced
in its parent by an :class:`EnsembleLoRALinear` that keeps it as ``base_layer`` (as PEFT's LoRA
layers do) and holds the K members' low-rank factors, stacked:

    y_k = W x + (lora_alpha / r) * B_k A_k dropout(x),   A: [K, r, in],  B: [K, out, r].

So ``model.to()``, ``model.state_dict()``, FSDP wrapping and ZeRO-3 gathering see the members
with their layers. :meth:`EnsembleLoRA.unload` puts the original modules back.

Routing is explicit: a forward outside one of three context managers raises (never a silent
split). Each restores the previous mode in ``finally``:

- ``with ens.all_members()``: the batch is the input repeated K times, member-major: rows
  ``[k*B, (k+1)*B)`` run member ``k``; a batch that is not a multiple of K raises. One pair of
  ``torch.bmm`` per module computes all members.
- ``with ens.members(ids)``: row ``b`` runs member ``ids[b]`` (``-1`` = base); per-row A/B are
  gathered and applied with ``bmm``. Same id semantics as ``Population.minds``.
- ``with ens.disabled()``: the exact base model (the DPO reference).

Gradient checkpointing enabled through :meth:`EnsembleLoRA.gradient_checkpointing_enable` replays
each checkpointed layer in the routing mode of its forward, so ``backward`` may run after the
context has exited.

``save_members(dir)`` writes member ``k`` to ``dir/member_{k}`` as a standard PEFT LoRA adapter;
``EnsembleLoRA.from_members(model, dir)`` loads the K adapters back.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from manyminds.rows import check_row_ids, expand_row_ids

ENSEMBLE_CONFIG_NAME = "ensemble_config.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
INITS = ("peft", "diverse")


def _conv1d_class():
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always ships it
        return None
    return Conv1D


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
    kinds = tuple(k for k in (nn.Linear, _conv1d_class()) if k is not None)
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if isinstance(mod, kinds) and name})


def match_target_modules(model: nn.Module, target_modules: str | Sequence[str]) -> list[str]:
    """Full names of the modules of ``model`` that ``target_modules`` selects, as PEFT matches them.

    A string is a regular expression that must match the whole module name; a list selects every
    module whose name equals an entry or ends with ``"." + entry``.

    Raises:
        ValueError: nothing matches (the message lists what exists), or a match is not a
            ``nn.Linear``/``Conv1D``.
    """
    conv1d = _conv1d_class()
    kinds = tuple(k for k in (nn.Linear, conv1d) if k is not None)
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


def _in_out_features(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a Linear or GPT-2 Conv1D (weight [in, out]).

    Read from the module's attributes, not ``weight.shape`` (empty for ZeRO-3-partitioned weights).
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if hasattr(module, "nx") and hasattr(module, "nf"):    # Conv1D(nf=out, nx=in)
        return module.nx, module.nf, True
    weight = module.weight  # Conv1D stores W as [in, out]
    return weight.shape[0], weight.shape[1], True


def _generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, keys): never the global RNG."""
    g = torch.Generator(device="cpu")
    mixed = seed
    for key in keys:
        mixed = (mixed * 1_000_003 + key + 1) % (2**63 - 1)
    g.manual_seed(mixed)
    return g


@dataclass
class EnsembleLoRAConfig:
    """Settings of an :class:`EnsembleLoRA` (option names as in PEFT's ``LoraConfig``).

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


NO_ROUTING = ("EnsembleLoRA: no routing context: use `with ens.all_members():` for K*B member-major "
              "rows, `with ens.members(ids):` per row, or `with ens.disabled():` for the base")
NO_ROUTING_REPLAY = ("EnsembleLoRA: a gradient-checkpoint replay ran with no routing context: enable "
                     "checkpointing with ens.gradient_checkpointing_enable() (it replays the routing "
                     "of each forward), or call backward() inside the routing context")


def _in_backward() -> bool:
    """True while autograd runs a backward pass (where checkpointed layers are replayed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class _Routing:
    """Routing state shared by the K-member layers of one ensemble.

    ``mode`` is ``None`` (no context: every forward raises), ``"all"`` (member-major K*B rows),
    ``"disabled"`` (the base) or a CPU ``LongTensor [B]`` of member ids (``-1`` = base).
    """

    def __init__(self):
        self.mode: str | torch.Tensor | None = None

    @contextmanager
    def use(self, mode: str | torch.Tensor | None):
        """Set ``mode`` inside the context; the previous mode is restored in ``finally``."""
        previous = self.mode
        self.mode = mode
        try:
            yield
        finally:
            self.mode = previous


class _RoutedCheckpoint:
    """A layer's checkpoint function that replays the layer in the routing mode of its forward.

    ``checkpoint(function, *args)`` recomputes ``function`` during ``backward``, when the routing
    context of the forward has usually exited; the mode is captured at forward time and
    re-entered around every call of ``function`` (the forward and its replay). A class rather
    than a closure, so ``copy.deepcopy`` of a model points the copy at the copy's routing.
    """

    def __init__(self, checkpoint_func, routing: _Routing):
        self.checkpoint_func = checkpoint_func
        self.routing = routing

    def __call__(self, function, *args, **kwargs):
        routing, mode = self.routing, self.routing.mode    # the mode of this forward

        def run(*a, **kw):
            with routing.use(mode):
                return function(*a, **kw)

        return self.checkpoint_func(run, *args, **kwargs)


class EnsembleLoRALinear(nn.Module):
    """A target module (``nn.Linear`` or GPT-2 ``Conv1D``) wrapped with the K members' LoRA factors.

    Like PEFT's ``lora.Linear``, the original module is kept as ``base_layer`` and the factors are
    parameters of the wrapper, so ``model.to()``, ``state_dict()``, FSDP wrapping and ZeRO-3
    gathering see them next to the weight they modify::

        y = base_layer(x) + (lora_alpha / r) * B_k A_k dropout(x)

    where member ``k`` of a row is chosen by the ensemble's routing (see :class:`EnsembleLoRA`).

    Args:
        base_layer: the module to wrap (left unchanged; ``EnsembleLoRA.unload`` puts it back).
        num_members: K >= 1 (default 4).
        r: LoRA rank >= 1.
        lora_alpha: scale numerator, ``scaling = lora_alpha / r``.
        lora_dropout: dropout on the LoRA input.
        routing: the routing state shared with the other layers of the ensemble (a fresh one,
            in no routing mode, if ``None``).

    Attributes:
        lora_A: ``[K, r, in]`` (PEFT's ``lora_A.weight`` of member k is ``lora_A[k]``).
        lora_B: ``[K, out, r]`` (PEFT's ``lora_B.weight`` of member k is ``lora_B[k]``).
        scaling: ``lora_alpha / r``.
        fan_in_fan_out: True for ``Conv1D`` (its weight is stored ``[in, out]``).
    """

    def __init__(self, base_layer: nn.Module, num_members: int, r: int, lora_alpha: float,
                 lora_dropout: float = 0.0, routing: _Routing | None = None):
        super().__init__()
        in_features, out_features, fan_in_fan_out = _in_out_features(base_layer)
        self.base_layer = base_layer
        self.in_features, self.out_features = in_features, out_features
        self.num_members, self.r = num_members, r
        self.scaling = lora_alpha / r
        self.fan_in_fan_out = fan_in_fan_out
        weight = base_layer.weight
        # like PEFT's autocast_adapter_dtype: half-precision bases get float32 adapters
        dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        self.lora_A = nn.Parameter(torch.zeros(num_members, r, in_features, dtype=dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(num_members, out_features, r, dtype=dtype, device=weight.device))
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.routing = routing if routing is not None else _Routing()

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped module's weight (code that reads ``module.weight`` keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        return (f"num_members={self.num_members}, r={self.r}, in_features={self.in_features}, "
                f"out_features={self.out_features}, scaling={self.scaling:g}")

    @torch.no_grad()
    def reset_parameters(self, seed: int, layer_index: int, init: str, init_std: float) -> None:
        """PEFT's init per member: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform, a=sqrt(5)), B = 0.

        With ``init="diverse"`` B ~ N(0, init_std^2) as well. Each member draws from its own
        generator seeded by (seed, layer_index, member).
        """
        bound = 1.0 / math.sqrt(self.in_features)
        for k in range(self.num_members):
            g = _generator(seed, layer_index, k)
            a = torch.rand(self.r, self.in_features, generator=g, dtype=torch.float64) * 2 * bound - bound
            self.lora_A[k].copy_(a)
            if init == "diverse":
                self.lora_B[k].copy_(torch.randn(self.out_features, self.r, generator=g,
                                                 dtype=torch.float64) * init_std)
            else:
                self.lora_B[k].zero_()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mode = self.routing.mode
        if mode is None:
            raise RuntimeError(NO_ROUTING_REPLAY if _in_backward() else NO_ROUTING)
        result = self.base_layer(x, *args, **kwargs)
        if isinstance(mode, str):
            if mode == "disabled":
                return result
            delta = self.delta_all(x)
        else:
            delta = self.delta_rows(x, mode)
        return result + delta.to(result.dtype)

    def delta_all(self, x: torch.Tensor) -> torch.Tensor:
        """All members on a member-major batch: ``x [K*B, ..., in] -> [K*B, ..., out]``.

        Rows ``[k*B, (k+1)*B)`` run member ``k``; one pair of ``torch.bmm`` computes all members.
        """
        K = self.num_members
        if x.shape[0] % K:
            raise ValueError(
                f"ens.all_members() needs K*B member-major rows for K={K}, got a batch of "
                f"{x.shape[0]} rows; repeat the batch with EnsembleLoRA.repeat_batch(batch, {K}), or "
                f"route rows with `with ens.members(ids):`")
        xs = self.dropout(x.to(self.lora_A.dtype)).reshape(K, -1, self.in_features)  # [K, B*T, in]
        h = torch.bmm(xs, self.lora_A.transpose(1, 2))                                 # [K, B*T, r]
        d = torch.bmm(h, self.lora_B.transpose(1, 2))                                  # [K, B*T, out]
        return (d * self.scaling).reshape(*x.shape[:-1], self.out_features)

    def delta_rows(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Member ``ids[b]`` on row ``b`` (``-1`` = base, zero update): ``x [N, ..., in] -> [N, ..., out]``.

        A batch of ``n * len(ids)`` rows repeats each id ``n`` times (``num_return_sequences``),
        as ``Population.minds`` does.
        """
        rows = x.shape[0]
        ids = expand_row_ids(ids, rows, what="member", context="ens.members(ids)").to(x.device)
        keep = (ids >= 0).to(self.lora_A.dtype)                 # [N]
        sel = ids.clamp(min=0)
        A = self.lora_A[sel]                                    # [N, r, in]
        B = self.lora_B[sel] * (keep * self.scaling)[:, None, None]  # [N, out, r]
        xs = self.dropout(x.to(self.lora_A.dtype)).reshape(rows, -1, self.in_features)  # [N, T, in]
        d = torch.bmm(torch.bmm(xs, A.transpose(1, 2)), B.transpose(1, 2))  # [N, T, out]
        return d.reshape(*x.shape[:-1], self.out_features)


def check_member_ids(ids, num_members: int) -> torch.Tensor:
    """Validate member ids -> a CPU ``LongTensor [B]`` with values in ``[-1, K-1]`` (``-1`` = base).

    The checks of :func:`manyminds.rows.check_row_ids` plus the bound K - 1.
    """
    out = check_row_ids(ids, what="member")
    if bool((out >= num_members).any()):
        raise ValueError(f"member ids must be in [-1, {num_members - 1}] (-1 = base), got {out.tolist()}")
    return out


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the submodule ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


class EnsembleLoRA(nn.Module):
    """K LoRA members on one frozen causal LM.

    The model is modified in place: its parameters are frozen and every target module is replaced
    in its parent by an :class:`EnsembleLoRALinear` that wraps it (``ens.lora_layers`` maps the
    module names to the wrappers). ``unload()`` puts the original modules back.

    Every forward runs in an explicit routing mode; a forward outside the three contexts raises:

    - ``with ens.all_members():`` the batch is the input repeated K times, member-major: rows
      ``[k*B, (k+1)*B)`` run member ``k`` (any other batch size raises).
    - ``with ens.members(ids):`` row ``b`` runs member ``ids[b]`` (``-1`` = base).
    - ``with ens.disabled():`` the exact base model.

    Args:
        model: any transformers causal LM.
        num_members: K >= 1 (default 4).
        r: LoRA rank >= 1 (default 8).
        lora_alpha: scale numerator, scale = lora_alpha / r (default 16).
        lora_dropout: dropout on the LoRA input (default 0).
        target_modules: names (suffix match) or a regex; None = PEFT's default for the architecture.
        init: ``"peft"`` (B = 0: every member starts as the base) or ``"diverse"``.
        init_std: std of B for ``init="diverse"``.
        seed: initialization seed.

    Example:
        >>> ens = EnsembleLoRA(model, num_members=4)
        >>> with ens.all_members():                     # logits [4*B, T, V], member-major
        ...     out = ens(**EnsembleLoRA.repeat_batch(batch, 4))
        >>> with ens.members(torch.tensor([0, 3, -1])):  # per-row members, -1 = base
        ...     out = model.generate(...)
    """

    def __init__(self, model: nn.Module, num_members: int = EnsembleLoRAConfig.num_members,
                 r: int = EnsembleLoRAConfig.r, lora_alpha: float = EnsembleLoRAConfig.lora_alpha,
                 lora_dropout: float = EnsembleLoRAConfig.lora_dropout,
                 target_modules: str | Sequence[str] | None = EnsembleLoRAConfig.target_modules,
                 init: str = EnsembleLoRAConfig.init, init_std: float = EnsembleLoRAConfig.init_std,
                 seed: int = 0):
        super().__init__()
        # FSDP's default wrap policy shards per decoder block, as it would for the bare model
        self._no_split_modules = getattr(model, "_no_split_modules", None)
        if isinstance(target_modules, tuple):
            target_modules = list(target_modules)
        self.ensemble_config = EnsembleLoRAConfig(num_members=num_members, r=r, lora_alpha=lora_alpha,
                                                  lora_dropout=lora_dropout, target_modules=target_modules,
                                                  init=init, init_std=init_std)
        self.seed = seed
        wrapped = [name for name, m in model.named_modules() if isinstance(m, EnsembleLoRALinear)]
        if wrapped:
            raise ValueError(f"the model already carries EnsembleLoRA members (e.g. {wrapped[0]!r}); "
                             f"use that ensemble, or call its unload() first")
        if self.ensemble_config.target_modules is None:
            self.ensemble_config.target_modules = default_target_modules(model)
        self.target_names = match_target_modules(model, self.ensemble_config.target_modules)
        self._routing = _Routing()
        # plain dict, not a ModuleDict: the wrappers are registered once, inside the model
        self.lora_layers: dict[str, EnsembleLoRALinear] = {}
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._checkpoint_funcs: dict[nn.Module, object] = {}
        layers = {}
        for index, name in enumerate(self.target_names):
            layer = EnsembleLoRALinear(model.get_submodule(name), num_members, r, lora_alpha,
                                       lora_dropout, routing=self._routing)
            layer.reset_parameters(seed, index, init, init_std)
            layers[name] = layer
        self.model = model
        # swap in only once every wrapper is built, so a failed construction leaves the model as it was
        try:
            for name, layer in layers.items():
                parent, child = _parent(model, name)
                setattr(parent, child, layer)
                self.lora_layers[name] = layer
        except BaseException:
            self._restore_targets()
            raise
        for p in model.parameters():
            p.requires_grad_(False)
        for layer in self.lora_layers.values():
            layer.lora_A.requires_grad_(True)
            layer.lora_B.requires_grad_(True)

    # ------------------------------------------------------------------ basics
    def _restore_targets(self) -> None:
        for name, layer in self.lora_layers.items():
            parent, child = _parent(self.model, name)
            setattr(parent, child, layer.base_layer)
        self.lora_layers = {}

    def unload(self) -> nn.Module:
        """Put the original target modules back and return the base model exactly as it was.

        The parameters get back their ``requires_grad`` flags and checkpointing functions wrapped
        by :meth:`gradient_checkpointing_enable` are restored; the ensemble is unusable afterwards.
        """
        self._unwrap_checkpoint_funcs()
        self._restore_targets()
        for name, p in self.model.named_parameters():
            if name in self._requires_grad:
                p.requires_grad_(self._requires_grad[name])
        return self.model

    @property
    def config(self):
        """The base model's config (so code that reads ``model.config`` keeps working)."""
        return self.model.config

    @property
    def num_members(self) -> int:
        return self.ensemble_config.num_members

    @property
    def r(self) -> int:
        return self.ensemble_config.r

    def _check_routable(self) -> None:
        if not self.lora_layers:
            raise RuntimeError("EnsembleLoRA: this ensemble was unloaded; use the model unload() "
                               "returned, or build a new EnsembleLoRA on it")
        if self._routing.mode is None:
            raise RuntimeError(NO_ROUTING)

    def forward(self, *args, **kwargs):
        """The wrapped model's forward in the current routing mode (raises outside a routing context)."""
        self._check_routable()
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        """The wrapped model's ``generate`` in the current routing mode (raises outside a context)."""
        self._check_routable()
        return self.model.generate(*args, **kwargs)

    # ------------------------------------------------------------------ gradient checkpointing
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        every_n_layers: int = 1, offload: bool = False) -> None:
        """Checkpoint the base model's layers (the Trainer calls this for ``gradient_checkpointing=True``).

        A checkpointed layer is recomputed during ``backward``, usually after the routing context
        has exited. Each layer's checkpoint function is therefore wrapped to record the routing
        mode of its forward and re-enter that mode for the replay (reentrant or not). The base is
        frozen, so the embeddings' outputs are made to require grad: otherwise a reentrant
        checkpoint would see no input that needs a gradient and drop the LoRA grads.
        """
        kwargs = {"every_n_layers": every_n_layers, "offload": offload}
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        else:  # transformers < 5.20 only has the older name
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=activation_checkpointing_kwargs)
        self.model.enable_input_require_grads()
        self._wrap_checkpoint_funcs()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None,
                                      **kwargs) -> None:
        """Alias of :meth:`activation_checkpointing_enable` (transformers' older name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self._unwrap_checkpoint_funcs()
        if hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    def gradient_checkpointing_disable(self) -> None:
        self.activation_checkpointing_disable()

    def _wrap_checkpoint_funcs(self) -> None:
        for module in self.model.modules():
            func = module.__dict__.get("_gradient_checkpointing_func")
            if func is None or (isinstance(func, _RoutedCheckpoint) and func.routing is self._routing):
                continue
            self._checkpoint_funcs.setdefault(module, func)
            module._gradient_checkpointing_func = _RoutedCheckpoint(func, self._routing)

    def _unwrap_checkpoint_funcs(self) -> None:
        for module, func in self._checkpoint_funcs.items():
            current = module.__dict__.get("_gradient_checkpointing_func")
            if isinstance(current, _RoutedCheckpoint) and current.routing is self._routing:
                module._gradient_checkpointing_func = func
        self._checkpoint_funcs = {}

    # ------------------------------------------------------------------ parameters
    def lora_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable LoRA tensors (A and B of every target module, all members)."""
        for layer in self.lora_layers.values():
            yield layer.lora_A
            yield layer.lora_B

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s adapter with PEFT's key names (``base_model.model.<module>.lora_A.weight``)."""
        if not 0 <= member < self.num_members:
            raise ValueError(f"member must be in [0, {self.num_members - 1}], got {member}")
        out = {}
        for name, layer in self.lora_layers.items():
            out[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A[member].detach().contiguous()
            out[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B[member].detach().contiguous()
        return out

    @staticmethod
    def repeat_batch(batch: dict, num_members: int) -> dict:
        """Repeat every tensor of ``batch`` K times along dim 0, member-major: ``[B, ...] -> [K*B, ...]``."""
        return {key: value.repeat(num_members, *([1] * (value.dim() - 1)))
                if torch.is_tensor(value) and value.dim() > 0 else value
                for key, value in batch.items()}

    # ------------------------------------------------------------------ routing contexts
    @contextmanager
    def all_members(self):
        """Every member at once: a batch of K*B rows, member-major (rows ``[k*B, (k+1)*B)`` run member k).

        Build the batch with :meth:`repeat_batch`. A forward whose batch is not a multiple of K
        raises. Exiting (also by an exception) restores the previous mode.
        """
        with self._routing.use("all"):
            yield self

    @contextmanager
    def disabled(self):
        """The exact base model inside the context (no member's update is added)."""
        with self._routing.use("disabled"):
            yield self

    @contextmanager
    def members(self, ids: torch.Tensor | Sequence[int]):
        """Row ``b`` of every batch inside the context runs member ``ids[b]`` (``-1`` = base).

        Args:
            ids: LongTensor or list of ints of length B, values in ``[-1, K-1]``. A forward with
                ``n * B`` rows repeats each id ``n`` times (``num_return_sequences``).

        Raises:
            TypeError: ids that are not integers.
            ValueError: ids out of range, empty, not 1-D, or (at forward time) not matching the batch.
        """
        ids = check_member_ids(ids, self.num_members)
        with self._routing.use(ids):
            yield self

    # ------------------------------------------------------------------ PEFT interop
    def _peft_config(self):
        from peft import LoraConfig

        name_or_path = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        fan_in_fan_out = any(layer.fan_in_fan_out for layer in self.lora_layers.values())
        target = self.ensemble_config.target_modules
        return LoraConfig(r=self.r, lora_alpha=self.ensemble_config.lora_alpha,
                          lora_dropout=self.ensemble_config.lora_dropout,
                          target_modules=target if isinstance(target, str) else sorted(target),
                          fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM",
                          base_model_name_or_path=name_or_path)

    def save_members(self, directory: str | os.PathLike) -> list[Path]:
        """Write member k to ``directory/member_{k}`` as a PEFT LoRA adapter, plus ``ensemble_config.json``.

        Each file is written to a temporary name and renamed into place, so a crash never leaves a
        half-written file under its final name.

        Returns:
            The K member directories.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        peft_config = self._peft_config()
        adapter_config = peft_config.to_dict()
        adapter_config["target_modules"] = (sorted(adapter_config["target_modules"])
                                            if isinstance(adapter_config["target_modules"], (set, list))
                                            else adapter_config["target_modules"])
        adapter_config["peft_type"] = "LORA"
        adapter_config["task_type"] = "CAUSAL_LM"
        paths = []
        for k in range(self.num_members):
            member_dir = directory / f"member_{k}"
            member_dir.mkdir(exist_ok=True)
            state = {key: value.cpu() for key, value in self.member_state_dict(k).items()}
            _atomic_write(member_dir / ADAPTER_WEIGHTS_NAME,
                          lambda path, s=state: save_file(s, path, metadata={"format": "pt"}))
            _atomic_write_text(member_dir / ADAPTER_CONFIG_NAME, json.dumps(adapter_config, indent=2))
            paths.append(member_dir)
        meta = {**asdict(self.ensemble_config), "seed": self.seed}
        meta["target_names"] = self.target_names
        _atomic_write_text(directory / ENSEMBLE_CONFIG_NAME, json.dumps(meta, indent=2))
        return paths

    @torch.no_grad()
    def load_members(self, directory: str | os.PathLike) -> None:
        """Load ``directory/member_{k}`` (k < K) into this ensemble's members.

        Raises:
            ValueError: the checkpoint's number of members or rank differs from this ensemble's,
                or a module is missing.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        found_k, found_r = _checkpoint_shape(directory)
        if found_k != self.num_members or found_r != self.r:
            raise ValueError(
                f"checkpoint {directory} holds K={found_k} members of rank r={found_r}, but this "
                f"ensemble has K={self.num_members}, r={self.r}; build it with num_members={found_k}, "
                f"r={found_r} or use EnsembleLoRA.from_members(model, {str(directory)!r})")
        for k in range(self.num_members):
            state = load_file(str(directory / f"member_{k}" / ADAPTER_WEIGHTS_NAME))
            for name, layer in self.lora_layers.items():
                for part, param in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
                    key = f"base_model.model.{name}.{part}.weight"
                    if key not in state:
                        raise ValueError(f"{directory / f'member_{k}'} has no tensor {key!r}; it was "
                                         f"saved for other target modules")
                    if state[key].shape != param[k].shape:
                        raise ValueError(f"{key} of member {k} has shape {tuple(state[key].shape)}, "
                                         f"expected {tuple(param[k].shape)}")
                    param[k].copy_(state[key])

    @classmethod
    def from_members(cls, model: nn.Module, directory: str | os.PathLike,
                     num_members: int | None = None, r: int | None = None) -> EnsembleLoRA:
        """Build an ensemble on ``model`` from K PEFT adapters in ``directory/member_{k}``.

        Args:
            num_members, r: optional expectations; a clear error if the checkpoint differs.
        """
        directory = Path(directory)
        found_k, found_r = _checkpoint_shape(directory)
        if (num_members is not None and num_members != found_k) or (r is not None and r != found_r):
            raise ValueError(f"checkpoint {directory} holds K={found_k} members of rank r={found_r}, "
                             f"but num_members={num_members}, r={r} were asked for")
        meta_path = directory / ENSEMBLE_CONFIG_NAME
        adapter = json.loads((directory / "member_0" / ADAPTER_CONFIG_NAME).read_text())
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            meta.pop("target_names", None)
        else:
            target = adapter["target_modules"]
            meta = {"num_members": found_k, "r": found_r, "lora_alpha": adapter["lora_alpha"],
                        "lora_dropout": adapter.get("lora_dropout", 0.0),
                        "target_modules": target if isinstance(target, str) else list(target)}
        ensemble = cls(model, **meta)
        ensemble.load_members(directory)
        return ensemble


def _checkpoint_shape(directory: Path) -> tuple[int, int]:
    """(number of member_k directories, LoRA rank) of a saved ensemble."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no ensemble checkpoint at {directory}")
    k = 0
    while (directory / f"member_{k}" / ADAPTER_CONFIG_NAME).exists():
        k += 1
    if k == 0:
        raise FileNotFoundError(f"{directory} has no member_0/{ADAPTER_CONFIG_NAME}; "
                                f"write one with ensemble.save_members(dir)")
    ranks = {json.loads((directory / f"member_{i}" / ADAPTER_CONFIG_NAME).read_text())["r"]
             for i in range(k)}
    if len(ranks) != 1:
        raise ValueError(f"members in {directory} have different ranks {sorted(ranks)}")
    return k, ranks.pop()


def current_umask() -> int:
    """The process umask (read by setting and restoring it; Python has no plain getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions the umask allows.

    ``mkstemp``/``mkdtemp`` create 0600/0700 and safetensors >= 0.8 writes 0600, so without this a
    shared ``MANYMINDS_HOME`` or a service account could not read what another user wrote.
    Files get ``0o666 & ~umask``, folders ``0o777 & ~umask``; symlinks are left alone.
    """
    umask = current_umask()
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        path.chmod(0o666 & ~umask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (with the umask's
    permissions, not mkstemp's 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    _atomic_write(path, write)
