"""Hashing file content fast, through the step's view of the world.

hashlib releases the GIL while it digests a large buffer, so a few threads
reading with big buffers keep both the disk and every core busy. Content is read
through ``ctx.fs`` so that a dry run can hash files an earlier step would write.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO

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


def hash_stream(
    f: BinaryIO, algorithm: str, task: ProgressTask | None = None, h: Any = None
) -> tuple[str, int]:
    """The hex digest and length of everything left in ``f`` (fed to ``h``,
    a hash already started, when given)."""
    h = hashlib.new(algorithm) if h is None else h
    buf, view = _buffer()
    total = 0
    while n := f.readinto(buf):  # type: ignore[attr-defined]  # typeshed: BinaryIO lacks readinto
        h.update(view[:n])
        total += n
        if task is not None:
            task.advance(bytes=n)
    return h.hexdigest(), total


def _hash_counted(f: BinaryIO, algorithm: str, task: _LockedTask) -> tuple[str, int]:
    """``hash_stream``, the file counted done in ``task``: a file read in one
    go (most are) is one progress update, not two."""
    buf, view = _buffer()
    n = f.readinto(buf)  # type: ignore[attr-defined]
    if n < CHUNK:
        h = hashlib.new(algorithm, view[:n])
        while more := f.readinto(buf):  # type: ignore[attr-defined]  # short reads happen
            h.update(view[:more])
            n += more
        task.advance(bytes=n, files=1)
        return h.hexdigest(), n
    h = hashlib.new(algorithm, view[:n])
    task.advance(bytes=n)
    digest, rest = hash_stream(f, algorithm, task, h)
    task.advance(files=1)
    return digest, n + rest


_local = threading.local()


def _buffer() -> tuple[bytearray, memoryview]:
    """This thread's read buffer: allocating a MiB for each of a million small
    files costs more than hashing them."""
    try:
        return _local.buffer  # type: ignore[no-any-return]
    except AttributeError:
        buf = bytearray(CHUNK)
        _local.buffer = buf, memoryview(buf)
        return _local.buffer  # type: ignore[no-any-return]


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
    hasher = _Hasher(ctx, algorithm, total_bytes, len(paths), reuse)
    try:
        if len(paths) <= 1:
            return {p: hasher.one(p) for p in paths}
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(paths))) as pool:
            futures = {p: pool.submit(hasher.one, p) for p in paths}
            done, pending = wait(futures.values(), return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in done:
                fut.result()  # raises the first failure, not a CancelledError
            return {p: fut.result() for p, fut in futures.items()}
    finally:
        hasher.close()


def hash_each(
    ctx: StepContext,
    paths: Iterable[str],
    algorithm: str,
    total_bytes: int | None = None,
    total_files: int | None = None,
    reuse: bool = False,
) -> Iterator[tuple[str, tuple[str, int] | None]]:
    """``hash_files`` for more files than fit in memory (a million): (path,
    digest and length) in the order of ``paths``, read as they are needed,
    with only a few batches per thread in flight. Small files go to the
    threads in batches: a future and a thread switch per file cost more
    than hashing a file of a few KiB."""
    hasher = _Hasher(ctx, algorithm, total_bytes, total_files, reuse)
    small = bool(total_files) and (total_bytes or 0) < total_files * SMALL_FILE
    size = BATCH if small else 1
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    window: deque[Future[list[tuple[str, tuple[str, int] | None]]]] = deque()
    try:
        batch: list[str] = []
        for path in paths:
            batch.append(path)
            if len(batch) < size:
                continue
            window.append(pool.submit(hasher.batch, batch))
            batch = []
            if len(window) >= 2 * WORKERS:
                yield from window.popleft().result()
        if batch:
            window.append(pool.submit(hasher.batch, batch))
        while window:
            yield from window.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)
        hasher.close()


#: ``hash_each`` hands files to its threads in batches of this many when the
#: files average under SMALL_FILE bytes.
BATCH = 64
SMALL_FILE = 256 << 10


class _Hasher:
    """Hashes one file at a time for ``hash_files`` and ``hash_each``, from any thread."""

    def __init__(
        self,
        ctx: StepContext,
        algorithm: str,
        total_bytes: int | None,
        total_files: int | None,
        reuse: bool,
    ) -> None:
        self.ctx = ctx
        self.algorithm = algorithm
        self.task = _LockedTask(
            ctx.progress.task("hash", total_bytes=total_bytes, total_files=total_files)
        )
        # a dry run writes no records; with records off ($WSRUN_RESUME) nothing is looked up
        records = resumes.records() if reuse and not ctx.dry_run else None
        self.records = records if records is not None and records.enabled else None

    def one(self, path: str) -> tuple[str, int] | None:
        ctx, records, algorithm, task = self.ctx, self.records, self.algorithm, self.task
        ctx.check_deadline()
        real, st = _real_file(ctx, path) if records else (None, None)
        if records and real and st:
            known = records.digest(real, algorithm, st)
            if known is not None:
                task.advance(bytes=st.st_size, files=1)
                return known, st.st_size
        try:
            # the disk as it is: no FileInfo, no buffered reader
            f = ctx.fs.open(path) if ctx.fs.virtual else open(path, "rb", buffering=0)  # noqa: SIM115
        except ContentUnknown:
            return None
        with f:
            result = _hash_counted(f, algorithm, task)
        if records and real and st:
            records.record(real, algorithm, result[0], before=st)
        return result

    def batch(self, paths: list[str]) -> list[tuple[str, tuple[str, int] | None]]:
        return [(p, self.one(p)) for p in paths]

    def close(self) -> None:
        if self.records:
            self.records.flush()
        self.task.close()


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
