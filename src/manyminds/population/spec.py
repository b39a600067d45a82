"""A mind's address: everything needed to rebuild its offsets on another model object,
device or engine (an exported checkpoint's metadata, a vLLM request).

A mind is a pure function of ``(seed, mind, layer key)`` scaled by ``sigma``, applied to the
norms that ``norms`` / ``include_qk_norms`` select, as ``noise``. ``sigma`` is always a tuple of the
*resolved* absolute scales of the layers' offsets (``z_l = sigma_l * eps_l``): one value (every
perturbed norm the same) or one value per perturbed norm; :meth:`MindSpec.layer_sigmas` gives the
per-norm values either way. A population built with ``sigma_scale="weight"`` or a calibrated sigma
records its per-layer values here, and ``sigma_scale`` / ``base_sigma`` only say how they were chosen
(consumers ignore them). The spec also records the layout it was made for (number of perturbed norms
and their width), so applying it to a model with other norms fails with a clear error instead of
silently giving another mind.

Wire form (:meth:`MindSpec.to_dict`): ``sigma`` is always a list; :meth:`MindSpec.from_dict` also
reads the older scalar form (``"sigma": 0.02``).
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any

from .noise import NOISE_KINDS, sigma_values
from .norms import NORM_SELECTIONS
from .scale import SIGMA_SCALES

__all__ = ["MindSpec"]


@dataclass(frozen=True)
class MindSpec:
    """The address of one mind.

    Attributes:
        seed: population seed.
        mind: mind id (``-1`` = the unperturbed model).
        sigma: resolved noise scales, a tuple of floats >= 0: one value for every perturbed norm,
            or one value per perturbed norm (in forward order). A float or a list given to the
            constructor is normalised to this tuple.
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
    sigma: tuple[float, ...]
    norms: str = "all"
    noise: str = "additive"
    include_qk_norms: bool = False
    num_layers: int | None = None
    width: int | None = None
    sigma_scale: str = "absolute"
    base_sigma: float | None = None

    def __post_init__(self):
        for name in ("seed", "mind"):
            _check_int(name, getattr(self, name))
        if self.mind < -1:
            raise ValueError(f"mind spec: mind must be >= 0 (or -1 for the plain model), got {self.mind}")
        try:
            object.__setattr__(self, "sigma", sigma_values(self.sigma))
        except (TypeError, ValueError) as err:
            raise type(err)(f"mind spec: {err}") from None
        if not isinstance(self.include_qk_norms, bool):
            raise TypeError(f"mind spec: include_qk_norms must be true or false, got {self.include_qk_norms!r}")
        for name in ("num_layers", "width"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value)
                if value < 1:
                    raise ValueError(f"mind spec: {name} must be >= 1 (or null), got {value}")
        if self.num_layers is not None and len(self.sigma) not in (1, self.num_layers):
            raise ValueError(f"mind spec: {len(self.sigma)} sigma values for {self.num_layers} perturbed norms; "
                             "pass one value per norm or a single float")
        if self.sigma_scale not in SIGMA_SCALES:
            raise ValueError(f"mind spec: sigma_scale must be one of {', '.join(map(repr, SIGMA_SCALES))}, "
                             f"got {self.sigma_scale!r}")
        if self.sigma_scale != "absolute" and len(self.sigma) == 1 and self.num_layers != 1:
            raise ValueError("mind spec: sigma is the resolved per-layer offset scale; a spec with "
                             f"sigma_scale={self.sigma_scale!r} needs one value per layer: build it with "
                             "Population(model, sigma=..., sigma_scale=...).spec(mind)")
        if self.base_sigma is not None:
            if isinstance(self.base_sigma, bool) or not isinstance(self.base_sigma, numbers.Real):
                raise TypeError(f"mind spec: base_sigma must be a float or null, got {self.base_sigma!r}")
            object.__setattr__(self, "base_sigma", float(self.base_sigma))
        if self.norms not in NORM_SELECTIONS:
            raise ValueError(f"mind spec: norms must be one of {', '.join(map(repr, NORM_SELECTIONS))}, "
                             f"got {self.norms!r}")
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"mind spec: noise must be one of {', '.join(map(repr, NOISE_KINDS))}, "
                             f"got {self.noise!r}")

    @property
    def is_plain(self) -> bool:
        """Whether the spec is the unperturbed model (``mind == -1`` or every sigma 0): no offsets."""
        return self.mind == -1 or not any(self.sigma)

    def layer_sigmas(self, num_layers: int) -> tuple[float, ...]:
        """``sigma_l`` of each of ``num_layers`` perturbed norms: ``sigma`` itself, or its one value repeated.

        Raises:
            ValueError: ``sigma`` has neither 1 nor ``num_layers`` values.
        """
        if len(self.sigma) == num_layers:
            return self.sigma
        if len(self.sigma) == 1:
            return self.sigma * num_layers
        raise ValueError(f"mind spec has {len(self.sigma)} sigma values but the model perturbs {num_layers} "
                         "norms; pass one value per norm or a single float")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``sigma`` as a list)."""
        return {**asdict(self), "sigma": list(self.sigma)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MindSpec:
        """Inverse of :meth:`to_dict` (also reads a scalar ``sigma``); unknown keys are an error that
        lists the valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"a mind spec is a dict, got {type(data).__name__}")
        valid = set(cls.__dataclass_fields__)
        unknown = sorted(set(map(str, data)) - valid)
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
        if len(self.sigma) not in (1, num_layers):
            raise ValueError(f"mind spec has {len(self.sigma)} sigma values but {model_name} perturbs "
                             f"{num_layers} norms; pass one value per norm or a single float")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"mind spec: {name} must be an int, got {value!r}")
