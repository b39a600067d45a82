"""The arguments of ``manyminds sft``, ``dpo`` and ``grpo``: the trainers' config dataclasses are the CLI.

Each command parses, with ``trl.TrlParser`` (as ``trl sft`` / ``trl grpo`` do):

- the script arguments below (:class:`ModelArguments`, a ``*DataArguments`` class,
  :class:`OutputArguments`, and for GRPO :class:`GRPOScriptArguments`), and
- the trainer's config: :class:`~manyminds.training.RenyiSFTConfig`,
  :class:`~manyminds.training.RenyiDPOConfig` or :class:`~manyminds.training.PopulationGRPOConfig`
  (``trust_remote_code`` is a field of each, as in TRL's configs).

Every field is an option of its own name (``--learning_rate``, ``--mind_sigma``, ``--num_members``,
also spelt with dashes); its default lives in the dataclass and nowhere else. ``--config run.yaml``
sets fields from a YAML mapping, and options on the command line override it::

    manyminds grpo --config examples/grpo.yaml --max_steps 3

A few short aliases map to a field and have no default of their own: ``--model``
(``model_name_or_path``), ``--n`` (``num_examples``), ``--steps`` (``max_steps``, >= 1), ``--lr``
(``learning_rate``), ``--members`` (``num_members``), ``--sigma`` (``mind_sigma``) and ``--resume``
(``resume_from_checkpoint last``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import typer

from manyminds.cli.common import CLIError, close_matches, notice, setup_quiet
from manyminds.cli.fast_check import check_arguments, read_config

# The commands take their options raw and hand them to TrlParser; --help is TrlParser's help.
RAW_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def register_trainer_command(app: typer.Typer, name: str, help: str, run: Callable[[list[str]], None]) -> None:
    """Add ``manyminds <name>`` to ``app``: a trainer command whose options go raw to ``run(argv)``,
    which parses them with :func:`parse` (``--help`` is TrlParser's help). ``help`` is the command's
    line in ``manyminds --help``."""

    def command(ctx: typer.Context):
        run(ctx.args)

    app.command(name, help=help, context_settings=RAW_OPTIONS, add_help_option=False)(command)


# ------------------------------------------------------------------------------ script arguments
@dataclass
class ModelArguments:
    """The model a command starts from (``trust_remote_code`` is a field of the trainer's config, as in TRL)."""

    _argument_group_name = "model"

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Zoo name, local save_pretrained folder or hub id; default: the zoo's default model "
                "(manyminds zoo list).", "aliases": ["--model"]})
    dtype: str | None = field(default=None, metadata={
        "help": "Weights dtype: auto, float32, bfloat16 or float16; default: as saved."})


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



# --------------------------------------------------------------------------------------- parsing
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


def _config_classes(command: str) -> tuple:
    """The dataclasses ``command`` parses, in help order (imports the trainers: slow, only when run)."""
    if command == "grpo":
        from manyminds.training import PopulationGRPOConfig

        return (ModelArguments, GRPODataArguments, GRPOScriptArguments, OutputArguments, PopulationGRPOConfig)
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
    tasks fail first, before transformers and TRL are imported
    (:func:`~manyminds.cli.fast_check.check_arguments`, under a second); values are then checked by
    the dataclasses themselves (seconds: the parser imports TRL). ``--verbose`` / ``-v`` may follow
    the command too: it is the app's option, not a field.
    """
    rest, config_path = _split_config(_strip_verbose(argv))
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
    env = read_config(config_path, command).get("env")
    if isinstance(env, dict) and env:
        notice(f"note: {config_path} set environment variables {', '.join(map(str, env))} (its env: mapping)")


def _strip_verbose(argv: list[str]) -> list[str]:
    """``argv`` without ``--verbose`` / ``-v`` (which switch the app to verbose)."""
    if "--verbose" in argv or "-v" in argv:
        setup_quiet(True)
    return [a for a in argv if a not in ("--verbose", "-v")]
