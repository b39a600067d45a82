"""Population minds (B-Trans): one causal LM, many minds, one batched forward.

A *mind* is one realization of Gaussian offsets on the outputs of the model's hidden-width
normalization layers (``y = Norm(x) + z``, ``z ~ N(0, sigma^2 I_H)``), addressed by an
integer id. :class:`Population` wraps a model without copying it; inside
``with population.minds(ids):`` row ``b`` of every forward (and every ``generate``) runs
mind ``ids[b]``; ``-1`` is the unperturbed model.

Example:
    >>> pop = Population(model, sigma=0.02, seed=0)
    >>> with pop.minds([0, 1, 2, -1]):
    ...     logits = model(input_ids).logits          # input_ids: [4, T]
    >>> texts = pop.generate(["Q: 2+3\\nA:"], minds=8, tokenizer=tok, max_new_tokens=16)
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from manyminds.rows import (
    check_context,
    check_row_ids,
    expand_row_ids,
    pad_id_of,
    pad_left,
    prompt_grid,
    prompt_list,
    tokenize_prompts,
)

from .collapse import warn_if_collapsed
from .decisions import best_of_minds, population_vote, select_minds
from .noise import NOISE_KINDS, apply_noise, check_sigma, mind_noise_table, standard_noise
from .norms import NormLayer, find_norm_layers, hidden_size_of, unwrap_model
from .scale import layer_scales
from .spec import MindSpec

__all__ = ["Population"]

CACHE_BYTES = 64 * 2**20  # default memory for cached noise vectors

# Norm modules currently hooked by some minds() context (guards against double perturbation).
_ACTIVE_MODULES: weakref.WeakSet = weakref.WeakSet()


class _ActiveMinds:
    """Per-context state: per-layer offsets ``[B, W]`` and their row-expanded copies."""

    def __init__(self, ids: torch.Tensor, offsets: list[torch.Tensor]):
        self.ids = ids
        self.offsets = offsets
        self._expanded: dict[tuple, torch.Tensor] = {}

    def offset_for(self, layer: int, output: torch.Tensor) -> torch.Tensor:
        """The offset of ``layer`` shaped to broadcast over ``output`` ``[B', ..., W]``."""
        rows = output.shape[0]
        z = self._expanded.get((layer, rows))
        if z is not None and z.dim() == output.dim() and z.dtype == output.dtype and z.device == output.device:
            return z
        base = self.offsets[layer]  # [B, W]
        if output.dim() < 2 or output.shape[-1] != base.shape[-1]:
            raise ValueError(f"norm layer {layer} returned shape {tuple(output.shape)}; expected "
                             f"[batch, ..., {base.shape[-1]}]")
        n_ids = base.shape[0]
        expand_row_ids(self.ids, rows)  # raises the clear error on a bad batch size
        z = base if rows == n_ids else base.repeat_interleave(rows // n_ids, dim=0)
        # [B', W] -> [B', 1, ..., 1, W] to broadcast over tokens (and heads)
        z = z.view(rows, *([1] * (output.dim() - 2)), z.shape[-1]).to(output.device, output.dtype)
        self._expanded[(layer, rows)] = z
        return z


def resolve_sigmas(sigma: float | Sequence[float], factors: Sequence[float]) -> tuple[list[float], float | None]:
    """Per-layer sigmas ``sigma_l = value_l * factor_l`` and the base sigma.

    Args:
        sigma: a float >= 0 (every layer's value) or one value per layer.
        factors: per-layer factors ``[L]`` of the population's ``sigma_scale``
            (:func:`~manyminds.population.scale.layer_scales`; all 1 for ``"absolute"``).

    Returns:
        ``(sigmas [L], base_sigma)``: ``base_sigma`` is the scalar for scalar input, else ``None``.
    """
    values = check_sigma(sigma, len(factors))
    scalar = isinstance(sigma, (int, float)) or (isinstance(sigma, torch.Tensor) and sigma.dim() == 0)
    return [v * f for v, f in zip(values, factors)], (float(values[0]) if scalar else None)


class Population:
    """A population of minds over one causal LM (B-Trans, arXiv 2512.25063).

    Args:
        model: any transformers causal LM, also wrapped (``PeftModel``, DDP, ``torch.compile``).
            Its weights are neither copied nor changed; hooks exist only inside :meth:`minds`.
        sigma: noise scale, a float >= 0 (the paper: 0.02) or one value per perturbed layer. To
            choose it from a target KL(plain || mind) instead, build the population with
            :func:`~manyminds.population.calibrate.calibrated_population`.
        sigma_scale: what ``sigma`` is measured against (:mod:`~manyminds.population.scale`):
            ``"absolute"`` (the paper: ``z_l = sigma * eps``) or ``"weight"``
            (``z_l = sigma * rms(g_l) * eps``, ``g_l`` the norm's gain), so one sigma means a
            similar perturbation on every model. Additive noise only.
        seed: population seed; a mind's offsets are a pure function of (seed, mind id, layer).
        norms: ``"all"`` (block norms + final norm), ``"blocks"`` or ``"final"``.
        noise: ``"additive"`` (the paper: ``y = Norm(x) + z``) or ``"multiplicative"``
            (gain noise: ``y = Norm(x) * (1 + z)``).
        include_qk_norms: also perturb per-head query/key norms (Qwen3); off by default.
        tokenizer: default tokenizer for :meth:`generate`.
        cache_bytes: memory for caching drawn noise vectors (0 disables the cache).

    Attributes:
        layers: the perturbed :class:`NormLayer` s, in forward order.
        sigmas: resolved per-layer noise scales ``sigma_l`` (``z_l = sigma_l * eps``).
        base_sigma: the scalar sigma before per-layer scaling (``None`` for per-layer input).
    """

    def __init__(self, model: nn.Module, sigma: float | Sequence[float] = 0.02, seed: int = 0,
                 norms: str = "all", noise: str = "additive", include_qk_norms: bool = False,
                 tokenizer=None, cache_bytes: int = CACHE_BYTES, sigma_scale: str = "absolute"):
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {', '.join(map(repr, NOISE_KINDS))}, got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if isinstance(sigma, str):
            raise TypeError(f"sigma must be a float or one float per layer, got {sigma!r}; to choose it from a "
                            "target KL use manyminds.population.calibrated_population(model, tokenizer)")
        layers = find_norm_layers(model, norms=norms, include_qk_norms=include_qk_norms)
        # sigma_l = base_sigma * factor_l, resolved once here (the weights are read now, not per forward)
        factors = layer_scales(layers, sigma_scale, noise)
        sigmas, base_sigma = resolve_sigmas(sigma, factors)
        self._setup(model, layers, factors, sigmas, base_sigma, seed=seed, norms=norms, noise=noise,
                    include_qk_norms=include_qk_norms, tokenizer=tokenizer, cache_bytes=cache_bytes,
                    sigma_scale=sigma_scale)

    def _setup(self, model: nn.Module, layers: list[NormLayer], factors: list[float], sigmas: list[float],
               base_sigma: float | None, *, seed: int, norms: str, noise: str, include_qk_norms: bool,
               tokenizer, cache_bytes: int, sigma_scale: str) -> None:
        """Set every attribute from resolved values: the one place the constructors
        (``__init__``, :meth:`from_spec`, :meth:`with_sigma`) share."""
        self.model = model
        self.seed = seed
        self.norms = norms
        self.noise = noise
        self.include_qk_norms = include_qk_norms
        self.tokenizer = tokenizer
        self.layers: list[NormLayer] = layers
        self.sigma_scale = sigma_scale
        self._factors: list[float] = list(factors)
        self.sigmas: list[float] = list(sigmas)
        self.base_sigma: float | None = base_sigma
        self.hidden_size: int = hidden_size_of(model)
        self._active: _ActiveMinds | None = None
        self.cache_bytes = int(cache_bytes)
        self._noise_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_used = 0

    def with_sigma(self, sigma: float | Sequence[float]) -> Population:
        """The same population at another sigma: a new :class:`Population` on the same model (not
        copied), with the same seed, norms, noise and per-layer scaling (a scalar is scaled by the
        factors this population resolved, so ``sigma_scale="weight"`` keeps the weights it read).
        Mind ``m`` of the result has offsets ``sigma'_l * eps_l`` with the same ``eps_l``; the noise
        vectors drawn so far are shared. This population is not changed.
        """
        if isinstance(sigma, str):
            raise TypeError(f"sigma must be a float or one float per layer, got {sigma!r}")
        sigmas, base_sigma = resolve_sigmas(sigma, self._factors)
        other = type(self).__new__(type(self))
        other._setup(self.model, self.layers, self._factors, sigmas, base_sigma, seed=self.seed, norms=self.norms,
                     noise=self.noise, include_qk_norms=self.include_qk_norms, tokenizer=self.tokenizer,
                     cache_bytes=self.cache_bytes, sigma_scale=self.sigma_scale)
        other._noise_cache = OrderedDict(self._noise_cache)  # the vectors do not depend on sigma
        other._cache_used = self._cache_used
        return other

    # ------------------------------------------------------------------ description

    @property
    def num_layers(self) -> int:
        """Number of perturbed normalization layers."""
        return len(self.layers)

    @property
    def layer_names(self) -> list[str]:
        """Module paths of the perturbed layers, in forward order."""
        return [layer.name for layer in self.layers]

    @property
    def sigma(self) -> float | list[float]:
        """The noise scale: a float when all layers share it, else the per-layer list."""
        return self.sigmas[0] if len(set(self.sigmas)) == 1 else list(self.sigmas)

    @property
    def active_ids(self) -> torch.Tensor | None:
        """The mind ids of the active :meth:`minds` context, or ``None``."""
        return None if self._active is None else self._active.ids

    def __repr__(self) -> str:
        model = type(unwrap_model(self.model)).__name__
        sigma = (self.sigma if self.sigma_scale == "absolute" or self.base_sigma is None
                 else f"{self.base_sigma:.4g} x rms(weight)")
        return (f"Population({model}, sigma={sigma}, seed={self.seed}, norms={self.norms!r}, "
                f"noise={self.noise!r}, layers={self.num_layers})")

    def spec(self, mind: int) -> MindSpec:
        """The address of ``mind`` (:class:`~manyminds.population.spec.MindSpec`): rebuilds the same
        mind on another copy of the model, device or engine.

        ``spec.sigma`` is a tuple: the resolved per-layer sigmas whenever they are not one absolute
        scalar (``sigma_scale="weight"``, per-layer input), else that one value, so consumers that
        only read ``spec.sigma`` (export, the vLLM worker) rebuild the same offsets."""
        sigma = self.sigma
        if self.sigma_scale != "absolute" or isinstance(sigma, list):
            sigma = tuple(self.sigmas)
        return MindSpec(seed=self.seed, mind=mind, sigma=sigma,
                        norms=self.norms, noise=self.noise, include_qk_norms=self.include_qk_norms,
                        num_layers=self.num_layers, width=self.hidden_size, sigma_scale=self.sigma_scale,
                        base_sigma=self.base_sigma)

    @classmethod
    def from_spec(cls, model: nn.Module, spec: MindSpec | dict, tokenizer=None,
                  cache_bytes: int = CACHE_BYTES) -> Population:
        """The population that ``spec`` addresses, on ``model``; the mind is ``spec.mind``.

        The offsets come from ``spec.sigma`` alone (the resolved per-layer sigmas); the
        provenance fields ``sigma_scale`` / ``base_sigma`` are carried over, not re-applied, so
        the weights of ``model`` do not change the mind. :meth:`with_sigma` on the result scales a
        new scalar by ``sigma_l / base_sigma``, as the population that made the spec would.

        Args:
            model: the model to perturb.
            spec: a :class:`MindSpec` or its dict.
            tokenizer, cache_bytes: as in :class:`Population`.

        Raises:
            ValueError: the spec was made for a model with other norms (count or width).
        """
        spec = MindSpec.from_dict(spec) if isinstance(spec, dict) else spec
        sigma = spec.sigma[0] if len(spec.sigma) == 1 else list(spec.sigma)  # one value: a scalar population
        layers = find_norm_layers(model, norms=spec.norms, include_qk_norms=spec.include_qk_norms)
        spec.check_layout(len(layers), hidden_size_of(model), type(unwrap_model(model)).__name__)
        sigmas, base_sigma = resolve_sigmas(sigma, [1.0] * len(layers))  # absolute: exactly spec.sigma
        if spec.base_sigma is not None:
            base_sigma = spec.base_sigma
        factors = [s / spec.base_sigma for s in sigmas] if spec.base_sigma else [1.0] * len(layers)
        pop = cls.__new__(cls)
        pop._setup(model, layers, factors, sigmas, base_sigma, seed=spec.seed, norms=spec.norms,
                   noise=spec.noise, include_qk_norms=spec.include_qk_norms, tokenizer=tokenizer,
                   cache_bytes=cache_bytes, sigma_scale=spec.sigma_scale)
        return pop

    @staticmethod
    def _placement(layer: NormLayer, fallback: nn.Module) -> tuple[torch.device, torch.dtype]:
        for tensor in (*layer.module.parameters(recurse=False), *layer.module.buffers(recurse=False)):
            if tensor.is_floating_point():
                return tensor.device, tensor.dtype
        param = next((p for p in fallback.parameters() if p.is_floating_point()), None)
        if param is None:
            return torch.device("cpu"), torch.float32
        return param.device, param.dtype

    def offsets(self, mind: int, layer: int) -> torch.Tensor:
        """The offset ``z`` of ``mind`` on perturbed layer ``layer`` (index into :attr:`layers`):
        ``[W]`` in the norm's dtype, on its device. ``mind == -1`` gives zeros."""
        if isinstance(mind, bool) or not isinstance(mind, int) or mind < -1:
            raise ValueError(f"mind must be an int >= 0 (or -1 for the unperturbed model), got {mind!r}")
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range: the population perturbs {self.num_layers} layers")
        return self._layer_offsets(layer, torch.tensor([mind]))[0]

    def noise_vector(self, mind: int, layer: int) -> torch.Tensor:
        """Unscaled ``eps ~ N(0, I_W)`` of ``mind`` on layer ``layer``: float32 ``[W]`` on the norm's device.

        Cached (least recently used first out, up to ``cache_bytes``): a population that reuses its
        minds pays for the draws once. Do not modify the returned tensor.
        """
        spec = self.layers[layer]
        device, _ = self._placement(spec, self.model)
        key = (int(mind), spec.key, device)
        vec = self._noise_cache.get(key)
        if vec is not None:
            self._noise_cache.move_to_end(key)
            return vec
        vec = standard_noise(self.seed, mind, spec.key, spec.width, device)
        size = vec.numel() * vec.element_size()
        if size <= self.cache_bytes:
            self._noise_cache[key] = vec
            self._cache_used += size
            while self._cache_used > self.cache_bytes:
                _, old = self._noise_cache.popitem(last=False)
                self._cache_used -= old.numel() * old.element_size()
        return vec

    def _layer_offsets(self, layer: int, ids: torch.Tensor) -> torch.Tensor:
        """Offsets of one layer for a batch of mind ids: ``[B, W]`` in the norm's dtype,
        :func:`~manyminds.population.noise.mind_noise_table` over the cached noise vectors."""
        spec = self.layers[layer]
        device, dtype = self._placement(spec, self.model)
        return mind_noise_table(self.seed, ids.tolist(), spec.key, spec.width, self.sigmas[layer], device, dtype,
                                draw=lambda m: self.noise_vector(m, layer))

    # ------------------------------------------------------------------ the minds context

    def _hook(self, layer: int, module: nn.Module, args, output):
        state = self._active
        if state is None:  # a stale handle cannot survive minds(), but be safe
            return output
        if isinstance(output, tuple):
            y = output[0]
            return (apply_noise(y, state.offset_for(layer, y), self.noise), *output[1:])
        return apply_noise(output, state.offset_for(layer, output), self.noise)

    @contextmanager
    def minds(self, ids):
        """Run row ``b`` of every forward of the wrapped model as mind ``ids[b]``.

        Offsets are computed once on entry (per layer ``[B, W]``, in the norm's dtype) and
        added by forward hooks, so every decode step of ``generate`` sees the same mind and
        the KV cache stays consistent. A forward with ``n * B`` rows repeats each id ``n``
        times (``num_return_sequences``, beams). Gradients flow through the hooked forward
        (offsets are constants). Hooks are removed on exit, also after an exception.

        With gradient checkpointing, call ``backward`` inside the context: the recomputed
        forward then sees the same mind.

        Args:
            ids: ``list[int]`` or ``LongTensor [B]``; ``-1`` runs the unperturbed model.

        Yields:
            the population.
        """
        ids = check_row_ids(ids)
        if self._active is not None:
            raise RuntimeError("this population already has an active minds() context; nesting is not "
                               "supported: exit it first, or pass all ids to one context")
        busy = [layer.name for layer in self.layers if layer.module in _ACTIVE_MODULES]
        if busy:
            raise RuntimeError(f"another population's minds() context is active on this model "
                               f"({busy[0]}); exit it first so offsets are not applied twice")
        offsets = [self._layer_offsets(i, ids) for i in range(self.num_layers)]
        handles = []
        try:
            self._active = _ActiveMinds(ids, offsets)
            for i, layer in enumerate(self.layers):
                handles.append(layer.module.register_forward_hook(partial(self._hook, i)))
                _ACTIVE_MODULES.add(layer.module)
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for layer in self.layers:
                _ACTIVE_MODULES.discard(layer.module)
            self._active = None

    # ------------------------------------------------------------------ generation

    def generate(self, prompts, minds: int | Sequence[int] | torch.Tensor | None = None, tokenizer=None,
                 return_minds: bool = False, batch_size: int = 64, **generate_kwargs):
        """Generate with one mind per row.

        Two forms:

        - prompts: ``prompts`` is a string, a list of strings, a conversation (a list of
          ``{"role", "content"}`` messages) or a list of conversations. A tokenizer (argument or
          the population's) encodes them once, exactly as the evaluation path and TRL's
          GRPOTrainer do (:func:`manyminds.rows.tokenize_prompts`): strings as raw text with the
          tokenizer's own special tokens, conversations through the chat template with the
          generation prompt; rows are left-padded. Rows are built from ``minds``:

          * ``int n``: every prompt is answered by minds ``0 .. n-1`` (prompt-major rows);
          * a list with one id per prompt: paired;
          * a list of ids with a single prompt: that prompt once per id;
          * ``None``: one row per prompt with mind ``-1`` (the plain model).

          Rows go to ``model.generate`` ``batch_size`` at a time (``minds=1000`` is not one
          batch of 1000 rows). Returns the decoded completions (new tokens only), one per
          generated row (``num_return_sequences`` rows per input row, consecutive); with
          ``return_minds=True`` also the mind id of each returned row.
        - tensors: ``prompts`` is an ``input_ids`` tensor ``[B, T]`` or a mapping with
          ``input_ids`` (and ``attention_mask``); ``minds`` gives one id per row. Returns what
          ``model.generate`` returns.

        ``generate_kwargs`` go to ``model.generate`` (``max_new_tokens``, ``do_sample``,
        ``temperature``, ``num_return_sequences``, ...). Prompts that do not fit the model's
        context with ``max_new_tokens`` are refused first (:func:`manyminds.rows.check_context`).

        Example:
            >>> pop.generate([[{"role": "user", "content": "Name a color."}]], minds=4, max_new_tokens=8)
        """
        if isinstance(prompts, torch.Tensor) or hasattr(prompts, "keys"):
            inputs = {"input_ids": prompts} if isinstance(prompts, torch.Tensor) else dict(prompts)
            rows = inputs["input_ids"].shape[0]
            ids = check_row_ids([-1] * rows if minds is None else
                                (list(range(minds)) if isinstance(minds, int) else minds))
            if ids.shape[0] != rows:
                raise ValueError(f"got {ids.shape[0]} mind ids for {rows} input rows; pass one id per row")
            mask = inputs.get("attention_mask")
            lengths = (mask.sum(dim=1).tolist() if mask is not None else [inputs["input_ids"].shape[1]] * rows)
            check_context(self.model.config, lengths, self._max_new_tokens(generate_kwargs))
            with self.minds(ids), torch.no_grad():
                return self.model.generate(**inputs, **generate_kwargs)

        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("Population.generate needs a tokenizer for text or chat prompts: pass tokenizer=... "
                             "(or Population(..., tokenizer=tok)), or pass input_ids")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: pass a positive number of rows per generate call")
        rows, ids = self._rows(prompts, minds)
        device = next(self.model.parameters()).device
        pad_id = pad_id_of(tokenizer)
        encoded = tokenize_prompts(tokenizer, rows)  # [B] id lists
        check_context(self.model.config, [len(r) for r in encoded], self._max_new_tokens(generate_kwargs))
        generate_kwargs.setdefault("pad_token_id", pad_id)
        completions = []
        for start in range(0, len(encoded), batch_size):
            enc = pad_left(encoded[start:start + batch_size], pad_id, device)  # [b, T], left-padded
            with self.minds(ids[start:start + batch_size]), torch.no_grad():
                out = self.model.generate(**enc, **generate_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]  # [b * num_return_sequences, new]
            completions += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        warn_if_collapsed(completions, expand_row_ids(ids, len(completions)).tolist())
        if return_minds:
            return completions, expand_row_ids(ids, len(completions)).tolist()
        return completions

    # ------------------------------------------------------------------ decisions

    def vote(self, prompts, minds: int | Sequence[int] = 8, **kwargs):
        """Majority vote across minds per prompt: :func:`~manyminds.population.decisions.population_vote`."""
        return population_vote(self, prompts, minds, **kwargs)

    def best_of(self, prompts, reward, minds: int | Sequence[int] = 8, **kwargs):
        """Best completion by ``reward`` across minds: :func:`~manyminds.population.decisions.best_of_minds`."""
        return best_of_minds(self, prompts, reward, minds, **kwargs)

    def select_minds(self, dataset, reward, n: int = 4, **kwargs):
        """Best ``n`` candidate minds on a dev set: :func:`~manyminds.population.decisions.select_minds`."""
        return select_minds(self, dataset, reward, n, **kwargs)

    def _max_new_tokens(self, generate_kwargs: dict) -> int | None:
        """The ``max_new_tokens`` that ``model.generate`` will use: the argument, else the model's
        generation config."""
        if generate_kwargs.get("max_new_tokens") is not None:
            return generate_kwargs["max_new_tokens"]
        config = generate_kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        return getattr(config, "max_new_tokens", None)

    @staticmethod
    def _rows(prompts, minds) -> tuple[list, torch.Tensor]:
        """Prompt rows (strings or conversations, :func:`~manyminds.rows.prompt_list`) and their mind ids ``[B]``."""
        prompts = prompt_list(prompts)
        if minds is None:
            return prompts, check_row_ids([-1] * len(prompts))
        if isinstance(minds, int) and not isinstance(minds, bool):
            if minds < 1:
                raise ValueError(f"minds={minds}: pass a positive number of minds or a list of ids")
            texts, ids = prompt_grid(prompts, minds)  # prompt-major: [P * minds]
            return texts, check_row_ids(ids)
        ids = check_row_ids(minds)
        if len(prompts) == 1:
            return prompts * ids.shape[0], ids
        if ids.shape[0] != len(prompts):
            raise ValueError(f"got {ids.shape[0]} mind ids for {len(prompts)} prompts; pass one id per "
                             "prompt, an int (every prompt x that many minds), or a single prompt")
        return prompts, ids
