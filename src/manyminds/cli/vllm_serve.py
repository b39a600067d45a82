"""``manyminds vllm-serve``: TRL's vLLM server with a population mind per request (``manyminds.vllm.serve``).

The options are the fields of :class:`manyminds.vllm.serve.MindServerConfig` (same names, same help);
any other option goes to ``vllm serve`` as it is (``--max-num-seqs 64``; one it does not know is an error).
"""

from __future__ import annotations

from typing import Annotated

import typer

from manyminds.vllm.serve import MindServerConfig

_help = MindServerConfig.help


def register(app: typer.Typer) -> None:
    @app.command("vllm-serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def vllm_serve(
        ctx: typer.Context,
        model: Annotated[str, typer.Option("--model", help=_help("model"))],
        host: Annotated[str, typer.Option("--host", help=_help("host"))] = "0.0.0.0",
        port: Annotated[int, typer.Option("--port", help=_help("port"))] = 8000,
        tensor_parallel_size: Annotated[int, typer.Option(
            "--tensor-parallel-size", help=_help("tensor_parallel_size"))] = 1,
        dtype: Annotated[str, typer.Option("--dtype", help=_help("dtype"))] = "auto",
        max_model_len: Annotated[int | None, typer.Option("--max-model-len", help=_help("max_model_len"))] = None,
        gpu_memory_utilization: Annotated[float, typer.Option(
            "--gpu-memory-utilization", help=_help("gpu_memory_utilization"))] = 0.9,
        include_qk_norms: Annotated[bool, typer.Option(
            "--include-qk-norms/--no-include-qk-norms", help=_help("include_qk_norms"))] = False,
        enable_prefix_caching: Annotated[bool, typer.Option(
            "--enable-prefix-caching/--no-enable-prefix-caching", help=_help("enable_prefix_caching"))] = True,
        enforce_eager: Annotated[bool, typer.Option(
            "--enforce-eager/--no-enforce-eager", help=_help("enforce_eager"))] = False,
    ):
        """Serve a model for population GRPO in TRL's server mode (and for your own clients): TRL's
        `trl vllm-serve` with the mind extension, a mind per prompt (POST /manyminds/generate/) and
        weight sync without NCCL on CPUs. Point PopulationGRPOConfig(use_vllm=True, vllm_mode="server",
        vllm_server_host=..., vllm_server_port=...) at it."""
        from manyminds.vllm.serve import serve

        config = MindServerConfig(model=model, host=host, port=port, tensor_parallel_size=tensor_parallel_size,
                                  dtype=dtype, max_model_len=max_model_len,
                                  gpu_memory_utilization=gpu_memory_utilization,
                                  include_qk_norms=include_qk_norms, enable_prefix_caching=enable_prefix_caching,
                                  enforce_eager=enforce_eager, vllm_args=list(ctx.args))
        serve(config)
