"""Population minds (B-Trans): Gaussian offsets on normalization outputs turn one causal LM
into a population of addressable minds, run side by side in one batched forward.

See :class:`Population` and ``docs/population.md``. The names below are what users call; the
building blocks stay importable from their modules (``noise``: the pure noise functions,
``norms``, ``scale``, ``decisions``, ``collapse``, ``export.fold_mind``, ``sigma_cache``: the
``sigma="auto"`` cache).
"""

from .calibrate import (
    CalibrationConfig,
    CalibrationResult,
    CalibrationWarning,
    calibrate_sigma,
    calibrated_population,
    plot_calibration,
)
from .collapse import MindCollapseWarning
from .decisions import population_vote
from .export import MindExportError, export_mind
from .norms import find_norm_layers
from .population import Population
from .sigma_cache import AutoSigma, auto_sigma, auto_sigma_record
from .spec import MindSpec

__all__ = [
    "AutoSigma",
    "CalibrationConfig",
    "CalibrationResult",
    "CalibrationWarning",
    "MindCollapseWarning",
    "MindExportError",
    "MindSpec",
    "Population",
    "auto_sigma",
    "auto_sigma_record",
    "calibrate_sigma",
    "calibrated_population",
    "export_mind",
    "find_norm_layers",
    "plot_calibration",
    "population_vote",
]
