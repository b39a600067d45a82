"""What a request's mind must satisfy before it runs, in one place for every side of ``manyminds.vllm``.

- :func:`check_spec`: the :class:`~manyminds.population.MindSpec` a request names (a spec or its dict
  form, as sent in ``SamplingParams.extra_args[EXTRA_ARGS_KEY]``), checked against an engine's layout
  (:func:`~manyminds.vllm.engine.engine_layout`: its perturbable norms per selection and their width).
- :func:`mind_salt` / :func:`salt_for`: the prefix-cache salt a perturbing mind's request must carry.
  vLLM keys cached KV blocks by token ids, LoRA and ``cache_salt``, not by ``extra_args``, so a mind
  without its salt would share KV blocks with the plain model and other minds.

The client (:func:`~manyminds.vllm.make_llm`'s admission, :func:`~manyminds.vllm.generate`,
:func:`~manyminds.vllm.mind_requests`, ``manyminds vllm-serve``, the GRPO rollouts), the engine core
guard and the worker (:mod:`manyminds.vllm.worker`) all call these; nothing else validates a spec.
"""

from __future__ import annotations

from manyminds.population.spec import MindSpec

__all__ = ["check_spec", "mind_salt", "salt_for"]


def check_spec(raw, layout: dict) -> MindSpec:
    """The spec ``raw`` names, checked against an engine's ``layout``.

    Args:
        raw: a :class:`MindSpec` or its :meth:`~MindSpec.to_dict` form (anything else is refused).
        layout: ``{"model", "hidden_size", "selections": {"all"|"blocks"|"final"[+qk]: {"num_layers", ...}}}``
            (:func:`~manyminds.vllm.engine.engine_layout`, or the worker's own).

    Raises:
        ValueError: one line: the spec is malformed, perturbs norms the engine does not expose, or was made
            for another model (norm count or width, or a per-norm sigma of the wrong length).
    """
    try:
        spec = raw if isinstance(raw, MindSpec) else MindSpec.from_dict(raw)
    except TypeError as err:
        raise ValueError(str(err)) from None
    name = f"{spec.norms}{'+qk' if spec.include_qk_norms else ''}"
    selection = layout["selections"].get(name)
    if selection is None:
        if spec.include_qk_norms and spec.norms in layout["selections"]:
            raise ValueError("the mind spec perturbs q/k norms but the engine was built without them; build it "
                             "with manyminds.vllm.make_llm(..., include_qk_norms=True)")
        raise ValueError(f"norms={spec.norms!r} selects no norm of the engine's {layout['model']}; use norms='all'")
    spec.check_layout(selection["num_layers"], layout["hidden_size"], f"the vLLM engine's {layout['model']}")
    return spec


def mind_salt(spec: MindSpec) -> str:
    """The prefix-cache salt of a mind: KV blocks are shared only between requests of one mind."""
    sigma = ",".join(repr(s) for s in spec.sigma)
    return f"manyminds:{spec.seed}:{spec.mind}:{sigma}:{spec.norms}:{spec.noise}:{int(spec.include_qk_norms)}"


def salt_for(spec: MindSpec | None, salt: str | None) -> str | None:
    """The ``cache_salt`` a request with mind ``spec`` and the caller's ``salt`` runs under.

    A perturbing mind's salt ends with :func:`mind_salt` (the caller's own salt, if any, kept in front:
    ``"user|manyminds:..."``); the plain model (``None``, ``mind=-1`` or sigma 0) keeps ``salt`` as is,
    so it shares the cache with ordinary requests.
    """
    if spec is None or spec.is_plain:
        return salt
    own = mind_salt(spec)
    if not salt:
        return own
    return salt if salt.endswith(own) else f"{salt}|{own}"
