"""A training run's ``output_dir``: refuse to mix two runs, resume the newest complete checkpoint.

Every run records a run id in its ``output_dir`` (:func:`~manyminds.training.common.write_run_id`);
a non-empty ``output_dir`` is refused unless ``--resume`` (continue the run recorded there) or
``--overwrite_output_dir`` (start a new run there; the old checkpoints are deleted first).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

from manyminds.cli.common import CLIError, err_console, notice

RESUME_LAST = ("last", "true", "True", "yes")
_NOT_RESUMING = (None, "", False, "false", "False", "no")


def resume_checkpoint(config, marker: str | None = None) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` points at: ``last`` -> the newest complete one in
    ``output_dir`` (none: start from step 0, and say so), a path -> that folder (must exist)."""
    from manyminds.training.common import last_checkpoint

    value = config.resume_from_checkpoint
    if not _resuming(config):
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
    return config.resume_from_checkpoint not in _NOT_RESUMING


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
    from manyminds.training.common import read_run_id, write_run_id

    out = Path(config.output_dir)
    if overwrite and not _resuming(config):
        old = _checkpoint_dirs(str(out))
        for checkpoint in old:
            shutil.rmtree(checkpoint)
        if old:
            notice(f"note: --overwrite_output_dir: deleted {len(old)} checkpoint folder(s) of an earlier run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if read_run_id(out) != run_id:
        write_run_id(out, run_id, command=command, started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
