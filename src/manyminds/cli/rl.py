"""``manyminds grpo`` (population RL) and ``manyminds eval`` (pass@k, majority over minds vs samples)."""

from __future__ import annotations

import dataclasses
import json
import os

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def _help(cls, name: str) -> str:
    """The help string of dataclass field ``name`` (the CLI reuses the config's own documentation)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _pcfg(name: str) -> str:
    from manyminds.rl.config import PopulationGRPOConfig

    return _help(PopulationGRPOConfig, name)


def _ecfg(name: str) -> str:
    from manyminds.evaluation import EvalConfig

    return _help(EvalConfig, name)


def load_rows(task: str, split: str, n: int | None, seed: int, dataset: str | None):
    """A ``datasets.Dataset``: a bundled task's split, or a local dataset (``save_to_disk`` folder,
    ``.json``/``.jsonl``/``.csv``/``.parquet`` file), optionally cut to its first ``n`` rows."""
    import datasets

    if dataset is None:
        from manyminds.tasks import load_task

        return load_task(task, split=split, n=n, seed=seed)
    if os.path.isdir(dataset):
        ds = datasets.load_from_disk(dataset)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{dataset} has splits {list(ds)}, not {split!r}; pass --split")
            ds = ds[split]
    else:
        ext = os.path.splitext(dataset)[1].lstrip(".")
        kind = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
        if kind is None or not os.path.exists(dataset):
            raise ValueError(f"--dataset must be an existing save_to_disk folder or a .json/.jsonl/.csv/.parquet "
                             f"file, got {dataset!r}")
        ds = datasets.load_dataset(kind, data_files=dataset, split="train")
    return ds.select(range(min(n, len(ds)))) if n else ds


def _fail(err: Exception) -> None:
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("grpo")
    def grpo(
        model: str = typer.Option("tiny-arith", help="zoo name, local model folder or hub id"),
        task: str = typer.Option("arith", help="bundled task for the prompts (ignored with --dataset)"),
        dataset: str = typer.Option(None, help="local dataset with 'prompt' (and 'answer') columns instead"),
        n: int = typer.Option(400, help="training prompts"),
        data_seed: int = typer.Option(0, help="seed of the task's sampled prompts"),
        reward: list[str] = typer.Option(None, help="reward(s): answer, math_verify, format (repeatable; "  # noqa: B008
                                                    "default: answer, or none with --label-free)"),
        sigma: float = typer.Option(0.02, help=_pcfg("mind_sigma")),
        label_free: bool = typer.Option(False, "--label-free", help=_pcfg("label_free")),
        mind_logprobs: str = typer.Option("mean", help=_pcfg("mind_logprobs")),
        mind_assignment: str = typer.Option("fresh", help=_pcfg("mind_assignment")),
        pool_size: int = typer.Option(8, help=_pcfg("mind_pool_size")),
        mind_seed: int = typer.Option(0, help=_pcfg("mind_seed")),
        importance_cap: float = typer.Option(None, help=_pcfg("mind_importance_correction")),
        steps: int = typer.Option(20, help="optimizer steps"),
        num_generations: int = typer.Option(8, help="rollouts per prompt (the GRPO group)"),
        prompts_per_step: int = typer.Option(2, help="prompts per optimizer step (per process)"),
        max_completion_length: int = typer.Option(32, help="completion length limit in tokens"),
        temperature: float = typer.Option(1.0, help="sampling temperature of the rollouts"),
        learning_rate: float = typer.Option(1e-4, help="AdamW learning rate"),
        beta: float = typer.Option(0.0, help="KL coefficient against the reference model"),
        lora_r: int = typer.Option(0, help="LoRA rank (0 = full fine-tuning); the paper trains LoRA"),
        output_dir: str = typer.Option("runs/grpo", help="checkpoints and the final model go here"),
        save_steps: int = typer.Option(10, help="checkpoint every N steps"),
        logging_steps: int = typer.Option(1, help="log every N steps"),
        seed: int = typer.Option(0, help="training seed"),
        resume: bool = typer.Option(False, "--resume", help="continue from the newest complete checkpoint in "
                                                            "--output-dir"),
    ):
        """GRPO where each rollout of a group comes from its own mind (--sigma 0: plain GRPO baseline;
        --label-free: TTRL-style majority-vote reward, no labels read)."""
        import manyminds
        from manyminds.rewards import get_reward
        from manyminds.rl import PopulationGRPOConfig, PopulationGRPOTrainer
        from manyminds.rl.trainer import latest_complete_checkpoint

        try:
            args = PopulationGRPOConfig(
                output_dir=output_dir, mind_sigma=sigma, label_free=label_free, mind_logprobs=mind_logprobs,
                mind_assignment=mind_assignment, mind_pool_size=pool_size, mind_seed=mind_seed,
                mind_importance_correction=importance_cap, max_steps=steps, num_generations=num_generations,
                per_device_train_batch_size=num_generations * prompts_per_step,
                max_completion_length=max_completion_length, temperature=temperature,
                learning_rate=learning_rate, beta=beta, save_strategy="steps", save_steps=save_steps,
                logging_steps=logging_steps, seed=seed, report_to="none", gradient_checkpointing=False,
                bf16=False, use_cpu=not _cuda())
            reward = reward or ([] if label_free else ["answer"])
            rewards = [get_reward(r) for r in reward]
            train = load_rows(task, "train", n, data_seed, dataset)
            net, tokenizer = manyminds.load(model)
            peft_config = None
            if lora_r:
                from peft import LoraConfig

                peft_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear",
                                         task_type="CAUSAL_LM")
            trainer = PopulationGRPOTrainer(net, reward_funcs=rewards, args=args, train_dataset=train,
                                            processing_class=tokenizer, peft_config=peft_config)
        except (ValueError, TypeError, FileNotFoundError) as err:
            _fail(err)
        checkpoint = latest_complete_checkpoint(output_dir) if resume else None
        if resume and checkpoint is None:
            console.print(f"[yellow]no complete checkpoint in {output_dir}; starting from step 0[/yellow]")
        console.print(f"population GRPO: sigma={sigma}, {mind_assignment} minds, log-probs from the "
                      f"{mind_logprobs} model{', label-free' if label_free else ''}; {steps} steps of "
                      f"{prompts_per_step} x {num_generations} rollouts" + (f"; resuming {checkpoint}" if checkpoint
                                                                           else ""))
        trainer.train(resume_from_checkpoint=checkpoint)
        final = os.path.join(output_dir, "final")
        trainer.save_model(final)
        tokenizer.save_pretrained(final)
        _print_history(trainer.state.log_history)
        console.print(f"saved the trained model to {final}")

    @app.command("eval")
    def eval_(
        model: str = typer.Option("tiny-arith", help="zoo name, local model folder or hub id"),
        task: str = typer.Option("arith", help="bundled task (ignored with --dataset)"),
        dataset: str = typer.Option(None, help="local dataset with 'prompt' and 'answer' columns instead"),
        split: str = typer.Option("test", help="split of the task or dataset"),
        n: int = typer.Option(200, help="number of prompts"),
        data_seed: int = typer.Option(0, help="seed of the task's sampled prompts"),
        k: int = typer.Option(8, help=_ecfg("k")),
        sigma: float = typer.Option(0.02, help=_ecfg("sigma")),
        mind_seed: int = typer.Option(0, help=_ecfg("mind_seed")),
        temperature: float = typer.Option(1.0, help=_ecfg("temperature")),
        mind_temperature: float = typer.Option(0.0, help=_ecfg("mind_temperature")),
        max_new_tokens: int = typer.Option(48, help=_ecfg("max_new_tokens")),
        batch_size: int = typer.Option(64, help=_ecfg("batch_size")),
        seed: int = typer.Option(0, help=_ecfg("seed")),
        as_json: bool = typer.Option(False, "--json", help="print JSON (for scripts) instead of a table"),
        save: str = typer.Option(None, help="also write the JSON result to this file"),
    ):
        """pass@1 (greedy and sampled), pass@k and majority@k: minds vs temperature samples."""
        import manyminds
        from manyminds.evaluation import EvalConfig, evaluate

        try:
            config = EvalConfig(k=k, sigma=sigma, mind_seed=mind_seed, temperature=temperature,
                                mind_temperature=mind_temperature, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, seed=seed)
            rows = load_rows(task, split, n, data_seed, dataset)
            net, tokenizer = manyminds.load(model)
        except (ValueError, TypeError, FileNotFoundError) as err:
            _fail(err)
        from rich.progress import Progress

        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("evaluating", total=3)

            def stage(name):
                progress.update(bar, description=f"evaluating: {name}", advance=0 if name == "greedy" else 1)

            try:
                result = evaluate(net, tokenizer, rows, config, progress=stage)
            except ValueError as err:
                _fail(err)
            progress.update(bar, completed=3)
        payload = {"model": model, "task": None if dataset else task, "dataset": dataset, "split": split,
                   **result.to_dict()}
        if save:
            tmp = save + ".tmp"
            with open(tmp, "w") as f:
                json.dump(payload, f, indent=2)
            os.replace(tmp, save)
        if as_json:
            typer.echo(json.dumps(payload, indent=2))
        else:
            Console().print(result.table(title=f"{model} on {dataset or task} ({split}, {result.n_prompts} prompts)"))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_history(history: list[dict]) -> None:
    keys = ["reward", "reward_std", "frac_reward_zero_std", "minds/unique_answers_per_group", "entropy", "loss"]
    table = Table(title="training log")
    table.add_column("step", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for h in history:
        if "reward" in h:
            table.add_row(str(h.get("step")), *(f"{h[key]:.3f}" if key in h else "-" for key in keys))
    Console().print(table)
