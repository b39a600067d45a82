"""The engine-core half of the mind extension's request guard: a bad mind spec fails its own request,
and a mind request always runs under its own prefix-cache salt, whatever route it came by.

vLLM 0.32 gives a worker no way to fail one request: the runner's output carries tokens, and only the
scheduler finishes a request with an error (a grammar that does not compile, a KV load that fails under
a connector); an exception in the worker's forward stops the engine core and every request in flight.
So the check runs where vLLM can fail one request, in its scheduler, which shares the worker's process
whenever the engine has one worker process (vLLM's ``uni`` executor, its default at tensor and pipeline
parallel size 1, and the ``external_launcher`` one). Importing :mod:`manyminds.vllm.worker` wraps two
methods of ``vllm.v1.core.sched.scheduler.Scheduler`` (checked against vLLM 0.32.0, listed in
:mod:`manyminds.upstream`), for engines whose extension derives from the mind extension only:

- ``add_request(request)``: a new request's spec is checked against the layout the worker registered
  (:func:`register_layout`) with :func:`~manyminds.vllm.admission.check_spec`, the client's check. A bad
  one is finished at once with ``FINISHED_ERROR`` (it never runs, so it writes no KV block), and the
  next ``update_from_output`` answers it ``finish_reason="error"`` with no tokens, while the rest of
  the batch goes on; the reason is logged. A good perturbing mind without its salt
  (:func:`~manyminds.vllm.admission.salt_for`) gets it, and its block hashes are recomputed before it
  is scheduled, so its KV blocks never land under the plain model's hash.
- ``update_from_output(scheduler_output, model_runner_output)``: adds those error outputs.

Where the scheduler runs in another process than the workers (tensor or pipeline parallel with the
``mp`` or ``ray`` executor), no layout is registered in its process and this guard does nothing: the
worker then runs a bad spec as the plain model and logs it (:mod:`manyminds.vllm.worker`), and an
unsalted mind is not salted; :func:`~manyminds.vllm.make_llm` and ``manyminds vllm-serve`` check and
salt every request before it is sent.
"""

from __future__ import annotations

import functools
import logging
import weakref

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.request import RequestStatus

from manyminds.population.spec import MindSpec

from ._protocol import EXTRA_ARGS_KEY
from ._runner import uses_extension
from .admission import check_spec, salt_for

__all__ = ["guard_scheduler", "register_layout"]

logger = logging.getLogger("manyminds.vllm")

# id(vllm_config) -> (weak reference to it, its engine's layout); written by the worker after load_model
_LAYOUTS: dict[int, tuple[weakref.ref, dict]] = {}


def register_layout(vllm_config, layout: dict) -> None:
    """Record the layout of ``vllm_config``'s engine, for its scheduler when it runs in this process."""
    key = id(vllm_config)
    _LAYOUTS[key] = (weakref.ref(vllm_config, lambda _, key=key: _LAYOUTS.pop(key, None)), layout)


def _layout(vllm_config) -> dict | None:
    ref, layout = _LAYOUTS.get(id(vllm_config), (None, None))
    return layout if ref is not None and ref() is vllm_config else None


def _admit(layout: dict, request) -> str | None:
    """Check ``request``'s spec (salting a good perturbing mind in place); the refusal's reason, or ``None``."""
    params = request.sampling_params
    raw = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY)
    if raw is None:
        return None
    try:
        spec: MindSpec = check_spec(raw, layout)
        salt = salt_for(spec, request.cache_salt)
    except Exception as err:  # noqa: BLE001 - whatever a client sent, it must not stop the engine core
        return f"bad mind spec in SamplingParams.extra_args[{EXTRA_ARGS_KEY!r}]: {' '.join(str(err).split())}"
    if salt != request.cache_salt:  # hashed with the old salt when the request was made: hash again
        request.cache_salt = salt
        request.block_hashes.clear()
        request.update_block_hashes()
    return None


def guard_scheduler(base: type) -> None:
    """Wrap ``Scheduler.add_request`` and ``Scheduler.update_from_output`` (idempotent) so that schedulers of
    engines whose extension derives from ``base`` check and salt every new request (see the module)."""
    if getattr(Scheduler.add_request, "_manyminds_guard", False):
        return
    add_request, update_from_output = Scheduler.add_request, Scheduler.update_from_output

    def layout_of(scheduler) -> dict | None:
        layout = getattr(scheduler, "_manyminds_layout", None)
        if layout is None and uses_extension(scheduler.vllm_config, base):
            layout = _layout(scheduler.vllm_config)
            if layout is not None:
                scheduler._manyminds_layout = layout
                scheduler._manyminds_refused = []
        return layout

    @functools.wraps(add_request)
    def guarded_add_request(self, request, *args, **kwargs):
        layout = layout_of(self)
        new = request.request_id not in self.requests  # not the next chunk of a streaming session
        reason = _admit(layout, request) if layout is not None and new else None
        result = add_request(self, request, *args, **kwargs)
        if reason is not None:
            logger.warning("manyminds: request %s failed: %s", request.request_id, reason)
            self.finish_requests(request.request_id, RequestStatus.FINISHED_ERROR)
            self._manyminds_refused.append((request.request_id, request.client_index))
        return result

    @functools.wraps(update_from_output)
    def guarded_update_from_output(self, *args, **kwargs):
        outputs = update_from_output(self, *args, **kwargs)
        refused = getattr(self, "_manyminds_refused", None)
        while refused:
            request_id, client = refused.pop(0)
            answer = EngineCoreOutput(request_id=request_id, new_token_ids=[], finish_reason=FinishReason.ERROR)
            outputs.setdefault(client, EngineCoreOutputs()).outputs.append(answer)
        return outputs

    guarded_add_request._manyminds_guard = True
    Scheduler.add_request = guarded_add_request
    Scheduler.update_from_output = guarded_update_from_output
