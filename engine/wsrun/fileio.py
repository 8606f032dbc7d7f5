"""Writing files so that no reader ever sees half of one.

Every file is written under a temporary name beside its target and renamed
into place. The temporary name is derived from the target, so a run killed
mid-write and resumed overwrites its own leftover instead of leaving a stray.
"""

from __future__ import annotations

import contextlib
import os
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
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(target: str, data: bytes, mode: int = 0o644) -> None:
    with atomic_write(target, mode) as f:
        f.write(data)


def remove_stray_temps(directory: str) -> None:
    """Remove temporary files a killed run left in ``directory``."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if is_temp_name(name):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
