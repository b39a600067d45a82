"""``manyminds sft``, ``manyminds dpo`` and ``manyminds grpo``: the trainers' config dataclasses are the CLI.

Each command parses, with ``trl.TrlParser`` (as ``trl sft`` / ``trl grpo`` do):

- the script arguments below (:class:`ModelArguments`, a ``*DataArguments`` class, and for GRPO
  :class:`GRPOScriptArguments`), and
- the trainer's config: :class:`~manyminds.training.RenyiSFTConfig`,
  :class:`~manyminds.training.RenyiDPOConfig` or :class:`~manyminds.training.PopulationGRPOConfig`.

Every field is an option of its own name (``--learning_rate``, ``--mind_sigma``, ``--num_members``,
also spelt with dashes); its default lives in the dataclass and nowhere else. ``--config run.yaml``
sets fields from a YAML mapping, and options on the command line override it::

    manyminds grpo --config examples/grpo.yaml --max_steps 3

A few short aliases map to a field and have no default of their own: ``--model``
(``model_name_or_path``), ``--n`` (``num_examples``), ``--steps`` (``max_steps``, >= 1), ``--lr``
(``learning_rate``), ``--members`` (``num_members``), ``--sigma`` (``mind_sigma``) and ``--resume``
(``resume_from_checkpoint last``).

The same run from Python::

    config = PopulationGRPOConfig(**yaml_fields)         # the YAML's config fields
    trainer = PopulationGRPOTrainer(model, reward_funcs=answer_reward, args=config,
                                    train_dataset=load_task("arith", n=...), processing_class=tok)
    trainer.train()
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer

from manyminds.cli.common import (
    RUN_FILE,
    CLIError,
    close_matches,
    console,
    err_console,
    load_model,
    load_rows,
    make_table,
    setup_quiet,
    use_rich_progress,
)

# The commands take their options raw and hand them to TrlParser; --help is TrlParser's help.
_RAW = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
RESUME_LAST = ("last", "true", "True", "yes")


# ------------------------------------------------------------------------------ script arguments
@dataclass
class GRPOModelArguments:
    """The model a command starts from (``trust_remote_code`` is a field of ``PopulationGRPOConfig``)."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Zoo name, local save_pretrained folder or hub id; default: the zoo's default model "
                "(manyminds zoo list).", "aliases": ["--model"]})
    dtype: str | None = field(default=None, metadata={
        "help": "Weights dtype: auto, float32, bfloat16 or float16; default: as saved."})


@dataclass
class ModelArguments(GRPOModelArguments):
    """The model ``manyminds sft`` / ``dpo`` start from."""

    trust_remote_code: bool = field(default=False, metadata={
        "help": "Let transformers run the model repository's own code (only for repositories you trust)."})


@dataclass
class DataArguments:
    """Training rows: a bundled task, or a local dataset file or folder (``data``) instead."""

    _argument_group_name = "data"

    task: str = field(default="arith", metadata={"help": "Bundled task (manyminds tasks list); ignored with --data."})
    data: str | None = field(default=None, metadata={
        "help": "Local dataset in TRL columns instead of --task: a .jsonl/.json/.csv/.parquet file or a "
                "Dataset.save_to_disk folder."})
    split: str = field(default="train", metadata={"help": "Split of the task, or of a DatasetDict folder."})
    num_examples: int | None = field(default=None, metadata={
        "help": "Use the first N rows; default: the task's default size, or every row of --data.", "aliases": ["--n"]})
    task_seed: int = field(default=0, metadata={"help": "Seed of the task's sampled rows."})
    task_knobs: dict | str | None = field(default=None, metadata={
        "help": "Task difficulty knobs as JSON, e.g. '{\"digits\": 3}' (manyminds tasks list shows them)."})

    def __post_init__(self):
        if isinstance(self.task_knobs, str):
            try:
                self.task_knobs = json.loads(self.task_knobs)
            except json.JSONDecodeError as err:
                raise ValueError(f"task_knobs must be a JSON object such as '{{\"digits\": 3}}', got "
                                 f"{self.task_knobs!r}") from err
        if self.task_knobs is not None and not isinstance(self.task_knobs, dict):
            raise ValueError(f"task_knobs must be a mapping of knob names to values, got {self.task_knobs!r}")
        if self.num_examples is not None and self.num_examples < 1:
            raise ValueError(f"num_examples must be >= 1 (or unset for all rows), got {self.num_examples}")


@dataclass
class SFTDataArguments(DataArguments):
    task: str = field(default="conflict", metadata={"help": "Bundled task (manyminds tasks list); ignored with --data."})


@dataclass
class DPODataArguments(DataArguments):
    task: str = field(default="prefs", metadata={"help": "Bundled task (manyminds tasks list); ignored with --data."})


@dataclass
class GRPODataArguments(DataArguments):
    task: str = field(default="arith", metadata={"help": "Bundled task (manyminds tasks list); ignored with --data."})


@dataclass
class OutputArguments:
    """What to do with an ``output_dir`` that already holds files (an earlier run's checkpoints)."""

    _argument_group_name = "output"

    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start a new run in a non-empty output_dir: its old checkpoint-N folders are deleted. Without it "
                "(or --resume) a non-empty output_dir is refused, so two runs never mix their checkpoints."})


@dataclass
class GRPOScriptArguments:
    """Rewards and the optional LoRA adapter of ``manyminds grpo``."""

    _argument_group_name = "grpo script"

    reward_funcs: list[str] | None = field(default=None, metadata={
        "help": "Reward function(s): names from manyminds.rewards.REWARDS (answer, math_verify, format, "
                "majority_vote) or dotted import paths (my_pkg.rewards.fn). Unset: answer, or none with "
                "--label_free."})
    lora_r: int = field(default=0, metadata={
        "help": "LoRA rank of a PEFT adapter to train (0 = full fine-tuning; the paper trains LoRA)."})
    lora_alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; unset: 2 * lora_r."})

    def __post_init__(self):
        if self.lora_r < 0:
            raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")


def _positive_steps(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of optimizer steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes optimizer steps >= 1, got {value}; to train by epochs use "
                                         f"--max_steps -1 --num_train_epochs N")
    return value


# alias -> (field, extra add_argument kwargs). Aliases have no default of their own (SUPPRESS).
_ALIASES = {
    "--steps": ("max_steps", {"type": _positive_steps}),
    "--lr": ("learning_rate", {"type": float}),
    "--members": ("num_members", {"type": int}),
    "--sigma": ("mind_sigma", {"type": float}),
    "--resume": ("resume_from_checkpoint", {"action": "store_const", "const": "last"}),
}


# --------------------------------------------------------------------------------------- parsing
def _config_classes(command: str) -> tuple:
    """The dataclasses ``command`` parses, in help order (imports the trainers: slow, only when run)."""
    if command == "grpo":
        from manyminds.training import PopulationGRPOConfig

        return (GRPOModelArguments, GRPODataArguments, GRPOScriptArguments, OutputArguments, PopulationGRPOConfig)
    from manyminds.training import RenyiDPOConfig, RenyiSFTConfig

    if command == "sft":
        return (ModelArguments, SFTDataArguments, OutputArguments, RenyiSFTConfig)
    return (ModelArguments, DPODataArguments, OutputArguments, RenyiDPOConfig)


def make_parser(command: str):
    """``TrlParser`` over the command's dataclasses, plus the aliases, with one-line errors."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # argparse would print the whole usage (hundreds of options) first
            raise CLIError(f"{message}; see `{self.prog} --help`")

    classes = _config_classes(command)
    parser = Parser(classes, prog=f"manyminds {command}",
                    usage=f"manyminds {command} [--config FILE.yaml] [--FIELD VALUE ...]",
                    description=f"Every option is a field of {', '.join(c.__name__ for c in classes)}; "
                                f"--config FILE.yaml sets fields from a YAML mapping, the command line overrides it.")
    dests = {a.dest for a in parser._actions}
    for alias, (dest, kwargs) in _ALIASES.items():
        if dest in dests:
            parser.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=f"alias of --{dest}", **kwargs)
    return parser


def _split_config(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config PATH`` / ``--config=PATH``, and the path."""
    out, path, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise CLIError("--config needs a YAML file path, e.g. --config examples/grpo.yaml")
            path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, path


def parse(command: str, argv: list[str]) -> tuple:
    """Parse ``argv`` (and its ``--config`` file) into the command's dataclass instances.

    Unknown options, config files that are missing, do not parse or have unknown keys, and unknown
    tasks fail first, before transformers and TRL are imported (:func:`check_arguments`, under a
    second); values are then checked by the dataclasses themselves (seconds: the parser imports TRL).
    """
    # imported here, not at the top, so that `python -m manyminds.cli.fields` runs cleanly
    from manyminds.cli.fields import check_arguments

    rest, config_path = _split_config(list(argv))
    if "-h" not in rest and "--help" not in rest:
        check_arguments(command, rest, config_path)
    parser = make_parser(command)
    if "-h" in rest or "--help" in rest:
        parser.print_help()
        raise typer.Exit(0)
    _, unknown = parser.parse_known_args(rest)
    if unknown:
        options = sorted({f"--{a.dest}" for a in parser._actions if a.option_strings and a.dest != "help"}
                         | set(_ALIASES))
        bad = next((u for u in unknown if u.startswith("-")), unknown[0])
        name = bad.split("=", 1)[0]
        hint = close_matches(name, options) if name.startswith("--") else ""
        raise CLIError(f"unknown option {bad}{hint}; `manyminds {command} --help` lists every option")
    if config_path is not None:
        rest = ["--config", config_path, *rest]
    try:
        parsed = parser.parse_args_and_config(rest)
    except ValueError as err:  # a dataclass __post_init__ check: name the source of the value
        source = f" (from {config_path} or the command line)" if config_path else ""
        raise CLIError(f"{str(err).strip().splitlines()[0]}{source}") from err
    if config_path is not None:
        _note_config_env(command, config_path)
    return parsed


def _note_config_env(command: str, config_path: str) -> None:
    """A config file is code: say which environment variables its ``env:`` mapping has set (TrlParser
    copies them into ``os.environ`` while parsing)."""
    from manyminds.cli.fields import read_config

    env = read_config(config_path, command).get("env")
    if isinstance(env, dict) and env:
        _notice(f"note: {config_path} set environment variables {', '.join(map(str, env))} (its env: mapping)")


def _notice(text: str) -> None:
    """One plain line on stderr (no rich markup: paths and dotted names print as they are)."""
    err_console().print(text, markup=False, highlight=False, soft_wrap=True)


def _strip_verbose(argv: list[str]) -> list[str]:
    """``--verbose`` / ``-v`` may follow the command too; it is the app's option, not a config field."""
    if "--verbose" in argv or "-v" in argv:
        setup_quiet(True)
    return [a for a in argv if a not in ("--verbose", "-v")]


# -------------------------------------------------------------------------------------- running
def _resume_checkpoint(config, marker: str | None = None) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` points at: ``last`` -> the newest complete one in
    ``output_dir`` (none: start from step 0, and say so), a path -> that folder (must exist)."""
    from manyminds.training.common import last_checkpoint

    value = config.resume_from_checkpoint
    if value in (None, "", False, "false", "False", "no"):
        return None
    if value in RESUME_LAST or value is True:
        checkpoint = last_checkpoint(config.output_dir, marker) if marker else last_checkpoint(config.output_dir)
        if checkpoint is None:
            err_console().print(f"[yellow]no complete checkpoint in {config.output_dir}; starting from step 0")
        return checkpoint
    if not os.path.isdir(value):
        raise CLIError(f"resume_from_checkpoint {value}: no such checkpoint folder; pass a checkpoint-N folder, "
                       f"or 'last' for the newest complete one in output_dir")
    return value


def _resuming(config) -> bool:
    return config.resume_from_checkpoint not in (None, "", False, "false", "False", "no")


def _checkpoint_dirs(output_dir: str) -> list[Path]:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    path = Path(output_dir)
    return sorted(p for p in path.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()) if path.is_dir() else []


def check_output_dir(config, overwrite: bool) -> str:
    """The run id of this run, after checking ``output_dir`` (writes nothing).

    A non-empty ``output_dir`` is refused unless ``--resume`` (continue the run recorded there) or
    ``--overwrite_output_dir`` (start a new run there). Resuming keeps the folder's run id, and is
    refused when a checkpoint in the folder, or the one named by ``resume_from_checkpoint``, was
    written by another run.
    """
    import uuid

    from manyminds.training.common import read_run_id

    out = Path(config.output_dir)
    busy = out.is_dir() and any(out.iterdir())
    value = config.resume_from_checkpoint
    named = value if _resuming(config) and value not in RESUME_LAST and value is not True else None
    if not _resuming(config):
        if busy and not overwrite:
            raise CLIError(f"output_dir {out} is not empty (an earlier run's files); pass --resume to continue "
                           f"that run, or --overwrite_output_dir to start a new run there (or another --output_dir)")
        return uuid.uuid4().hex
    if not busy:  # a named checkpoint continues its own run in this new folder
        return (read_run_id(named) if named else None) or uuid.uuid4().hex
    run_id = read_run_id(out)
    checkpoints = _checkpoint_dirs(str(out)) + ([Path(named)] if named else [])
    for checkpoint in checkpoints:
        other = read_run_id(checkpoint)
        if other is None:  # written before run ids, or by the library: nothing to compare
            continue
        if run_id is None:
            run_id = other
        elif other != run_id:
            raise CLIError(f"{checkpoint} belongs to run {other}, not to run {run_id} recorded in {out}; resume "
                           f"with another --output_dir, or start a new run with --overwrite_output_dir (no --resume)")
    return run_id or uuid.uuid4().hex


def claim_output_dir(config, run_id: str, overwrite: bool, command: str) -> None:
    """Record ``run_id`` in ``output_dir`` (a new run with ``overwrite``: the old checkpoints go first)."""
    import shutil
    from datetime import datetime, timezone

    from manyminds.training.common import read_run_id, write_run_id

    out = Path(config.output_dir)
    if overwrite and not _resuming(config):
        old = _checkpoint_dirs(str(out))
        for checkpoint in old:
            shutil.rmtree(checkpoint)
        if old:
            _notice(f"note: --overwrite_output_dir: deleted {len(old)} checkpoint folder(s) of an earlier run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if read_run_id(out) != run_id:
        write_run_id(out, run_id, command=command, started=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def load_reward(name: str):
    """A reward function by registry name (:data:`manyminds.rewards.REWARDS`) or dotted import path."""
    import importlib

    from manyminds.rewards import REWARDS

    if name in REWARDS:
        return REWARDS[name]
    if "." in name:
        module_name, attr = name.rsplit(".", 1)
        # a dotted path is code: importing it runs the module, whatever it does
        _notice(f"note: importing reward {name} (runs the code of module {module_name})")
        try:
            reward = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise CLIError(f"reward {name!r} cannot be imported ({err}); check the dotted path") from err
        if not callable(reward):
            raise CLIError(f"reward {name!r} is a {type(reward).__name__}, not a function; pass a callable "
                           f"(prompts, completions, **kwargs) -> list[float]")
        return reward
    raise CLIError(f"unknown reward {name!r}{close_matches(name, list(REWARDS))}; choose from {', '.join(REWARDS)} "
                   f"or pass a dotted import path")


def _renyi(command: str, argv: list[str]) -> None:
    model_args, data_args, output_args, config = parse(command, _strip_verbose(argv))  # before the trainers' imports
    from manyminds.training import RenyiDPOTrainer, RenyiSFTTrainer

    dataset = load_rows(data_args.task, data_args.data, data_args.split, data_args.num_examples,
                        data_args.task_seed, data_args.task_knobs)
    run_id = check_output_dir(config, output_args.overwrite_output_dir)  # input errors first, then the folder
    model, tokenizer = load_model(model_args.model_name_or_path, model_args.dtype, model_args.trust_remote_code)
    trainer_cls = RenyiSFTTrainer if command == "sft" else RenyiDPOTrainer
    trainer = trainer_cls(model, config, train_dataset=dataset, processing_class=tokenizer)
    use_rich_progress(trainer, ("loss",))
    checkpoint = _resume_checkpoint(config)
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
    console().print(_ensemble_table(f"alpha-Renyi {command.upper()}: K={config.num_members}, alpha={config.alpha}",
                                    trainer.state.log_history, config.num_members))
    console().print(f"{trainer.state.global_step} steps in {seconds:.1f}s; members saved to "
                    f"{Path(config.output_dir) / 'members'}")


def _ensemble_table(title: str, history: list[dict], num_members: int):
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


def _grpo(argv: list[str]) -> None:
    model_args, data_args, script_args, output_args, config = parse("grpo", _strip_verbose(argv))  # before the imports
    from manyminds.training import PopulationGRPOTrainer
    from manyminds.training.grpo import MIND_STATE_FILE

    names = script_args.reward_funcs if script_args.reward_funcs is not None else (
        [] if config.label_free else ["answer"])
    rewards = [load_reward(name) for name in names]
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
    checkpoint = _resume_checkpoint(config, MIND_STATE_FILE)
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
    @app.command("sft", context_settings=_RAW, add_help_option=False)
    def sft(ctx: typer.Context):
        """alpha-Renyi SFT of K LoRA members on a frozen base. Options: fields of RenyiSFTConfig (sft --help)."""
        _renyi("sft", ctx.args)

    @app.command("dpo", context_settings=_RAW, add_help_option=False)
    def dpo(ctx: typer.Context):
        """alpha-Renyi DPO of K LoRA members (reference: the base). Options: fields of RenyiDPOConfig (dpo --help)."""
        _renyi("dpo", ctx.args)

    @app.command("grpo", context_settings=_RAW, add_help_option=False)
    def grpo(ctx: typer.Context):
        """GRPO with one mind per rollout (mind_sigma 0: plain GRPO). Options: fields of PopulationGRPOConfig (grpo --help)."""
        _grpo(ctx.args)


__all__ = ["DataArguments", "GRPOScriptArguments", "ModelArguments", "OutputArguments", "check_output_dir",
           "claim_output_dir", "grpo_history_table", "load_reward",
           "make_parser", "parse", "register"]
