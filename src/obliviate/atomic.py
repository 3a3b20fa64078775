"""The one atomic file writer: every report, model file, checksum, guard and ledger marker goes through it.

Temp file in the target's directory, fsync, permissions as for a new file (``0o666 & ~umask``), rename over the
target, fsync of the directory: after a crash the path holds the old file or the complete new one, never half.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from obliviate.errors import ObliviateError

#: what to write: bytes, text (UTF-8), or a function that writes the file at the temp path it is given
Payload = Union[bytes, str, Callable[[str], None]]


def atomic_write(path: str | Path, data: Payload) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(path: str | Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def _probe(directory: Path) -> str | None:
    """Why a new file cannot be made in ``directory`` (None: it can). A real create-and-remove, not os.access:
    root passes os.access on a read-only mount or under /proc, where the write still fails."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".obliviate-probe.", suffix=".tmp")
    except OSError as exc:  # under /proc creating a file reports ENOENT, which would read as "missing"
        return "no new file can be created there" if exc.errno == errno.ENOENT else exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(tmp)
    except OSError:
        pass
    return None


def check_writable(path: str | Path | None, flag: str) -> None:
    """Fail before any work if the file ``path`` could not be written: it is a directory, a missing parent
    cannot be created under a file, or the nearest existing directory refuses a new file. Leaves nothing behind."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise ObliviateError(f"{flag} {path}: is a directory, expected a file path")
    parent = _nearest_existing(p)
    if not parent.is_dir():
        raise ObliviateError(f"{flag} {path}: {parent} is not a directory")
    why = _probe(parent)
    if why is not None:
        raise ObliviateError(f"{flag} {path}: {parent} is not writable ({why})")


def check_cache_dir(path: str | Path | None, flag: str = "--cache-dir") -> None:
    """Fail before any training if the model cache ``path`` cannot hold files: it is a file, or it (or, when
    missing, its nearest existing ancestor, where it would be created) refuses a new file."""
    if not path:
        return
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ObliviateError(f"{flag} {path}: is a file, expected a directory")
    where = p if p.is_dir() else _nearest_existing(p)
    if not where.is_dir():
        raise ObliviateError(f"{flag} {path}: {where} is not a directory")
    why = _probe(where)
    if why is not None:
        raise ObliviateError(f"{flag} {path}: {where} is not writable ({why})")
