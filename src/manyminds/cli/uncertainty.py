"""``manyminds uncertainty``: per-member answers, majority vote, mixture answers and epistemic uncertainty
of an ensemble trained by ``manyminds sft`` / ``dpo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli.common import (
    RUN_FILE,
    CLIError,
    ModelOption,
    console,
    err_console,
    load_model,
    one_line,
)
from manyminds.cli.eval_common import (
    RUNS,
    chat_dataset,
    check_statistics_options,
    load_prompts,
    progress_bar,
    use_chat,
    write_outputs,
)


def register(app: typer.Typer) -> None:
    @app.command("uncertainty")
    def uncertainty(
        ensemble_dir: Annotated[Path, typer.Argument(
            help="output dir of `manyminds sft/dpo` (or a folder with member_k/)")],
        model: ModelOption = None,
        task: Annotated[str | None, typer.Option("--task", help="bundled task (default: the run's task)")] = None,
        data: Annotated[str | None, typer.Option(
            "--data", "--dataset", help="JSONL/JSON file or datasets folder with a 'prompt' column")] = None,
        split: Annotated[str, typer.Option("--split", help="task split")] = "test",
        n: Annotated[int | None, typer.Option("--n", help="number of prompts")] = 64,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="prompts per batch")] = 32,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1,
                                                    help="tokens to generate per answer")] = 32,
        label: Annotated[str, typer.Option(
            "--label", help="boolean column to score uncertainty against (AUROC)")] = "conflicting",
        chat: Annotated[bool | None, typer.Option(
            "--chat/--no-chat", help="prompts as chat conversations (the task's conversational form); default: "
                                     "as the run was trained (its task knob 'conversational'), else when the "
                                     "tokenizer has a chat template", show_default=False)] = None,
        seed: Annotated[int, typer.Option("--seed", help="seed of the task sample")] = 0,
        confidence: Annotated[float, typer.Option(
            "--confidence", help="level of the intervals (Wilson for accuracies, bootstrap for AUROC)")] = 0.95,
        output: Annotated[Path | None, typer.Option(
            "--output", help="also write the per-prompt JSONL here")] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json and risk_coverage.png go")] = RUNS / "uncertainty",
    ):
        """Per-member answers, majority vote, mixture answers and epistemic uncertainty of an ensemble."""
        import json

        from rich.table import Table

        from manyminds.evaluation.report import plot_risk_coverage, write_jsonl, write_plot

        check_statistics_options(1, confidence)
        if not ensemble_dir.is_dir():
            raise CLIError(f"no ensemble folder at {ensemble_dir}; pass the --output-dir of `manyminds sft` or `dpo`")
        run_file = ensemble_dir / RUN_FILE
        try:
            run = json.loads(run_file.read_text()) if run_file.exists() else {}
        except json.JSONDecodeError as err:
            raise CLIError(f"{run_file} is not valid JSON (line {err.lineno}); delete it or pass --model and --task")
        members_dir = ensemble_dir / "members" if (ensemble_dir / "members").is_dir() else ensemble_dir
        default_task = run.get("task") or ("conflict" if run.get("kind", "sft") == "sft" else "prefs")
        dataset = load_prompts(task, data, default_task, split, n, seed)
        base, tokenizer = load_model(model or run.get("model"))
        if chat is None and "conversational" in (run.get("task_knobs") or {}):
            chat = bool(run["task_knobs"]["conversational"])
        if use_chat(chat, tokenizer):
            dataset = chat_dataset(dataset)
        from manyminds.ensemble import EnsembleLoRA
        from manyminds.ensemble.scores import SCORES
        from manyminds.evaluation.ensemble import evaluate_ensemble
        from manyminds.evaluation.intervals import ensemble_intervals

        try:
            ensemble = EnsembleLoRA.from_members(base, members_dir)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise CLIError(f"could not load the members from {members_dir}: {one_line(err)}")
        with progress_bar() as bar:
            line = bar.add_task("members + mixture", total=len(dataset))
            result = evaluate_ensemble(ensemble, tokenizer, dataset, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens,
                                       progress=lambda done: bar.update(line, completed=done))
        labels = [int(bool(x)) for x in dataset[label]] if label in dataset.column_names else None
        summary = result.summary(labels)
        intervals = ensemble_intervals(result, labels, confidence)
        table = Table(title=f"ensemble uncertainty: K={ensemble.num_members}, {len(dataset)} prompts",
                      title_justify="left", caption=f"{confidence:.0%} CI: Wilson over prompts for accuracies, "
                      f"stratified bootstrap over prompts for AUROC", caption_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column(f"{confidence:.0%} CI", justify="right")
        for key, value in summary.items():
            ci = intervals.get(key)
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value),
                          f"[{ci['low']:.4f}, {ci['high']:.4f}]" if ci else "")
        console().print(table)
        records = result.records(label=label if labels is not None else None, labels=labels)
        payload = {"command": "uncertainty", "ensemble": str(ensemble_dir), "model": model or run.get("model"),
                   "task": None if data else (task or default_task), "data": data, "split": split,
                   "num_members": ensemble.num_members, "summary": summary, "confidence": confidence,
                   "intervals": intervals}
        plot = None
        if result.mixture_correct:
            curves = {s.name: (result.scores[s.name], result.mixture_correct) for s in SCORES if s.risk_coverage}
            plot = write_plot(plot_risk_coverage, curves, path=out_dir / "risk_coverage.png")
        write_outputs(out_dir, records, payload, plot)
        if output is not None:
            write_jsonl(records, output)
            err_console().print(f"per-prompt results: {output}", highlight=False)
