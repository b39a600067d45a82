"""``manyminds sft``: alpha-Renyi SFT of K LoRA members on a frozen base.

Options are the fields of :class:`~manyminds.training.RenyiSFTConfig` and of the script arguments
(:mod:`manyminds.cli.train_args`); ``manyminds sft --help`` lists them. The run is
:func:`manyminds.cli.renyi.run_renyi`.
"""

from __future__ import annotations

from functools import partial

import typer

from manyminds.cli.renyi import run_renyi
from manyminds.cli.train_args import register_trainer_command

HELP = ("alpha-Renyi SFT of K LoRA members on a frozen base. "
        "Options: fields of RenyiSFTConfig (sft --help).")


def register(app: typer.Typer) -> None:
    register_trainer_command(app, "sft", HELP, partial(run_renyi, "sft"))
