"""``manyminds zoo list`` and ``manyminds zoo build``: the zoo's models (:mod:`manyminds.zoo`)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from manyminds.cli.common import CLIError, console


def register(app: typer.Typer) -> None:
    zoo_app = typer.Typer(help="The zoo: default models trained locally and pretrained ones converted once, cached.",
                          no_args_is_help=True)
    app.add_typer(zoo_app, name="zoo")

    @zoo_app.command("list")
    def zoo_list():
        """List the zoo models, whether they are built, their measured accuracy and the sigma they should
        be run at (what `--sigma auto` uses)."""
        from manyminds.zoo import DEFAULT_MODEL, ZOO, GGUFEntry, model_dir, read_marker, shipped_dir
        from manyminds.zoo.registry import documented_sigma

        table = Table(title="manyminds zoo")
        for col in ("name", "family", "built", "arith test acc (greedy)", "sigma (auto)", "description"):
            table.add_column(col)
        for name, entry in ZOO.items():
            shipped = shipped_dir(name)
            marker = read_marker(shipped or model_dir(name), entry)
            converted = isinstance(entry, GGUFEntry)
            acc = f"{marker['arith_test_greedy_accuracy']:.1%}" if marker and not converted else "-"
            family = f"{entry.family} (from GGUF)" if converted else entry.family
            sigma = documented_sigma(name)
            table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), family,
                          "shipped" if shipped else (str(model_dir(name)) if marker else "no"), acc,
                          "-" if sigma is None else f"{sigma:g}", escape(entry.description))
        console().print(table)

    @zoo_app.command("build")
    def zoo_build(
        name: str = typer.Argument("tiny-arith", help="zoo model name"),
        force: bool = typer.Option(False, help="rebuild even if a complete cache entry exists"),
    ):
        """Train a zoo model on the bundled tasks (or convert a pretrained one) and cache it."""
        from manyminds.zoo import ZOO, FetchError, GGUFEntry, build, read_marker

        if name not in ZOO:
            raise CLIError(f"unknown zoo model {name!r}; valid names: {', '.join(ZOO)}")
        try:
            path = build(name, force=force)
        except (FetchError, ImportError, FileNotFoundError) as err:  # a fetch or conversion failed: not bad input
            raise CLIError(str(err), exit_code=1) from err
        marker = read_marker(path)
        console().print(f"[bold]{name}[/bold] at {path}")
        if isinstance(ZOO[name], GGUFEntry):
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            console().print(f"converted from {marker['gguf_file']} ({marker['source']}) in "
                          f"{marker['convert_seconds']:.0f}s; {marker['num_parameters']:,} parameters, "
                          f"{size / 1e6:.0f} MB on disk; reloaded logits match the GGUF model "
                          f"(max |diff| {marker['max_logit_diff_vs_gguf']:.1e})")
            console().print(f"greedy answer to {marker['probe_prompt']!r}: {marker['probe_answer']!r}")
            return
        from manyminds.zoo import shipped_dir

        if shipped_dir(name) is not None:
            console().print(f"note: a rebuild can differ by machine (CPU training is not bit-reproducible); "
                          f"manyminds.load({name!r}) keeps loading the weights shipped with the package; "
                          f"load this rebuild with manyminds.load({str(path)!r})", soft_wrap=True)
        console().print(f"held-out arith test accuracy (greedy, 200 problems): "
                      f"[bold]{marker['arith_test_greedy_accuracy']:.1%}[/bold]; "
                      f"trained {marker['train']['steps']} steps in {marker['train_seconds']:.0f}s; "
                      f"{marker['num_parameters']:,} parameters")
