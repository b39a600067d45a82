"""``manyminds eval``: greedy pass@1, and pass@1 / pass@k / majority@k of k temperature samples vs k minds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli.common import (
    SIGMA_HELP,
    ModelOption,
    console,
    load_model,
    parse_sigma_option,
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


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: ModelOption = None,
        task: Annotated[str | None, typer.Option("--task", help="bundled task (default: arith)")] = None,
        data: Annotated[str | None, typer.Option(
            "--data", "--dataset", help="local dataset with 'prompt' and 'answer' columns instead")] = None,
        split: Annotated[str, typer.Option("--split", help="split of the task or dataset")] = "test",
        n: Annotated[int, typer.Option("--n", help="number of prompts")] = 200,
        data_seed: Annotated[int, typer.Option("--data-seed", help="seed of the task's sampled prompts")] = 0,
        k: Annotated[int, typer.Option("--k", help="samples / minds per prompt (pass@k, majority@k)")] = 8,
        sigma: Annotated[list[str] | None, typer.Option(
            "--sigma", help=SIGMA_HELP + "; repeat for a sweep (default 0.02)")] = None,
        mind_seed: Annotated[int, typer.Option("--mind-seed", help="population seed of the minds")] = 0,
        temperature: Annotated[list[float] | None, typer.Option(
            "--temperature", help="temperature of the samples; repeat for a sweep (the first is the "
                                  "baseline; with several, minds are compared at matched diversity and "
                                  "accuracy) (default 1.0)")] = None,
        reader: Annotated[str, typer.Option(
            "--reader", help="how answers are read: final ('####' line), short (free-form short answer, "
                             "e.g. facts) or auto (short when the data has an 'accepted' column)")] = "auto",
        mind_temperature: Annotated[float, typer.Option(
            "--mind-temperature", help="temperature of each mind (0 = greedy)")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="completion length limit")] = 48,
        batch_size: Annotated[int, typer.Option("--batch-size", help="generated rows per batch")] = 64,
        seed: Annotated[int, typer.Option("--seed", help="sampling seed (a forked RNG)")] = 0,
        seeds: Annotated[int, typer.Option("--seeds", help=SEEDS_HELP)] = 1,
        confidence: Annotated[float, typer.Option("--confidence", help=CONFIDENCE_HELP)] = 0.95,
        chat: Annotated[bool | None, typer.Option(
            "--chat/--no-chat", help=CHAT_HELP + " (the task's conversational form)", show_default=False)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")] = False,
        save: Annotated[str | None, typer.Option("--save", help="also write the JSON result to this file")] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json and sigma_sweep.png go")] = RUNS / "eval",
    ):
        """Greedy pass@1, and pass@1 / pass@k / majority@k of k temperature samples vs k minds, with
        intervals and paired tests against greedy (and minds against temperature sampling)."""
        import json

        from manyminds.evaluation import EvalConfig
        from manyminds.evaluation.report import (
            conditions_table,
            json_safe,
            plot_frontiers,
            plot_sweep,
            write_json,
            write_plot,
        )
        from manyminds.evaluation.seeds import mean_conditions, seed_records

        check_statistics_options(seeds, confidence)
        sigma_spec = parse_sigma_option(sigma or ["0.02"])  # a typo fails before the model loads
        temps = list(temperature or (1.0,))
        numbers = tuple(s for s in sigma_spec if s != "auto") or (0.02,)  # "auto" is resolved once loaded
        config = eval_config(EvalConfig, k=k, sigmas=numbers, mind_seed=mind_seed,
                             temperature=temps[0], temperatures=tuple(temps[1:]), mind_temperature=mind_temperature,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, reader=reader)
        rows = load_prompts(task, data, "arith", split, n, data_seed)
        lm, tok = load_model(model)
        if "auto" in sigma_spec:
            config.sigmas = tuple(resolve_sigmas(sigma_spec, lm, tok, model))
        chat = use_chat(chat, tok)
        if chat:
            rows = chat_dataset(rows)
        runs = run_evaluation(lm, tok, rows, config, seeds=seeds)
        means = mean_conditions(runs)
        payload = {"command": "eval", "model": model or "default", "task": None if data else (task or "arith"),
                   "dataset": data, "split": split, "chat": chat, **runs[0].to_dict(),
                   **statistics(runs, confidence)}
        if save:
            write_json(payload, save)
        plot = (write_plot(plot_sweep, means, path=out_dir / "sigma_sweep.png")
                if len(config.sigmas) > 1 else None)
        if config.temperatures:
            plot = write_plot(plot_frontiers, means, payload["intervals"], path=out_dir / "frontiers.png")
        write_outputs(out_dir, seed_records(runs), payload, plot)
        if as_json:
            typer.echo(json.dumps(json_safe(payload), indent=2))
        else:
            over = f", mean of {seeds} seeds" if seeds > 1 else ""
            console().print(conditions_table(
                means, f"{model or 'default'} on {data or task or 'arith'} ({split}, {runs[0].n_prompts} "
                       f"prompts{over})"))
            print_statistics(payload)
