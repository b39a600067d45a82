"""Installing worker-side code right after vLLM loads a model (runs inside vLLM's worker process).

vLLM mixes a ``worker_extension_cls`` into its worker class but gives it no hook at model load.
:func:`after_load_model` wraps the model runners' ``load_model`` (GPU and CPU runners of vLLM 0.32)
so that ``install(runner)`` runs right after the weights are loaded, before vLLM compiles or warms
the model up, and only on engines whose extension class derives from ``base``: other engines of the
same process stay untouched.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable


def uses_extension(vllm_config, base: type) -> bool:
    """Whether the engine of ``vllm_config`` was built with a ``worker_extension_cls`` that is ``base`` or
    derives from it."""
    name = getattr(vllm_config.parallel_config, "worker_extension_cls", "") or ""
    if not name:
        return False
    if name == f"{base.__module__}.{base.__qualname__}":
        return True
    module, _, qualname = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), qualname)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, base)


def after_load_model(marker: str, base: type, install: Callable) -> None:
    """Wrap the model runners' ``load_model`` (idempotent per ``marker``) to call ``install(runner)`` after it
    on engines that use an extension derived from ``base``."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from manyminds.upstream import check_overrides

    check_overrides("vllm")  # load_model and _model_forward, patched by the extensions

    runners = [GPUModelRunner]
    try:
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # a GPU build without the CPU runner
        CPUModelRunner = None
    if CPUModelRunner is not None:
        runners.append(CPUModelRunner)
    for cls in runners:
        if "load_model" not in vars(cls) or getattr(cls.load_model, marker, False):
            continue
        original = cls.load_model

        @functools.wraps(original)
        def load_model(self, *args, _original=original, **kwargs):
            result = _original(self, *args, **kwargs)
            if uses_extension(self.vllm_config, base):
                install(self)
            return result

        setattr(load_model, marker, True)
        cls.load_model = load_model
