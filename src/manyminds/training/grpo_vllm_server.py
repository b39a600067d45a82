"""Population GRPO on a remote vLLM engine (TRL's server mode), one mind per rollout row.

Start the engine with ``manyminds vllm-serve --model MODEL`` (:mod:`manyminds.vllm.serve`: TRL's
server plus the mind extension), then train with ``PopulationGRPOConfig(use_vllm=True,
vllm_mode="server", vllm_server_host=..., vllm_server_port=...)``.
:class:`~manyminds.training.grpo.PopulationGRPOTrainer` calls three hooks of this module:

- :func:`check_server_config` (from ``PopulationGRPOConfig.__post_init__``): one-line errors;
- :func:`mind_client_for_trl` (around ``trl.GRPOTrainer.__init__``): the ``VLLMClient`` TRL builds is a
  :class:`~manyminds.vllm.client.MindVLLMClient`, which fails within seconds when no server answers
  or when the server has no mind extension, and syncs weights over HTTP where NCCL is missing (CPUs);
- :func:`attach_server` (after it): TRL's ``VLLMGeneration.generate`` first gathers every process'
  rollout mind ids (``trainer._rollout_mind_ids``, assigned exactly as for colocated or Hugging Face
  rollouts), then asks for its ``n`` completions per prompt with one mind per completion.

Everything else is TRL's: the main process sends the prompts and broadcasts the completions, the
mind ids travel with the rows (``mind_ids`` in the batch), and TRL's importance-sampling correction
reads the log-probs the server returns under each row's mind (see :mod:`manyminds.training.grpo_vllm`).
"""

from __future__ import annotations

import unittest.mock

__all__ = ["attach_server", "check_server_config", "mind_client_for_trl"]


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


def attach_server(trainer) -> None:
    """Send each rollout row's mind with ``trainer``'s server-mode vLLM requests (idempotent).

    Raises:
        RuntimeError: TRL's client is not a ``MindVLLMClient`` (the trainer was built outside
            :func:`mind_client_for_trl`).
    """
    from accelerate.utils import gather_object

    from manyminds.vllm.client import MindVLLMClient

    generation = trainer.vllm_generation
    if getattr(generation, "_manyminds_server", False):
        return
    if generation.mode != "server":
        raise ValueError(f"attach_server is for vllm_mode='server', the trainer runs {generation.mode!r}")
    is_main = trainer.accelerator.is_main_process
    if is_main and not isinstance(getattr(generation, "vllm_client", None), MindVLLMClient):
        raise RuntimeError("population GRPO in server mode needs manyminds' client: build the trainer inside "
                           "manyminds.training.grpo_vllm_server.mind_client_for_trl()")
    original = generation.generate
    checked = False

    def generate(prompts, images, num_generations, profiler=None):
        nonlocal checked
        ids = trainer._rollout_mind_ids
        if ids is None or ids.numel() != len(prompts):
            raise RuntimeError(f"population GRPO: {0 if ids is None else ids.numel()} mind ids for "
                               f"{len(prompts)} vLLM rollout rows")
        # Every process' rows in process order, as TRL gathers the prompts (a collective: all processes call it).
        all_ids = gather_object(ids.tolist())
        if not is_main:
            return original(prompts, images, num_generations, profiler)
        population = trainer.population
        specs = [None if m == -1 else population.spec(m) for m in all_ids]
        client = generation.vllm_client
        if not checked and any(s is not None for s in specs):
            from manyminds.vllm.engine import _check_spec

            _check_spec(next(s for s in specs if s is not None), client.layout)  # a model mismatch, before sending
            checked = True
        with client.row_minds(specs):
            return original(prompts, images, num_generations, profiler)

    generation.generate = generate
    generation._manyminds_server = True
