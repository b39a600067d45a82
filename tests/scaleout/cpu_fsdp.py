"""Let accelerate run its FSDP path on CPU processes (gloo), for the scale-out tests.

accelerate (1.15) enables FSDP only for accelerator device types (CUDA, XPU, NPU, ...):

- with ``ACCELERATE_USE_CPU=1``, ``accelerate launch --use_fsdp`` silently trains with DDP
  (``DistributedType.MULTI_CPU``, the model wrapped in ``DistributedDataParallel``);
- without it, on a machine with no GPU, every process trains alone (``DistributedType.NO``);
- FSDP1's plugin with ``sync_module_states=True`` (the launcher's default) raises
  ``RuntimeError: There are currently no available devices found``.

torch's FSDP1 and FSDP2 (``fully_shard``) themselves run on CPU with gloo. :func:`enable` makes
accelerate take its multi-device path with backend ``gloo`` and device ``cpu`` (via
``ACCELERATE_TORCH_DEVICE``), so that transformers/TRL trainers shard the model for real: FSDP2
parameters become ``DTensor`` shards, FSDP1 ones flat-parameter shards. Everything above
accelerate's device choice (wrapping, all-gathers, reduce-scatters, state dicts) is the code a
GPU run executes. Launch with ``--fsdp_sync_module_states false --fsdp_cpu_ram_efficient_loading
false`` (those need a GPU to materialize weights on).

The same patch lets ``--use_deepspeed`` (ZeRO-3, ``DS_ACCELERATOR=cpu``) run 2 CPU processes:
without it accelerate computes ``num_processes == 1`` for a CPU DeepSpeed launch.
"""

from __future__ import annotations

import os

__all__ = ["enable"]


def enable() -> None:
    """Patch ``PartialState._prepare_backend`` so a torchrun-launched CPU process reports a
    multi-device run over gloo. Call before any ``Accelerator`` / ``PartialState`` is built."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    if getattr(PartialState._prepare_backend, "_cpu_fsdp", False):
        return
    if os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes"):
        raise RuntimeError("cpu_fsdp.enable() needs ACCELERATE_USE_CPU unset (it selects the DDP-only CPU path)")
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"
    original = PartialState._prepare_backend

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if "LOCAL_RANK" in os.environ:  # started by torchrun
            return "gloo", DistributedType.MULTI_GPU  # device stays cpu: ACCELERATE_TORCH_DEVICE
        return original(self, cpu, sagemaker_dp, backend)

    _prepare_backend._cpu_fsdp = True
    PartialState._prepare_backend = _prepare_backend
