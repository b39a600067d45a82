"""``manyminds tasks list`` and ``manyminds tasks show``: the bundled verifiable tasks."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from manyminds.cli.common import console


def register(app: typer.Typer) -> None:
    tasks_app = typer.Typer(help="Bundled verifiable tasks.", no_args_is_help=True)
    app.add_typer(tasks_app, name="tasks")

    @tasks_app.command("list")
    def tasks_list():
        """List the bundled tasks and their difficulty knobs."""
        from manyminds.tasks import TASKS, task_knobs

        table = Table(title="manyminds tasks")
        for col in ("name", "description", "knobs (defaults)"):
            table.add_column(col)
        for name, task in TASKS.items():
            table.add_row(name, task.description, ", ".join(f"{k}={v!r}" for k, v in task_knobs(name).items()))
        console().print(table)

    @tasks_app.command("show")
    def tasks_show(
        name: str = typer.Argument(..., help="task name (manyminds tasks list)"),
        split: str = typer.Option("train", help="train or test"),
        n: int = typer.Option(5, help="number of examples to print"),
        seed: int = typer.Option(0, help="sampling seed"),
        knob: list[str] = typer.Option([], help="difficulty knob as key=value (repeatable), e.g. digits=3"),  # noqa: B008
    ):
        """Print examples of a task."""
        from manyminds.tasks import load_task

        knobs = {}
        for kv in knob:
            if "=" not in kv:
                raise typer.BadParameter(f"--knob takes key=value, got {kv!r}")
            k, v = kv.split("=", 1)
            knobs[k] = json.loads(v) if v.lstrip("-").replace(".", "", 1).isdigit() else v
        ds = load_task(name, split=split, n=n, seed=seed, **knobs)
        table = Table(title=f"{name} ({split}, seed {seed})", show_lines=True)
        for col in ds.column_names:
            table.add_column(col)
        for row in ds:
            table.add_row(*(repr(row[c]) if isinstance(row[c], str) else str(row[c]) for c in ds.column_names))
        console().print(table)
