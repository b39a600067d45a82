"""The worker side of ``manyminds.vllm``: a different population mind per request inside vLLM.

This module runs inside vLLM's worker process. vLLM imports it when the engine is built with
``LLM(..., worker_extension_cls="manyminds.vllm.worker.MindWorkerExtension")`` (what
:func:`manyminds.vllm.make_llm` does); importing it

1. registers the opaque op ``torch.ops.manyminds.mind_offset(x, key)`` (with a fake
   implementation, so ``torch.compile`` traces it as one node and never looks inside), and
2. wraps the model runner's ``load_model``: right after the weights are loaded, and before vLLM
   compiles or warms the model up, every candidate norm of the model (found by the same
   :func:`~manyminds.population.norms.find_norm_layers` as on the Hugging Face model, so the
   stable layer ``key`` that seeds the noise is the same) gets a ``forward`` that passes its
   output through the op, and the runner's ``_model_forward`` is wrapped to say, before each
   forward, which table row every token reads.

Per forward step, with ``T`` tokens (all requests' scheduled tokens, concatenated, plus padding):

    y_t = Norm(x_t) * mul[key][slot_t] + add[key][slot_t]

where ``slot_t`` is the table row of the request that token ``t`` belongs to. Row 0 is the plain
model (``mul = 1``, ``add = 0``: exactly ``Norm(x)``); a request whose
``SamplingParams.extra_args["manyminds_mind"]`` holds a :class:`~manyminds.population.MindSpec`
gets its own row, filled once when the request first shows up: for additive noise
``add = z``, for multiplicative noise ``mul = 1 + z``, with
``z = mind_noise_table(seed, [mind], key, width, sigma_l)`` (the Hugging Face path's own pure
function, cast to the model's dtype), and ``mul = 1, add = 0`` on the norms the spec does not
select. So mind ``m`` is the same mind here and in ``Population.minds([m])``.

The tables (``[R, W]`` per norm, ``R = max_num_seqs + 1``) and the token->row index
(``[max_num_batched_tokens]``) are allocated once and updated in place, so the op reads fixed
buffers: the same code runs in eager mode, under ``torch.compile`` and in captured CUDA graphs.

No request can stop the engine: a spec is checked (:func:`~manyminds.vllm.admission.check_spec`, the
client's check) before the request's first forward, outside the op. Where the scheduler shares this
process, it has already failed a bad spec's request alone and salted every mind
(:mod:`manyminds.vllm._guard`, installed by importing this module); elsewhere a request whose spec
fails the check runs on row 0, the plain model, and is logged and counted
(``manyminds_stats()["refused"]``), since vLLM 0.32 gives a worker no way to fail one request.
"""

from __future__ import annotations

import functools
import logging
import types
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from manyminds.population.noise import mind_noise_table
from manyminds.population.norms import find_norm_layers, hidden_size_of
from manyminds.population.spec import MindSpec

from ._guard import guard_scheduler, register_layout
from ._protocol import EXTRA_ARGS_KEY, QK_NORMS_CONFIG
from ._runner import after_load_model
from .admission import check_spec
from .weight_sync import RepackAwareWeightLoading

__all__ = ["EXTRA_ARGS_KEY", "MindWorkerExtension", "engine_layout"]


logger = logging.getLogger("manyminds.vllm")

_SELECTIONS = (("all", False), ("blocks", False), ("final", False), ("all", True), ("blocks", True),
               ("final", True))


@dataclass
class _MindTables:
    """Per-engine state of the worker (one engine per worker process)."""

    modules: dict[int, torch.nn.Module]              # norm key -> patched module
    widths: dict[int, int]                          # norm key -> output width
    names: dict[int, str]                           # norm key -> module path in vLLM's model
    selections: dict[tuple[str, bool], list[int]]   # (norms, include_qk_norms) -> selected keys, in order
    hidden_size: int
    model_name: str
    dtype: torch.dtype
    device: torch.device
    rows: int                                       # R: table rows (row 0 = plain model)
    add: dict[int, torch.Tensor] = field(default_factory=dict)  # key -> [R, W]
    mul: dict[int, torch.Tensor] = field(default_factory=dict)  # key -> [R, W]
    slot_of_token: torch.Tensor | None = None      # [max_tokens] long, row per token (0 = plain)
    slots: OrderedDict = field(default_factory=OrderedDict)  # spec key -> row, least recently used first
    steps: int = 0
    mind_steps: int = 0
    refused: int = 0                                # requests whose spec failed the check (run plain)
    _layout: dict | None = None

    def layout(self) -> dict:
        """What :func:`~manyminds.vllm.admission.check_spec` needs: per selection, the number of norms,
        and their width (built once)."""
        if self._layout is None:
            self._layout = self._build_layout()
        return self._layout

    def _build_layout(self) -> dict:
        return {"model": self.model_name, "hidden_size": self.hidden_size, "rows": self.rows,
                "selections": {f"{norms}{'+qk' if qk else ''}": {"num_layers": len(keys),
                                                                   "keys": list(keys)}
                               for (norms, qk), keys in self.selections.items()},
                "names": dict(self.names)}


# Op id -> (engine state, norm key). One id per patched norm of every engine in this process, so that
# several in-process engines (tests, a trainer's colocated engine) never read each other's tables.
_NORMS: dict[int, tuple[_MindTables, int]] = {}


# ---------------------------------------------------------------------- the opaque op

@torch.library.custom_op("manyminds::mind_offset", mutates_args=())
def mind_offset(x: torch.Tensor, norm_id: int) -> torch.Tensor:
    """``x * mul[key][slot_t] + add[key][slot_t]`` per token row ``t`` of ``x`` ``[T, ..., W]``."""
    state, key = _NORMS[norm_id]
    slots = state.slot_of_token[: x.shape[0]]                  # [T]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    mul = state.mul[key].index_select(0, slots).view(shape)     # [T, 1.., W]
    add = state.add[key].index_select(0, slots).view(shape)
    return x * mul + add


@mind_offset.register_fake
def _(x: torch.Tensor, norm_id: int) -> torch.Tensor:
    return torch.empty_like(x)


def _norm_forward(self, *args, **kwargs):
    """A perturbed norm's forward: the original forward, then the op on its (first) output."""
    out = self._manyminds_forward(*args, **kwargs)
    if isinstance(out, tuple):  # vLLM's fused residual norms return (normed, residual)
        return (torch.ops.manyminds.mind_offset(out[0], self._manyminds_norm_id), *out[1:])
    return torch.ops.manyminds.mind_offset(out, self._manyminds_norm_id)


# ---------------------------------------------------------------------- installation

def _selections(model: torch.nn.Module, qk_norms: bool = True) -> dict[tuple[str, bool], list]:
    out = {}
    for norms, qk in _SELECTIONS:
        if qk and not qk_norms:
            continue
        try:
            out[(norms, qk)] = find_norm_layers(model, norms=norms, include_qk_norms=qk)
        except ValueError:  # e.g. post-norm blocks: only norms="final" is defined
            continue
    if not out:
        raise ValueError(f"manyminds: {type(model).__name__} has no normalization layer of the hidden width; "
                         "population minds are not defined on it")
    return out


def install(runner) -> _MindTables:
    """Patch the runner's model and ``_model_forward`` (idempotent). Called right after ``load_model``."""
    if getattr(runner, "_manyminds_state", None) is not None:
        return runner._manyminds_state
    model = runner.get_model()
    extra = getattr(runner.vllm_config, "additional_config", None) or {}
    found = _selections(model, qk_norms=bool(extra.get(QK_NORMS_CONFIG, False)))
    modules, widths, names = {}, {}, {}
    for layers in found.values():
        for layer in layers:
            modules[layer.key] = layer.module
            widths[layer.key] = layer.width
            names[layer.key] = layer.name
    dtype = runner.model_config.dtype
    device = runner.device
    rows = int(runner.scheduler_config.max_num_seqs) + 1
    max_tokens = int(max(runner.scheduler_config.max_num_batched_tokens, runner.max_num_tokens))
    state = _MindTables(modules=modules, widths=widths, names=names,
                        selections={sel: [layer.key for layer in layers] for sel, layers in found.items()},
                        hidden_size=hidden_size_of(model), model_name=type(model).__name__, dtype=dtype,
                        device=device, rows=rows)
    for key, width in widths.items():
        state.add[key] = torch.zeros(rows, width, dtype=dtype, device=device)  # [R, W]
        state.mul[key] = torch.ones(rows, width, dtype=dtype, device=device)   # [R, W]
    # +64: room for padding rows some backends add past max_num_batched_tokens
    state.slot_of_token = torch.zeros(max_tokens + 64, dtype=torch.long, device=device)
    for key, module in modules.items():
        module._manyminds_norm_id = len(_NORMS)
        _NORMS[len(_NORMS)] = (state, key)
        module._manyminds_forward = module.forward
        module.forward = types.MethodType(_norm_forward, module)
    original = runner._model_forward

    @functools.wraps(original)
    def _model_forward(*args, **kwargs):
        _route_tokens(runner, state)
        return original(*args, **kwargs)

    runner._model_forward = _model_forward
    runner._manyminds_state = state
    register_layout(runner.vllm_config, state.layout())  # for the scheduler, where it runs in this process
    return state


# ---------------------------------------------------------------------- per step

def _spec_key(spec: MindSpec) -> tuple:
    return (spec.seed, spec.mind, spec.sigma, spec.norms, spec.noise, spec.include_qk_norms)


def request_spec(req_id: str, params, state: _MindTables) -> MindSpec | None:
    """The mind a request runs (``None``: the plain model). Never raises: a spec that fails
    :func:`~manyminds.vllm.admission.check_spec` is logged and counted, and the request runs plain."""
    raw = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY)
    if raw is None:
        return None
    try:
        spec = check_spec(raw, state.layout())
    except Exception as err:  # noqa: BLE001 - whatever a client sent, the forward of every other request goes on
        state.refused += 1
        logger.error("manyminds: request %s runs as the plain model: bad mind spec in SamplingParams.extra_args"
                     "[%r]: %s; build requests with manyminds.vllm.mind_requests, or serve with make_llm or "
                     "manyminds vllm-serve, which refuse them", req_id, EXTRA_ARGS_KEY, " ".join(str(err).split()))
        return None
    return None if spec.is_plain else spec


def _fill_row(state: _MindTables, row: int, spec: MindSpec) -> None:
    """Write ``spec``'s offsets into table row ``row`` of every norm (plain on unselected norms)."""
    keys = state.selections[(spec.norms, spec.include_qk_norms)]
    sigmas = spec.layer_sigmas(len(keys))
    for key in state.add:
        state.add[key][row].zero_()
        state.mul[key][row].fill_(1.0)
    for key, sigma in zip(keys, sigmas):
        z = mind_noise_table(spec.seed, [spec.mind], key, state.widths[key], sigma, state.device, state.dtype)[0]
        if spec.noise == "additive":
            state.add[key][row].copy_(z)
        else:  # multiplicative: y * (1 + z), with 1 + z rounded in the model's dtype as on the HF path
            state.mul[key][row].copy_(1.0 + z)


def _slot_for(state: _MindTables, spec: MindSpec, in_use: set[int]) -> int:
    key = _spec_key(spec)
    row = state.slots.get(key)
    if row is not None:
        state.slots.move_to_end(key)
        return row
    if len(state.slots) < state.rows - 1:
        row = len(state.slots) + 1
    else:  # evict the least recently used row that no request of this step reads
        victim = next(k for k, r in state.slots.items() if r not in in_use)
        row = state.slots.pop(victim)
    _fill_row(state, row, spec)
    state.slots[key] = row
    return row


def _route_tokens(runner, state: _MindTables) -> None:
    """Fill ``slot_of_token[:T]`` for the step about to run (padding tokens read the plain row 0)."""
    state.steps += 1
    batch = runner.input_batch
    n = batch.num_reqs
    slots = state.slot_of_token
    if n == 0:
        slots.zero_()
        return
    req_rows = []
    in_use: set[int] = set()
    for req_id in batch.req_ids[:n]:
        request = runner.requests[req_id]
        cached = getattr(request, "_manyminds_spec", False)
        if cached is False:
            cached = request_spec(req_id, request.sampling_params, state)
            request._manyminds_spec = cached
        row = 0 if cached is None else _slot_for(state, cached, in_use)
        in_use.add(row)
        req_rows.append(row)
    if not any(req_rows):
        slots.zero_()
        return
    state.mind_steps += 1
    starts = runner.query_start_loc.cpu[: n + 1]
    counts = (starts[1:] - starts[:-1]).to(torch.long)                           # [n] tokens per request
    per_token = torch.repeat_interleave(torch.tensor(req_rows, dtype=torch.long), counts)  # [T_real]
    total = per_token.numel()
    slots[:total].copy_(per_token, non_blocking=True)
    slots[total:].zero_()


# ---------------------------------------------------------------------- the extension

class MindWorkerExtension(RepackAwareWeightLoading):
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls=...)``); methods reached by
    ``llm.collective_rpc(name)``. Weight sync into layers vLLM repacked comes from
    :class:`~manyminds.vllm.weight_sync.RepackAwareWeightLoading`."""

    def _manyminds_state(self) -> _MindTables:
        state = getattr(self.model_runner, "_manyminds_state", None)
        if state is None:
            raise RuntimeError("manyminds: the model was loaded without the mind extension's hooks; build the "
                               "engine with manyminds.vllm.make_llm(...)")
        return state

    def manyminds_layout(self) -> dict:
        """The engine's perturbable norms: ``{"model", "hidden_size", "rows", "selections", "names"}``."""
        return self._manyminds_state().layout()

    def manyminds_stats(self) -> dict:
        """Forward steps so far, how many of them ran at least one mind, the minds in the tables, and the
        requests whose bad spec reached this worker (run as the plain model)."""
        state = self._manyminds_state()
        return {"steps": state.steps, "mind_steps": state.mind_steps, "cached_minds": len(state.slots),
                "refused": state.refused}


def engine_layout(model: torch.nn.Module) -> dict:
    """``{(norms, include_qk_norms): [keys]}`` of a model, as the worker sees it (for tests)."""
    return {sel: [layer.key for layer in layers] for sel, layers in _selections(model).items()}


after_load_model("_manyminds_wrapped", MindWorkerExtension, install)
guard_scheduler(MindWorkerExtension)
