"""``manyminds sft``, ``manyminds dpo`` and ``manyminds uncertainty``: alpha-Renyi ensembles of LoRA members.

Options not listed as flags can be set on the trainer config with ``--set key=value`` (any field of
``RenyiSFTConfig`` / ``RenyiDPOConfig``, e.g. ``--set lr_scheduler_type=constant``).
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()

RUN_FILE = "manyminds_ensemble.json"
_MODEL_HELP = "zoo name (default: the embedded default model), local model folder or hub id"


def _load_model(model: str | None):
    import manyminds
    from manyminds.zoo import DEFAULT_MODEL

    return manyminds.load(model or DEFAULT_MODEL)


def load_dataset_arg(task: str | None, data: str | None, default_task: str, split: str, n: int | None,
                     seed: int):
    """A bundled task (``--task``) or any dataset (``--data``: JSONL/JSON file or a datasets folder)."""
    if task and data:
        raise typer.BadParameter("pass either --task or --data, not both")
    if data:
        import datasets

        path = Path(data)
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise typer.BadParameter(f"{data} has splits {list(ds)}, not {split!r}")
                ds = ds[split]
        elif path.suffix in (".jsonl", ".json"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif path.exists():
            raise typer.BadParameter(f"--data takes a .jsonl/.json file or a datasets folder, got {data}")
        else:
            raise typer.BadParameter(f"--data {data}: no such file or folder")
        if n is not None:
            ds = ds.select(range(min(n, len(ds))))
        return ds
    from manyminds.tasks import load_task

    return load_task(task or default_task, split=split, n=n, seed=seed)


def _parse_sets(pairs: list[str], config_cls) -> dict:
    names = {f.name for f in fields(config_cls)}
    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise typer.BadParameter(f"--set takes key=value, got {kv!r}")
        key, value = kv.split("=", 1)
        if key not in names:
            raise typer.BadParameter(f"--set {key}: not a field of {config_cls.__name__}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def rich_progress_callback():
    """A transformers ``TrainerCallback`` that draws a rich progress bar with the latest loss."""
    from transformers import TrainerCallback

    # built lazily so that `manyminds --help` does not import transformers

    class _Callback(TrainerCallback):
        def __init__(self):
            self.progress = None
            self.task = None
            self.loss = float("nan")

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(TextColumn("[bold]training"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total} steps"),
                                     TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps,
                                               completed=state.global_step, loss="-")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and self.progress is not None:
                self.progress.update(self.task, loss=f"{float(logs['loss']):.4g}")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()

    return _Callback()


def _report_table(title: str, history: list[dict], num_members: int, extra: dict) -> Table:
    logs = [h for h in history if "loss" in h and "train_loss" not in h]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    table = Table(title=title)
    table.add_column("member")
    for col in ("nll (first)", "nll (last)", "responsibility", "route share"):
        table.add_column(col, justify="right")

    def f(d, key):
        return f"{float(d[key]):.4f}" if key in d else "-"

    for k in range(num_members):
        table.add_row(str(k), f(first, f"member_{k}/nll"), f(last, f"member_{k}/nll"),
                      f(last, f"member_{k}/responsibility"), f(last, f"member_{k}/route_share"))
    table.add_section()
    table.add_row("loss", f(first, "loss"), f(last, "loss"), "", "")
    table.add_row("effective members", f(first, "effective_members"), f(last, "effective_members"), "", "")
    for key, value in extra.items():
        table.add_row(key, "", str(value), "", "")
    return table


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _train(kind: str, model, task, data, n, members, alpha, r, lora_alpha, steps, batch_size, lr,
           output_dir, routing, beta, seed, resume, sets):
    from manyminds.training import RenyiDPOConfig, RenyiDPOTrainer, RenyiSFTConfig, RenyiSFTTrainer
    from manyminds.training.common import last_checkpoint

    config_cls, trainer_cls = ((RenyiSFTConfig, RenyiSFTTrainer) if kind == "sft"
                               else (RenyiDPOConfig, RenyiDPOTrainer))
    kwargs = {"output_dir": str(output_dir), "num_members": members, "alpha": alpha, "r": r,
              "lora_alpha": lora_alpha, "max_steps": steps, "per_device_train_batch_size": batch_size,
              "learning_rate": lr, "seed": seed, "logging_steps": 1, "disable_tqdm": True,
              "save_steps": max(1, steps // 4), "save_total_limit": 2,
              "dataloader_pin_memory": _cuda_available()}
    if kind == "sft":
        kwargs["routing"] = routing
    else:
        kwargs["beta"] = beta
    kwargs.update(_parse_sets(sets, config_cls))
    try:
        args = config_cls(**kwargs)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    dataset = load_dataset_arg(task, data, "conflict" if kind == "sft" else "prefs", "train", n, seed)
    base, tokenizer = _load_model(model)
    try:
        trainer = trainer_cls(base, args, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[rich_progress_callback()])
    except (ValueError, TypeError) as err:
        raise typer.BadParameter(str(err)) from err
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the rich progress bar and report replace the dict prints
    checkpoint = last_checkpoint(output_dir) if resume else None
    if resume and checkpoint is None:
        console.print(f"[yellow]no checkpoint in {output_dir}; starting from scratch[/yellow]")
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trainer.save_model(str(output_dir))
    run = {"kind": kind, "model": model, "task": task, "data": data, "num_members": members,
           "alpha": alpha, "r": r, "steps": steps, "seconds": round(seconds, 2),
           "log_history": trainer.state.log_history}
    (Path(output_dir) / RUN_FILE).write_text(json.dumps(run, indent=2, default=str))
    console.print(_report_table(f"alpha-Renyi {kind.upper()}: K={members}, alpha={alpha}",
                                trainer.state.log_history, members,
                                {"steps": trainer.state.global_step, "seconds": f"{seconds:.1f}",
                                 "members saved to": str(Path(output_dir) / "members")}))


ModelOpt = Annotated[str | None, typer.Option(help=_MODEL_HELP)]
TaskOpt = Annotated[str | None, typer.Option(help="bundled task (sft default: conflict, dpo: prefs)")]
DataOpt = Annotated[str | None, typer.Option(help="JSONL/JSON file or datasets folder in TRL columns")]


def register(app: typer.Typer) -> None:
    @app.command("sft")
    def sft(
        model: ModelOpt = None,
        task: TaskOpt = None,
        data: DataOpt = None,
        n: Annotated[int | None, typer.Option(help="number of training examples (default: all / 512 for tasks)")] = 512,
        members: Annotated[int, typer.Option(help="K, the number of LoRA members")] = 4,
        alpha: Annotated[float, typer.Option(help="Renyi order in [0, 1]: 0 ensemble, 1 mixture")] = 0.8,
        r: Annotated[int, typer.Option(help="LoRA rank")] = 8,
        lora_alpha: Annotated[float, typer.Option(help="LoRA scale numerator")] = 16,
        steps: Annotated[int, typer.Option(help="optimizer steps")] = 100,
        batch_size: Annotated[int, typer.Option(help="examples per step")] = 16,
        lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
        routing: Annotated[str, typer.Option(help="sequence or token")] = "sequence",
        output_dir: Annotated[Path, typer.Option(help="checkpoints and final members")] = Path("manyminds-sft"),
        seed: Annotated[int, typer.Option(help="seed")] = 0,
        resume: Annotated[bool, typer.Option(help="resume from the last checkpoint in --output-dir")] = False,
        set_: Annotated[list[str], typer.Option("--set", help="any config field as key=value (repeatable)")] = [],  # noqa: B006
    ):
        """alpha-Renyi SFT of K LoRA members on a frozen base (prompt/completion, text or messages)."""
        _train("sft", model, task, data, n, members, alpha, r, lora_alpha, steps, batch_size, lr,
               output_dir, routing, 0.1, seed, resume, set_)

    @app.command("dpo")
    def dpo(
        model: ModelOpt = None,
        task: TaskOpt = None,
        data: DataOpt = None,
        n: Annotated[int | None, typer.Option(help="number of preference pairs")] = 512,
        members: Annotated[int, typer.Option(help="K, the number of LoRA members")] = 4,
        alpha: Annotated[float, typer.Option(help="Renyi order in [0, 1]: 0 ensemble, 1 mixture")] = 0.8,
        r: Annotated[int, typer.Option(help="LoRA rank")] = 8,
        lora_alpha: Annotated[float, typer.Option(help="LoRA scale numerator")] = 16,
        steps: Annotated[int, typer.Option(help="optimizer steps")] = 100,
        batch_size: Annotated[int, typer.Option(help="pairs per step")] = 16,
        lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
        beta: Annotated[float, typer.Option(help="DPO temperature")] = 0.1,
        output_dir: Annotated[Path, typer.Option(help="checkpoints and final members")] = Path("manyminds-dpo"),
        seed: Annotated[int, typer.Option(help="seed")] = 0,
        resume: Annotated[bool, typer.Option(help="resume from the last checkpoint in --output-dir")] = False,
        set_: Annotated[list[str], typer.Option("--set", help="any config field as key=value (repeatable)")] = [],  # noqa: B006
    ):
        """alpha-Renyi DPO of K LoRA members; the reference is the base with adapters off (prompt/chosen/rejected)."""
        _train("dpo", model, task, data, n, members, alpha, r, lora_alpha, steps, batch_size, lr,
               output_dir, "sequence", beta, seed, resume, set_)

    @app.command("uncertainty")
    def uncertainty(
        ensemble_dir: Annotated[Path, typer.Argument(help="output dir of `manyminds sft/dpo` (or a folder with member_k/)")],
        model: ModelOpt = None,
        task: TaskOpt = None,
        data: DataOpt = None,
        split: Annotated[str, typer.Option(help="task split")] = "test",
        n: Annotated[int | None, typer.Option(help="number of prompts")] = 64,
        batch_size: Annotated[int, typer.Option(help="prompts per batch")] = 32,
        max_new_tokens: Annotated[int, typer.Option(help="tokens to generate per answer")] = 32,
        label: Annotated[str, typer.Option(help="boolean column to score uncertainty against (AUROC)")] = "conflicting",
        seed: Annotated[int, typer.Option(help="seed of the task sample")] = 0,
        output: Annotated[Path | None, typer.Option(help="write per-example results as JSONL here")] = None,
    ):
        """Per-member answers, majority vote, mixture answers and epistemic uncertainty of an ensemble."""
        from manyminds.ensemble import EnsembleLoRA
        from manyminds.ensemble.evaluate import evaluate_ensemble

        run_file = ensemble_dir / RUN_FILE
        run = json.loads(run_file.read_text()) if run_file.exists() else {}
        members_dir = ensemble_dir / "members" if (ensemble_dir / "members").is_dir() else ensemble_dir
        base, tokenizer = _load_model(model or run.get("model"))
        try:
            ensemble = EnsembleLoRA.from_members(base, members_dir)
        except (FileNotFoundError, ValueError) as err:
            raise typer.BadParameter(str(err)) from err
        default_task = run.get("task") or ("conflict" if run.get("kind", "sft") == "sft" else "prefs")
        dataset = load_dataset_arg(task, data, default_task, split, n, seed)
        with Progress(TextColumn("[bold]evaluating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task("eval", total=len(dataset))
            result = evaluate_ensemble(ensemble, tokenizer, dataset, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens,
                                       progress=lambda done: progress.update(bar, completed=done))
        labels = [int(bool(x)) for x in dataset[label]] if label in dataset.column_names else None
        summary = result.summary(labels)
        table = Table(title=f"ensemble uncertainty: K={ensemble.num_members}, {len(dataset)} prompts")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in summary.items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
        if output is not None:
            with open(output, "w") as f:
                for i in range(len(dataset)):
                    row = {"prompt": dataset[i]["prompt"], "majority": result.majority[i],
                           "agreement": result.agreement[i], "mixture_answer": result.mixture_answer[i],
                           "epistemic": result.epistemic[i], "max_epistemic": result.max_epistemic[i],
                           "disagreement": result.disagreement[i],
                           "member_answers": [m[i] for m in result.member_answers]}
                    if labels is not None:
                        row[label] = bool(labels[i])
                    f.write(json.dumps(row) + "\n")
            console.print(f"per-example results: {output}")
