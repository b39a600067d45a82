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
    "PopulationGRPOConfig": "manyminds.training",
    "PopulationGRPOTrainer": "manyminds.training",
}

__all__ = [
    "EnsembleLoRA",
    "Population",
    "PopulationGRPOConfig",
    "PopulationGRPOTrainer",
    "__version__",
    "load",
    "load_task",
]


def __getattr__(name):
    # PEP 562: a public name imports its module (and torch, transformers...) on first use only
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'manyminds' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})
