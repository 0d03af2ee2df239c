"""Files replaced whole: a reader, or a run killed mid-write, sees the old content or the new,
never part of it, and two writers of one file never share a temporary file. And a lock for
read-modify-write across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

FILE_MODE = 0o644  # mkstemp's 0600 would hide the files from a serving user


def replace_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write` into a unique temporary file beside `path`, fsync it, rename it over `path`,
    then fsync the directory so that the rename survives a crash too."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_text(path: Path, text: str) -> None:
    replace_file(path, lambda f: f.write(text.encode()))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (an existing file or directory) until the block ends;
    other processes taking it wait."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
