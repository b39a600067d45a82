"""What a population's ``sigma`` is measured against: absolute offsets or the norm's own scale.

B-Trans adds ``z = sigma * eps`` (``eps ~ N(0, I_H)``) to every perturbed norm's output with one
absolute ``sigma``. A norm's output is ``xhat * w`` (RMSNorm; LayerNorm adds a bias), where ``xhat``
has unit RMS per row, so its typical size is ``rms(w)``. Models differ wildly there: SmolLM2-135M's
first ``input_layernorm`` has ``rms(w) ~ 0.03`` while its final norm has ``~ 1.8``, so one absolute
``sigma`` swamps one layer and barely moves another. ``sigma_scale="weight"`` measures sigma in
units of each norm's gain:

    sigma_scale="absolute":  sigma_l = sigma                  (the paper)
    sigma_scale="weight":    sigma_l = sigma * rms(g_l),   rms(g) = sqrt(mean_i g_i^2)

with ``g_l`` the norm's effective gain: its weight ``w``, or ``1 + w`` for Gemma-style norms that
scale by ``1 + w`` (the family's ``gain`` in :data:`~manyminds.population.families.RULES`; a
family not in the table is probed), and ``1`` for a norm without a weight. The resolution
happens once, when the population is built; the per-layer sigmas are what
:class:`~manyminds.population.spec.MindSpec` records, so exported checkpoints and vLLM workers
rebuild the same offsets without knowing how they were chosen.

Multiplicative noise ``y * (1 + z)`` is already relative to the norm's output (its offset on
channel ``i`` is ``y_i * z_i``), so ``sigma_scale="weight"`` with it is an error rather than a
second, silent rescaling.

Sharded weights: a DeepSpeed ZeRO-3 partition (zero local elements, ``ds_shape`` set) or an FSDP1
flat slice cannot be read on one rank; the error says to build the population before sharding (or
inside ``deepspeed.zero.GatheredParameters``) or to pass per-layer sigmas. An FSDP2 ``DTensor``
is gathered with ``full_tensor()`` (every rank builds its population, so the collective matches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .families import uses_one_plus_weight
from .norms import NormLayer

__all__ = ["SIGMA_SCALES", "layer_scales", "norm_gain", "norm_gain_rms"]

SIGMA_SCALES = ("absolute", "weight")


def _readable_weight(layer: NormLayer) -> torch.Tensor | None:
    """The norm's full weight as a float64 CPU tensor ``[W]``, ``None`` when it has none.

    Raises:
        ValueError: the weight is partitioned away from this process (ZeRO-3, FSDP1 flat slice).
    """
    weight = getattr(layer.module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    if hasattr(weight, "full_tensor") and callable(weight.full_tensor):  # FSDP2 / tensor-parallel DTensor
        weight = weight.full_tensor()
    if getattr(weight, "_fsdp_flattened", False) or weight.numel() != layer.width:
        raise ValueError(f"sigma_scale='weight' needs the weight of {layer.name}, but this process holds "
                         f"{weight.numel()} of its {layer.width} values (sharded: DeepSpeed ZeRO-3 / FSDP1); build "
                         "the Population before sharding (or inside deepspeed.zero.GatheredParameters), or pass "
                         "per-layer sigmas with sigma_scale='absolute'")
    return weight.detach().to("cpu", torch.float64).reshape(-1)  # [W]


def norm_gain(layer: NormLayer) -> torch.Tensor | None:
    """The effective per-channel gain ``g`` of a norm (float64 ``[W]``): ``w``, or ``1 + w`` for a
    norm that scales by ``1 + w`` (``layer.gain``); ``None`` for a norm without a weight (gain
    1)."""
    w = _readable_weight(layer)
    if w is None:
        return None
    return 1.0 + w if uses_one_plus_weight(layer.gain, layer.module) else w


def norm_gain_rms(layer: NormLayer) -> float:
    """``rms(g) = sqrt(mean_i g_i^2)`` of a norm's effective gain; ``1.0`` without a weight."""
    g = norm_gain(layer)
    if g is None:
        return 1.0
    value = float(g.pow(2).mean().sqrt())
    if not math.isfinite(value):
        raise ValueError(f"the weight of {layer.name} is not finite; cannot scale sigma by it")
    return value


def layer_scales(layers: Sequence[NormLayer], sigma_scale: str = "absolute", noise: str = "additive") -> list[float]:
    """Per-layer factors ``f_l`` with ``sigma_l = sigma * f_l`` (see the module docstring).

    Args:
        layers: the perturbed norms (``Population.layers``).
        sigma_scale: ``"absolute"`` (``f_l = 1``) or ``"weight"`` (``f_l = rms(g_l)``).
        noise: the population's noise kind; ``"multiplicative"`` only with ``"absolute"``.

    Raises:
        ValueError: an unknown ``sigma_scale``, ``"weight"`` with multiplicative noise, or an
            unreadable (sharded) weight.
    """
    if sigma_scale not in SIGMA_SCALES:
        raise ValueError(f"sigma_scale must be one of {', '.join(map(repr, SIGMA_SCALES))}, got {sigma_scale!r}")
    if sigma_scale == "absolute":
        return [1.0] * len(layers)
    if noise == "multiplicative":
        raise ValueError("sigma_scale='weight' applies to additive noise; multiplicative noise y * (1 + z) is "
                         "already relative to each norm's output: use sigma_scale='absolute' with it")
    return [norm_gain_rms(layer) for layer in layers]
