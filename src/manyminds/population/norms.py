"""Find the normalization layers a population perturbs.

B-Trans perturbs the output of every normalization layer whose output has the model's
hidden width and feeds linear layers (q/k/v, gate/up, lm_head): each block's input and
post-attention norms (or ``ln_1``/``ln_2``, or whatever a family calls them) and the final norm.
Which names are per-head q/k norms (left alone by default) and which normalize a residual
branch's *output* (post-norm / "sandwich" layouts: Gemma-2/3's and OLMo-2's
``post_attention_layernorm`` / ``post_feedforward_layernorm``, GLM-4's
``post_self_attn_layernorm`` / ``post_mlp_layernorm``; never perturbed) is the family's
:class:`~manyminds.population.families.NormRule`, looked up by ``config.model_type`` in
:data:`~manyminds.population.families.RULES`; families not in the table get the structural
rule, which reads the same from the module names. OLMo-2 has no block norm left: only
``norms="final"`` works.

Widths are read from ``normalized_shape``, then a partitioned weight's full shape (DeepSpeed
ZeRO-3 keeps it in ``weight.ds_shape``), then the weight's shape; a norm whose width cannot be
read (a weight sharded to zero elements, or an FSDP1 flat slice) has the hidden width, or the
config's head width for a q/k norm. (FSDP2's DTensors report their full shape.)

Norms are found by walking ``model.modules()``, so wrapped models (``PeftModel``,
``DistributedDataParallel``, ``torch.compile``'s ``OptimizedModule``) work unchanged and no
weight is copied. Layers are ordered by block index (norms outside the numbered blocks,
such as the final norm, come last) and by registration order within a block; a layer's
position in the list of all candidate norms of the model is its stable ``key``, which
seeds its noise, so choosing a subset of norms does not change the noise of the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .families import rule_of

__all__ = ["NORM_SELECTIONS", "NormLayer", "find_norm_layers", "hidden_size_of", "unwrap_model"]

NORM_SELECTIONS = ("all", "blocks", "final")

# Class names of normalization layers (RMSNorm, LayerNorm and family-specific variants).
_NORM_CLASS = re.compile(r"(Norm|NormGated)$")
_NOT_NORM_CLASS = re.compile(r"(BatchNorm|GroupNorm|InstanceNorm|LocalResponseNorm)")
# Wrappers whose inner copies should not be counted twice (PEFT ``modules_to_save``).
_SKIP_PARTS = {"original_module"}


@dataclass(frozen=True)
class NormLayer:
    """One normalization layer of a model.

    Attributes:
        name: dotted module path in the (possibly wrapped) model.
        module: the norm module itself.
        key: stable index of this layer among all candidate norms of the model; seeds its noise.
        kind: ``"block"`` (inside a numbered block), ``"final"`` (outside the blocks) or
            ``"qk"`` (per-head query/key norm).
        block: the block index, or ``None`` outside the blocks.
        width: size of the normalized (last) dimension of the output.
        gain: ``"w"`` or ``"1 + w"`` (the norm computes ``xhat * w`` or ``xhat * (1 + w)``), from
            the family's rule; ``None`` for a family not in the table (the module is probed).
    """

    name: str
    module: nn.Module
    key: int
    kind: str
    block: int | None
    width: int
    gain: str | None = None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The innermost ``PreTrainedModel`` of DDP / FSDP / ``torch.compile`` / PEFT wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model") and callable(model.get_base_model):  # PEFT
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP, FSDP, DataParallel
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
    return model


def hidden_size_of(model: nn.Module) -> int:
    """The hidden width of a causal LM (``config.hidden_size``, text config for multimodal models)."""
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    if config is not None:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for attr in ("hidden_size", "n_embd", "d_model"):
            value = getattr(text, attr, None)
            if isinstance(value, int):
                return value
    emb = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "embedding_dim"):
        return emb.embedding_dim
    raise ValueError(f"cannot tell the hidden size of {type(inner).__name__}: it has no "
                     "config.hidden_size and no input embeddings")


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        return True
    name = type(module).__name__
    return bool(_NORM_CLASS.search(name)) and not _NOT_NORM_CLASS.search(name)


def _width(module: nn.Module) -> int | None:
    """The normalized width: ``normalized_shape``, a partitioned weight's full shape, the weight's shape."""
    shape = getattr(module, "normalized_shape", None)
    if shape is not None:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if shape:
            return int(shape[-1])
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        full = getattr(weight, "ds_shape", None)  # DeepSpeed ZeRO-3 keeps the unpartitioned shape here
        if full is not None and len(full) >= 1:
            return int(full[-1])
        if getattr(weight, "_fsdp_flattened", False):
            return None  # FSDP1 (use_orig_params): a flat 1-D slice of any length, not the norm's shape
        if weight.dim() >= 1 and weight.numel() > 0:
            return int(weight.shape[-1])
    for attr in ("hidden_size", "dim"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def _head_dim(model: nn.Module, hidden: int) -> int:
    """Per-head width of q/k norms from the config (``head_dim``, else hidden / heads)."""
    config = getattr(unwrap_model(model), "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head_dim = getattr(text, "head_dim", None)
    if isinstance(head_dim, int):
        return head_dim
    heads = getattr(text, "num_attention_heads", None)
    return hidden // heads if isinstance(heads, int) and heads else hidden


def _block_index(name: str) -> int | None:
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def find_norm_layers(model: nn.Module, norms: str = "all", include_qk_norms: bool = False) -> list[NormLayer]:
    """The normalization layers of ``model`` that a population perturbs, in forward order.

    Args:
        model: any causal LM, possibly wrapped (PEFT, DDP, ``torch.compile``).
        norms: ``"all"`` (block norms and the final norm), ``"blocks"`` (block norms only) or
            ``"final"`` (the norms outside the blocks: the final norm).
        include_qk_norms: also perturb per-head query/key norms (off by default, as in B-Trans).

    Returns:
        The selected layers; ``layer.key`` indexes all candidates (so it does not depend on
        ``norms`` or ``include_qk_norms``).

    Raises:
        ValueError: bad ``norms``, or no normalization layer of the hidden width was found
            (the message names the model class).
    """
    if norms not in NORM_SELECTIONS:
        raise ValueError(f"norms must be one of {', '.join(map(repr, NORM_SELECTIONS))}, got {norms!r}")
    hidden = hidden_size_of(model)
    rule = rule_of(unwrap_model(model))
    found: list[tuple[tuple, str, nn.Module, str, int | None, int]] = []
    norm_prefixes: list[str] = []
    named = list(model.named_modules())
    all_names = {name for name, _ in named}
    branch_outputs: list[str] = []
    for order, (name, module) in enumerate(named):
        if not name or not _is_norm(module):
            continue
        parts = name.split(".")
        if _SKIP_PARTS.intersection(parts):
            continue
        # A norm nested inside another norm is part of it (we hook the outer one).
        if any(name.startswith(p + ".") for p in norm_prefixes):
            continue
        norm_prefixes.append(name)
        is_qk = rule.is_qk(parts[-1])
        width = _width(module)
        if width is None:  # a weight sharded out of sight: a block/final norm has the hidden width
            width = _head_dim(model, hidden) if is_qk else hidden
        if not is_qk and width != hidden:
            continue
        block = _block_index(name)
        if block is not None and not is_qk and rule.is_branch_output(name, all_names):
            branch_outputs.append(name)
            continue
        kind = "qk" if is_qk else ("block" if block is not None else "final")
        sort_key = (block if block is not None else float("inf"), order)
        found.append((sort_key, name, module, kind, block, width))
    found.sort(key=lambda item: item[0])
    layers = [NormLayer(name=n, module=m, key=i, kind=k, block=b, width=w, gain=rule.gain)
              for i, (_, n, m, k, b, w) in enumerate(found)]
    if not any(layer.kind != "qk" for layer in layers):
        inner = type(unwrap_model(model)).__name__
        raise ValueError(f"{inner} is not supported: no normalization layer with the hidden width "
                         f"({hidden}) was found; populations need RMSNorm/LayerNorm-style norm modules")
    inner = type(unwrap_model(model)).__name__
    if norms != "final" and branch_outputs and not any(layer.kind == "block" for layer in layers):
        raise ValueError(f"{inner} normalizes the outputs of its attention/MLP branches (post-norm layout, "
                         f"e.g. {branch_outputs[0]}): no block norm feeds a linear layer, so B-Trans minds "
                         "are not defined on its blocks; use norms='final' to perturb the final norm only")
    wanted = {"all": {"block", "final"}, "blocks": {"block"}, "final": {"final"}}[norms]
    if include_qk_norms:
        wanted = wanted | {"qk"}
    selected = [layer for layer in layers if layer.kind in wanted]
    if not selected:
        raise ValueError(f"norms={norms!r} selects no layer of {inner}; "
                         "use norms='all'")
    return selected
