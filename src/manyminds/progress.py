"""The one progress bar of ``manyminds``: a rich ``Progress`` on stderr with the house columns.

    >>> with progress_bar("loss {task.fields[loss]:.3f}", remaining=True) as bar:
    ...     task = bar.add_task("building", total=100, loss=float("nan"))
    ...     bar.update(task, completed=1, loss=2.5)

:func:`progress_bar` builds it (columns: ``[spinner] description | bar | done/total | extra... |
elapsed [| remaining]``); the returned ``rich.progress.Progress`` is its own context manager,
started on entry and stopped on exit, also when the block raises (rich's ``__exit__``). Callers
that start and stop it at events rather than around a block (a ``TrainerCallback``) call
``start()`` / ``stop()`` themselves. ``enabled=False`` gives a bar that draws nothing, so callers
need no second code path. stderr keeps stdout for results.
"""

from __future__ import annotations

__all__ = ["progress_bar"]


def progress_bar(*extra: str, description: str = "{task.description}", spinner: bool = False,
                 remaining: bool = False, enabled: bool = True, transient: bool = False,
                 console=None):
    """A rich ``Progress`` with the house columns, not yet started (enter it, or call ``start()``).

    Args:
        *extra: rich ``TextColumn`` formats shown after the counts, e.g.
            ``"loss {task.fields[loss]:.3f}"`` (each task then needs that field).
        description: format of the first column (default the task's description).
        spinner: lead with a spinner (for stages of unknown length).
        remaining: end with the estimated time remaining.
        enabled: ``False`` draws nothing (rich's ``disable``); the calls still work.
        transient: erase the bar when it stops.
        console: a ``rich.console.Console``; default one on stderr.

    Returns:
        ``rich.progress.Progress``.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn()] if spinner else []
    columns += [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(fmt) for fmt in extra]
    columns += [TimeElapsedColumn()] + ([TimeRemainingColumn()] if remaining else [])
    return Progress(*columns, console=console if console is not None else Console(stderr=True),
                    transient=transient, disable=not enabled)
