"""manyminds: one pretrained causal LM, many minds.

Public API (imported lazily so that ``import manyminds`` stays cheap):

- ``load(name_or_path)``: a zoo model, a local directory or a hub id -> ``(model, tokenizer)``.
- ``load_task(name, split, n, seed)``: bundled verifiable tasks as ``datasets.Dataset``.
- ``Population``: population minds (B-Trans) on any causal LM.
- ``EnsembleLoRA``: K-member LoRA ensembles trained with the alpha-Renyi objective.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load": "manyminds.zoo",
    "load_task": "manyminds.tasks",
    "Population": "manyminds.population",
    "EnsembleLoRA": "manyminds.ensemble",
    "PopulationGRPOConfig": "manyminds.rl",
    "PopulationGRPOTrainer": "manyminds.rl",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'manyminds' has no attribute {name!r}")
