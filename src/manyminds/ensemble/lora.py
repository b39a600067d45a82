"""K LoRA members on one frozen base: batched K-member layers, routing contexts, PEFT interop.

Every target module ``y = W x (+ b)`` (``nn.Linear`` or transformers' GPT-2 ``Conv1D``) gets K
low-rank updates, stacked per module:

    y_k = W x + (lora_alpha / r) * B_k A_k dropout(x),   A: [K, r, in],  B: [K, out, r].

The update is added by a forward hook on the target module, so the model's own module tree and
state dict stay untouched (the hooks are removed by :meth:`EnsembleLoRA.unload`). Three routing
modes, switched with context managers that restore the previous mode in ``finally``:

- default (all members): the batch is the input repeated K times, member-major: rows
  ``[k*B, (k+1)*B)`` run member ``k``. One pair of ``torch.bmm`` per module computes all members.
- ``with ensemble.members(ids)``: row ``b`` runs member ``ids[b]`` (``-1`` = base), for inference;
  per-row A/B are gathered and applied with ``bmm``. Same id semantics as ``Population.minds``.
- ``with ensemble.disabled()``: the exact base model (the DPO reference).

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

from manyminds.population.population import check_mind_ids

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
    """(in_features, out_features, fan_in_fan_out) of a Linear or GPT-2 Conv1D (weight [in, out])."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
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
    """Settings of an :class:`EnsembleLoRA` (option names as in PEFT's ``LoraConfig``)."""

    num_members: int = field(default=8, metadata={"help": "K, the number of LoRA members (>= 1)."})
    r: int = field(default=8, metadata={"help": "LoRA rank of every member (>= 1)."})
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: scale = lora_alpha / r."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: str | list[str] | None = field(
        default=None, metadata={"help": "Module names (suffix match) or a regex; None = PEFT's default "
                                        "for the architecture (e.g. q_proj,v_proj; c_attn for GPT-2)."})
    init: str = field(default="peft", metadata={
        "help": "'peft': B = 0 (every member starts as the base), A kaiming-uniform per member; "
                "'diverse': B ~ N(0, init_std^2) too, so members differ from the first step."})
    init_std: float = field(default=1e-2, metadata={"help": "Std of B when init='diverse'."})
    seed: int = field(default=0, metadata={"help": "Seed of the initialization (pure function of seed, "
                                                    "module index, member)."})

    def __post_init__(self):
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


class EnsembleLoRALayer(nn.Module):
    """The K members' LoRA factors of one target module.

    Attributes:
        lora_A: ``[K, r, in]`` (PEFT's ``lora_A.weight`` of member k is ``lora_A[k]``).
        lora_B: ``[K, out, r]`` (PEFT's ``lora_B.weight`` of member k is ``lora_B[k]``).
        scaling: ``lora_alpha / r``.
    """

    def __init__(self, in_features: int, out_features: int, num_members: int, r: int,
                 lora_alpha: float, lora_dropout: float, fan_in_fan_out: bool,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.num_members, self.r = num_members, r
        self.scaling = lora_alpha / r
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_A = nn.Parameter(torch.zeros(num_members, r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(num_members, out_features, r, dtype=dtype, device=device))
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

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

    def delta_all(self, x: torch.Tensor) -> torch.Tensor:
        """All members on a member-major batch: ``x [K*B, ..., in] -> [K*B, ..., out]``."""
        K = self.num_members
        if x.shape[0] % K:
            raise ValueError(
                f"EnsembleLoRA got a batch of {x.shape[0]} rows, not K*B member-major rows for "
                f"K={K}; repeat the batch with ensemble.repeat_batch(...), or pick members per row "
                f"with `with ensemble.members(ids):`, or use `with ensemble.disabled():`")
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
        if rows % ids.shape[0]:
            raise ValueError(f"ensemble.members(ids) got {ids.shape[0]} ids for a batch of {rows} rows; "
                             f"pass exactly one id per row (-1 = base)")
        if rows != ids.shape[0]:
            ids = ids.repeat_interleave(rows // ids.shape[0])
        ids = ids.to(x.device)
        keep = (ids >= 0).to(self.lora_A.dtype)                 # [N]
        sel = ids.clamp(min=0)
        A = self.lora_A[sel]                                    # [N, r, in]
        B = self.lora_B[sel] * (keep * self.scaling)[:, None, None]  # [N, out, r]
        xs = self.dropout(x.to(self.lora_A.dtype)).reshape(rows, -1, self.in_features)  # [N, T, in]
        d = torch.bmm(torch.bmm(xs, A.transpose(1, 2)), B.transpose(1, 2))  # [N, T, out]
        return d.reshape(*x.shape[:-1], self.out_features)


def check_member_ids(ids, num_members: int) -> torch.Tensor:
    """Validate member ids -> a CPU ``LongTensor [B]`` with values in ``[-1, K-1]`` (``-1`` = base).

    The checks of :func:`manyminds.population.population.check_mind_ids` plus the bound K - 1.
    """
    out = check_mind_ids(ids, what="member")
    if bool((out >= num_members).any()):
        raise ValueError(f"member ids must be in [-1, {num_members - 1}] (-1 = base), got {out.tolist()}")
    return out


class _Routing:
    """Shared routing state read by every layer hook: ``"all"``, ``"disabled"`` or a LongTensor of ids."""

    def __init__(self):
        self.mode: str | torch.Tensor = "all"


class EnsembleLoRA(nn.Module):
    """K LoRA members on one frozen causal LM.

    The model is modified in place: its parameters are frozen and a forward hook is registered on
    every target module. ``unload()`` removes the hooks and returns the base model.

    Args:
        model: any transformers causal LM.
        num_members: K >= 1.
        r: LoRA rank >= 1 (default 8).
        lora_alpha: scale numerator, scale = lora_alpha / r (default 16).
        lora_dropout: dropout on the LoRA input (default 0).
        target_modules: names (suffix match) or a regex; None = PEFT's default for the architecture.
        init: ``"peft"`` (B = 0: every member starts as the base) or ``"diverse"``.
        init_std: std of B for ``init="diverse"``.
        seed: initialization seed.

    Example:
        >>> ens = EnsembleLoRA(model, num_members=4)
        >>> out = ens(**ens.repeat_batch(batch))         # logits [4*B, T, V], member-major
        >>> with ens.members(torch.tensor([0, 3, -1])):  # per-row members, -1 = base
        ...     out = model.generate(...)
    """

    def __init__(self, model: nn.Module, num_members: int = 8, r: int = 8, lora_alpha: float = 16,
                 lora_dropout: float = 0.0, target_modules: str | Sequence[str] | None = None,
                 init: str = "peft", init_std: float = 1e-2, seed: int = 0):
        super().__init__()
        if isinstance(target_modules, tuple):
            target_modules = list(target_modules)
        self.ensemble_config = EnsembleLoRAConfig(num_members=num_members, r=r, lora_alpha=lora_alpha,
                                         lora_dropout=lora_dropout, target_modules=target_modules,
                                         init=init, init_std=init_std, seed=seed)
        if self.ensemble_config.target_modules is None:
            self.ensemble_config.target_modules = default_target_modules(model)
        self.model = model
        self.target_names = match_target_modules(model, self.ensemble_config.target_modules)
        self._routing = _Routing()
        self._handles: list = []
        self.layers = nn.ModuleDict()
        for p in model.parameters():
            p.requires_grad_(False)
        modules = dict(model.named_modules())
        try:
            for index, name in enumerate(self.target_names):
                module = modules[name]
                fan_in, fan_out, fan_in_fan_out = _in_out_features(module)
                weight = module.weight
                # like PEFT's autocast_adapter_dtype: half-precision bases get float32 adapters
                dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
                layer = EnsembleLoRALayer(fan_in, fan_out, num_members, r, lora_alpha, lora_dropout,
                                          fan_in_fan_out, dtype, weight.device)
                layer.reset_parameters(seed, index, init, init_std)
                self.layers[self._key(name)] = layer
                self._handles.append(module.register_forward_hook(self._make_hook(layer)))
        except BaseException:
            self._remove_hooks()
            raise

    # ------------------------------------------------------------------ basics
    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _make_hook(self, layer: EnsembleLoRALayer):
        routing = self._routing

        def hook(module, args, output):
            mode = routing.mode
            if isinstance(mode, str) and mode == "disabled":
                return output
            x = args[0]
            delta = layer.delta_all(x) if isinstance(mode, str) else layer.delta_rows(x, mode)
            return output + delta.to(output.dtype)

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def unload(self) -> nn.Module:
        """Remove the hooks and return the base model (its parameters stay frozen)."""
        self._remove_hooks()
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

    def forward(self, *args, **kwargs):
        """The wrapped model's forward, in the current routing mode (default: member-major K*B rows)."""
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Checkpoint the base model's layers (the Trainer calls this for ``gradient_checkpointing=True``).

        The base is frozen, so the embeddings' outputs are made to require grad: otherwise a
        reentrant checkpoint would see no input that needs a gradient and drop the LoRA grads.
        """
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)
        self.model.enable_input_require_grads()

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing_disable()

    def lora_parameters(self) -> Iterator[nn.Parameter]:
        """The trainable LoRA tensors (A and B of every target module, all members)."""
        for layer in self.layers.values():
            yield layer.lora_A
            yield layer.lora_B

    def member_state_dict(self, member: int) -> dict[str, torch.Tensor]:
        """Member ``member``'s adapter with PEFT's key names (``base_model.model.<module>.lora_A.weight``)."""
        if not 0 <= member < self.num_members:
            raise ValueError(f"member must be in [0, {self.num_members - 1}], got {member}")
        out = {}
        for name in self.target_names:
            layer = self.layers[self._key(name)]
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
    def disabled(self):
        """The exact base model inside the context (no member's update is added)."""
        previous = self._routing.mode
        self._routing.mode = "disabled"
        try:
            yield self
        finally:
            self._routing.mode = previous

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
        previous = self._routing.mode
        self._routing.mode = ids
        try:
            yield self
        finally:
            self._routing.mode = previous

    # ------------------------------------------------------------------ PEFT interop
    def _peft_config(self):
        from peft import LoraConfig

        name_or_path = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        fan_in_fan_out = any(layer.fan_in_fan_out for layer in self.layers.values())
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
        meta = asdict(self.ensemble_config)
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
            for name in self.target_names:
                layer = self.layers[self._key(name)]
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


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
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
