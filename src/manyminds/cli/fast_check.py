"""Argument errors of ``manyminds sft|dpo|grpo`` in well under a second, before TRL loads.

Building the real parser (``trl.TrlParser`` over the config dataclasses, see
:mod:`manyminds.cli.train_args`) imports transformers and TRL: about ten seconds. The common mistakes
do not need it: an option name that does not exist, a ``--config`` file that is missing, does not
parse or has an unknown key, and an unknown ``--task``. :func:`check_arguments` catches those from a
committed list of each command's field names and extra option strings (:mod:`manyminds.cli._fields`,
generated from the dataclasses by :mod:`manyminds.cli.fields`), then the full parser still checks
every value (``--learning_rate -1`` goes through the dataclasses' ``__post_init__``, so that error
keeps the slow path).
"""

from __future__ import annotations

import os
from pathlib import Path

from manyminds.cli import _fields
from manyminds.cli.common import CLIError, close_matches, yaml_error_line

COMMANDS = ("sft", "dpo", "grpo")
CONFIG_EXTRA_KEYS = ("env",)  # TrlParser reads `env:` (environment variables) from the YAML itself


def spellings(field: str) -> tuple[str, ...]:
    """The option strings ``HfArgumentParser`` gives a field: ``--a_b`` and ``--a-b``."""
    return tuple(dict.fromkeys((f"--{field}", f"--{field.replace('_', '-')}")))


def option_fields(command: str) -> dict[str, str]:
    """Every option string of ``command`` -> the field it sets (``--lr`` -> ``learning_rate``)."""
    out = {spelling: field for field in _fields.FIELDS[command] for spelling in spellings(field)}
    out.update(_fields.EXTRA_OPTIONS[command])
    return out


def _resolve(name: str, options: dict[str, str], command: str) -> str:
    """The field that option ``name`` sets, matched as argparse does (exact, else a unique prefix)."""
    options = {**options, "--help": "help"}  # argparse abbreviates --help too (the parser prints it)
    if name in options:
        return options[name]
    matches = [option for option in options if option.startswith(name)]
    if len(matches) == 1:
        return options[matches[0]]
    if matches:
        raise CLIError(f"ambiguous option: {name} could match {', '.join(sorted(matches)[:6])}"
                       f"{' ...' if len(matches) > 6 else ''}; write the whole option name "
                       f"(`manyminds {command} --help` lists every option)")
    # suggest names spelt as the user spells them: --learning-rate or --learning_rate
    other = "_" if "-" in name[2:] else "-"
    names = sorted(option for option in options if other not in option[2:] and option != "--help")
    raise CLIError(f"unknown option {name}{close_matches(name, names)}; "
                   f"`manyminds {command} --help` lists every option")


def _key_line(text: str, key) -> int | None:
    """1-based line of ``key`` in the top-level YAML mapping ``text`` (``None`` if not found)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    for key_node, _ in getattr(node, "value", []):
        if getattr(key_node, "value", None) == str(key):
            return key_node.start_mark.line + 1
    return None


def read_config(path: str, command: str) -> dict:
    """The YAML mapping of ``path``, with one-line errors for a missing file, YAML that does not parse
    (``path:LINE:COL``), a file that is not a mapping, and an unknown key (its line, the closest fields)."""
    import yaml

    if not os.path.isfile(path):
        raise CLIError(f"config file {path} does not exist; pass an existing YAML file, e.g. examples/{command}.yaml")
    text = Path(path).read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CLIError(yaml_error_line(err, path) or f"{path}: YAML does not parse ({err})") from err
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CLIError(f"{path} must hold a YAML mapping of option names to values, not a {type(config).__name__}")
    fields = _fields.FIELDS[command]
    options = option_fields(command)
    for key in config:
        if key in CONFIG_EXTRA_KEYS or key in fields:
            continue
        alias = options.get(f"--{key}")
        hint = (f" (did you mean {alias}? --{key} is a command-line alias)" if alias
                else close_matches(str(key), fields))
        line = _key_line(text, key)
        raise CLIError(f"{path}: unknown option {key!r}{hint}{f' on line {line}' if line else ''}; the keys "
                       f"are the fields that `manyminds {command} --help` lists")
    return config


def check_arguments(command: str, argv: list[str], config_path: str | None = None) -> None:
    """Raise :class:`~manyminds.cli.common.CLIError` for an unknown option in ``argv``, a bad
    ``config_path`` YAML, or an unknown task; imports only PyYAML and :mod:`manyminds.tasks`.

    ``argv`` is the command line without ``--config PATH``. Values are not checked here: the
    dataclasses check them when the full parser runs.
    """
    options = option_fields(command)
    given: dict[str, str] = {}  # task / data as the command line sets them (the last one wins)
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            continue
        name, eq, value = arg.partition("=")
        field = _resolve(name, options, command)
        if field in ("task", "data"):
            if eq:
                given[field] = value
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                given[field] = argv[i + 1]
    config = read_config(config_path, command) if config_path is not None else {}
    data = given.get("data", config.get("data"))
    task = given.get("task", config.get("task"))
    if data is None and task is not None:
        from manyminds.tasks import TASKS  # standard library only: datasets loads inside load_task

        if str(task) not in TASKS:
            raise CLIError(f"unknown task {task!r}{close_matches(str(task), list(TASKS))}; valid tasks: "
                           f"{', '.join(TASKS)}, or pass a dataset file with --data")
