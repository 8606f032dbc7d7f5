"""How the OpenJPEG jobs of one process share its cores and its memory.

Masters (wsrun.packs.distillery.lossless) are encoded in this process and proven
by ``opj_decompress`` in another; in a loop the next image is encoded while this
one is proven (image_derivative's ``prefetch``). A proof costs about as much CPU
as the encoding, so making both on two cores as fast as ``opj_compress`` makes
one on one core leaves nothing to waste: no job runs more threads than the cores
left to it (an OpenJPEG thread pool on a busy core only adds switching, and
``opj_decompress -threads 1`` even hands every code-block to a worker thread),
and memory freed by one image's encoding is kept for the next instead of being
given back and zeroed again by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

#: OpenJPEG gains little past this many threads on one image.
MAX_THREADS = 8


def threads() -> int:
    """The most threads one OpenJPEG job uses: the CPUs this process may run on
    (``taskset`` and cgroup CPU sets lower it), at most MAX_THREADS. The
    codestream does not depend on it."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


#: Cores held by the OpenJPEG jobs of this process that run now.
_held = 0
_held_lock = threading.Lock()
_local = threading.local()


@contextlib.contextmanager
def cores() -> Iterator[int]:
    """Hold cores for one OpenJPEG job and say how many threads it runs on: those
    no other job holds (at least one; at most ``one_core``'s limit). Beside the
    next image's encoding a proof's decoder gets the other core, alone it gets
    every core: more threads than cores would only add switching between them."""
    global _held
    with _held_lock:
        n = max(1, min(threads() - _held, getattr(_local, "limit", MAX_THREADS)))
        _held += n
    try:
        yield n
    finally:
        with _held_lock:
            _held -= n


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """The OpenJPEG jobs of this thread run on one thread: work done ahead, beside
    the current image's proof, which takes the other cores."""
    before = getattr(_local, "limit", MAX_THREADS)
    _local.limit = 1
    try:
        yield
    finally:
        _local.limit = before


# glibc's mallopt parameters
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3
#: glibc's defaults for them (the threshold as it ends up after its own adjustments).
_TOP_PAD, _MMAP_THRESHOLD = 128 << 10, 32 << 20
#: Whether keep_memory holds freed memory now.
_kept = False
_kept_lock = threading.Lock()


def _libc() -> Any:
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_memory(nbytes: int) -> None:
    """Keep freed memory for the next image while masters of images of ``nbytes``
    samples are made: an encoding allocates about eight times that and frees it,
    and memory given back to the system comes back zeroed, page by page (glibc:
    large blocks from the heap, not mmap, and a top pad that keeps them; a
    thread's heap is not unmapped either). ``release_memory`` ends it."""
    global _kept
    libc = _libc()
    if libc is not None:
        with _kept_lock:
            _kept = True
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(_M_TOP_PAD, max(_TOP_PAD, min(16 * nbytes, 1 << 30)))


def release_memory() -> None:
    """Give the memory kept by ``keep_memory`` back to the system (no more masters
    are coming)."""
    global _kept
    libc = _libc()
    with _kept_lock:
        if libc is None or not _kept:
            return
        _kept = False
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TOP_PAD, _TOP_PAD)
    libc.malloc_trim(0)
