"""Copying one file or symlink as fast as the kernel allows, hashing it on the way.

The ``copy`` and ``move`` steps, the archive's content store and the packs all copy
through here, so a file is read once whether it is only copied (``copy_file_range``,
``sendfile``) or copied and hashed (a small file: one read into a buffer feeding both
the write and the digest; a big one: copied in the kernel and hashed back from the
destination's page cache, on a second thread from PIPELINE_MIN on), and a copy lands
only under a temporary name until it is complete.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from wsrun.core.fileio import create_temp, naming, temp_path

#: Read size of checksummed copies: large reads keep the per-call overhead low
#: and let hashlib work without the GIL on big chunks.
BUFFER_SIZE = 8 << 20
#: Files from this size on are checksummed through copy_file_range and mmap.
MMAP_MIN = 1 << 20
#: Files from this size on are copied and hashed at the same time, on two threads.
PIPELINE_MIN = 64 << 20
#: Chunks copied and mapped ahead of the hashing thread (each BUFFER_SIZE at
#: most, resident while mapped): about 25 ms of hashing.
WINDOWS_AHEAD = 6
#: Maps a window's pages at once (Linux), so the hashing thread takes no page faults.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: Bytes per copy_file_range/sendfile call: "until end of file" in practice.
CHUNK = 1 << 30
#: Bytes per kernel copy call when the caller follows a file's progress: a
#: 20 GB file reports a few times a second, and a report costs nothing beside it.
PROGRESS_CHUNK = 64 << 20
#: Errors meaning "this fast path does not work here", not "the copy failed".
_NO_FAST_PATH = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with
    other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777  # unknown: always chmod


def copy_file(
    source: str,
    dest: str,
    mode: int,
    mtime_ns: int,
    umask: int,
    algorithm: str | None = None,
    buf: bytearray | None = None,
    size: int | None = None,
    on_digest: Callable[[str], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> str | None:
    """Copy ``source`` to ``dest`` through its temp name, with ``mode`` and
    ``mtime_ns``; returns the content's hex digest when ``algorithm`` is set
    (then ``buf`` is the read buffer). With ``size`` (the planned size), the
    copy stops there, which saves the call that would find the end of file.
    ``on_digest`` gets the digest before the file is renamed into place, so a
    record of it (wsrun.core.groups.DigestCache) is never behind the files there.
    ``on_bytes(n)`` is called as each chunk of the file is written (and hashed),
    a few times per 64 MiB at most; by the time the copy returns, its calls add
    up to the bytes copied. Steps give it for big files, so one 20 GB file shows
    moving bytes and an ETA, not a jump at its end."""
    return _copy(
        source, dest, mode, mtime_ns, umask, algorithm, buf, size, on_digest, on_bytes, False
    )[0]


def copy_file_placed(
    source: str,
    dest: str,
    mode: int,
    mtime_ns: int,
    umask: int,
    algorithm: str | None = None,
    buf: bytearray | None = None,
    size: int | None = None,
    on_digest: Callable[[str], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> tuple[str | None, os.stat_result]:
    """``copy_file``, and the stat of the file once it is in place (an fstat of
    the still-open file after the rename, which changes its ctime): what a
    resume record of it needs (wsrun.core.resumes), without a look-up by path."""
    digest, st = _copy(
        source, dest, mode, mtime_ns, umask, algorithm, buf, size, on_digest, on_bytes, True
    )
    assert st is not None
    return digest, st


#: Files up to this size are read, hashed and written in one call each.
SMALL_MAX = 64 << 10

#: Hash constructors by name, without hashlib.new's look-up on every file.
_HASHES: dict[str, Callable[..., Any]] = {
    name: getattr(hashlib, name) for name in ("sha256", "md5", "sha1", "sha512")
}


def new_hash(algorithm: str) -> Any:
    """A fresh hash object for ``algorithm`` (not for security)."""
    make = _HASHES.get(algorithm)
    if make is None:
        return hashlib.new(algorithm, usedforsecurity=False)
    return make(usedforsecurity=False)


def _copy(
    source: str,
    dest: str,
    mode: int,
    mtime_ns: int,
    umask: int,
    algorithm: str | None,
    buf: bytearray | None,
    size: int | None,
    on_digest: Callable[[str], None] | None,
    on_bytes: Callable[[int], None] | None,
    want_stat: bool,
) -> tuple[str | None, os.stat_result | None]:
    tmp = temp_path(dest)
    left = (1 << 62) if size is None else size
    src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # Read too: hashed through mmap. Raises (and removes nothing) if a
        # live writer holds this temporary name.
        dst_fd = create_temp(tmp, mode & 0o777, os.O_RDWR)
    except BaseException:
        os.close(src_fd)
        raise
    st = None
    try:
        try:
            digest = None
            if algorithm:
                if left <= SMALL_MAX:
                    digest = _copy_small_hashed(src_fd, dst_fd, new_hash(algorithm), left)
                    if on_bytes is not None:
                        on_bytes(os.fstat(dst_fd).st_size)
                else:
                    assert buf is not None
                    digest = _copy_hashed(
                        src_fd, dst_fd, new_hash(algorithm), buf, left, on_bytes or _ignore
                    )
            else:
                _copy_fast(src_fd, dst_fd, left, on_bytes)
            if mode & ~0o777 or mode & umask:
                os.fchmod(dst_fd, mode)
            os.utime(dst_fd, ns=(mtime_ns, mtime_ns))
            if on_digest is not None and digest is not None:
                on_digest(digest)
            os.rename(tmp, dest)  # still held: nobody takes it for a leftover
            if want_stat:
                st = os.fstat(dst_fd)
        finally:
            os.close(dst_fd)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            raise naming(e, dest) from e
        raise
    finally:
        os.close(src_fd)
    return digest, st


def _copy_small_hashed(src_fd: int, dst_fd: int, digest: Any, left: int) -> str:
    """Copy and hash up to ``left`` bytes (a small file): one read, one write,
    no buffer bookkeeping, which is most of a small file's cost in Python."""
    while left > 0:
        chunk = os.read(src_fd, left)
        if not chunk:
            break
        digest.update(chunk)
        written = os.write(dst_fd, chunk)
        if written != len(chunk):
            _write_all(dst_fd, memoryview(chunk)[written:])
        left -= len(chunk)
    return digest.hexdigest()


def _ignore(n: int) -> None:
    pass


def _by_copy_file_range(src_fd: int, dst_fd: int, count: int) -> int:
    return os.copy_file_range(src_fd, dst_fd, count)


def _by_sendfile(src_fd: int, dst_fd: int, count: int) -> int:
    return os.sendfile(dst_fd, src_fd, None, count)


def _copy_fast(src_fd: int, dst_fd: int, left: int, on_bytes: Callable[[int], None] | None) -> None:
    """Copy up to ``left`` bytes in the kernel when it can (copy_file_range,
    then sendfile), else by read/write; a fallback carries on where the
    previous way stopped."""
    chunk = CHUNK if on_bytes is None else PROGRESS_CHUNK
    report = on_bytes or _ignore
    for kernel_copy in (_by_copy_file_range, _by_sendfile):
        try:
            while left > 0 and (n := kernel_copy(src_fd, dst_fd, min(left, chunk))):
                left -= n
                report(n)
            return
        except AttributeError:
            continue  # not on this platform
        except OSError as e:
            if e.errno not in _NO_FAST_PATH:
                raise
    while left > 0 and (data := os.read(src_fd, min(left, BUFFER_SIZE))):
        _write_all(dst_fd, data)
        left -= len(data)
        report(len(data))


def _copy_hashed(
    src_fd: int,
    dst_fd: int,
    digest: Any,
    buf: bytearray,
    left: int,
    report: Callable[[int], None],
) -> str:
    """Copy up to ``left`` bytes and hash what was written, reading the source once.

    Big files are copied in the kernel a chunk at a time and each chunk is
    hashed from the destination's page cache through mmap: no trip through a
    user-space buffer, about half the CPU of read/write on a 2-core box. The
    destination is our own temp file, so nobody truncates it under the map.
    Small files, or where the kernel cannot copy, go read -> hash -> write.
    ``report(n)`` gets each chunk's size once it is written and hashed.
    """
    if left >= MMAP_MIN:
        done = [0]  # bytes copied and hashed from the start, also when a fast way gives up
        try:
            if left >= PIPELINE_MIN:
                _copy_mapped_pipelined(src_fd, dst_fd, digest, left, done, report)
            else:
                while left > done[0] and (
                    n := _by_copy_file_range(src_fd, dst_fd, min(left - done[0], BUFFER_SIZE))
                ):
                    _hash_mapped(digest, dst_fd, done[0], n)
                    done[0] += n
                    report(n)
            return digest.hexdigest()
        except AttributeError:
            pass  # no copy_file_range on this platform
        except OSError as e:
            if e.errno not in _NO_FAST_PATH:
                raise
        # Carry on from the last byte hashed: the kernel may have copied past
        # it (a chunk whose mapping failed), and the digest must not skip it.
        os.lseek(src_fd, done[0], os.SEEK_SET)
        os.lseek(dst_fd, done[0], os.SEEK_SET)
        os.ftruncate(dst_fd, done[0])
        left -= done[0]
    view = memoryview(buf)
    while left > 0 and (n := os.readv(src_fd, [view[: min(left, len(buf))]])):
        chunk = view[:n]
        digest.update(chunk)
        _write_all(dst_fd, chunk)
        left -= n
        report(n)
    return digest.hexdigest()


def _copy_mapped_pipelined(
    src_fd: int,
    dst_fd: int,
    digest: Any,
    left: int,
    done: list[int],
    report: Callable[[int], None],
) -> None:
    """Copy up to ``left`` bytes in the kernel on this thread while another
    thread hashes what is already copied, read back from the destination: a big
    file takes about as long as hashing it on one core, not copy plus hash.

    Hashing is the slower half (SHA-256 on one core runs at about twice the
    kernel copy's cost), so the hashing thread does nothing else: this thread
    copies, maps each copied chunk of the destination with its pages already
    in place (no page fault while hashing), unmaps the chunks hashed and
    reports their bytes. Up to WINDOWS_AHEAD chunks wait mapped, so a copier
    put aside for a moment by the scheduler does not starve the hasher.
    ``done[0]`` is how many bytes from the start were hashed when this returns
    or raises (the kernel may have copied further if it raises)."""
    windows: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue(maxsize=WINDOWS_AHEAD)
    hashed: collections.deque[tuple[mmap.mmap, int]] = collections.deque()
    hashed_bytes = [0]
    failed: list[BaseException] = []

    def hasher() -> None:
        while (item := windows.get()) is not None:
            window, skip = item
            if not failed:
                try:
                    with memoryview(window) as view, view[skip:] as chunk:
                        digest.update(chunk)
                    hashed_bytes[0] += len(window) - skip
                except BaseException as e:  # noqa: BLE001 - re-raised by the copier
                    failed.append(e)
            hashed.append(item)  # unmapped (and reported) by the copier

    def unmap_hashed() -> list[int]:
        sizes = []
        while hashed:
            window, skip = hashed.popleft()
            sizes.append(len(window) - skip)
            window.close()
        return sizes

    thread = threading.Thread(target=hasher, name="wsrun-copy-hash")
    thread.start()
    copied = 0
    gave_up: OSError | None = None
    try:
        while left > copied and not failed:
            try:
                n = _by_copy_file_range(src_fd, dst_fd, min(left - copied, BUFFER_SIZE))
                window = _window(dst_fd, copied, n) if n else None
            except OSError as e:
                if e.errno not in _NO_FAST_PATH:
                    raise
                gave_up = e  # the caller goes on by read and write, once all is reported
                break
            if window is None:
                break
            windows.put(window)
            copied += n
            for size in unmap_hashed():
                report(size)
    finally:
        windows.put(None)
        thread.join()
        done[0] = hashed_bytes[0]
        sizes = unmap_hashed()
    if failed:
        raise failed[0]
    for size in sizes:
        report(size)
    if gave_up is not None:
        raise gave_up


def _window(fd: int, offset: int, length: int) -> tuple[mmap.mmap, int]:
    """``length`` bytes of ``fd`` from ``offset``, mapped read-only with their
    pages in place: (the map, where the bytes start in it)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    flags = mmap.MAP_SHARED | _POPULATE
    return mmap.mmap(fd, offset - start + length, flags, mmap.PROT_READ, offset=start), (
        offset - start
    )


def _hash_mapped(digest: Any, fd: int, offset: int, length: int) -> None:
    window, skip = _window(fd, offset, length)
    try:
        with memoryview(window) as view, view[skip:] as chunk:
            digest.update(chunk)
    finally:
        window.close()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def hash_file(
    path: str,
    algorithm: str,
    buf: bytearray | None,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """The hex digest of a file on disk, read with ``buf``; ``on_bytes(n)``
    (if given) after each read is hashed, so a big file's check shows progress."""
    assert buf is not None
    digest = new_hash(algorithm)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while n := os.readv(fd, [buf]):
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    finally:
        os.close(fd)
    return digest.hexdigest()


def copy_symlink(target: str, dest: str, mtime_ns: int) -> None:
    """Make ``dest`` a symlink to ``target``, atomically replacing what is there."""
    tmp = temp_path(dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(tmp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
