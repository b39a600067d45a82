"""The run behind ``manyminds sft`` and ``manyminds dpo``: K LoRA members trained with the
alpha-Renyi objective on a frozen base, saved under ``output_dir/members``, summarised per member."""

from __future__ import annotations

import json
import time
from pathlib import Path

from manyminds.cli.common import (
    RUN_FILE,
    console,
    load_model,
    load_rows,
    make_table,
    use_rich_progress,
)
from manyminds.cli.run_dir import check_output_dir, claim_output_dir, resume_checkpoint
from manyminds.cli.train_args import parse


def run_renyi(command: str, argv: list[str]) -> None:
    """Parse, load, train and save an alpha-Renyi ensemble (``command``: ``"sft"`` or ``"dpo"``),
    then print the per-member table."""
    model_args, data_args, output_args, config = parse(command, argv)  # before the trainers' imports
    from manyminds.ensemble.save_and_load import read_members_config
    from manyminds.training import RenyiDPOTrainer, RenyiSFTTrainer
    from manyminds.training.common import MEMBERS_DIR

    dataset = load_rows(data_args.task, data_args.data, data_args.split, data_args.num_examples,
                        data_args.task_seed, data_args.task_knobs)
    run_id = check_output_dir(config, output_args.overwrite_output_dir)  # input errors first, then the folder
    checkpoint = resume_checkpoint(config)
    if checkpoint is not None and (Path(checkpoint) / MEMBERS_DIR).is_dir():
        # its members must be this run's K and r: one error line before any member is allocated
        read_members_config(Path(checkpoint) / MEMBERS_DIR, config.num_members, config.r)
    model, tokenizer = load_model(model_args.model_name_or_path, model_args.dtype, config.trust_remote_code)
    trainer_cls = RenyiSFTTrainer if command == "sft" else RenyiDPOTrainer
    trainer = trainer_cls(model, config, train_dataset=dataset, processing_class=tokenizer)
    use_rich_progress(trainer, ("loss",))
    claim_output_dir(config, run_id, output_args.overwrite_output_dir, command)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    trainer.save_model(config.output_dir)
    run = {"kind": command, "model": model_args.model_name_or_path,
           "task": None if data_args.data else data_args.task, "task_knobs": data_args.task_knobs,
           "data": data_args.data,
           "num_members": config.num_members, "alpha": config.alpha, "r": config.r,
           "max_steps": config.max_steps, "seconds": round(seconds, 2), "log_history": trainer.state.log_history}
    Path(config.output_dir, RUN_FILE).write_text(json.dumps(run, indent=2, default=str))
    console().print(ensemble_table(f"alpha-Renyi {command.upper()}: K={config.num_members}, alpha={config.alpha}",
                                    trainer.state.log_history, config.num_members))
    console().print(f"{trainer.state.global_step} steps in {seconds:.1f}s; members saved to "
                    f"{Path(config.output_dir) / 'members'}")


def ensemble_table(title: str, history: list[dict], num_members: int):
    """Per-member NLL (first and last logged step), responsibility and route share."""
    logs = [h for h in history if "loss" in h and "train_loss" not in h]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    table = make_table(title, ["member", "nll first", "nll last", "resp.", "share"])

    def f(d, key):
        return f"{float(d[key]):.4f}" if key in d else "-"

    for k in range(num_members):
        table.add_row(str(k), f(first, f"member_{k}/nll"), f(last, f"member_{k}/nll"),
                      f(last, f"member_{k}/responsibility"), f(last, f"member_{k}/route_share"))
    table.add_section()
    table.add_row("loss", f(first, "loss"), f(last, "loss"), "", "")
    table.add_row("effective members", f(first, "effective_members"), f(last, "effective_members"), "", "")
    table.add_row("dead members", f(first, "dead_members"), f(last, "dead_members"), "", "")
    return table
