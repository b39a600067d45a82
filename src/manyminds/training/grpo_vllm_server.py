"""Population GRPO on a remote vLLM engine (TRL's server mode), one mind per rollout row.

Start the engine with ``manyminds vllm-serve --model MODEL`` (:mod:`manyminds.vllm.serve`: TRL's
server plus the mind extension), then train with ``PopulationGRPOConfig(use_vllm=True,
vllm_mode="server", vllm_server_host=..., vllm_server_port=...)``.
:class:`~manyminds.training.grpo.PopulationGRPOTrainer` calls three hooks of this module:

- :func:`check_server_config` (from ``PopulationGRPOConfig.__post_init__``): one-line errors;
- :func:`mind_client_for_trl` (around ``trl.GRPOTrainer.__init__``): the ``VLLMClient`` TRL builds is a
  :class:`~manyminds.vllm.client.MindVLLMClient`, which fails within seconds when no server answers
  or when the server has no mind extension, and syncs weights over HTTP where NCCL is missing (CPUs);
- :func:`attach_server` (after it): a :class:`ServerMinds` whose ``minds(specs)`` the trainer enters
  around TRL's generation of each rollout call: it gathers every process' specs (assigned exactly as
  for colocated or Hugging Face rollouts), and TRL's ``n`` completions per prompt are then asked for
  with one mind per completion.

Everything else is TRL's: the main process sends the prompts and broadcasts the completions, the
mind ids travel with the rows (``mind_ids`` in the batch), and TRL's importance-sampling correction
reads the log-probs the server returns under each row's mind (see :mod:`manyminds.training.grpo_vllm`).
"""

from __future__ import annotations

import contextlib
import unittest.mock
from collections.abc import Sequence

__all__ = ["ServerMinds", "attach_server", "check_server_config", "mind_client_for_trl"]


def check_server_config(args) -> None:
    """Checks of ``use_vllm=True, vllm_mode="server"``; one-line ``ValueError`` s."""
    try:
        import requests  # noqa: F401
    except ImportError:
        raise ValueError("vllm_mode='server' needs requests: pip install requests") from None
    if not args.vllm_server_timeout > 0:
        raise ValueError(f"vllm_server_timeout must be > 0 seconds, got {args.vllm_server_timeout}")
    if args.vllm_server_base_url is None and not args.vllm_server_host:
        raise ValueError("say where the server is: vllm_server_host and vllm_server_port, or vllm_server_base_url")
    if args.vllm_tensor_parallel_size != 1:
        raise ValueError("vllm_tensor_parallel_size sets the colocated engine; in server mode start the server with "
                         "`manyminds vllm-serve --tensor-parallel-size N` and leave vllm_tensor_parallel_size=1")


def mind_client_for_trl():
    """A context inside which the ``VLLMClient`` that TRL's server mode builds is a ``MindVLLMClient``."""
    from trl.generation import vllm_generation

    from manyminds.vllm.client import MindVLLMClient

    return unittest.mock.patch.object(vllm_generation, "VLLMClient", MindVLLMClient)


class ServerMinds:
    """The mind context of TRL's server-mode generation (:func:`attach_server` builds it).

    ``with server_minds.minds(specs):`` around TRL's generation of one rollout call: every process
    passes its local rows' specs; the main process sends all of them, in process order as TRL
    gathers the prompts, with its ``n`` completions per prompt, one mind per completion.
    """

    def __init__(self, generation, accelerator):
        from manyminds.vllm.client import MindVLLMClient

        if generation.mode != "server":
            raise ValueError(f"attach_server is for vllm_mode='server', the trainer runs {generation.mode!r}")
        self._is_main = accelerator.is_main_process
        if self._is_main and not isinstance(getattr(generation, "vllm_client", None), MindVLLMClient):
            raise RuntimeError("population GRPO in server mode needs manyminds' client: build the trainer inside "
                               "manyminds.training.grpo_vllm_server.mind_client_for_trl()")
        self._generation = generation
        self._checked = False

    @contextlib.contextmanager
    def minds(self, specs: Sequence):
        """Inside the block, TRL's server requests carry every process' ``specs`` (a collective)."""
        from accelerate.utils import gather_object

        all_specs = gather_object(list(specs))  # every process' rows, in process order (all processes call it)
        if not self._is_main:
            yield
            return
        client = self._generation.vllm_client
        if not self._checked and any(s is not None for s in all_specs):
            from manyminds.vllm.admission import check_spec

            check_spec(next(s for s in all_specs if s is not None), client.layout)  # a model mismatch, before sending
            self._checked = True
        with client.row_minds(all_specs):
            yield


def attach_server(generation, accelerator) -> ServerMinds:
    """The mind context of ``generation`` (TRL's ``trainer.vllm_generation`` in server mode; idempotent).

    Raises:
        RuntimeError: TRL's client is not a ``MindVLLMClient`` (the trainer was built outside
            :func:`mind_client_for_trl`).
    """
    minds = getattr(generation, "_manyminds_server", None)
    if minds is None:
        minds = generation._manyminds_server = ServerMinds(generation, accelerator)
    return minds
