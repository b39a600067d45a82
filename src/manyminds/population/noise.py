"""Pure noise functions of population minds.

A mind's offset on layer ``l`` is ``z = sigma_l * eps``, ``eps ~ N(0, I_H)`` drawn from a
``torch.Generator`` seeded with a hash of ``(population seed, mind id, layer key)``. It never
touches the global RNG, so generation, log-prob recomputation and gradient-checkpoint
replays all see the same mind, and a mind's noise does not depend on which other minds
share its batch.

Device independence: the draw always happens on the CPU (torch's CPU Mersenne-Twister
generator, float32) and is then moved to the norm's device and cast to its dtype. A mind is
therefore the same mind on every device and engine, up to the rounding of the target dtype:
mind ``m`` chosen on a GPU is mind ``m`` on a CPU, in an exported checkpoint and inside a
vLLM worker. (``torch.Generator(device="cuda")`` draws a different stream: measured on an
H100, CPU- and CUDA-drawn minds differed by as much as a mind's own effect.)
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable, Sequence

import torch

__all__ = ["NOISE_KINDS", "apply_noise", "check_sigma", "mind_noise_table", "mind_seed", "sigma_values",
           "standard_noise"]

NOISE_KINDS = ("additive", "multiplicative")


def mind_seed(seed: int, mind: int, layer: int) -> int:
    """A 63-bit generator seed, a hash (BLAKE2b) of the triple ``(seed, mind, layer)``."""
    digest = hashlib.blake2b(f"manyminds:{int(seed)}:{int(mind)}:{int(layer)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def standard_noise(seed: int, mind: int, layer: int, width: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """``eps ~ N(0, I_width)`` of mind ``mind`` on layer ``layer``: float32 ``[width]`` on ``device``.

    Pure and device-independent: drawn on the CPU from a generator seeded by
    :func:`mind_seed`, then moved to ``device``, so the values are the same on every device.
    The global RNG is neither read nor advanced.
    """
    if mind < 0:
        raise ValueError(f"mind ids are >= 0 (-1 means the unperturbed model), got {mind}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int (the norm's output width), got {width!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(mind_seed(seed, mind, layer))
    eps = torch.randn(width, generator=gen, dtype=torch.float32)  # [width], always drawn on the CPU
    return eps.to(device)


def mind_noise_table(seed: int, minds: Sequence[int], layer: int, width: int, sigma: float,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     draw: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
    """Offsets of one layer for a batch of minds: ``[B, width]`` with row ``b`` equal to
    ``sigma * standard_noise(seed, minds[b], layer, width)`` and zeros where ``minds[b] == -1``.

    Each distinct mind is drawn once; the result is cast to ``dtype`` after scaling in float32.
    ``draw(m)``, if given, returns mind ``m``'s ``standard_noise`` (float32 ``[width]`` on
    ``device``) from elsewhere, e.g. :meth:`Population.noise_vector`'s cache.
    """
    device = torch.device(device)
    if draw is None:
        def draw(m: int) -> torch.Tensor:
            return standard_noise(seed, m, layer, width, device)
    unique = sorted({int(m) for m in minds if int(m) != -1}) if sigma != 0 else []
    # table row 0 is the unperturbed model, row i + 1 is unique[i]: [U + 1, width]
    table = torch.zeros(len(unique) + 1, width, device=device, dtype=torch.float32)
    for i, m in enumerate(unique):
        table[i + 1] = draw(m) * float(sigma)
    where = {m: i + 1 for i, m in enumerate(unique)}
    index = torch.tensor([where.get(int(m), 0) for m in minds], device=device, dtype=torch.long)
    return table[index].to(dtype)  # [B, width]


def apply_noise(output: torch.Tensor, offset: torch.Tensor, noise: str = "additive") -> torch.Tensor:
    """Perturb a norm's output with a per-row offset.

    ``additive`` (B-Trans): ``y + z``. ``multiplicative`` (gain noise): ``y * (1 + z)``.

    Args:
        output: the norm's output ``[B, ..., H]``.
        offset: ``z`` broadcastable to ``output``, e.g. ``[B, 1, H]``.
    """
    if noise == "additive":
        return output + offset
    if noise == "multiplicative":
        return output * (1.0 + offset)
    raise ValueError(f"noise must be one of {', '.join(map(repr, NOISE_KINDS))}, got {noise!r}")


def sigma_values(sigma) -> tuple[float, ...]:
    """``sigma`` as a tuple of finite floats >= 0: one value for a number (or a 0-dim tensor), one per
    entry for a non-empty sequence (or tensor). The one validation of a sigma's values
    (:func:`check_sigma`, :class:`~manyminds.population.spec.MindSpec`).

    Raises:
        TypeError: neither a number nor a non-empty sequence of numbers (``bool`` is not a number here).
        ValueError: a value is negative, infinite or NaN.
    """
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.detach().cpu().reshape(-1).tolist() if sigma.dim() else float(sigma)
    values = tuple(sigma) if isinstance(sigma, Sequence) and not isinstance(sigma, str) else (sigma,)
    if not values or any(isinstance(s, bool) or not isinstance(s, numbers.Real) for s in values):
        raise TypeError(f"sigma must be a float >= 0 or a non-empty sequence of floats, got {sigma!r}")
    values = tuple(float(s) for s in values)
    bad = next((s for s in values if not 0 <= s < math.inf), None)
    if bad is not None:
        raise ValueError(f"sigma must be finite and >= 0, got {bad}; the paper uses 0.02")
    return values


def check_sigma(sigma, num_layers: int) -> list[float]:
    """Validate ``sigma`` (a float >= 0, or one finite value >= 0 per layer) -> list of per-layer sigmas."""
    values = sigma_values(sigma)
    per_layer = isinstance(sigma, torch.Tensor) and sigma.dim() > 0 or \
        isinstance(sigma, Sequence) and not isinstance(sigma, str)
    if not per_layer:
        return [values[0]] * num_layers
    if len(values) != num_layers:
        raise ValueError(f"sigma has {len(values)} values but the population perturbs {num_layers} "
                         "norm layers; pass one value per layer or a single float")
    return list(values)
