"""Names shared by the client (:mod:`manyminds.vllm.engine`) and the worker (:mod:`manyminds.vllm.worker`).

Kept apart so that the client never imports the worker module: importing it patches vLLM's model
runners, which only processes that run the extension should do.
"""

WORKER_EXTENSION = "manyminds.vllm.worker.MindWorkerExtension"
"""Pass as ``LLM(worker_extension_cls=...)`` to run population minds in that engine."""

EXTRA_ARGS_KEY = "manyminds_mind"
"""Key of a request's ``SamplingParams.extra_args`` that holds its mind (``MindSpec.to_dict()``)."""

QK_NORMS_CONFIG = "manyminds_qk_norms"
"""Key of vLLM's ``additional_config``: also patch per-head q/k norms (needed by specs with
``include_qk_norms=True``; off by default, since every patched norm costs one op per forward)."""
