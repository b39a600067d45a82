"""``manyminds vllm-serve``: TRL's vLLM server with the mind extension and a mind per prompt.

TRL 1.16's ``trl vllm-serve`` is vLLM's own OpenAI-compatible server started with the flags TRL's
trainers need (:func:`trl.scripts.vllm_serve.build_command`: processed log-probs, unlimited top
log-probs, NCCL weight transfer, development endpoints). This server is that server, built from the
same command line, plus:

- the mind worker extension (``--worker-extension-cls``: :data:`SERVER_EXTENSION`, the
  :mod:`manyminds.vllm.worker` extension plus loading weights sent as bytes), and q/k norms when
  ``include_qk_norms`` (``--additional-config``);
- ``GET /manyminds/layout/``: the engine's perturbable norms (:func:`manyminds.vllm.engine_layout`'s
  dict) and the weight-sync paths it offers; a client checks it at start, so a plain ``trl vllm-serve``
  is told apart from this one;
- ``POST /manyminds/generate/``: TRL's ``generate`` request (token-id or text prompts, sampling
  fields) with ``mind_specs``, one :class:`~manyminds.population.MindSpec` dict (or ``null``: the plain
  model) per prompt. Every spec is checked against the engine before anything runs (a bad one is
  answered ``400`` with a one-line message, and nothing of that call is generated); requests are built
  by :func:`~manyminds.vllm.mind_requests`, so each mind is salted in the prefix cache here, whatever
  the client sent. The answer has TRL's shape (``prompt_ids``, ``completion_ids``, ``logprobs``,
  ``logprob_token_ids``);
- ``POST /manyminds/load_weights/``: named tensors as a safetensors body, loaded with vLLM's
  ``reload_weights`` (in place, then the prefix cache is reset). It is the weight sync that needs no
  NCCL, so a CPU trainer and a CPU server work (TRL's NCCL path stays available on GPUs);
- every other way in (``/v1/completions``, ...) refuses a request that carries a mind in its
  ``extra_args`` (``vllm_xargs``), which would skip this admission's one-line answers.

The client side is :class:`manyminds.vllm.client.MindVLLMClient`.
"""

# No `from __future__ import annotations`: FastAPI reads the route handlers' annotations (Request) at runtime.
import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field, fields

from ._protocol import EXTRA_ARGS_KEY, QK_NORMS_CONFIG

__all__ = ["GENERATE_ROUTE", "LAYOUT_ROUTE", "LOAD_WEIGHTS_ROUTE", "SERVER_EXTENSION", "MindServerConfig",
           "add_mind_routes", "serve", "vllm_serve_args"]

LAYOUT_ROUTE = "/manyminds/layout/"
GENERATE_ROUTE = "/manyminds/generate/"
LOAD_WEIGHTS_ROUTE = "/manyminds/load_weights/"

SERVER_EXTENSION = f"{__name__}.ServerMindWorkerExtension"
"""The server's worker extension: the mind extension plus ``manyminds_load_weights`` (safetensors bytes)."""


def _server_extension():
    """:class:`~manyminds.vllm.worker.MindWorkerExtension` plus loading weights sent as safetensors bytes.

    Tensors do not survive ``collective_rpc``'s msgpack transport to the workers (they arrive as lists),
    bytes do; so the worker deserializes them itself.
    """
    from .worker import MindWorkerExtension

    class ServerMindWorkerExtension(MindWorkerExtension):
        def manyminds_load_weights(self, payload: bytes) -> int:
            """Load named tensors (a safetensors file's bytes) in place with vLLM's ``reload_weights``.

            One call per sync: vLLM's layer-wise reload finalizes every layer at the end of the call,
            so a fused layer (``qkv_proj``) must receive all its parts (q, k, v) in the same call.
            """
            from safetensors.torch import load

            tensors = load(payload)
            self.reload_weights(weights_iterator=list(tensors.items()), is_checkpoint_format=True)
            return len(tensors)

    ServerMindWorkerExtension.__module__ = __name__
    ServerMindWorkerExtension.__qualname__ = "ServerMindWorkerExtension"
    return ServerMindWorkerExtension


def __getattr__(name):
    # vLLM imports the worker extension by name in each worker process. Built on first access, so that
    # importing this module (the CLI does, for its options) neither imports torch nor patches vLLM's runners.
    if name == "ServerMindWorkerExtension":
        cls = globals()[name] = _server_extension()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class MindServerConfig:
    """Settings of ``manyminds vllm-serve`` (the fields of ``trl vllm-serve`` that matter here, plus minds)."""

    model: str = field(metadata={"help": "Zoo name (its local checkpoint), model folder or hub id to serve."})
    host: str = field(default="0.0.0.0", metadata={"help": "Address to listen on (0.0.0.0: every interface)."})
    port: int = field(default=8000, metadata={"help": "Port to listen on."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "Tensor-parallel workers (GPUs) of the engine."})
    dtype: str = field(default="auto", metadata={"help": "Weights' dtype in vLLM (auto: the checkpoint's)."})
    max_model_len: int | None = field(
        default=None, metadata={"help": "Longest prompt + completion in tokens (default: the model's context)."})
    gpu_memory_utilization: float = field(
        default=0.9, metadata={"help": "Share of GPU memory vLLM may use (weights, activations, KV cache)."})
    include_qk_norms: bool = field(
        default=False, metadata={"help": "Also make per-head q/k norms perturbable (specs with include_qk_norms)."})
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "Prefix caching (safe with minds: every mind request is salted)."})
    enforce_eager: bool = field(default=False, metadata={"help": "Run eagerly instead of compiling the model."})
    vllm_args: list[str] = field(
        default_factory=list, metadata={"help": "More `vllm serve` arguments (`--max-num-seqs 64`), passed on as they are."})

    def __post_init__(self):
        if not self.model:
            raise ValueError("say which model to serve: --model NAME_OR_PATH")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")

    @classmethod
    def help(cls, name: str) -> str:
        """The help string of field ``name`` (the CLI's option help)."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def vllm_serve_args(config: MindServerConfig):
    """vLLM's parsed ``serve`` arguments: ``trl vllm-serve``'s command line for ``config`` plus the mind extension.

    On a CPU build the NCCL weight-transfer engine is left out (there is no NCCL); weights then go
    through ``POST /manyminds/load_weights/``.
    """
    from trl.scripts.vllm_serve import ScriptArguments, build_command
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from .engine import _model_path

    script = ScriptArguments(model=_model_path(config.model), host=config.host, port=config.port,
                             tensor_parallel_size=config.tensor_parallel_size, dtype=config.dtype,
                             max_model_len=config.max_model_len,
                             gpu_memory_utilization=config.gpu_memory_utilization,
                             enable_prefix_caching=config.enable_prefix_caching, enforce_eager=config.enforce_eager)
    extension = ["--worker-extension-cls", SERVER_EXTENSION,
                 "--additional-config", json.dumps({QK_NORMS_CONFIG: bool(config.include_qk_norms)})]
    command = build_command(script, extension + list(config.vllm_args))
    argv = command[command.index("serve") + 1:]  # [model, --host, ...]: what `vllm serve` parses
    if _on_cpu():
        at = argv.index("--weight-transfer-config")
        del argv[at:at + 2]
    args, unknown = make_arg_parser(FlexibleArgumentParser(prog="manyminds vllm-serve")).parse_known_args(argv)
    if unknown:
        raise ValueError(f"neither manyminds vllm-serve nor vllm serve has the option(s) {' '.join(unknown)}")
    args.model = args.model_tag
    validate_parsed_serve_args(args)
    return args


# ---------------------------------------------------------------------- routes

def _safetensors_names(payload: bytes) -> list[str]:
    """The tensor names in a safetensors file's header (8-byte little-endian length, then JSON)."""
    if len(payload) < 8:
        raise ValueError(f"{len(payload)} bytes")
    size = int.from_bytes(payload[:8], "little")
    try:
        header = json.loads(payload[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError("unreadable header")  # noqa: TRY004 - a bad request body, answered 400 like the others
    names = [name for name in header if name != "__metadata__"]
    if not names:
        raise ValueError("no tensors in it")
    return names


def _bad_request(message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(str(message).split())}, status_code=400)


def _sampling_params(body: dict):
    """``SamplingParams`` from the sampling fields of a TRL ``generate`` request."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = dict(body.get("sampling_params") or {})
    structured = params.pop("structured_outputs", None)
    if isinstance(structured, dict):
        params["structured_outputs"] = StructuredOutputsParams(**structured)
    return SamplingParams(**params)


def _specs(raw, rows: int, layout: dict) -> list:
    """The checked :class:`MindSpec` (or ``None``) of every prompt; ``ValueError`` names the first bad one."""
    from .admission import check_spec

    if raw is None:
        return [None] * rows
    if not isinstance(raw, list) or len(raw) != rows:
        got = f"{len(raw)} entries" if isinstance(raw, list) else type(raw).__name__
        raise ValueError(f"mind_specs needs one spec dict (or null) per prompt: {rows} prompts, got {got}")
    specs = []
    for i, item in enumerate(raw):
        try:
            spec = None if item is None else check_spec(item, layout)
        except ValueError as err:
            raise ValueError(f"mind_specs[{i}]: {err}") from None
        specs.append(spec)
    return specs


def _guard_generic_requests(engine) -> None:
    """Make ``engine.generate`` refuse minds; the unguarded one stays as ``engine._manyminds_generate``.

    A mind that came through ``vllm_xargs`` of ``/v1/completions`` (or any other route) would skip the
    one-line ``400`` of this server's admission (the worker's own guard would only fail that request with
    vLLM's generic error), so only ``POST /manyminds/generate/`` admits minds.
    """
    if getattr(engine, "_manyminds_generate", None) is not None:
        return
    original = engine.generate

    def generate(prompt, sampling_params, *args, **kwargs):
        if EXTRA_ARGS_KEY in (getattr(sampling_params, "extra_args", None) or {}):
            raise ValueError(f"minds are sent to POST {GENERATE_ROUTE} (field mind_specs), which checks and salts "
                             f"them; {EXTRA_ARGS_KEY!r} in vllm_xargs is refused")
        return original(prompt, sampling_params, *args, **kwargs)

    engine._manyminds_generate = original
    engine.generate = generate


async def _layout(state) -> dict:
    layout = getattr(state, "manyminds_layout", None)
    if layout is None:
        layout = (await state.engine_client.collective_rpc("manyminds_layout"))[0]
        state.manyminds_layout = layout
    return layout


async def _run(engine, rows, params) -> list:
    """Every row's final ``RequestOutput``; the rows run concurrently, so the engine batches them."""
    import asyncio

    call = uuid.uuid4().hex

    async def one(i):
        final = None
        async for out in engine._manyminds_generate(rows[i], params[i], f"manyminds-{call}-{i}"):
            final = out
        return final

    return await asyncio.gather(*(one(i) for i in range(len(rows))))


def add_mind_routes(app) -> None:
    """Add the ``/manyminds/...`` routes to vLLM's FastAPI ``app`` (whose state holds the engine client)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import Response

    router = APIRouter()

    @router.get(LAYOUT_ROUTE)
    async def layout(request: Request):
        weight_sync = ["http"] + (["nccl"] if getattr(request.app.state.args, "weight_transfer_config", None) else [])
        return {"layout": await _layout(request.app.state), "weight_sync": weight_sync}

    @router.post(GENERATE_ROUTE)
    async def generate(request: Request):
        from trl.generation.vllm_generation import extract_logprobs

        from .engine import mind_requests

        try:
            body = await request.json()
            prompts = body["prompts"]
            if not isinstance(prompts, list) or not prompts:
                raise ValueError("prompts must be a non-empty list of token-id lists or strings")
            specs = _specs(body.get("mind_specs"), len(prompts), await _layout(request.app.state))
            rows, params = mind_requests(prompts, specs, _sampling_params(body))
        except (KeyError, TypeError, ValueError) as err:
            return _bad_request(f"missing field {err}" if isinstance(err, KeyError) else err)
        outputs = await _run(request.app.state.engine_client, rows, params)
        logprobs, logprob_token_ids = extract_logprobs(outputs)
        payload = {"prompt_ids": [list(o.prompt_token_ids) for o in outputs],
                   "completion_ids": [list(c.token_ids) for o in outputs for c in o.outputs],
                   "logprobs": logprobs, "logprob_token_ids": logprob_token_ids}
        # json.dumps keeps -inf log-probs (as -Infinity, which Python's json reads back); Starlette's would refuse them
        return Response(json.dumps(payload), media_type="application/json")

    @router.post(LOAD_WEIGHTS_ROUTE)
    async def load_weights(request: Request):
        payload = await request.body()
        try:
            names = _safetensors_names(payload)
        except ValueError as err:
            return _bad_request(f"the body is not a safetensors file: {err}")
        engine = request.app.state.engine_client
        await engine.collective_rpc("manyminds_load_weights", args=(payload,))
        await engine.reset_prefix_cache()  # KV blocks computed with the old weights
        return {"loaded": len(names)}

    app.include_router(router)


@contextlib.contextmanager
def _mind_server():
    """Inside the context, the API server vLLM builds has the mind routes and refuses minds elsewhere."""
    from vllm.entrypoints.launchers.api_server import entry

    build_app, init_app_state = entry.build_app, entry.init_app_state

    def build_app_with_minds(*args, **kwargs):
        app = build_app(*args, **kwargs)
        add_mind_routes(app)
        return app

    async def init_app_state_with_guard(engine_client, *args, **kwargs):
        await init_app_state(engine_client, *args, **kwargs)
        _guard_generic_requests(engine_client)

    entry.build_app, entry.init_app_state = build_app_with_minds, init_app_state_with_guard
    try:
        yield
    finally:
        entry.build_app, entry.init_app_state = build_app, init_app_state


def serve(config: MindServerConfig) -> None:
    """Run the server until it is stopped (SIGINT / SIGTERM).

    Raises:
        ValueError: an option neither this command nor ``vllm serve`` knows (before anything starts).
    """
    from .engine import require_vllm

    require_vllm()
    args = vllm_serve_args(config)
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    # TRL's endpoints (server info, world size, weight transfer, prefix-cache reset) are vLLM's dev routes.
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    cli_env_setup()  # what `vllm serve` does first: spawn, not fork, for the engine's processes
    with _mind_server():
        uvloop.run(run_server(args))


if __name__ == "__main__":  # python -m manyminds.vllm.serve MODEL [PORT]: handy for a quick manual check
    import sys

    serve(MindServerConfig(model=sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000))
