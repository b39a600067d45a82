"""``manyminds tasks ...`` and ``manyminds zoo ...``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    tasks_app = typer.Typer(help="Bundled verifiable tasks.", no_args_is_help=True)
    zoo_app = typer.Typer(help="The zoo: default models trained locally and pretrained ones converted once, cached.",
                          no_args_is_help=True)
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(zoo_app, name="zoo")

    @tasks_app.command("list")
    def tasks_list():
        """List the bundled tasks and their difficulty knobs."""
        from manyminds.tasks import TASKS, task_knobs

        table = Table(title="manyminds tasks")
        for col in ("name", "description", "knobs (defaults)"):
            table.add_column(col)
        for name, task in TASKS.items():
            table.add_row(name, task.description, ", ".join(f"{k}={v!r}" for k, v in task_knobs(name).items()))
        console.print(table)

    @tasks_app.command("show")
    def tasks_show(
        name: str = typer.Argument(..., help="task name: arith, conflict or prefs"),
        split: str = typer.Option("train", help="train or test"),
        n: int = typer.Option(5, help="number of examples to print"),
        seed: int = typer.Option(0, help="sampling seed"),
        knob: list[str] = typer.Option([], help="difficulty knob as key=value (repeatable), e.g. digits=3"),
    ):
        """Print examples of a task."""
        from manyminds.tasks import load_task

        knobs = {}
        for kv in knob:
            if "=" not in kv:
                raise typer.BadParameter(f"--knob takes key=value, got {kv!r}")
            k, v = kv.split("=", 1)
            knobs[k] = json.loads(v) if v.lstrip("-").replace(".", "", 1).isdigit() else v
        try:
            ds = load_task(name, split=split, n=n, seed=seed, **knobs)
        except ValueError as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2)
        table = Table(title=f"{name} ({split}, seed {seed})", show_lines=True)
        for col in ds.column_names:
            table.add_column(col)
        for row in ds:
            table.add_row(*(repr(row[c]) if isinstance(row[c], str) else str(row[c]) for c in ds.column_names))
        console.print(table)

    @zoo_app.command("list")
    def zoo_list():
        """List the zoo models, whether they are built, and their measured accuracy."""
        from manyminds.zoo import DEFAULT_MODEL, ZOO, GGUFEntry, model_dir, read_marker, shipped_dir

        table = Table(title="manyminds zoo")
        for col in ("name", "family", "built", "arith test acc (greedy)", "description"):
            table.add_column(col)
        for name, entry in ZOO.items():
            shipped = shipped_dir(name)
            marker = read_marker(shipped or model_dir(name), entry)
            converted = isinstance(entry, GGUFEntry)
            acc = f"{marker['arith_test_greedy_accuracy']:.1%}" if marker and not converted else "-"
            family = f"{entry.family} (from GGUF)" if converted else entry.family
            table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), family,
                          "shipped" if shipped else (str(model_dir(name)) if marker else "no"), acc,
                          escape(entry.description))
        console.print(table)

    @zoo_app.command("build")
    def zoo_build(
        name: str = typer.Argument("tiny-arith", help="zoo model name"),
        force: bool = typer.Option(False, help="rebuild even if a complete cache entry exists"),
    ):
        """Train a zoo model on the bundled tasks (or convert a pretrained one) and cache it."""
        from manyminds.zoo import ZOO, GGUFEntry, build, read_marker
        from manyminds.zoo_gguf import FetchError

        if name not in ZOO:
            console.print(f"[red]error:[/red] unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
            raise typer.Exit(2)
        try:
            path = build(name, force=force)
        except (FetchError, ImportError, FileNotFoundError) as err:
            console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(1)
        marker = read_marker(path)
        console.print(f"[bold]{name}[/bold] at {path}")
        if isinstance(ZOO[name], GGUFEntry):
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            console.print(f"converted from {marker['gguf_file']} ({marker['source']}) in "
                          f"{marker['convert_seconds']:.0f}s; {marker['num_parameters']:,} parameters, "
                          f"{size / 1e6:.0f} MB on disk; reloaded logits match the GGUF model "
                          f"(max |diff| {marker['max_logit_diff_vs_gguf']:.1e})")
            console.print(f"greedy answer to {marker['probe_prompt']!r}: {marker['probe_answer']!r}")
            return
        from manyminds.zoo import shipped_dir

        if shipped_dir(name) is not None:
            console.print(f"note: a rebuild can differ by machine (CPU training is not bit-reproducible); "
                          f"manyminds.load({name!r}) keeps loading the weights shipped with the package; "
                          f"load this rebuild with manyminds.load({str(path)!r})", soft_wrap=True)
        console.print(f"held-out arith test accuracy (greedy, 200 problems): "
                      f"[bold]{marker['arith_test_greedy_accuracy']:.1%}[/bold]; "
                      f"trained {marker['train']['steps']} steps in {marker['train_seconds']:.0f}s; "
                      f"{marker['num_parameters']:,} parameters")
