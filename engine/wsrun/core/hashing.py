"""Hashing file content fast, through the step's view of the world.

hashlib releases the GIL while it digests a large buffer, so a few threads
reading with big buffers keep both the disk and every core busy. Content is read
through ``ctx.fs`` so that a dry run can hash files an earlier step would write.
"""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, BinaryIO

from wsrun.core import resumes
from wsrun.core.fs import ContentUnknown

if TYPE_CHECKING:
    from wsrun.core.step import ProgressTask, StepContext

#: Algorithms steps offer; all are available in every hashlib build.
ALGORITHMS = ("sha256", "md5", "sha1", "sha512")
CHUNK = 1 << 20
#: Hashing is mostly I/O bound on small files and CPU bound on large ones;
#: two threads per core covers both without swamping a shared machine.
WORKERS = min(8, 2 * (os.cpu_count() or 1))


def hash_stream(f: BinaryIO, algorithm: str, task: ProgressTask | None = None) -> tuple[str, int]:
    """The hex digest and length of everything left in ``f``."""
    h = hashlib.new(algorithm)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while n := f.readinto(buf):  # type: ignore[attr-defined]  # typeshed: BinaryIO lacks readinto
        h.update(view[:n])
        total += n
        if task is not None:
            task.advance(bytes=n)
    return h.hexdigest(), total


class _LockedTask:
    """Serialises progress updates coming from worker threads."""

    def __init__(self, task: ProgressTask) -> None:
        self._task = task
        self._lock = threading.Lock()

    def advance(self, bytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self._task.advance(bytes=bytes, files=files)

    def close(self) -> None:
        self._task.close()


def hash_files(
    ctx: StepContext,
    paths: list[str],
    algorithm: str,
    total_bytes: int | None = None,
    reuse: bool = False,
) -> dict[str, tuple[str, int] | None]:
    """Digest and length of each file in ``paths``, read through ``ctx.fs``.

    A file whose content a dry run cannot know yet maps to None. Files are
    hashed in parallel; the first error (OSError, timeout) is raised. With
    ``reuse``, a digest recorded for a file that has not changed since
    (wsrun.core.resumes) is taken instead of reading the file, and every digest
    computed is recorded: a re-run after a kill reads only what it had not
    hashed, or what changed. Checks that must read independently leave it off.
    """
    task = _LockedTask(ctx.progress.task("hash", total_bytes=total_bytes, total_files=len(paths)))
    records = resumes.records() if reuse and not ctx.dry_run else None  # a dry run writes none

    def one(path: str) -> tuple[str, int] | None:
        ctx.check_deadline()
        real, st = _real_file(ctx, path) if records else (None, None)
        if records and real and st:
            known = records.digest(real, algorithm, st)
            if known is not None:
                task.advance(bytes=st.st_size, files=1)
                return known, st.st_size
        try:
            f = ctx.fs.open(path)
        except ContentUnknown:
            return None
        with f:
            result = hash_stream(f, algorithm, task)
        if records and real and st:
            records.record(real, algorithm, result[0], before=st)
        task.advance(files=1)
        return result

    try:
        if len(paths) <= 1:
            return {p: one(p) for p in paths}
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(paths))) as pool:
            futures = {p: pool.submit(one, p) for p in paths}
            done, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in done:
                fut.result()  # raises the first failure, not a CancelledError
            return {p: fut.result() for p, fut in futures.items()}
    finally:
        if records:
            records.flush()
        task.close()


def _real_file(ctx: StepContext, path: str) -> tuple[str | None, os.stat_result | None]:
    """The file on disk whose content ``path`` has in this view (in a dry run,
    the source of a planned copy), and its stat; (None, None) when there is none."""
    info = ctx.fs.stat(path)
    if info is None or info.content is not None or info.content_from is None:
        return None, None
    try:
        return info.content_from, os.stat(info.content_from)
    except OSError:
        return None, None
