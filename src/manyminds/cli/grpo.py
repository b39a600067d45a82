"""``manyminds grpo``: GRPO with one mind of a population per rollout (``mind_sigma 0``: plain).

Options are the fields of :class:`~manyminds.training.PopulationGRPOConfig` and of the script
arguments (:mod:`manyminds.cli.train_args`); ``manyminds grpo --help`` lists them. The same run
from Python::

    config = PopulationGRPOConfig(**yaml_fields)         # the YAML's config fields
    trainer = PopulationGRPOTrainer(model, reward_funcs=answer_reward, args=config,
                                    train_dataset=load_task("arith", n=...), processing_class=tok)
    trainer.train()
"""

from __future__ import annotations

import os

import typer

from manyminds.cli.common import (
    console,
    err_console,
    load_model,
    load_rows,
    make_table,
    notice,
    use_rich_progress,
)
from manyminds.cli.run_dir import check_output_dir, claim_output_dir, resume_checkpoint
from manyminds.cli.train_args import RAW_OPTIONS, parse


def reward_functions(names: list[str]) -> list:
    """The reward functions ``names`` name (:func:`manyminds.rewards.get_reward`); a dotted import path
    is announced first, since importing it runs its module."""
    from manyminds.rewards import REWARDS, get_reward

    for name in names:
        if name not in REWARDS and "." in name:
            notice(f"note: importing reward {name} (runs the code of module {name.rsplit('.', 1)[0]})")
    return [get_reward(name) for name in names]


def run_grpo(argv: list[str]) -> None:
    """Parse, load, train and save a population GRPO run, then print the training log."""
    model_args, data_args, script_args, output_args, config = parse("grpo", argv)  # before the imports
    from manyminds.training import PopulationGRPOTrainer
    from manyminds.training.grpo import MIND_STATE_FILE

    names = script_args.reward_funcs if script_args.reward_funcs is not None else (
        [] if config.label_free else ["answer"])
    rewards = reward_functions(names)
    train = load_rows(data_args.task, data_args.data, data_args.split, data_args.num_examples,
                      data_args.task_seed, data_args.task_knobs)
    run_id = check_output_dir(config, output_args.overwrite_output_dir)  # input errors first, then the folder
    model, tokenizer = load_model(model_args.model_name_or_path, model_args.dtype, config.trust_remote_code)
    peft_config = None
    if script_args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha or 2 * script_args.lora_r,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = PopulationGRPOTrainer(model, reward_funcs=rewards, args=config, train_dataset=train,
                                    processing_class=tokenizer, peft_config=peft_config)
    use_rich_progress(trainer, ("reward", "loss"))
    checkpoint = resume_checkpoint(config, MIND_STATE_FILE)
    claim_output_dir(config, run_id, output_args.overwrite_output_dir, "grpo")
    err_console().print(
        f"population GRPO: mind_sigma={config.mind_sigma}, {config.mind_assignment} minds, log-probs from the "
        f"{config.mind_logprobs} model{', label-free' if config.label_free else ''}"
        + (f"; resuming {checkpoint}" if checkpoint else ""))
    trainer.train(resume_from_checkpoint=checkpoint)
    final = os.path.join(config.output_dir, "final")
    trainer.save_model(final)
    tokenizer.save_pretrained(final)
    console().print(grpo_history_table(trainer.state.log_history))
    console().print(f"saved the trained model to {final}")


# short headers so that the table fits 80 columns
_GRPO_COLUMNS = {"reward": "reward", "reward_std": "std", "frac_reward_zero_std": "zero-std",
                 "minds/unique_answers_per_group": "answers", "entropy": "entropy", "loss": "loss"}


def grpo_history_table(history: list[dict]):
    """One row per logged GRPO step: reward, its std, share of groups with zero std, unique answers per
    group, entropy and loss."""
    table = make_table("training log", ["step", *_GRPO_COLUMNS.values()])
    for h in history:
        if "reward" in h:
            table.add_row(str(h.get("step")), *(f"{h[key]:.3f}" if key in h else "-" for key in _GRPO_COLUMNS))
    return table


def register(app: typer.Typer) -> None:
    @app.command("grpo", context_settings=RAW_OPTIONS, add_help_option=False)
    def grpo(ctx: typer.Context):
        """GRPO with one mind per rollout (mind_sigma 0: plain GRPO). Options: fields of PopulationGRPOConfig (grpo --help)."""
        run_grpo(ctx.args)
