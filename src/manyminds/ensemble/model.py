"""K LoRA members on one frozen causal LM: the model that swaps its targets for K-member layers
and routes rows to members.

:class:`EnsembleLoRA` replaces every target module in its parent by an
:class:`~manyminds.ensemble.layer.EnsembleLoRALinear` that wraps it, so ``model.to()``,
``model.state_dict()``, FSDP wrapping and ZeRO-3 gathering see the members with their layers;
:meth:`EnsembleLoRA.unload` puts the original modules back.

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

``ens.save_members(dir)`` writes member ``k`` to ``dir/member_{k}`` as a standard PEFT LoRA adapter;
``EnsembleLoRA.from_members(model, dir)`` loads the K adapters back, checking the folder before it
allocates a member (:mod:`manyminds.ensemble.save_and_load`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from . import save_and_load
from .config import EnsembleLoRAConfig, default_target_modules, match_target_modules
from .layer import (
    NO_ROUTING,
    EnsembleLoRALinear,
    RoutedCheckpoint,
    Routing,
    check_member_ids,
    in_out_features,
)


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
        _check_unwrapped(model)
        if self.ensemble_config.target_modules is None:
            self.ensemble_config.target_modules = default_target_modules(model)
        self.target_names = match_target_modules(model, self.ensemble_config.target_modules)
        self._routing = Routing()
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
            if func is None or (isinstance(func, RoutedCheckpoint) and func.routing is self._routing):
                continue
            self._checkpoint_funcs.setdefault(module, func)
            module._gradient_checkpointing_func = RoutedCheckpoint(func, self._routing)

    def _unwrap_checkpoint_funcs(self) -> None:
        for module, func in self._checkpoint_funcs.items():
            current = module.__dict__.get("_gradient_checkpointing_func")
            if isinstance(current, RoutedCheckpoint) and current.routing is self._routing:
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
            out[save_and_load.member_key(name, "lora_A")] = layer.lora_A[member].detach().contiguous()
            out[save_and_load.member_key(name, "lora_B")] = layer.lora_B[member].detach().contiguous()
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

    # ------------------------------------------------------------------ saving and loading
    def save_members(self, directory: str | os.PathLike) -> list[Path]:
        """Write member k to ``directory/member_{k}`` as a PEFT LoRA adapter, plus
        ``ensemble_config.json`` (see :func:`manyminds.ensemble.save_and_load.save_members`).

        Returns:
            The K member directories.
        """
        return save_and_load.save_members(self, directory)

    def load_members(self, directory: str | os.PathLike) -> None:
        """Load ``directory/member_{k}`` (k < K) into this ensemble's members; all checks run first.

        Raises:
            ValueError: the checkpoint's number of members or rank differs from this ensemble's,
                or a module is missing.
        """
        save_and_load.load_members(self, directory)

    @classmethod
    def from_members(cls, model: nn.Module, directory: str | os.PathLike,
                     num_members: int | None = None, r: int | None = None) -> EnsembleLoRA:
        """Build an ensemble on ``model`` from K PEFT adapters in ``directory/member_{k}``.

        The folder is checked before any member tensor is allocated: ``member_0 .. member_{K-1}``
        complete, one rank, ``ensemble_config.json`` agreeing, and every saved factor's shape
        (read from the safetensors header) matching the module of ``model`` it will wrap.

        Args:
            num_members, r: optional expectations; a one-line error naming the fix if the
                checkpoint differs.

        Raises:
            FileNotFoundError: no saved ensemble in ``directory``.
            ValueError: the folder is inconsistent, or differs from ``num_members``/``r``/``model``.
        """
        meta = save_and_load.read_members_config(directory, num_members, r)
        _check_unwrapped(model)
        targets = meta.get("target_modules") or default_target_modules(model)
        shapes = {}
        for name in match_target_modules(model, targets):
            in_features, out_features, _ = in_out_features(model.get_submodule(name))
            shapes[name] = (meta["r"], in_features, out_features)
        save_and_load.check_member_tensors(directory, meta["num_members"], shapes)
        ensemble = cls(model, **meta)
        ensemble.load_members(directory)
        return ensemble


def _check_unwrapped(model: nn.Module) -> None:
    """Raise if ``model`` already carries the layers of an ensemble."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, EnsembleLoRALinear)]
    if wrapped:
        raise ValueError(f"the model already carries EnsembleLoRA members (e.g. {wrapped[0]!r}); "
                         f"use that ensemble, or call its unload() first")
