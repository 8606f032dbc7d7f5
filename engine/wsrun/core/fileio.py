"""Writing files so that no reader ever sees half of one.

Every file is written under a temporary name beside its target and renamed
into place. The temporary name is derived from the target, so a run killed
mid-write and resumed overwrites its own leftover instead of leaving a stray.
Two runs never share one: each step locks its destination first
(``wsrun.core.locks``), and a writer holds an flock on its temporary file, so a
temporary file another process is writing is never truncated or removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from typing import BinaryIO

TMP_SUFFIX = ".wsrun-tmp"
#: The longest file name (bytes) the file systems wsrun writes to allow.
NAME_MAX = 255


def hidden_name(name: str, suffix: str) -> str:
    """``.<name><suffix>``, the hidden name wsrun keeps beside ``name`` while
    writing it. When that is longer than NAME_MAX bytes, the name is cut and
    a hash of the whole of it added, so it stays unique and deterministic."""
    full = f".{name}{suffix}"
    if len(full) <= NAME_MAX and full.isascii():  # the common case: no encoding needed
        return full
    raw = os.fsencode(name)
    if len(os.fsencode(full)) <= NAME_MAX:
        return full
    tag = "~" + hashlib.sha256(raw).hexdigest()[:16]
    keep = NAME_MAX - len(os.fsencode(f".{tag}{suffix}"))
    return f".{os.fsdecode(raw[:keep])}{tag}{suffix}"


def temp_path(target: str) -> str:
    """The temporary name used while ``target`` is being written."""
    head, sep, tail = target.rpartition("/")
    if tail and head[-1:] not in ("", "/"):  # the common case: no os.path needed
        return f"{head}/{hidden_name(tail, TMP_SUFFIX)}"
    head, tail = os.path.split(target)
    return os.path.join(head, hidden_name(tail, TMP_SUFFIX))


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


@contextlib.contextmanager
def atomic_write(target: str, mode: int | None = None) -> Iterator[BinaryIO]:
    """Open a temporary file for writing; rename it onto ``target`` on success,
    remove it on failure."""
    tmp = temp_path(target)
    fd = create_temp(tmp, 0o600 if mode is None else mode, os.O_WRONLY)
    mine = os.fstat(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if mode is not None:
                os.fchmod(fd, mode)
            if not os.path.samestat(mine, os.lstat(tmp)):
                raise OSError(errno.EBUSY, "was replaced while being written", tmp)
            os.replace(tmp, target)  # still held: nobody takes it for a leftover
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(mine, os.lstat(tmp)):  # only our own
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


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """All of ``data`` at ``offset`` (a full disk writes part, then raises ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def hold_temp(fd: int) -> None:
    """Mark a temporary file as being written: its writer holds a lock on it until
    it closes the file (or dies), so a run cleaning up leftovers in the same
    directory at the same time leaves it alone."""
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class TempBusy(OSError):
    """Another live process is writing this temporary file."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EBUSY, "is being written by another process", path)


def create_temp(tmp: str, mode: int, access: int = os.O_RDWR) -> int:
    """Create the temporary file ``tmp`` afresh and hold it (see hold_temp).

    A leftover of a killed run is removed first (a symlink is never
    followed); one that a live writer holds raises TempBusy and is left
    alone: nothing another process is writing is ever truncated or removed.
    """
    flags = access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            remove_leftover(tmp)
            continue
        try:
            hold_temp(fd)
        except BlockingIOError:  # someone removed ours and made theirs in between
            os.close(fd)
            raise TempBusy(tmp) from None
        return fd
    raise TempBusy(tmp)


def remove_leftover(path: str) -> None:
    """Remove the file or symlink ``path`` a killed run left, unless a live
    writer holds it (TempBusy)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        os.unlink(path)  # a symlink: removed, never followed
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TempBusy(path) from None
    try:
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.lstat(path)):
                os.unlink(path)
    finally:
        os.close(fd)


def remove_temp_of(target: str) -> None:
    """Remove the temporary file of ``target`` a killed run left, if any and
    if no live writer holds it. For a step that has locked ``target``
    (wsrun.core.locks): nobody else writes it, so its age does not matter."""
    tmp = temp_path(target)
    with contextlib.suppress(OSError):  # TempBusy; a directory (move's)
        if os.path.lexists(tmp):
            remove_leftover(tmp)


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
