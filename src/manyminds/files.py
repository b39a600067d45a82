"""Files written so that a crash never leaves half of one, readable by whoever the umask allows.

- :func:`atomic_write` / :func:`atomic_write_text`: write a temporary file beside the target,
  then ``os.replace`` it onto the target's name.
- :func:`atomic_folder`: fill a hidden temporary folder beside the target, then rename it onto
  the target's name (an old folder there is moved aside first and comes back if the swap fails);
- :func:`apply_umask`: give a file, or a folder and everything in it, the permissions the umask
  allows (``mkstemp``/``mkdtemp`` create 0600/0700 and safetensors >= 0.8 writes 0600).

Standard library only, so any module may import it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["apply_umask", "atomic_folder", "atomic_write", "atomic_write_text", "current_umask"]


def current_umask() -> int:
    """The process umask (read by setting and restoring it; Python has no plain getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions the umask allows.

    Without this a shared ``MANYMINDS_HOME`` or a service account could not read what another
    user wrote. Files get ``0o666 & ~umask``, folders ``0o777 & ~umask``; symlinks are left alone.
    """
    umask = current_umask()
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        path.chmod(0o666 & ~umask)
        return
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``.

    The temporary file lives beside ``path`` (same file system, so the rename is atomic) and gets
    the umask's permissions, not ``mkstemp``'s 0600. On any exception it is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


@contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``final`` that replaces it when the block succeeds.

    The folder is hidden (``.<name>.XXXX``, same file system, so the rename is atomic) and
    removed on any exception, so a failed or killed writer never leaves a half-written folder at
    ``final``. On success it gets the umask's permissions (:func:`apply_umask`); an old folder at
    ``final`` is renamed aside (``.<name>.old-XXXX``), replaced, then deleted, so it survives a
    failed swap.

    Yields:
        the temporary folder to fill.
    """
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    aside = None
    try:
        yield tmp
        apply_umask(tmp)  # mkdtemp makes 0700, safetensors 0600: give the umask's permissions
        if final.exists() or final.is_symlink():
            # Move the old folder aside rather than delete it first: a failed swap restores it.
            aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, aside / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside is not None:
                os.replace(aside / final.name, final)
            raise
    finally:
        for path in (tmp, aside):
            if path is not None and path.exists():
                shutil.rmtree(path, ignore_errors=True)
