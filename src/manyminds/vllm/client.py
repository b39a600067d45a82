"""The client of ``manyminds vllm-serve``: TRL's ``VLLMClient`` with one mind per prompt.

:class:`MindVLLMClient` is what TRL's server mode talks to when population GRPO runs on a remote
engine (:mod:`manyminds.training.grpo_vllm_server`), and a plain client for your own scripts:

- at start it fails within seconds, with one line that names the fix, when nothing listens at the
  address, and when the server there is not ``manyminds vllm-serve`` (a plain ``trl vllm-serve`` has
  no mind extension);
- ``generate(..., mind_specs=[...])`` sends one :class:`~manyminds.population.MindSpec` (or ``None``)
  per prompt, or per completion; the server checks and salts them (:mod:`manyminds.vllm.serve`);
- weights: TRL's NCCL path where the trainer is on a GPU and the server offers it; otherwise the
  named tensors are posted as one safetensors file per sync (``weight_update()`` sessions included),
  which the server loads with vLLM's ``reload_weights`` (works on CPUs, and across machines without
  NCCL).

Example:
    >>> client = MindVLLMClient(base_url="http://10.0.0.5:8000")
    >>> pop = Population(model, sigma=0.02, seed=0)
    >>> out = client.generate([[1, 2, 3]] * 4, mind_specs=[None, pop.spec(0), pop.spec(1), pop.spec(2)],
    ...                       max_tokens=32, temperature=0.7)
    >>> out["completion_ids"]      # one list of token ids per completion
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence

import torch
from trl.generation.vllm_client import VLLMClient

from manyminds.population.spec import MindSpec
from manyminds.rows import repeat_prompts

from .serve import GENERATE_ROUTE, LAYOUT_ROUTE, LOAD_WEIGHTS_ROUTE

__all__ = ["MindVLLMClient", "ServerError"]

logger = logging.getLogger(__name__)

SERVE_COMMAND = "manyminds vllm-serve --model MODEL --host HOST --port PORT"
# Nothing listening: the connection is refused (or never answered) and the client gives up after _UNREACHABLE_S.
# A vLLM server that is still loading its model has bound its port already: it accepts the connection and answers
# later, so that case is waited for (connection_timeout, TRL's vllm_server_timeout).
_UNREACHABLE_S = 3.0
_PROBE_TIMEOUT_S = 5.0


class ServerError(RuntimeError):
    """The server refused or failed a request; the message is the server's one line."""


def _spec_dict(spec) -> dict | None:
    if spec is None:
        return None
    if isinstance(spec, MindSpec):
        return spec.to_dict()
    if isinstance(spec, dict):
        return dict(spec)
    raise TypeError(f"a mind spec is a MindSpec, a dict or None, got {type(spec).__name__}")


class MindVLLMClient(VLLMClient):
    """TRL's ``VLLMClient`` for ``manyminds vllm-serve``: a mind per prompt, weights without NCCL on CPUs.

    Args:
        base_url: ``"http://host:port"``; if given, ``host`` and ``server_port`` are ignored.
        host: the server's address.
        server_port: its port.
        group_port: port of TRL's NCCL weight-update group (GPU trainers only).
        connection_timeout: how long a server that accepts connections but does not answer yet (still
            starting) is waited for, in seconds. Nothing listening fails within seconds whatever this is.

    Raises:
        ConnectionError: nothing answers at the address (the message says how to start the server).
        RuntimeError: the server there has no mind extension (a plain ``trl vllm-serve`` / ``vllm serve``).
    """

    def __init__(self, base_url: str | None = None, host: str = "0.0.0.0", server_port: int = 8000,
                 group_port: int = 51216, connection_timeout: float = 0.0):
        self._weight_path = "http"
        self._pending: dict[str, torch.Tensor] | None = None  # tensors of the weight update under way (http)
        self._row_specs: list | None = None  # minds of the completions of the call under way (row_minds)
        super().__init__(base_url=base_url, host=host, server_port=server_port, group_port=group_port,
                         connection_timeout=connection_timeout)
        info = self._mind_info()
        self.layout: dict = info["layout"]
        self.weight_sync: list[str] = list(info.get("weight_sync", ["http"]))

    # ------------------------------------------------------------------ start-up checks

    def check_server(self, total_timeout: float = 0.0, retry_interval: float = 2.0):
        """Wait for ``/health``: a refused connection fails after ~3 s, a server that is still starting
        (connection accepted, no answer yet) is waited for up to ``total_timeout`` seconds."""
        import requests

        url = f"{self.base_url}/health"
        start = time.monotonic()
        while True:
            waited = time.monotonic() - start
            try:
                response = requests.get(url, timeout=_PROBE_TIMEOUT_S)
            except requests.exceptions.ConnectionError:  # refused, unknown host, or no answer to connect
                if waited >= _UNREACHABLE_S:
                    raise ConnectionError(f"no vLLM server answers at {self.base_url}: start one with "
                                          f"`{SERVE_COMMAND}` and point vllm_server_host/vllm_server_port (or "
                                          "vllm_server_base_url) at it") from None
            except requests.exceptions.Timeout:  # connected, no answer yet: a server still starting
                if waited >= total_timeout:
                    raise ConnectionError(f"the vLLM server at {self.base_url} accepted the connection but did not "
                                          f"answer /health within {total_timeout:g} s (still loading the model?); "
                                          "raise vllm_server_timeout") from None
            else:
                if response.status_code == 200:
                    if "X-Forwarded-For" in response.headers:
                        self.host = response.headers["X-Forwarded-For"]
                    return
                if response.status_code < 500 or waited >= total_timeout:  # 5xx: a server still starting
                    raise ConnectionError(f"the server at {self.base_url} answers /health with "
                                          f"{response.status_code}; is it `manyminds vllm-serve`? Check its log")
            time.sleep(min(retry_interval, 1.0))

    def _mind_info(self) -> dict:
        response = self.session.get(f"{self.base_url}{LAYOUT_ROUTE}", timeout=60)
        if response.status_code == 404:
            raise RuntimeError(f"the vLLM server at {self.base_url} has no manyminds mind extension (a plain "
                               f"`trl vllm-serve` or `vllm serve`?); start it with `{SERVE_COMMAND}`")
        if response.status_code != 200:
            raise ServerError(f"{self.base_url}{LAYOUT_ROUTE}: {response.status_code} {_message(response)}")
        return response.json()

    # ------------------------------------------------------------------ generation

    @contextlib.contextmanager
    def row_minds(self, specs: Sequence):
        """Inside the block, ``generate`` calls that pass no ``mind_specs`` use ``specs``: one mind per
        completion (prompt-major, ``len(prompts) * n`` of them), as TRL's server-mode rollouts ask for
        ``n`` completions of each prompt without knowing about minds."""
        previous, self._row_specs = self._row_specs, list(specs)
        try:
            yield
        finally:
            self._row_specs = previous

    def generate(self, prompts: list[str] | list[list[int]], features=None, n: int = 1,
                 repetition_penalty: float = 1.0, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0, max_tokens: int = 16, logprobs: int | None = 0,
                 structured_outputs_regex: str | None = None, generation_kwargs: dict | None = None,
                 mind_specs: Sequence | None = None) -> dict[str, list]:
        """TRL's ``VLLMClient.generate`` plus minds.

        Args:
            mind_specs: one :class:`MindSpec` (or its dict, or ``None``: the plain model) per prompt, whose
                ``n`` completions share it; or one per completion (``len(prompts) * n``, prompt-major),
                each completion with its own mind. ``None``: the minds of :meth:`row_minds`, else plain.
            (the rest): as ``trl.generation.vllm_client.VLLMClient.generate``.

        Returns:
            ``{"prompt_ids", "completion_ids", "logprobs", "logprob_token_ids"}`` as TRL's client returns
            them (``prompt_ids``: one per prompt; the others: one per completion, prompt-major).

        Raises:
            ServerError: the server refused the call (e.g. a spec made for another model): its one-line message.
        """
        if features is not None:
            raise NotImplementedError("manyminds vllm-serve generates from text or token ids only (no images)")
        if mind_specs is None:
            mind_specs = self._row_specs
        if mind_specs is None:
            mind_specs = [None] * len(prompts)
        specs = [_spec_dict(s) for s in mind_specs]
        prompts = list(prompts)
        if len(specs) == len(prompts) * n and n > 1:  # a mind per completion: one request per completion
            rows, row_specs, per_row = repeat_prompts(prompts, n), specs, 1  # prompt-major: [P * n]
        elif len(specs) == len(prompts):
            rows, row_specs, per_row = prompts, specs, n
        else:
            raise ValueError(f"got {len(specs)} mind specs for {len(prompts)} prompts x n={n}; pass one per prompt "
                             f"or one per completion ({len(prompts) * n})")
        params = {"n": per_row, "repetition_penalty": repetition_penalty, "temperature": temperature, "top_p": top_p,
                  "top_k": top_k, "min_p": min_p, "max_tokens": max_tokens, "logprobs": logprobs}
        if structured_outputs_regex is not None:
            params["structured_outputs"] = {"regex": structured_outputs_regex}
        params.update(generation_kwargs or {})
        response = self.session.post(f"{self.base_url}{GENERATE_ROUTE}",
                                     json={"prompts": rows, "mind_specs": row_specs, "sampling_params": params})
        if response.status_code != 200:
            raise ServerError(f"manyminds vllm-serve refused the generate call ({response.status_code}): "
                              f"{_message(response)}")
        out = response.json()
        if per_row == 1 and n > 1:  # TRL's shape: one prompt_ids entry per prompt
            out["prompt_ids"] = out["prompt_ids"][::n]
        return out

    # ------------------------------------------------------------------ weights

    def init_communicator(self, device: torch.device | str | int = 0):
        """TRL's NCCL group where the trainer is on a GPU and the server offers NCCL; else weights go over HTTP."""
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if device.type == "cuda" and "nccl" in self.weight_sync:
            super().init_communicator(device)
            self._weight_path = "nccl"
        else:
            self._weight_path = "http"
            logger.info("manyminds: weights go to %s over HTTP (safetensors, one file per sync)", self.base_url)

    def _start_weight_update(self):
        if self._weight_path == "nccl":
            return super()._start_weight_update()
        self._pending = {}

    def _finish_weight_update(self):
        if self._weight_path == "nccl":
            return super()._finish_weight_update()
        from safetensors.torch import save

        pending, self._pending = self._pending, None
        if not pending:
            return
        response = self.session.post(f"{self.base_url}{LOAD_WEIGHTS_ROUTE}", data=save(pending),
                                     headers={"Content-Type": "application/octet-stream"})
        if response.status_code != 200:
            raise ServerError(f"manyminds vllm-serve could not load the weights ({response.status_code}): "
                              f"{_message(response)}")

    def update_named_params(self, metadata: list[tuple[str, str, list[int]]],
                            named_params: Iterator[tuple[str, torch.Tensor]]):
        """Send the named tensors (TRL's ``sync_weights`` passes all of them; inside ``weight_update()`` they
        are collected until the block ends, so the server reloads every layer whole)."""
        if self._weight_path == "nccl":
            return super().update_named_params(metadata, named_params)
        session = self._updating_weights
        if not session:
            self._start_weight_update()
        for name, tensor in named_params:
            # a CPU copy: the caller may reuse the buffer (gathered ZeRO-3 / FSDP parameters)
            self._pending[name] = tensor.detach().to("cpu", copy=True).contiguous()
        if not session:
            self._finish_weight_update()


def _message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return " ".join(str(error).split())
