"""``manyminds dpo``: alpha-Renyi DPO of K LoRA members (reference: the base with adapters off).

Options are the fields of :class:`~manyminds.training.RenyiDPOConfig` and of the script arguments
(:mod:`manyminds.cli.train_args`); ``manyminds dpo --help`` lists them. The run is
:func:`manyminds.cli.renyi.run_renyi`.
"""

from __future__ import annotations

from functools import partial

import typer

from manyminds.cli.renyi import run_renyi
from manyminds.cli.train_args import register_trainer_command

HELP = ("alpha-Renyi DPO of K LoRA members (reference: the base). "
        "Options: fields of RenyiDPOConfig (dpo --help).")


def register(app: typer.Typer) -> None:
    register_trainer_command(app, "dpo", HELP, partial(run_renyi, "dpo"))
