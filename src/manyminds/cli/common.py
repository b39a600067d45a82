"""What every ``manyminds`` command shares: consoles, quiet libraries, one-line errors, model and
dataset loading, the ``--sigma`` option (a number or ``auto``), the training progress bar, and
tables that stay readable at 80 columns.

Importing this module is cheap (typer, rich, the standard library): torch, transformers, TRL, PEFT
and datasets are imported inside the functions that need them, so ``manyminds --help`` and argument
errors come back at once.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import socket
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

RUN_FILE = "manyminds_ensemble.json"  # what `manyminds sft/dpo` record for `manyminds uncertainty`
RUNS_DIR = "runs"  # every command's default output folder is runs/<command> (ignored by .gitignore)
MODEL_HELP = "zoo name (default: the embedded default model), local model folder or hub id"
# Options that several commands take, with one help each (``model: ModelOption = None``).
ModelOption = Annotated[str | None, typer.Option("--model", help=MODEL_HELP)]
NormsOption = Annotated[str, typer.Option("--norms", help="perturbed norms: all, blocks or final")]
NoiseOption = Annotated[str, typer.Option("--noise", help="additive (the paper) or multiplicative")]
DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_HEAVY_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "huggingface_hub")


class _State:
    verbose = False

    def __init__(self):
        self.shown_warnings: set[str] = set()  # user-facing warning lines printed by this command


STATE = _State()

# manyminds' warnings written for users (manyminds.population): shown as one line, also when quiet
USER_WARNINGS = ("MindCollapseWarning", "CalibrationWarning")


class _ByName(type):
    """``issubclass(C, UserFacingWarning)`` holds for manyminds' classes named in ``USER_WARNINGS``, so a
    warnings filter matches them without importing :mod:`manyminds.population` (torch) here."""

    def __subclasscheck__(cls, sub) -> bool:
        return (isinstance(sub, type) and sub.__name__ in USER_WARNINGS
                and getattr(sub, "__module__", "").startswith("manyminds."))


class UserFacingWarning(UserWarning, metaclass=_ByName):
    """Filter category standing for :class:`~manyminds.population.MindCollapseWarning` and
    :class:`~manyminds.population.CalibrationWarning` (never raised itself)."""


def console() -> Console:
    """Console for results (stdout). Built per call, so ``COLUMNS`` set by a test or a CI job counts."""
    return Console(soft_wrap=False)


def err_console() -> Console:
    """Console for progress and notes (stderr), so that stdout keeps only results."""
    return Console(stderr=True)


class CLIError(Exception):
    """A user error with a message that names the problem and the fix: the app prints it as one line
    ``error: <message>`` and exits with ``exit_code`` (2: bad input)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def notice(text: str) -> None:
    """One plain line on stderr (no rich markup: paths and dotted names print as they are)."""
    err_console().print(text, markup=False, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)


def one_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, with its type when the message is empty.

    ``KeyError('x')`` prints as ``'x'``: such errors get their type name in front, so the line still
    says what went wrong.
    """
    text = str(err).strip()
    if isinstance(err, KeyError) and err.args:
        text = f"KeyError: {err.args[0]!r}"
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)) and err.filename and \
            str(err.filename) not in text:
        text = f"{text} ({err.filename})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def yaml_error_line(err: BaseException, path: str) -> str | None:
    """``path:LINE:COL: problem`` for a YAML syntax error (``yaml.MarkedYAMLError``), else ``None``."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is None:
        return None
    problem = getattr(err, "problem", None) or getattr(err, "context", None) or "invalid YAML"
    return (f"{path}:{mark.line + 1}:{mark.column + 1}: YAML does not parse ({problem}); fix the file at "
            f"that line")


def setup_quiet(verbose: bool) -> None:
    """Keep library warnings, log records and stray tqdm bars out of the user's view (unless verbose).

    Environment variables are read by transformers / datasets when they are first imported, which
    happens later, inside the command; Python warnings and loggers are filtered right here.
    """
    STATE.verbose = verbose
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if verbose:
        show_user_warnings()
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading / saving bars
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for category in (FutureWarning, UserWarning, DeprecationWarning, RuntimeWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _HEAVY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    show_user_warnings()  # after the "ignore" filters, so that it is checked first


def show_user_warnings() -> None:
    """Print each distinct MindCollapseWarning / CalibrationWarning as one line ``warning: <message>``
    on stderr (other warnings go to the previous ``warnings.showwarning``, or stay filtered)."""
    STATE.shown_warnings = set()
    warnings.filterwarnings("always", category=UserFacingWarning)
    if warnings.showwarning is not _show_warning:
        _show_warning.previous = warnings.showwarning
        warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if not issubclass(category, UserFacingWarning):
        return _show_warning.previous(message, category, filename, lineno, file, line)
    text = " ".join(str(message).split())
    if text not in STATE.shown_warnings:
        STATE.shown_warnings.add(text)
        print(f"warning: {text}", file=sys.stderr, flush=True)
    return None


_show_warning.previous = warnings.showwarning


def quiet_loaded_libraries() -> None:
    """After the heavy imports: silence transformers' and datasets' own loggers and bars (not verbose)."""
    if STATE.verbose:
        return
    mods = sys.modules
    if "transformers" in mods:
        mods["transformers"].logging.set_verbosity_error()
        mods["transformers"].logging.disable_progress_bar()
    if "datasets" in mods:
        mods["datasets"].disable_progress_bars()
        mods["datasets"].logging.set_verbosity_error()


def close_matches(word: str, valid: Sequence[str], n: int = 3) -> str:
    """``" (did you mean a, b?)"`` for the names of ``valid`` closest to ``word`` ("" if none is close)."""
    hits = difflib.get_close_matches(word, list(dict.fromkeys(valid)), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(hits)}?)" if hits else ""


# ---------------------------------------------------------------------------------------- tables
def make_table(title: str | None, columns: Sequence[str | tuple[str, str]], **kwargs) -> Table:
    """A rich table whose cells wrap instead of being cut to ``acc…`` in an 80-column terminal.

    Args:
        columns: header names; ``(name, "left")`` for a left-aligned column (default: right-aligned
            after the first column).
    """
    table = Table(title=title, **kwargs)
    for i, col in enumerate(columns):
        name, justify = col if isinstance(col, tuple) else (col, "left" if i == 0 else "right")
        table.add_column(name, justify=justify, overflow="fold", no_wrap=False, min_width=min(len(name), 8))
    return table


# ---------------------------------------------------------------------------------------- models
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host name resolves within ``timeout`` seconds.

    Without network huggingface_hub retries for about a minute before it gives up; a failed name
    lookup answers in milliseconds.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0].split(":")[0]
    result: list[bool] = []

    def probe():
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_model_source(name: str) -> None:
    """Fail at once, naming the fix, when ``name`` is neither a zoo name, a local folder, nor a hub
    id that can be fetched (or is cached): a path-looking name that does not exist, or a hub id with
    the hub unreachable and nothing cached."""
    zoo_names = _zoo_names()
    if name in zoo_names:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        return
    valid = f"pass an existing model folder, a hub id, or a zoo name ({', '.join(zoo_names)})"
    if path.exists():
        raise CLIError(f"{name} is a file, not a model folder; {valid}")
    parts = Path(name).parts
    looks_local = (name.startswith((".", "/", "~")) or Path(name).suffix != "" or len(parts) != 2
                   or Path(parts[0]).is_dir())
    if looks_local:
        raise CLIError(f"no model folder at {name}{close_matches(name, zoo_names)}; {valid}")
    if not _hub_reachable():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
        except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
            cached = False
        if not cached:
            raise CLIError(f"{name} is not a local folder and the Hugging Face hub cannot be reached (no network) "
                           f"with no cached copy; {valid}")


def _zoo_names() -> list[str]:
    from manyminds import zoo

    return list(zoo.ZOO)


def _corrupt_weight_file(folder: Path) -> tuple[Path, Exception] | None:
    """The first ``*.safetensors`` file in ``folder`` whose header cannot be read, with the error."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as err:  # noqa: BLE001 - any failure to open names the file
            return file, err
    return None


def load_model(name_or_path: str | None, dtype: str | None = None, trust_remote_code: bool = False):
    """``(model, tokenizer)`` from a zoo name (default: the zoo's default model), a local folder or a
    hub id, behind a status line, with one-line errors that name the file: a missing folder, a
    corrupt ``model.safetensors``, an unreachable hub."""
    from manyminds.zoo import DEFAULT_MODEL, ZOO, is_built, load

    name = name_or_path or DEFAULT_MODEL
    check_model_source(name)
    torch_dtype = None
    if dtype not in (None, "auto"):
        import torch

        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise CLIError(f"dtype {dtype!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    note = " (built on first use, a few minutes)" if name in ZOO and not is_built(name) else ""
    try:
        with err_console().status(f"loading {name}{note}"):
            model, tokenizer = load(name, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as err:
        folder = Path(name).expanduser()
        bad = _corrupt_weight_file(folder) if folder.is_dir() else None
        if bad is not None:
            raise CLIError(f"{bad[0]} is corrupt or truncated ({one_line(bad[1])}); re-save or re-download "
                           f"the model") from err
        raise
    quiet_loaded_libraries()
    return model, tokenizer


# ----------------------------------------------------------------------------------------- sigma
SIGMA_AUTO = "auto"
SIGMA_HELP = ("noise scale of the minds (the paper: 0.02), or auto: the model's calibrated sigma (target KL "
              "0.05 nats; the zoo's documented value for a zoo model), measured once and cached")


def parse_sigma_option(values: Sequence[str], option: str = "--sigma") -> list[float | str]:
    """The values of a sigma option: numbers (>= 0, finite) and at most one ``"auto"``, in order.

    Each value may hold several, comma-separated (``"0.01,0.02"``, as ``demo --sigmas`` takes them).
    Called before the model loads, so a typo fails at once: ``--sigma foo`` raises
    :class:`CLIError` ``"--sigma takes a number or 'auto', got 'foo'"``.
    """
    out: list[float | str] = []
    for value in values:
        for part in str(value).split(","):
            text = part.strip()
            if not text:
                continue
            if text.lower() == SIGMA_AUTO:
                if SIGMA_AUTO not in out:
                    out.append(SIGMA_AUTO)
                continue
            try:
                number = float(text)
            except ValueError:
                raise CLIError(f"{option} takes a number or 'auto', got {text!r}; e.g. {option} 0.02 or "
                               f"{option} auto") from None
            if not (math.isfinite(number) and number >= 0):
                raise CLIError(f"{option} must be finite and >= 0, or 'auto'; got {text!r}")
            out.append(number)
    if not out:
        raise CLIError(f"{option} takes a number or 'auto', got nothing")
    return out


def format_sigma(sigma: float) -> str:
    """``0.0050``-style (4 decimals), or 3 significant digits below 0.001."""
    return f"{sigma:.4f}" if sigma >= 1e-3 else f"{sigma:.3g}"


def resolve_sigmas(spec: Sequence[float | str], model, tokenizer, model_id: str | None, *, norms: str = "all",
                   noise: str = "additive", sigma_scale: str = "absolute") -> list[float]:
    """``spec`` (from :func:`parse_sigma_option`) with ``"auto"`` replaced by the calibrated sigma of the
    model that ``--model model_id`` loaded (``None``: the default model; :func:`manyminds.population.auto_sigma`:
    cached, or the zoo's documented value, or calibrated now behind a status line), announced in
    one line on stderr::

        sigma auto = 0.0050 (calibrated for smollm2-135m-instruct, cached at ~/.cache/manyminds/sigma/...)
    """
    if SIGMA_AUTO not in spec:
        return [float(s) for s in spec]
    from manyminds.population import auto_sigma_record
    from manyminds.zoo import DEFAULT_MODEL

    model_id = model_id or DEFAULT_MODEL
    with err_console().status(f"sigma auto: looking up (or calibrating, once) the sigma of {model_id}..."):
        found = auto_sigma_record(model, tokenizer, model_id=model_id, norms=norms, noise=noise,
                                  sigma_scale=sigma_scale)
    how = f"the zoo's documented sigma for {model_id}" if found.source == "zoo" else f"calibrated for {model_id}"
    where = f"cached at {found.path}" if found.path is not None else "not cached"
    notice(f"sigma auto = {format_sigma(found.sigma)} ({how}, {where})")
    return [found.sigma if s == SIGMA_AUTO else float(s) for s in spec]


# -------------------------------------------------------------------------------------- datasets
def load_rows(task: str | None, data: str | None, split: str, n: int | None, seed: int,
              knobs: dict | None = None):
    """A ``datasets.Dataset``: a local dataset ``data`` (a .jsonl/.json/.csv/.parquet file or a
    ``save_to_disk`` folder) when given, else the bundled ``task``; cut to its first ``n`` rows.

    Every failure is one line that names the file or the task and the fix.
    """
    import datasets

    quiet_loaded_libraries()
    if data is None:
        from manyminds.tasks import TASKS, load_task

        if task not in TASKS:
            raise CLIError(f"unknown task {task!r}{close_matches(str(task), list(TASKS))}; valid tasks: "
                           f"{', '.join(TASKS)}, or pass a dataset file with --data")
        try:
            return load_task(task, split=split, n=n, seed=seed, **(knobs or {}))
        except (ValueError, TypeError) as err:
            raise CLIError(one_line(err)) from err
    path = Path(data).expanduser()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise CLIError(f"{data} is not a datasets folder ({one_line(err)}); pass a folder written by "
                           f"Dataset.save_to_disk or a .jsonl/.json/.csv/.parquet file") from err
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise CLIError(f"{data} has splits {', '.join(ds)}, not {split!r}; pass --split")
            ds = ds[split]
    else:
        kind = DATA_SUFFIXES.get(path.suffix.lower())
        if not path.exists():
            raise CLIError(f"dataset file {data} does not exist; pass an existing .jsonl/.json/.csv/.parquet file "
                           f"or a datasets folder")
        if kind is None:
            raise CLIError(f"{data}: unsupported dataset file type {path.suffix or '(none)'!r}; use .jsonl, .json, "
                           f".csv or .parquet, or a datasets folder")
        from manyminds.row_sizes import check_file_sizes

        try:  # a huge row is refused here, with its line or row, before the loader parses the file
            check_file_sizes(path)
        except ValueError as err:
            raise CLIError(str(err)) from err
        logger = logging.getLogger("datasets")
        level = logger.level
        if not STATE.verbose:  # datasets logs the parse error itself before raising; we say it once below
            logger.setLevel(logging.CRITICAL)
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as err:
            cause = err.__cause__ or err.__context__ or err
            raise CLIError(f"{data} is not a valid {path.suffix} dataset ({one_line(cause)}); fix the file "
                           f"(one JSON object per line for .jsonl)") from err
        finally:
            logger.setLevel(level)
    if len(ds) == 0:
        raise CLIError(f"{data} has no rows; pass a non-empty dataset")
    return ds.select(range(min(n, len(ds)))) if n else ds


# -------------------------------------------------------------------------------------- progress
def rich_progress_callback(fields: Sequence[str] = ("loss",)):
    """A transformers ``TrainerCallback`` that draws one rich progress bar with the latest logged
    values of ``fields`` (e.g. ``("reward", "loss")``), on stderr."""
    from transformers import TrainerCallback

    from manyminds.progress import progress_bar

    # built lazily so that `manyminds --help` does not import transformers

    class _Callback(TrainerCallback):
        def __init__(self):
            self.progress = None
            self.task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            self.progress = progress_bar("{task.fields[values]}", description="[bold]training", remaining=True,
                                         console=err_console())
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                               values="")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and self.progress is not None:
                shown = [f"{key.split('/')[-1]} {float(logs[key]):.4g}" for key in fields if key in logs]
                if shown:
                    self.progress.update(self.task, values=", ".join(shown))

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)
                self.progress.stop()
                self.progress = None

    return _Callback()


def use_rich_progress(trainer, fields: Sequence[str] = ("loss",)) -> None:
    """Replace the trainer's tqdm bar and printed log dicts by one rich progress bar (not verbose)."""
    if STATE.verbose:
        return
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(rich_progress_callback(fields))
