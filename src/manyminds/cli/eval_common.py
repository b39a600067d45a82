"""What ``manyminds generate``, ``demo``, ``eval`` and ``uncertainty`` share: the rows they answer,
chat formatting, a progress bar per condition, and the files they write.

Each of those commands goes through :mod:`manyminds.evaluation` (one tokenisation, one generation
routine, one scorer) and writes what it prints under ``runs/<command>`` by default:
``results.jsonl`` (one row per prompt), ``results.json`` (the scores and settings) and a PNG.
"""

from __future__ import annotations

from pathlib import Path

from manyminds.cli import common
from manyminds.cli.common import RUNS_DIR, CLIError, err_console

RUNS = Path(RUNS_DIR)
SEEDS_HELP = ("repeat over N draws of minds (population seed + i) and sampling seeds (seed + i); tables show the "
              "mean over seeds, intervals bootstrap the seed-averaged per-problem scores")
CONFIDENCE_HELP = "level of the intervals (Wilson / bootstrap over problems) and of the paired differences"
CHAT_HELP = ("wrap each prompt as a user message and apply the model's chat template (as TRL does for a "
             "conversational prompt); default: when the tokenizer has a chat template")


def load_prompts(task: str | None, data: str | None, default_task: str, split: str, n: int | None, seed: int):
    """A bundled task's split (``--task``, default ``default_task``) or a local dataset (``--data``)."""
    if task and data:
        raise CLIError("pass either --task or --data, not both")
    if n is not None and n < 1:
        raise CLIError(f"--n must be >= 1, got {n}")
    return common.load_rows(None if data else (task or default_task), data, split, n, seed)


def use_chat(chat: bool | None, tokenizer) -> bool:
    """``--chat/--no-chat``: ``None`` (the default) = whether ``tokenizer`` has a chat template."""
    from manyminds.rows import has_chat_template

    if chat is None:
        return has_chat_template(tokenizer)
    if chat and not has_chat_template(tokenizer):
        raise CLIError("--chat needs a model whose tokenizer has a chat template (this one has none); drop --chat")
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


def progress_bar():
    """A rich progress bar on stderr with one line per condition (:func:`manyminds.progress.progress_bar`)."""
    from manyminds.progress import progress_bar as bar

    return bar(description="{task.description:<22}", console=err_console())


def check_statistics_options(seeds: int, confidence: float) -> None:
    """``--seeds`` and ``--confidence``, checked before any model is loaded."""
    if seeds < 1:
        raise CLIError(f"--seeds must be >= 1 (1 = one draw of minds and one sampling seed), got {seeds}")
    if not 0 < confidence < 1:
        raise CLIError(f"--confidence must be in (0, 1), e.g. 0.95 for 95% intervals; got {confidence:g}")


def eval_config(cls, **settings):
    """``cls(**settings)`` (an :class:`~manyminds.evaluation.EvalConfig`), a bad setting as one line."""
    try:
        return cls(**settings)
    except ValueError as err:
        raise CLIError(str(err).replace("temperatures must", "--temperature values must")) from None


def run_evaluation(lm, tok, rows, config, seeds: int = 1):
    """:func:`manyminds.evaluation.seeds.evaluate_seeds` with one progress line per condition (and
    seed): one :class:`~manyminds.evaluation.EvalResult` per seed."""
    from manyminds.evaluation.report import short_name
    from manyminds.evaluation.seeds import evaluate_seeds

    with progress_bar() as bar:
        lines: dict[str, int] = {}

        def progress(name, done, total):
            if name not in lines:
                lines[name] = bar.add_task(short_name(name), total=total)
            bar.update(lines[name], completed=done)

        return evaluate_seeds(lm, tok, rows, config, seeds=seeds, progress=progress)


def statistics(runs, confidence: float) -> dict:
    """Means over seeds, intervals and paired comparisons of per-seed results (JSON-ready parts of
    ``results.json``): ``conditions``, ``intervals``, ``comparisons``, ``confidence``, ``seeds``."""
    from manyminds.evaluation.intervals import comparisons_vs_baselines, condition_intervals
    from manyminds.evaluation.seeds import mean_conditions

    out = {"seeds": len(runs), "seed_list": [{"seed": r.config.seed, "mind_seed": r.config.mind_seed} for r in runs],
           "confidence": confidence, "conditions": [c.to_dict() for c in mean_conditions(runs)],
           "intervals": condition_intervals(runs, confidence),
           "comparisons": comparisons_vs_baselines(runs, confidence)}
    if len(runs) > 1:
        out["per_seed"] = [[c.to_dict() for c in r.conditions] for r in runs]
    return out


def print_statistics(stats: dict) -> None:
    """The intervals table and the paired-differences table (two 80-column tables on stdout)."""
    from manyminds.cli.common import console
    from manyminds.evaluation.report import comparisons_table, intervals_table

    out = console()
    out.print(intervals_table(stats["intervals"], stats["confidence"], stats["seeds"]))
    if stats["comparisons"]:
        out.print(comparisons_table(stats["comparisons"], stats["confidence"], stats["seeds"]))


def write_outputs(out_dir: Path, records, payload: dict, plot_line: str | None = None) -> None:
    """``results.jsonl`` and ``results.json`` under ``out_dir``; prints where they went."""
    from manyminds.evaluation.report import write_json, write_jsonl

    jsonl = write_jsonl(records, out_dir / "results.jsonl")
    summary = write_json(payload, out_dir / "results.json")
    err_console().print(f"wrote {jsonl} (one row per prompt), {summary}", highlight=False, soft_wrap=True)
    if plot_line:
        err_console().print(plot_line, highlight=False, soft_wrap=True)
