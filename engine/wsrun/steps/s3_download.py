"""The ``s3-download`` step type: download objects from S3 or any fsspec store, verified."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat as statmod
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wsrun.core.effects import Effect, create_dir, create_file
from wsrun.core.fileio import (
    TempBusy,
    create_temp,
    hold_temp,
    pwrite_all,
    remove_temp_of,
    temp_path,
)
from wsrun.core.fs import ContentUnknown, FileInfo
from wsrun.core.step import Batched, FileProgress, Plan, Result, StepContext, StepError
from wsrun.stores import objectstore as osx

NAME = "s3-download"
DOC = """Download objects or whole prefixes from S3 (or any fsspec store) into a directory, verified.

Use it to fetch preservation copies back, or inputs a recipe needs from a
bucket. An object URL lands at ``to/<basename>``; a prefix (a URL ending in
``/``, or one that names no object but has objects below it) lands at
``to/<last part of the prefix>/`` with its key layout, the mirror of
``s3-upload``. Each file is written under a temporary name, checked against
the ETag the store reports (the MD5, or the MD5 of the parts' MD5s for a
multipart object) or its ``sha256`` metadata, and only then renamed into
place. A local file with the same size and content is left alone. A download
cut short by a kill is continued from where it stopped when the object is still
the same version (same ETag and size, recorded on the temporary file), and the
whole file is checked as usual: a big object comes in ranges of 16 MiB, a few at
a time, written in order, so what a kill leaves is always a start of it; at most
eight ranges are held at once over all objects, so memory stays near 128 MiB
however many big objects the workers fetch. Progress counts a big object's bytes as they
arrive (a continued one's kept bytes at once), not only when it is done, and
then, as a task of its own (``verify``), as they are checked.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sources", "to"],
    "properties": {
        "sources": {
            "description": "An object URL or prefix URL, or a list of them.",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                },
            ],
            "examples": ["s3://preservation/C42/", ["s3://b/a.jp2", "s3://b/b.jp2"]],
        },
        "to": {
            "description": "The local directory the files land in (created if missing).",
            "type": "string",
            "minLength": 1,
            "examples": ["restore/{{ inputs.collection }}"],
        },
        "part_size": {
            "description": "The part size the objects were uploaded with, to check a "
            "multipart ETag (common sizes are tried too).",
            **osx.SIZE_SCHEMA,
            "default": "8MiB",
        },
        "workers": {
            "description": "Objects downloaded in parallel.",
            "type": "integer",
            "minimum": 1,
            "maximum": 64,
            "default": 8,
        },
        **osx.CLIENT_PROPERTIES,
    },
}

EXAMPLES = [
    """- id: restore
  uses: s3-download
  with:
    sources: s3://caltech-preservation/{{ inputs.collection }}/
    to: restore
"""
]

OUTPUTS = {
    "files": "local paths of every object downloaded or already in place, sorted",
    "downloaded": "number of files written",
    "unchanged": "number of files already in place with the same content",
    "bytes": "total size of all the objects",
}


#: A killed download's temp file may be continued (see _fetch): the lock
#: taken before the plan leaves it, and apply removes those it does not continue.
CONTINUES_TEMPS = True


#: Errors of writing the local file (a full disk, a quota, a read-only mount).
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@dataclass
class Download:
    path: str  # object path without protocol
    dest: str
    size: int
    etag: str | None


@dataclass
class DownloadJob:
    store: osx.Store
    downloads: list[Download]
    part_size: int
    workers: int


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans: where
    each source lands under ``to`` (``to/<last part of its key>``; ``to`` itself
    for a whole bucket)."""
    to = ctx.path(params["to"])
    sources = params["sources"]
    places = []
    for url in [sources] if isinstance(sources, str) else sources:
        path = url.partition("://")[2].strip("/")
        places.append(os.path.join(to, os.path.basename(path)) if "/" in path else to)
    return places


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    sources = params["sources"]
    if isinstance(sources, str):
        sources = [sources]
    to = ctx.path(params["to"])
    part_size = osx.parse_size(params.get("part_size", osx.DEFAULT_PART_SIZE))
    workers = int(params.get("workers", 8))
    store = osx.open_store(sources[0], params, ctx, workers)
    wanted: dict[str, tuple[osx.ObjectInfo, str]] = {}
    for url in sources:
        if osx.split_url(url)[0] != store.protocol:
            raise StepError(f"all sources must use {store.protocol}://", path=url)
        try:
            for info, dest in _objects(store, url, to):
                wanted[dest] = (info, dest)
        except StepError:
            raise
        except Exception as e:
            raise store.error(e, url) from None
    effects: list[Effect] = []
    made: set[str] = set()
    downloads = []
    for dest, (info, _) in sorted(wanted.items()):
        if _unchanged(ctx, store, dest, info, part_size):
            continue
        _plan_dirs(ctx, os.path.dirname(dest), made, effects)
        effects.append(
            create_file(
                dest,
                info.size,
                source=store.url(info.path),
                source_info=FileInfo("file", info.size),
            )
        )
        downloads.append(Download(info.path, dest, info.size, info.etag))
    outputs = {
        "files": sorted(wanted),
        "downloaded": len(downloads),
        "unchanged": len(wanted) - len(downloads),
        "bytes": sum(info.size for info, _ in wanted.values()),
    }
    return Plan(effects, outputs, DownloadJob(store, downloads, part_size, workers))


def _objects(store: osx.Store, url: str, to: str) -> list[tuple[osx.ObjectInfo, str]]:
    """The objects ``url`` names with their local destinations."""
    path = store.path(url)
    # One listing answers both "is it an object" and "what is below it".
    found = osx.list_objects(store, path if not url.endswith("/") else path + "/")
    if path in found and not url.endswith("/"):
        return [(found[path], os.path.join(to, os.path.basename(path)))]
    below = {k: v for k, v in found.items() if k.startswith(path + "/")}
    if not below:
        raise StepError("no such object, and no objects below it", path=url)
    top = os.path.join(to, os.path.basename(path)) if "/" in path.strip("/") else to
    out = []
    for key, info in below.items():
        rel = key[len(path) + 1 :]
        dest = os.path.normpath(os.path.join(top, rel))
        if not rel or rel.endswith("/") or not dest.startswith(top + os.sep):
            continue  # "directory" markers; keys that would escape the target
        out.append((info, dest))
    return out


def _unchanged(
    ctx: StepContext, store: osx.Store, dest: str, info: osx.ObjectInfo, part_size: int
) -> bool:
    local = ctx.fs.stat(dest)
    if local is None:
        return False
    if not local.is_file:
        raise StepError("exists and is not a regular file", path=dest)
    if local.size != info.size:
        return False
    try:
        f = ctx.fs.open(dest)
    except ContentUnknown:
        return False
    with f:
        if info.etag is None:
            mine = hashlib.md5()
            while chunk := f.read(4 * osx.MiB):
                mine.update(chunk)
            with store.fs.open(info.path, "rb") as r:
                theirs = hashlib.md5()
                while chunk := r.read(4 * osx.MiB):
                    theirs.update(chunk)
            return mine.digest() == theirs.digest()
        return bool(osx.matches_etag(f, info.size, info.etag, part_size))


def _plan_dirs(ctx: StepContext, path: str, made: set[str], effects: list[Effect]) -> None:
    missing = []
    while path not in made and (info := ctx.fs.stat(path)) is None:
        missing.append(path)
        path = os.path.dirname(path)
    if path not in made and info is not None and not info.is_dir:
        raise StepError("exists and is not a directory", path=path)
    for p in reversed(missing):
        made.add(p)
        effects.append(create_dir(p))


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: DownloadJob = plan.data
    resuming = {d.dest for d in job.downloads}  # their temp files may be continued
    for path in plan.outputs["files"]:  # a killed run's temp files, also when nothing changed
        if path not in resuming:
            remove_temp_of(path)
    for effect in plan.effects:
        if effect.op == "create_dir":
            os.makedirs(effect.path, exist_ok=True)
    totals = {"total_bytes": sum(d.size for d in job.downloads), "total_files": len(job.downloads)}
    task = Batched(ctx.progress.task("download", **totals))
    checking = Batched(ctx.progress.task("verify", **totals))

    def one(download: Download) -> None:
        ctx.check_deadline()
        url = job.store.url(download.path)
        landed = FileProgress(task, download.size)
        checked = FileProgress(checking, download.size)
        try:
            _fetch(job, download, landed, checked)
        except StepError:
            raise
        except OSError as e:
            if e.errno in _LOCAL_ERRNOS:  # the local disk's fault: name the local file
                raise StepError(e.strerror or str(e), path=download.dest) from None
            raise job.store.error(e, url) from None
        except Exception as e:
            raise job.store.error(e, url) from None
        landed.finish()
        checked.finish()

    try:
        if len(job.downloads) <= 1:
            for d in job.downloads:
                one(d)
        else:
            with ThreadPoolExecutor(max_workers=job.workers) as pool:
                for fut in [pool.submit(one, d) for d in job.downloads]:
                    fut.result()
    finally:
        task.close()
        checking.close()
    return Result(effects=list(plan.effects), outputs=plan.outputs)


class _Told:
    """A file read through, telling ``told`` how many bytes each read gave."""

    def __init__(self, f: Any, told: Callable[[int], None]) -> None:
        self.f = f
        self.told = told

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.f.read(n)
        self.told(len(data))
        return data


#: Extended attribute naming the object version a temporary file holds the
#: start of: ``<ETag> <size>``. A killed download whose temp file carries the
#: object's current ETag and size is continued from where it stopped.
PARTIAL_XATTR = "user.wsrun.partial"


def _fetch(
    job: DownloadJob, download: Download, landed: FileProgress, checked: FileProgress
) -> None:
    """Download to a temporary name beside the target, verify, rename into place.

    A temp file a killed run left for this very object version (same ETag and
    size, see PARTIAL_XATTR) is continued from its end instead of downloaded
    again; the whole file is verified either way, and a continued one that
    fails the check is downloaded once more from the start. ``landed`` gets
    the bytes as they are written (a continued file's kept ones first),
    ``checked`` as they are read back for the check.
    """
    store = job.store
    tmp = temp_path(download.dest)
    url = store.url(download.path)
    fd = -1
    try:
        fd, offset = _open_temp(tmp, download)
        continued = False
        if offset:
            landed(offset)
            _get_rest(store, download.path, fd, offset, download.size, landed)
            whole = os.path.getsize(tmp) == download.size
            continued = whole and _content_ok(job, download, tmp, checked)
            if not continued:
                os.ftruncate(fd, 0)
        if not continued:
            _get(store, download.path, fd, download.size, landed)
            size = os.path.getsize(tmp)
            if size != download.size:
                raise StepError(f"got {size} bytes, the store listed {download.size}", path=url)
            if not _content_ok(job, download, tmp, checked):
                raise StepError(
                    f"the content does not match the store's ETag {download.etag}", path=url
                )
        with contextlib.suppress(OSError):
            os.removexattr(fd, PARTIAL_XATTR)
        os.replace(tmp, download.dest)
    except BaseException:
        if fd >= 0:  # ours (a live writer's, TempBusy, is left alone)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def _content_ok(
    job: DownloadJob, download: Download, tmp: str, checked: Callable[[int], None]
) -> bool:
    """Whether the temp file's content is the object's: its ETag, or its sha256
    metadata when the ETag's part size cannot be told (nothing to check
    without an ETag). ``checked(n)`` as the file is read."""
    if download.etag is None:
        return True
    with open(tmp, "rb") as f:
        ok = osx.matches_etag(_Told(f, checked), download.size, download.etag, job.part_size)
    return ok if ok is not None else _matches_sha256(job.store, download, tmp, checked)


def _open_temp(tmp: str, download: Download) -> tuple[int, int]:
    """The held temp file of ``download`` and how many bytes of it to keep: a
    killed run's start of this same object version, else a new empty file."""
    mark = f"{download.etag} {download.size}".encode()
    if download.etag is not None:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                hold_temp(fd)
            except BlockingIOError:
                os.close(fd)
                raise TempBusy(tmp) from None
            try:
                st = os.fstat(fd)
                if (
                    statmod.S_ISREG(st.st_mode)
                    and 0 < st.st_size < download.size
                    and os.getxattr(fd, PARTIAL_XATTR) == mark
                ):
                    return fd, st.st_size
            except OSError:
                pass
            os.close(fd)
    fd = create_temp(tmp, 0o644)
    if download.etag is not None:
        with contextlib.suppress(OSError):  # no xattrs here: a kill means starting over
            os.setxattr(fd, PARTIAL_XATTR, mark)
    return fd, 0


#: A big object is fetched in ranges of this many bytes, up to RANGES_IN_FLIGHT
#: at once per object, and written front to back as they come in order: the
#: temp file is always a start of the object, which a killed run's successor
#: continues. (s3fs's get_file sizes the file first and fills in its parts in
#: any order: a kill left a file nobody could continue.)
RANGE_SIZE = 16 * osx.MiB
RANGES_IN_FLIGHT = 4
#: Ranges fetched or waiting to be written at once in the whole process, over
#: every object the step's workers download: memory stays at about
#: ``RANGES_HELD * RANGE_SIZE`` (128 MiB) however many big objects come at once.
RANGES_HELD = 8
_held = threading.BoundedSemaphore(RANGES_HELD)


def _get(store: osx.Store, path: str, fd: int, size: int, landed: Callable[[int], None]) -> None:
    """The whole object into the empty temp file ``fd`` (which keeps its inode,
    lock and xattr); ``landed(n)`` as each range is written."""
    _write_from(store, path, fd, 0, size, landed)


def _get_rest(
    store: osx.Store, path: str, fd: int, offset: int, size: int, landed: Callable[[int], None]
) -> None:
    """The object's bytes from ``offset`` on, appended to the temp file ``fd``;
    ``landed(n)`` as each range is written."""
    _write_from(store, path, fd, offset, size, landed)


def _range(store: osx.Store, path: str, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` (exclusive) of the object; fewer if it is shorter."""
    data: bytes = store.fs.cat_file(path, start=start, end=end)
    return data


def _write_from(
    store: osx.Store, path: str, fd: int, offset: int, size: int, landed: Callable[[int], None]
) -> None:
    """Bytes ``offset`` to ``size`` of the object into ``fd`` in order, with up to
    RANGES_IN_FLIGHT ranges fetched at once (a range that comes back short ends
    it: the caller's size check says so). Each range fetched holds one of the
    process's RANGES_HELD until it is written; an object waits for one only while
    it holds none, so objects never wait on each other in a circle."""
    ranges = [(start, min(start + RANGE_SIZE, size)) for start in range(offset, size, RANGE_SIZE)]
    if len(ranges) <= 1:
        for start, end in ranges:
            data = _range(store, path, start, end)
            pwrite_all(fd, data, start)
            landed(len(data))
        return
    waiting = deque(ranges)
    fetching: deque[Any] = deque()
    with ThreadPoolExecutor(RANGES_IN_FLIGHT, thread_name_prefix="wsrun-range") as pool:

        def fetch_more() -> None:
            while waiting and len(fetching) < RANGES_IN_FLIGHT:
                if not _held.acquire(blocking=not fetching):
                    return
                fetching.append(pool.submit(_range, store, path, *waiting.popleft()))

        try:
            for start, end in ranges:
                fetch_more()
                try:
                    data = fetching.popleft().result()
                    pwrite_all(fd, data, start)
                finally:
                    _held.release()
                landed(len(data))
                if len(data) < end - start:
                    return
        finally:
            pool.shutdown(cancel_futures=True)
            for _ in fetching:
                _held.release()


def _matches_sha256(
    store: osx.Store, download: Download, local: str, checked: Callable[[int], None]
) -> bool:
    """The fallback check for a multipart ETag of unknown part size: sha256 metadata."""
    meta = (osx.head(store, download.path) or {}).get("Metadata", {})
    want = meta.get(osx.SHA256_META)
    if not want:
        raise StepError(
            "cannot verify: a multipart ETag of unknown part size and no sha256 metadata "
            "(set part_size to the one used for the upload)",
            path=store.url(download.path),
        )
    h = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(4 * osx.MiB):
            h.update(chunk)
            checked(len(chunk))
    return h.hexdigest() == want
