"""``manyminds sft``: alpha-Renyi SFT of K LoRA members on a frozen base.

Options are the fields of :class:`~manyminds.training.RenyiSFTConfig` and of the script arguments
(:mod:`manyminds.cli.train_args`); ``manyminds sft --help`` lists them. The run is
:func:`manyminds.cli.renyi.run_renyi`.
"""

from __future__ import annotations

import typer

from manyminds.cli.renyi import run_renyi
from manyminds.cli.train_args import RAW_OPTIONS


def register(app: typer.Typer) -> None:
    @app.command("sft", context_settings=RAW_OPTIONS, add_help_option=False)
    def sft(ctx: typer.Context):
        """alpha-Renyi SFT of K LoRA members on a frozen base. Options: fields of RenyiSFTConfig (sft --help)."""
        run_renyi("sft", ctx.args)
