"""The ``manyminds`` command. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="manyminds",
    help="One pretrained causal LM, many minds: populations, soft-specialist ensembles, population RL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Each module defines ``register(app)``; a module is added here once it exists.
_AREAS = ["manyminds.cli.foundation", "manyminds.cli.population", "manyminds.cli.ensemble",
          "manyminds.cli.rl"]

for _name in _AREAS:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as err:
        if err.name != _name:
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()
