"""The one atomic file writer: every report, model file, checksum, guard and ledger marker goes through it.

Temp file in the target's directory, fsync, permissions as for a new file (``0o666 & ~umask``), rename over the
target, fsync of the directory: after a crash the path holds the old file or the complete new one, never half.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

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
