"""``manyminds dpo``: alpha-Renyi DPO of K LoRA members (reference: the base with adapters off).

Options are the fields of :class:`~manyminds.training.RenyiDPOConfig` and of the script arguments
(:mod:`manyminds.cli.train_args`); ``manyminds dpo --help`` lists them. The run is
:func:`manyminds.cli.renyi.run_renyi`.
"""

from __future__ import annotations

import typer

from manyminds.cli.renyi import run_renyi
from manyminds.cli.train_args import RAW_OPTIONS


def register(app: typer.Typer) -> None:
    @app.command("dpo", context_settings=RAW_OPTIONS, add_help_option=False)
    def dpo(ctx: typer.Context):
        """alpha-Renyi DPO of K LoRA members (reference: the base). Options: fields of RenyiDPOConfig (dpo --help)."""
        run_renyi("dpo", ctx.args)
