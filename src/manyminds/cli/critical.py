"""``manyminds critical-alpha``: the critical alpha of a model, a LoRA configuration and a dataset.

Either loads a trained adapter (``--adapter DIR``: a PEFT LoRA adapter folder, or the members of a
Renyi run, ``runs/sft``, ``runs/sft/members`` or one ``member_k`` folder, with ``--member k``) or
trains one LoRA adapter briefly (``--steps`` of plain SFT, i.e. a K = 1 Renyi SFT), then prints
``alpha* = 1 / lambda_max(V^{-1/2} J V^{-1/2})`` (:func:`manyminds.training.critical.critical_alpha`),
``lambda_max``, the power iteration's convergence, and what it means for ``--alpha``::

    manyminds critical-alpha --task conflict --steps 200 --alpha 0.8
    manyminds critical-alpha --adapter runs/sft --member 2 --task conflict
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from manyminds.cli import common
from manyminds.cli.common import CLIError, ModelOption, console, err_console


def load_adapter(model, path: str, member: int | None):
    """``(adapter_model, member)`` from ``path``: a PEFT LoRA folder (``adapter_config.json``), a
    Renyi run / ``members`` folder (``member_0`` ...; ``member`` picks one, default 0), or one
    ``member_k`` folder of it (loaded as a PEFT adapter)."""
    from manyminds.ensemble import EnsembleLoRA

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CLIError(f"--adapter {path}: no such folder; pass a PEFT adapter folder or a Renyi run's "
                       f"members folder (runs/sft/members)")
    if (folder / "members" / "member_0").is_dir():
        folder = folder / "members"
    if (folder / "member_0").is_dir():
        ensemble = EnsembleLoRA.from_members(model, folder)
        ensemble.requires_grad_(False)
        for p in ensemble.lora_parameters():
            p.requires_grad_(True)
        k = 0 if member is None else member
        if not 0 <= k < ensemble.num_members:
            raise CLIError(f"--member {k}: {folder} holds members 0..{ensemble.num_members - 1}")
        return ensemble, (k if ensemble.num_members > 1 else None)
    if (folder / "adapter_config.json").is_file():
        if member is not None:
            raise CLIError(f"--member selects a member of an ensemble; {folder} is one PEFT adapter")
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("peft_type", "LORA") != "LORA":
            raise CLIError(f"{folder} is a {config.get('peft_type')} adapter; critical-alpha takes LoRA adapters")
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder), is_trainable=True), None
    raise CLIError(f"--adapter {path} holds neither adapter_config.json nor member_0/; pass a PEFT LoRA adapter "
                   f"folder or a Renyi run's members folder")


def result_table(res, alpha: float | None, seconds: float):
    from manyminds.training.critical import describe

    table = common.make_table("critical alpha", ["quantity", "value"])
    table.add_row("alpha*", f"{res.alpha_star:.4g}")
    table.add_row("lambda_max", f"{res.lambda_max:.4g}")
    table.add_row("power iterations", f"{res.iterations} ({'converged' if res.converged else 'NOT converged'})")
    table.add_row("damping", f"{res.damping:g}")
    table.add_row("examples / parameters", f"{res.num_examples} / {res.num_params}")
    table.add_row("seconds", f"{seconds:.1f}")
    return table, describe(res, alpha)


def register(app: typer.Typer) -> None:
    @app.command("critical-alpha")
    def critical_alpha_command(
        model: ModelOption = None,
        task: Annotated[str, typer.Option("--task", help="bundled task (ignored with --data)")] = "conflict",
        data: Annotated[str | None, typer.Option(
            "--data", help="local SFT dataset (.jsonl/.json/.csv/.parquet or a datasets folder)")] = None,
        n: Annotated[int, typer.Option("--n", min=1, help="examples V and J are averaged over")] = 64,
        task_seed: Annotated[int, typer.Option("--task-seed", help="seed of the task's rows")] = 0,
        adapter: Annotated[str | None, typer.Option(
            "--adapter", help="a trained adapter: PEFT LoRA folder or a Renyi run's members; unset: train one")] = None,
        member: Annotated[int | None, typer.Option("--member", min=0, help="member of --adapter's ensemble")] = None,
        steps: Annotated[int, typer.Option("--steps", min=1, help="SFT steps of the adapter trained here")] = 200,
        train_n: Annotated[int, typer.Option("--train-n", min=1, help="rows the adapter is trained on")] = 512,
        r: Annotated[int, typer.Option("--r", min=1, help="LoRA rank of the adapter trained here")] = 4,
        target_modules: Annotated[str | None, typer.Option(
            "--target-modules", help="comma-separated module names (default: PEFT's for the architecture)")] = None,
        lr: Annotated[float, typer.Option("--lr", min=0.0, help="learning rate of the adapter trained here")] = 3e-3,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="training batch size")] = 16,
        alpha: Annotated[float | None, typer.Option(
            "--alpha", min=0.0, max=1.0, help="the alpha you plan to train with: says which side of alpha* it is")] = None,
        damping: Annotated[float, typer.Option("--damping", min=0.0, help="delta added to V")] = 1e-2,
        iters: Annotated[int, typer.Option("--iters", min=1, help="power iterations")] = 15,
        cg_iters: Annotated[int, typer.Option("--cg-iters", min=1, help="conjugate-gradient steps per solve")] = 30,
        seed: Annotated[int, typer.Option("--seed", help="seed of training and of the start vector")] = 0,
        out: Annotated[Path | None, typer.Option("--out", help="also write the result as JSON here")] = None,
    ):
        """alpha* = 1 / lambda_max(V^-1/2 J V^-1/2) at one trained LoRA adapter: above it, members spread."""
        import time
        from dataclasses import asdict

        from manyminds.ensemble.stability import CurvatureError
        from manyminds.training.critical import critical_alpha, train_single_adapter

        rows = common.load_rows(task if data is None else None, data, "train", max(n, train_n), task_seed)
        base, tokenizer = common.load_model(model)
        if adapter is not None:
            adapted, member_id = load_adapter(base, adapter, member)
        else:
            if member is not None:
                raise CLIError("--member picks a member of --adapter's ensemble; without --adapter one adapter is "
                               "trained here")
            targets = [t.strip() for t in target_modules.split(",")] if target_modules else None
            with err_console().status(f"training one LoRA adapter (r={r}) for {steps} steps"):
                adapted = train_single_adapter(base, tokenizer, rows.select(range(min(train_n, len(rows)))),
                                               steps=steps, r=r, target_modules=targets, learning_rate=lr,
                                               batch_size=batch_size, seed=seed, use_cpu=not _has_cuda())
            member_id = None
        start = time.perf_counter()
        try:
            with err_console().status(f"estimating alpha* on {min(n, len(rows))} examples"):
                res = critical_alpha(adapted, tokenizer, rows.select(range(min(n, len(rows)))), damping=damping,
                                     iters=iters, cg_iters=cg_iters, seed=seed, member=member_id)
        except CurvatureError as err:
            raise CLIError(f"{err} (--steps, --damping)", exit_code=1) from err
        table, meaning = result_table(res, alpha, time.perf_counter() - start)
        console().print(table)
        console().print(meaning)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({**asdict(res), "alpha": alpha, "meaning": meaning,
                                       "adapter": adapter, "member": member_id}, indent=2))


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


__all__ = ["load_adapter", "register", "result_table"]
