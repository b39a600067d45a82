"""The K-member LoRA layer: a target module wrapped with the stacked factors of K members, and the
routing state that chooses which member runs which row.

Every target module ``y = W x (+ b)`` (``nn.Linear`` or transformers' GPT-2 ``Conv1D``) is wrapped by
an :class:`EnsembleLoRALinear` that keeps it as ``base_layer`` (as PEFT's LoRA layers do):

    y_k = W x + (lora_alpha / r) * B_k A_k dropout(x),   A: [K, r, in],  B: [K, out, r].

A forward reads the mode of the :class:`Routing` its ensemble shares with every layer: ``"all"``
(member-major K*B rows, one pair of ``torch.bmm``), a tensor of per-row member ids (``-1`` = base),
``"disabled"`` (the base), or none (the forward raises). :class:`RoutedCheckpoint` replays a
gradient-checkpointed layer in the routing mode of its forward.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from manyminds.rows import check_row_ids, expand_row_ids


def in_out_features(module: nn.Module) -> tuple[int, int, bool]:
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


NO_ROUTING = ("EnsembleLoRA: no routing context: use `with ens.all_members():` for K*B member-major "
              "rows, `with ens.members(ids):` per row, or `with ens.disabled():` for the base")
NO_ROUTING_REPLAY = ("EnsembleLoRA: a gradient-checkpoint replay ran with no routing context: enable "
                     "checkpointing with ens.gradient_checkpointing_enable() (it replays the routing "
                     "of each forward), or call backward() inside the routing context")


def _in_backward() -> bool:
    """True while autograd runs a backward pass (where checkpointed layers are replayed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class Routing:
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


class RoutedCheckpoint:
    """A layer's checkpoint function that replays the layer in the routing mode of its forward.

    ``checkpoint(function, *args)`` recomputes ``function`` during ``backward``, when the routing
    context of the forward has usually exited; the mode is captured at forward time and
    re-entered around every call of ``function`` (the forward and its replay). A class rather
    than a closure, so ``copy.deepcopy`` of a model points the copy at the copy's routing.
    """

    def __init__(self, checkpoint_func, routing: Routing):
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
                 lora_dropout: float = 0.0, routing: Routing | None = None):
        super().__init__()
        in_features, out_features, fan_in_fan_out = in_out_features(base_layer)
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
        self.routing = routing if routing is not None else Routing()

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
