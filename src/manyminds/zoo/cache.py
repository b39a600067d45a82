"""Where zoo entries live and how one is written: the cache folder, the completion marker, the
build lock and the staging folder that replaces an entry in one rename.

A cache entry ``$MANYMINDS_HOME/models/<name>`` (default ``~/.cache/manyminds``) is complete only
if its marker file ``manyminds_zoo.json`` exists, the SHA-256 of its weights matches the marker,
and (given the entry) the marker's recipe hash is the entry's. Builds write into a hidden folder
beside the entry and rename it into place (:func:`staged`), under an exclusive lock
(:func:`locked`), so a killed build never leaves a half-written entry that loads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from manyminds.files import atomic_folder

MARKER = "manyminds_zoo.json"


def home() -> Path:
    """``$MANYMINDS_HOME`` or ``~/.cache/manyminds``."""
    return Path(os.environ.get("MANYMINDS_HOME") or Path.home() / ".cache" / "manyminds").expanduser()


def model_dir(name: str) -> Path:
    """The cache folder of zoo model ``name``: ``home() / "models" / name``."""
    return home() / "models" / name


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recipe_hash(entry) -> str:
    """Hash of everything that determines a build (the entry's dataclass fields but
    ``eval_problems``); a cached entry built from another recipe is stale."""
    recipe = asdict(entry)
    recipe.pop("eval_problems", None)  # scoring does not change the weights
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_marker(path: str | os.PathLike, entry=None) -> dict | None:
    """The entry's marker if it is complete, its weights intact and (given ``entry``) its recipe
    current; else ``None``."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
        weights = Path(path) / "model.safetensors"
        if marker.get("sha256") != sha256_file(weights):
            return None
        if entry is not None and marker.get("recipe") != recipe_hash(entry):
            return None
        return marker
    except (OSError, ValueError):
        return None


@contextmanager
def locked(path: Path):
    """An exclusive ``flock`` on ``path``, created if missing.

    Opened with ``O_NOFOLLOW`` and without truncating, so a symlink planted at the lock's name
    cannot make us clobber its target. Read-only when another user's lock file is not writable
    for us (``flock`` works on any open descriptor).
    """
    flags = os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_RDWR, 0o666)
    except PermissionError:
        fd = os.open(path, flags | os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sweep_staging(final: Path) -> list[Path]:
    """Delete the staging folders (``.<name>.XXXX``) a killed build left beside ``final``.

    Call only while holding the entry's lock: builds create them only under that lock, so any found
    then belongs to a build that died (a SmolLM2 conversion leaves ~540 MB). Returns what was removed.
    """
    removed = []
    for path in final.parent.glob(f".{final.name}.*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


staged = atomic_folder
"""A hidden folder beside an entry that replaces it in one rename when the build succeeds
(:func:`manyminds.files.atomic_folder`; what a killed build leaves behind, :func:`sweep_staging`
removes)."""
