"""Writing files so that no reader ever sees half of one.

Every file is written under a temporary name beside its target and renamed
into place. The temporary name is derived from the target, so a run killed
mid-write and resumed overwrites its own leftover instead of leaving a stray.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

TMP_SUFFIX = ".wsrun-tmp"


def temp_path(target: str) -> str:
    """The temporary name used while ``target`` is being written."""
    head, tail = os.path.split(target)
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


@contextlib.contextmanager
def atomic_write(target: str, mode: int | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; rename it onto ``target`` on success,
    remove it on failure."""
    tmp = temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
    hold_temp(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            raise naming(e, target) from e
        raise


def naming(exc: OSError, path: str) -> OSError:
    """``exc`` naming ``path`` when it names no file: a write that failed because
    the disk is full or the file too large then says which file it was."""
    if exc.filename is not None or not exc.strerror:
        return exc
    return OSError(exc.errno, exc.strerror, path)


def write_bytes_atomic(target: str, data: bytes, mode: int = 0o644) -> None:
    with atomic_write(target, mode) as f:
        f.write(data)


#: A temporary file untouched for this long, and not held, is a killed run's leftover.
STRAY_AGE = 2.0


def hold_temp(fd: int) -> None:
    """Mark a temporary file as being written: its writer holds a lock on it until
    it closes the file (or dies), so a run cleaning up leftovers in the same
    directory at the same time leaves it alone."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stray_temps(directory: str) -> None:
    """Remove temporary files a killed run left in ``directory``: those no live
    writer holds (see hold_temp) and nobody has touched for STRAY_AGE seconds
    (which covers the instant between a writer creating its file and locking it,
    and temporaries made by writers that do not lock)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        if is_temp_name(name):
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                _remove_if_stray(path, now)


def _remove_if_stray(path: str, now: float) -> None:
    st = os.lstat(path)
    if now - st.st_mtime < STRAY_AGE:
        return
    if not stat.S_ISREG(st.st_mode):
        os.unlink(path)  # a link is never followed, nor a directory removed
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a writer holds it
        if os.path.samestat(os.fstat(fd), os.lstat(path)):
            os.unlink(path)
    finally:
        os.close(fd)
