"""Export one mind as an ordinary checkpoint, by folding its offsets into the weights.

The folds are exact identities:

- additive offset after a norm **with a bias** (LayerNorm: GPT-2, OPT, Phi):
  ``w * xhat + b + z``: the norm's bias becomes ``b + z``.
- additive offset after a norm **without a bias** (RMSNorm: Llama, Qwen2, Mistral, ...):
  every linear layer that reads the norm's output computes ``W (h + z) + c = W h + (c + W z)``,
  so ``W z`` is added to its bias (q/k/v after the input norm, gate/up after the
  post-attention norm, lm_head after the final norm). The readers are found by tracing one
  forward. Missing biases are switched on through the config where the architecture has a
  flag (Llama: ``attention_bias``, ``mlp_bias``); Qwen2 and Mistral without sliding windows
  are written as the equivalent Llama with those biases. Where no bias can exist (most
  ``lm_head`` s, Gemma's or Qwen3's MLP) the export raises an error that says why. The flags
  and the Llama rebuild are the family's ``bias_flags`` and ``as_llama`` in
  :data:`~manyminds.population.families.RULES`.
- multiplicative offset ``y * (1 + z)``: the norm's weight (and bias) are scaled by
  ``1 + z``; for Gemma-style norms that scale by ``1 + w`` the weight becomes
  ``(1 + w)(1 + z) - 1``.

The result is checked: the checkpoint is reloaded with plain ``from_pretrained`` and its
logits are compared with the population's on a probe batch before the folder appears.
"""

from __future__ import annotations

import copy
import json
import os
from functools import partial
from pathlib import Path

import torch
from torch import nn

from manyminds.files import atomic_folder
from manyminds.zoo.models import llama_equivalent_config, rebuild_as

from .families import rule_of, uses_one_plus_weight
from .norms import unwrap_model
from .population import Population

__all__ = ["MindExportError", "export_mind", "fold_mind"]


class MindExportError(ValueError):
    """A mind cannot be folded exactly into this architecture."""


def _linear_weight(module: nn.Module) -> tuple[torch.Tensor, bool] | None:
    """(weight, transposed) of a linear-like module: ``nn.Linear`` ``[out, in]`` or GPT-2's ``Conv1D``
    ``[in, out]`` (transposed=True); ``None`` for anything else."""
    if isinstance(module, nn.Linear):
        return module.weight, False
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.weight, True
    return None


def _probe_ids(model: nn.Module, batch: int = 2, length: int = 6) -> torch.Tensor:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 64)
    gen = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def _trace_readers(model: nn.Module, norm_modules: dict[int, str]) -> dict[str, list[str]]:
    """Which linear layers read each norm's output: ``{norm name: [linear names]}``.

    One forward on a probe batch; a linear reads a norm when its input shares storage with
    the norm's output (the output itself or a view of it, e.g. ``lm_head`` on the last tokens).
    """
    outputs: dict[int, str] = {}  # storage pointer -> norm name
    keep: list[torch.Tensor] = []  # hold outputs so their storage is not reused during the trace
    readers: dict[str, list[str]] = {name: [] for name in norm_modules.values()}
    handles = []

    def on_norm(name, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        keep.append(out)
        outputs[out.untyped_storage().data_ptr()] = name

    def on_linear(name, module, args):
        if args and isinstance(args[0], torch.Tensor):
            norm = outputs.get(args[0].untyped_storage().data_ptr())
            if norm is not None and name not in readers[norm]:
                readers[norm].append(name)

    try:
        for name, module in model.named_modules():
            if id(module) in norm_modules:
                handles.append(module.register_forward_hook(partial(on_norm, norm_modules[id(module)])))
            elif _linear_weight(module) is not None:
                handles.append(module.register_forward_pre_hook(partial(on_linear, name)))
        device = next(model.parameters()).device
        with torch.no_grad():
            model(_probe_ids(model).to(device))
    finally:
        for handle in handles:
            handle.remove()
    return readers


def _rebuild(inner: nn.Module, config) -> nn.Module:
    """:func:`manyminds.zoo.models.rebuild_as`, its errors as :class:`MindExportError`."""
    try:
        return rebuild_as(inner, config)
    except ValueError as err:
        raise MindExportError(str(err)) from None


def _needs_bias(model: nn.Module, readers: dict[str, list[str]]) -> list[str]:
    missing = []
    for names in readers.values():
        for name in names:
            if model.get_submodule(name).bias is None:
                missing.append(name)
    return missing


def _plan_model(inner: nn.Module, bias_readers: dict[str, list[str]]) -> nn.Module:
    """A copy of ``inner`` whose readers of bias-less perturbed norms all have biases."""
    missing = _needs_bias(inner, bias_readers)
    if not missing:
        return copy.deepcopy(inner)
    candidates = []
    rule = rule_of(inner)
    config = copy.deepcopy(inner.config)
    flags = [f for f in rule.bias_flags if hasattr(config, f) and not getattr(config, f)]
    if flags:
        for flag in flags:
            setattr(config, flag, True)
        candidates.append(config)
    llama = llama_equivalent_config(inner.config, mlp_bias=True) if rule.as_llama else None
    if llama is not None:
        candidates.append(llama)
    best = inner
    for config in candidates:
        model = _rebuild(inner, config)
        if not _needs_bias(model, bias_readers):
            return model
        best = model
    still = _needs_bias(best, bias_readers)
    norms = [n for n, names in bias_readers.items() if set(names) & set(still)]
    hint = ("create the population with norms='blocks'" if all("lm_head" in s for s in still)
            else "use noise='multiplicative' (folds into the norm weights)")
    lacking = [s for s in still if s in bias_readers[norms[0]]]
    raise MindExportError(
        f"cannot fold this mind exactly into {type(inner).__name__}: the output of {norms[0]} is read by "
        f"{', '.join(lacking)}, which {'has' if len(lacking) == 1 else 'have'} no bias and the architecture "
        f"cannot switch one on; {hint}, or keep the population in memory")


def fold_mind(population: Population, mind: int) -> nn.Module:
    """A new model (the population's model is untouched) that computes mind ``mind`` exactly.

    Raises:
        MindExportError: the architecture cannot hold the mind (see the module docstring).
    """
    inner = unwrap_model(population.model)
    if any(hasattr(m, "base_layer") for m in inner.modules()):
        raise MindExportError("the model holds PEFT adapter layers; merge them first "
                              "(model = model.merge_and_unload()) and build the population on the result")
    names = {id(m): n for n, m in inner.named_modules()}
    layers = [(i, layer, names[id(layer.module)]) for i, layer in enumerate(population.layers)]
    offsets = {name: population.offsets(mind, i).double() for i, _, name in layers}  # [W] each
    if population.noise == "additive":
        bias_less = {name: layer for _, layer, name in layers if getattr(layer.module, "bias", None) is None}
        readers = _trace_readers(inner, {id(layer.module): name for name, layer in bias_less.items()})
        for name, found in readers.items():
            if not found:
                raise MindExportError(f"no linear layer reads the output of {name}; its offset cannot be "
                                      "folded into a bias")
        model = _plan_model(inner, readers)
    else:
        readers = {}
        model = copy.deepcopy(inner)
    model.eval()
    with torch.no_grad():
        for _, layer, name in layers:
            z = offsets[name]
            if layer.kind == "qk":
                raise MindExportError("minds with per-head q/k norm offsets cannot be exported; build the "
                                      "population with include_qk_norms=False")
            norm = model.get_submodule(name)
            weight = getattr(norm, "weight", None)
            bias = getattr(norm, "bias", None)
            if population.noise == "multiplicative":
                if weight is None:
                    raise MindExportError(f"{name} has no weight to fold gain noise into")
                w = weight.double()
                one_plus = uses_one_plus_weight(layer.gain, norm)
                new_w = (1 + w) * (1 + z) - 1 if one_plus else w * (1 + z)
                weight.copy_(new_w.to(weight.dtype))
                if bias is not None:
                    bias.copy_((bias.double() * (1 + z)).to(bias.dtype))
            elif bias is not None:
                bias.copy_((bias.double() + z).to(bias.dtype))
            else:
                for reader in readers[name]:
                    lin = model.get_submodule(reader)
                    w, transposed = _linear_weight(lin)
                    shift = z @ w.double() if transposed else w.double() @ z  # [out]
                    lin.bias.copy_((lin.bias.double() + shift).to(lin.bias.dtype))
    return model


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float32: 1e-5, torch.float64: 1e-9}.get(dtype, 3e-2)


def _max_error(population: Population, mind: int, model: nn.Module) -> float:
    inner = unwrap_model(population.model)
    device = next(inner.parameters()).device
    ids = _probe_ids(inner).to(device)
    with torch.no_grad(), population.minds([mind] * ids.shape[0]):
        want = inner(ids).logits.float()
    with torch.no_grad():
        got = model.to(device)(ids).logits.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1.0))


def export_mind(model_or_population, mind: int, path: str | os.PathLike, tokenizer=None,
                overwrite: bool = False, verify: bool = True, **population_kwargs) -> Path:
    """Write mind ``mind`` as an ordinary checkpoint (``save_pretrained``, safetensors).

    The folder loads with plain ``AutoModelForCausalLM.from_pretrained`` and reproduces the
    mind: logits agree with the population's within 1e-5 (relative to the largest logit) in
    float32. The folder is written atomically (a temporary folder, then a rename).

    Args:
        model_or_population: a :class:`Population`, or a model (then ``population_kwargs``
            such as ``sigma``, ``seed``, ``norms``, ``noise`` build the population).
        mind: the mind id (``-1`` writes the plain model).
        path: output folder; must not exist unless ``overwrite``.
        tokenizer: saved alongside when given.
        verify: reload the checkpoint and compare logits with the population before publishing.

    Returns:
        the output folder.

    Raises:
        MindExportError: the mind cannot be folded exactly (the message says why and what to
            change), or the verification failed.
    """
    if isinstance(model_or_population, Population):
        if population_kwargs:
            raise TypeError("pass population settings to Population(...), not to export_mind, when exporting "
                            "from a population")
        population = model_or_population
    else:
        population = Population(model_or_population, **population_kwargs)
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another folder")
    model = fold_mind(population, mind)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(path) as tmp:  # renamed onto path only if everything below succeeds
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {**population.spec(mind).to_dict(), "layers": population.layer_names,
                "source_class": type(unwrap_model(population.model)).__name__}
        (tmp / "manyminds_mind.json").write_text(json.dumps(meta, indent=2))
        if verify:
            from transformers import AutoModelForCausalLM

            dtype = next(model.parameters()).dtype
            loaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).eval()
            err = _max_error(population, mind, loaded)
            if not err <= _tolerance(dtype):
                raise MindExportError(f"the exported mind differs from the population by {err:.2e} (relative "
                                      f"max logit error, tolerance {_tolerance(dtype):.0e}); the fold is not "
                                      "exact for this architecture")
    return path
