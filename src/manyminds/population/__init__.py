"""Population minds (B-Trans): Gaussian offsets on normalization outputs turn one causal LM
into a population of addressable minds, run side by side in one batched forward.

See :class:`Population` and ``docs/population.md``.
"""

from .calibrate import (
    CalibrationConfig,
    CalibrationResult,
    CalibrationWarning,
    calibrate_sigma,
    plot_calibration,
)
from .collapse import MindCollapseWarning, is_degenerate
from .decisions import VoteResult, best_of_minds, generate_grid, population_vote, select_minds
from .export import MindExportError, export_mind, fold_mind
from .noise import NOISE_KINDS, apply_noise, mind_noise_table, mind_seed, standard_noise
from .norms import NormLayer, find_norm_layers
from .population import Population
from .scale import SIGMA_SCALES, layer_scales
from .spec import MindSpec

__all__ = [
    "NOISE_KINDS",
    "SIGMA_SCALES",
    "CalibrationConfig",
    "CalibrationResult",
    "CalibrationWarning",
    "MindCollapseWarning",
    "MindExportError",
    "MindSpec",
    "NormLayer",
    "Population",
    "VoteResult",
    "apply_noise",
    "best_of_minds",
    "calibrate_sigma",
    "export_mind",
    "find_norm_layers",
    "fold_mind",
    "generate_grid",
    "is_degenerate",
    "layer_scales",
    "mind_noise_table",
    "mind_seed",
    "plot_calibration",
    "population_vote",
    "select_minds",
    "standard_noise",
]
