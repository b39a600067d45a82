"""The ``manyminds`` command. Each command (or command group) registers itself from its own module.

Importing this package is cheap (typer and rich): torch, transformers, TRL, PEFT and datasets are
imported inside the commands, so ``manyminds --help`` and argument errors answer at once.

Errors: a command's exception ends in one line ``error: <message>`` on stderr and a non-zero exit
(2 for bad input, 1 otherwise); ``--verbose`` shows the traceback, library warnings and raw logs.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup
from typer.exceptions import Abort, Exit, TyperException

from manyminds.cli import (
    calibrate,
    critical,
    demo,
    dpo,
    generate,
    grpo,
    sft,
    tasks,
    uncertainty,
    vllm_serve,
    zoo,
)
from manyminds.cli import (
    eval as eval_,  # the `eval` command; the alias keeps the builtin's name free
)
from manyminds.cli.common import STATE, CLIError, one_line, print_error, setup_quiet

# exceptions that mean "the input is wrong" (exit 2, like a usage error); anything else exits 1
_BAD_INPUT = (ValueError, TypeError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


class _Group(TyperGroup):
    """Turns any exception of a command into one ``error:`` line and a non-zero exit: 2 for bad input
    (:class:`CLIError`), 1 otherwise; the traceback only with ``--verbose``. typer's own usage errors
    and exits pass through."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (TyperException, Exit, Abort):
            raise
        except Exception as err:
            if STATE.verbose:
                raise
            print_error(str(err) if isinstance(err, CLIError) else one_line(err))
            raise Exit(err.exit_code if isinstance(err, CLIError) else 2 if isinstance(err, _BAD_INPUT) else 1) \
                from None


app = typer.Typer(
    cls=_Group,
    name="manyminds",
    help="One pretrained causal LM, many minds: populations, soft-specialist ensembles, population RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show library warnings, raw training logs and full tracebacks."),
):
    setup_quiet(verbose)


# Each module defines ``register(app)``; this order is the order of ``manyminds --help``.
for _command in (sft, dpo, grpo, critical, generate, demo, eval_, uncertainty, calibrate, vllm_serve, tasks, zoo):
    _command.register(app)


def main() -> None:
    app(prog_name="manyminds")
