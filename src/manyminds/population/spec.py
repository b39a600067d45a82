"""A mind's address: everything needed to rebuild its offsets on another model object,
device or engine (an exported checkpoint's metadata, a vLLM request).

A mind is a pure function of ``(seed, mind, layer key)`` scaled by ``sigma``, applied to the
norms that ``norms`` / ``include_qk_norms`` select, as ``noise``. ``sigma`` is always the
*resolved* absolute scale of each layer's offset (``z_l = sigma_l * eps_l``): a population built
with ``sigma_scale="weight"`` or ``sigma="calibrated"`` records its per-layer values here, and
``sigma_scale`` / ``base_sigma`` only say how they were chosen (consumers ignore them). The spec also records the
layout it was made for (number of perturbed norms and their width), so applying it to a model
with other norms fails with a clear error instead of silently giving another mind.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from .noise import NOISE_KINDS
from .norms import NORM_SELECTIONS
from .scale import SIGMA_SCALES

__all__ = ["MindSpec"]


@dataclass(frozen=True)
class MindSpec:
    """The address of one mind.

    Attributes:
        seed: population seed.
        mind: mind id (``-1`` = the unperturbed model).
        sigma: noise scale, one float or one value per perturbed norm.
        norms: ``"all"``, ``"blocks"`` or ``"final"``.
        noise: ``"additive"`` or ``"multiplicative"``.
        include_qk_norms: whether per-head q/k norms are perturbed.
        num_layers: number of perturbed norms of the model the spec was made for.
        width: their width (the model's hidden size).
        sigma_scale: provenance only: how ``sigma`` was chosen (``"absolute"``, or ``"weight"``:
            ``sigma_l = base_sigma * rms(g_l)``, see :mod:`~manyminds.population.scale`).
            The offsets never depend on it.
        base_sigma: provenance only: the user's (or calibrated) sigma before per-layer scaling.
    """

    seed: int
    mind: int
    sigma: float | tuple[float, ...]
    norms: str = "all"
    noise: str = "additive"
    include_qk_norms: bool = False
    num_layers: int | None = None
    width: int | None = None
    sigma_scale: str = "absolute"
    base_sigma: float | None = None

    def __post_init__(self):
        for name in ("seed", "mind"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"mind spec: {name} must be an int, got {value!r}")
        if self.mind < -1:
            raise ValueError(f"mind spec: mind must be >= 0 (or -1 for the plain model), got {self.mind}")
        sigma = self.sigma
        if isinstance(sigma, (list, tuple)):
            object.__setattr__(self, "sigma", tuple(float(s) for s in sigma))
        elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
            object.__setattr__(self, "sigma", float(sigma))
        else:
            raise TypeError(f"mind spec: sigma must be a float or a list of floats, got {sigma!r}")
        values = self.sigma if isinstance(self.sigma, tuple) else (self.sigma,)
        if not all(0 <= s < float("inf") for s in values):
            raise ValueError(f"mind spec: sigma must be finite and >= 0, got {self.sigma}")
        if self.sigma_scale not in SIGMA_SCALES:
            raise ValueError(f"mind spec: sigma_scale must be one of {', '.join(map(repr, SIGMA_SCALES))}, "
                             f"got {self.sigma_scale!r}")
        if self.sigma_scale != "absolute" and not isinstance(self.sigma, tuple):
            raise ValueError("mind spec: sigma is the resolved per-layer offset scale; a spec with "
                             f"sigma_scale={self.sigma_scale!r} needs one value per layer: build it with "
                             "Population(model, sigma=..., sigma_scale=...).spec(mind)")
        if self.base_sigma is not None:
            object.__setattr__(self, "base_sigma", float(self.base_sigma))
        if self.norms not in NORM_SELECTIONS:
            raise ValueError(f"mind spec: norms must be one of {', '.join(map(repr, NORM_SELECTIONS))}, "
                             f"got {self.norms!r}")
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"mind spec: noise must be one of {', '.join(map(repr, NOISE_KINDS))}, "
                             f"got {self.noise!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``sigma`` as a float or a list)."""
        out = asdict(self)
        if isinstance(self.sigma, tuple):
            out["sigma"] = list(self.sigma)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MindSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error that lists the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"a mind spec is a dict, got {type(data).__name__}")
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"mind spec: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        missing = [k for k in ("seed", "mind", "sigma") if k not in data]
        if missing:
            raise ValueError(f"mind spec: missing key(s) {', '.join(missing)}")
        return cls(**data)

    def check_layout(self, num_layers: int, width: int, model_name: str = "this model") -> None:
        """Raise ``ValueError`` when the spec was made for other norms than ``num_layers`` of ``width``."""
        if self.num_layers is not None and self.num_layers != num_layers or \
                self.width is not None and self.width != width:
            raise ValueError(
                f"mind spec was made for a model with {self.num_layers} perturbed norms of width {self.width} "
                f"(norms={self.norms!r}), but {model_name} has {num_layers} of width {width}; "
                "use a spec made for this model (Population(model, ...).spec(mind))")
        if isinstance(self.sigma, tuple) and len(self.sigma) != num_layers:
            raise ValueError(f"mind spec has {len(self.sigma)} sigma values but {model_name} perturbs "
                             f"{num_layers} norms; pass one value per norm or a single float")
