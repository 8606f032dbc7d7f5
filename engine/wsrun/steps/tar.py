"""The ``tar`` step type: pack files and directories into one archive.

One piece: the members (from sources or a member map), the check that an archive
already holds them, and writing it with its digests share one plan; the tar format
itself is wsrun.formats.tarball.
"""

from __future__ import annotations

import heapq
import itertools
import os
import stat as statmod
import threading
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wsrun.core import fileio, follow, resumes
from wsrun.core.effects import Effect, create_dir, create_file
from wsrun.core.filecopy import BUFFER_SIZE, hash_file, new_hash
from wsrun.core.fs import FileInfo
from wsrun.core.spool import SortedSpool, Spool, SpooledDict
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats import tarball, tarread

NAME = "tar"
DOC = """Pack files and directories into a tar archive, optionally compressed.

Deliveries and archive ingest want one file instead of thousands. The archive
is deterministic (members in sorted order, no user or group names), so the
same tree always gives the same bytes and the same checksum. A directory
``x`` is stored as ``x/...``, like ``tar -C parent x``. Symlinks are stored as
symlinks; hard links as separate copies.

The step is ``ok`` without rewriting anything when the archive already holds
exactly the members it would write: same names, types, sizes, modes, mtimes
(whole seconds) and link targets, the right compression, no member newer than
the archive and, uncompressed, the exact predicted size. Checking reads the
archive's headers (a compressed archive is decompressed, never recompressed).

With ``members`` instead of ``source`` the archive holds exactly the members
given, in that order (a layout decided by an earlier step, e.g. a delivery's),
and with ``follow_symlinks`` it holds what links point to, never links. With
``checksum`` the step also outputs the digest of the archive and of every file
in it, the files hashed while they are archived (from the page cache, on
another thread) and recorded (see ``checksum``) so an unchanged archive is
not read again.
"""

ALGORITHMS = ("sha256", "md5", "sha1")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "oneOf": [{"required": ["source"]}, {"required": ["members"]}],
    "properties": {
        "source": {
            "description": "The file or directory to archive, or a list of them. Each is stored under "
            "its own name (directory contents below it), or under its path relative to `base`.",
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            ],
            "examples": ["products/run-42", ["README.txt", "data"]],
        },
        "members": {
            "description": "Instead of `source`: the members, in the order stored, as {name: "
            "path}. A name ending in / is that directory alone; a directory under any other "
            "name is stored with its contents below it. E.g. the `members` output of nrao's "
            "find-products.",
            # Paths are checked when planned: a schema on every value would
            # validate a map of 100,000 members through jsonschema.
            "type": "object",
            "examples": [
                {"run-42/": "products", "run-42/images/a.fits": "products/a.fits"},
                "{{ steps.products.outputs.members }}",
            ],
        },
        "follow_symlinks": {
            "description": "Store what symbolic links point to (files and whole trees) instead "
            "of the links; a dangling link fails the step.",
            "type": "boolean",
            "default": False,
        },
        "checksum": {
            "description": "Also compute the digest of the archive and of every file in it "
            "(the `checksums` output).",
            "enum": ["none", *ALGORITHMS],
            "default": "none",
        },
        "to": {
            "description": "The archive to write. Missing parent directories are created.",
            "type": "string",
            "minLength": 1,
            "examples": ["out/run-42.tar.zst"],
        },
        "compression": {
            "description": "How to compress the archive; `auto` picks it from the name of `to` "
            "(.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .tar.zst; anything else is not compressed). "
            "zst is by far the fastest; gz is the most widely readable.",
            "enum": ["auto", "none", "gz", "bz2", "xz", "zst"],
            "default": "auto",
        },
        "level": {
            "description": "Compression level (gz 0-9, bz2 1-9, xz 0-9, zst 1-22). "
            "Defaults: gz 6, bz2 9, xz 6, zst 3.",
            "type": "integer",
            "examples": [9],
        },
        "base": {
            "description": "Store sources under their path relative to this directory instead of "
            "under their own name; a source equal to `base` stores its contents at the top.",
            "type": "string",
            "examples": ["products"],
        },
        "arcname": {
            "description": "The name a single `source` is stored under instead of its own, e.g. "
            "`release-1.2` or `release-1.2/data`.",
            "type": "string",
            "minLength": 1,
            "examples": ["run-42-v2"],
        },
        "exclude": {
            "description": "Glob patterns of members to leave out, matched against the base name and "
            "the stored path; an excluded directory leaves out everything below it. "
            "wsrun's own temporary files are always left out.",
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "examples": [["*.tmp", "*/scratch"]],
        },
    },
}

EXAMPLES = [
    """- id: pack
  uses: tar
  with:
    source: products/run-42
    to: deliveries/run-42.tar.zst
""",
    """- id: bundle
  uses: tar
  with:
    source: [README.txt, data, docs]
    base: release
    to: out/release-1.2.tar.gz
    arcname: release-1.2
    exclude: ["*.tmp"]
""",
    """- id: pack
  uses: tar
  with:
    members:
      req-1/: products
      req-1/images/: products
      req-1/images/a.fits: products/a.fits
      req-1/eb1: rawdata/eb1  # a link into a cache: stored as a directory
    follow_symlinks: true
    to: delivery/req-1.tar
    checksum: sha256
""",
]

OUTPUTS = {
    "archive": "absolute path of the archive",
    "members": "number of members (files, directories and symlinks) in it",
    "bytes": "size of the archive in bytes (only known after the run when compressed)",
    "compression": "the compression used: none, gz, bz2, xz or zst",
    "checksums": "with `checksum`: {member name: hex digest} of every file in the archive, "
    "and {archive path: hex digest} of the archive (null in a dry run when not recorded)",
}


@dataclass
class _Data:
    to: str
    members: tarball.MemberSpool
    compression: str
    level: int | None
    tar_size: int  # exact size of the uncompressed archive
    parents: list[str]  # directories to create for the archive
    algorithm: str | None = None


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    to = ctx.path(params["to"])
    compression = params.get("compression", "auto")
    if compression == "auto":
        compression = tarball.compression_for(to)
    level = _level(params.get("level"), compression)
    if params.get("members") is not None:
        members, newest = _mapped(params, to, ctx)
    else:
        members, newest = _members(params, to, ctx)
    algorithm = params.get("checksum", "none")
    algorithm = None if algorithm == "none" else algorithm
    tar_size = members.size()
    size = tar_size if compression == "none" else None
    outputs: dict[str, Any] = {
        "archive": to,
        "members": len(members),
        "bytes": size,
        "compression": compression,
    }

    existing = ctx.fs.lstat(to)
    if existing is not None and existing.is_dir:
        raise StepError("is a directory; give the archive's file name", path=to)
    if existing is not None and tarread.holds(
        to, ctx.fs.open, existing, members, compression, size, newest
    ):
        outputs["bytes"] = existing.size
        if not algorithm:
            members.close()
            return Plan(outputs=outputs)
        data = _Data(to, members, compression, level, tar_size, [], algorithm)
        outputs["checksums"] = _recorded(data, ctx)
        return Plan(outputs=outputs, data=data)

    parents = _missing_parents(ctx, os.path.dirname(to))
    effects: list[Effect] = [create_dir(p) for p in parents]
    effects.append(create_file(to, bytes=size))
    if algorithm:
        outputs["checksums"] = _digest_map(
            members, ((m[0], None) for m in _files(members)), to, None
        )
    return Plan(
        effects=effects,
        outputs=outputs,
        data=_Data(to, members, compression, level, tar_size, parents, algorithm),
    )


def _files(members: tarball.MemberSpool) -> Iterator[tarball.Member]:
    return (m for m in members if m[1] == "file")


def _digest_map(
    members: tarball.MemberSpool,
    pairs: Iterable[tuple[str, str | None]],
    archive: str,
    digest: str | None,
) -> Mapping[str, str | None]:
    """The ``checksums`` output: {member name: digest} of every file in the
    archive (``pairs``, in archive order), and the archive's own. For a spooled
    member list a ``SpooledDict``, sorted on disk: a million names are not held."""
    if not members.spilled:
        return {**dict(pairs), archive: digest}
    ordered: SortedSpool[tuple[str, str | None]] = SortedSpool(pairs)
    ordered.append((archive, digest))
    try:
        return SpooledDict(iter(ordered))
    finally:
        ordered.close()


def _recorded(d: _Data, ctx: StepContext) -> Mapping[str, str | None]:
    """The digests of an archive already in place and of its files, as recorded
    when they were last hashed (null when not, or changed since)."""
    records = resumes.records()
    assert d.algorithm is not None
    algorithm = d.algorithm
    cache = ctx.digests  # inside an atomic group: its record of the staging area
    known = None
    if cache is not None:
        try:
            st = os.stat(d.to)
        except OSError:
            pass
        else:
            known = cache.get(d.to, st.st_size, st.st_mtime_ns, algorithm)
    pairs = ((m[0], records.digest(m[2], algorithm)) for m in _files(d.members))
    return _digest_map(d.members, pairs, d.to, known or records.digest(d.to, algorithm))


def _hash_missing(d: _Data, outputs: dict[str, Any]) -> dict[str, Any]:
    """``outputs`` with the digests not recorded read (and recorded)."""
    records = resumes.records()
    assert d.algorithm is not None
    algorithm = d.algorithm
    buf = bytearray(BUFFER_SIZE)
    given: Mapping[str, str | None] = outputs["checksums"]

    def filled(name: str, path: str) -> str:
        digest = given[name]
        if digest is None:
            st = os.stat(path)
            digest = hash_file(path, algorithm, buf)
            records.record(path, algorithm, digest, before=st)
        return digest

    pairs = ((m[0], filled(m[0], m[2])) for m in _files(d.members))
    checksums = _digest_map(d.members, pairs, d.to, filled(d.to, d.to))
    records.flush()
    return {**outputs, "checksums": checksums}


def apply(plan: Plan, ctx: StepContext) -> Result:
    d: _Data = plan.data
    if not plan.effects:
        if d is not None and d.algorithm:
            return Result(outputs=_hash_missing(d, plan.outputs))
        return Result(outputs=plan.outputs)
    for p in d.parents:
        os.makedirs(p, exist_ok=True)
    task = ctx.progress.task("tar", total_bytes=d.members.file_bytes, total_files=d.members.files)

    def progress(n: int, count: int) -> None:
        task.advance(bytes=n, files=count)
        ctx.check_deadline()

    # With checksum: the files are hashed on another thread while the archive is
    # written (hashlib and the kernel's copy release the GIL), mostly from the
    # page cache; the archive is hashed once it is whole.
    background = ThreadPoolExecutor(max_workers=1) if d.algorithm else None
    hashing = None
    trailing: _TrailingHash | None = None
    if background is not None:
        hashing = background.submit(_hash_files, d, ctx)
    try:
        with fileio.atomic_write(d.to, mode=0o644) as f:
            if d.algorithm:
                # the archive is hashed as it grows, so it need not be read again
                # after: written front to back by one process for that
                trailing = _TrailingHash(f.fileno(), d.algorithm)
            try:
                tarball.write_tar(
                    f.fileno(),
                    d.members,
                    d.compression,
                    d.level,
                    progress,
                    d.tar_size,
                    parallel=trailing is None,
                )
                f.flush()
            except tarball.SourceChanged as e:
                raise StepError(
                    "changed while the step ran (planned size or type differs); run it again",
                    path=e.path,
                ) from None
            written = os.fstat(f.fileno()).st_size
            if d.compression == "none" and written != d.tar_size:
                raise StepError(f"wrote {written} bytes, planned {d.tar_size}", path=d.to)
            end = os.lseek(f.fileno(), 0, os.SEEK_CUR)
            if written != end:
                raise StepError(f"wrote {end} bytes but the file has {written}", path=d.to)
            if trailing is not None:
                archive = trailing.digest(written)
        outputs = {**plan.outputs, "bytes": written}
        if hashing is not None and trailing is not None:
            _record_archive(d, ctx, archive)
            outputs["checksums"] = _digest_map(d.members, hashing.result(), d.to, archive)
    finally:
        if trailing is not None:
            trailing.stop()
        task.close()
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)
    return Result(effects=plan.effects, outputs=outputs)


def _hash_files(d: _Data, ctx: StepContext) -> Iterable[tuple[str, str]]:
    """The digests of the archive's files in archive order, each recorded (a
    later run need not read an unchanged one again); hashed a batch at a
    time into a spool, so a million are not held."""
    from wsrun.steps.copy import run_parallel

    assert d.algorithm is not None
    algorithm = d.algorithm
    records = resumes.records()

    def one(m: tarball.Member, buf: bytearray | None) -> str:
        st = os.stat(m[2])
        digest = hash_file(m[2], algorithm, buf)
        records.record(m[2], algorithm, digest, before=st)
        return digest

    workers = max(1, (os.cpu_count() or 1) - 1)
    digests: Spool[tuple[str, str]] = Spool()
    try:
        files = _files(d.members)
        while batch := list(itertools.islice(files, HASH_BATCH)):
            found = run_parallel(batch, one, workers, ctx, buffered=True)
            digests.extend((m[0], digest) for m, digest in zip(batch, found, strict=True))
    finally:
        records.flush()
    return digests


#: Files of an archive handed to the hashing threads at a time.
HASH_BATCH = 8192


class _TrailingHash:
    """Hashes an archive being written front to back, following its end on a
    thread of its own (hashlib and pread release the GIL): the digest of what
    was written, read back from the file, without a second pass after it."""

    def __init__(self, fd: int, algorithm: str) -> None:
        self.fd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        self.hash = new_hash(algorithm)
        self.pos = 0
        self.done = threading.Event()
        self.stopped = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="tar-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        try:
            while not self.stopped:
                finished = self.done.is_set()  # before the size: then the size is the end
                end = os.fstat(self.fd).st_size
                while self.pos < end and not self.stopped:
                    n = os.preadv(self.fd, [view[: min(len(buf), end - self.pos)]], self.pos)
                    if n <= 0:
                        raise OSError(f"archive shrank at {self.pos} while being hashed")
                    self.hash.update(view[:n])
                    self.pos += n
                if finished:
                    return
                self.done.wait(0.005)
        except BaseException as e:  # given to digest()
            self.error = e

    def digest(self, size: int) -> str:
        """The digest once the writer has finished a file of ``size`` bytes."""
        self.done.set()
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.pos != size:
            raise OSError(f"hashed {self.pos} bytes of an archive of {size}")
        return self.hash.hexdigest()

    def stop(self) -> None:
        self.stopped = True
        self.done.set()
        self.thread.join()
        os.close(self.fd)


def _record_archive(d: _Data, ctx: StepContext, digest: str) -> None:
    """Record the digest of the archive just written where a later run (or
    one continuing a killed group) looks for it."""
    assert d.algorithm is not None
    st = os.stat(d.to)
    if ctx.digests is not None and ctx.digests.covers(d.to):  # staged in an atomic group
        ctx.digests.add(d.to, st.st_size, st.st_mtime_ns, d.algorithm, digest)
    else:
        records = resumes.records()
        records.record(d.to, d.algorithm, digest)
        records.flush()


def _level(level: int | None, compression: str) -> int | None:
    if level is None or compression == "none":
        return None
    low, high, _ = tarball.LEVELS[compression]
    if not low <= level <= high:
        raise StepError(f"level {level} is out of range for {compression} ({low}-{high})")
    return level


def _members(params: dict[str, Any], to: str, ctx: StepContext) -> tuple[tarball.MemberSpool, int]:
    """Every member in archive order, and the newest mtime (ns) among them.

    Each source is walked in archive order ("/" sorts before every other
    character: a directory's contents follow it), so the members stream into
    a spool without being held or sorted; several sources are merged."""
    sources = params["source"]
    if isinstance(sources, str):
        sources = [sources]
    base = ctx.path(params["base"]) if params.get("base") else None
    arcname = params.get("arcname")
    if arcname is not None and len(sources) != 1:
        raise StepError("arcname needs a single source")
    walk = _Walk(ctx, params.get("exclude", []), {to, fileio.temp_path(to)})
    streams = []
    for source in sources:
        path = ctx.path(source)
        info = ctx.fs.lstat(path)
        if info is None:
            raise StepError("source does not exist", path=path)
        streams.append(walk.source(path, _root_name(path, base, arcname), info))
    members = tarball.MemberSpool()
    if len(streams) == 1:
        for segment in streams[0]:
            members.extend(segment)
    else:
        merged = heapq.merge(*map(itertools.chain.from_iterable, streams), key=_order)
        members.extend(_unique(merged))
    return members, walk.newest


def _unique(members: Iterable[tarball.Member]) -> Iterator[tarball.Member]:
    """``members`` (sorted), refused when two have the same name."""
    last = None
    for m in members:
        if m[0] == last:
            raise StepError("two sources would be stored under the same name; use base")
        yield m
        last = m[0]


def _order(m: tarball.Member) -> str:
    return m[0].replace("/", "\x00")


def _mapped(params: dict[str, Any], to: str, ctx: StepContext) -> tuple[tarball.MemberSpool, int]:
    """``members``: every member in the order given, and the newest mtime (ns).
    The members stream into a spool, and their names (to refuse two members
    of one name) into a sorted one: a map of a million is not held twice."""
    follow_links = bool(params.get("follow_symlinks"))
    skip = {to, fileio.temp_path(to)}
    newest = [0]
    names: SortedSpool[str] = SortedSpool()

    def found() -> Iterator[tarball.Member]:
        for name, given in params["members"].items():
            if not isinstance(given, str) or not given:
                raise StepError(f"members: {name!r} maps to {given!r}, not a path")
            path = ctx.path(given)
            info = ctx.fs.stat(path) if follow_links else ctx.fs.lstat(path)
            if info is None:
                lost = follow_links and ctx.fs.lstat(path) is not None
                raise StepError(
                    "dangling symbolic link" if lost else "source does not exist", path=path
                )
            stored = name.rstrip("/")
            if not stored or name.startswith("/") or ".." in stored.split("/"):
                raise StepError(
                    f"member name {name!r} must be a relative path without '..'", path=path
                )
            if follow_links:
                path = follow.resolve(ctx.fs, path)
            if name.endswith("/") and not info.is_dir:
                raise StepError(f"member {name!r} names a directory but this is not one", path=path)
            yield from _named(_member(stored, path, *_fields(info), ctx), names)
            newest[0] = max(newest[0], info.mtime_ns)
            if not info.is_dir or name.endswith("/"):
                continue
            walk: Iterable[tuple[str, FileInfo, str]] = (
                follow.walk(ctx.fs, path)
                if follow_links
                else ((rel, i, path + "/" + rel) for rel, i in ctx.fs.walk(path))
            )
            for rel, i, full in walk:
                if full in skip or (
                    i.is_file
                    and rel.endswith(fileio.TMP_SUFFIX)
                    and fileio.is_temp_name(os.path.basename(rel))
                ):
                    continue
                yield from _named(_member(f"{stored}/{rel}", full, *_fields(i), ctx), names)
                newest[0] = max(newest[0], i.mtime_ns)

    members = tarball.MemberSpool()
    try:
        members.extend(found())
        previous = None
        for name in names:
            if name == previous:
                raise StepError("two members would be stored under the same name")
            previous = name
    except BaseException:
        members.close()
        raise
    finally:
        names.close()
    return members, newest[0]


def _named(member: tarball.Member | None, names: SortedSpool[str]) -> Iterator[tarball.Member]:
    """``member`` (none for one left out), its name noted in ``names``."""
    if member is not None:
        names.append(member.name.rstrip("/"))
        yield member


def _fields(info: FileInfo) -> tuple[str, int, int, int, str | None]:
    return info.kind, info.size, info.mode, info.mtime_ns, info.target


def _member(
    name: str,
    path: str,
    kind: str,
    size: int,
    mode: int,
    mtime_ns: int,
    target: str | None,
    ctx: StepContext,
) -> tarball.Member | None:
    mtime = mtime_ns // 1_000_000_000
    if kind == "file":
        return tarball.Member(name, kind, path, size, mode, mtime)
    if kind == "dir":
        return tarball.Member(name + "/", kind, path, 0, mode, mtime)
    if kind == "symlink":
        return tarball.Member(name, kind, path, 0, mode, mtime, target or "")
    ctx.log(f"{path}: not a file, directory or symlink; left out of the archive")
    return None


def _root_name(path: str, base: str | None, arcname: str | None) -> str:
    if arcname is not None:
        name = os.path.normpath(arcname).strip("/")
        if arcname.startswith("/") or name == ".." or name.startswith("../"):
            raise StepError("arcname must be a relative path without '..'", path=arcname)
        return "" if name == "." else name
    if base is None:
        return os.path.basename(path)
    rel = os.path.relpath(path, base)
    if rel == ".." or rel.startswith("../"):
        raise StepError(f"source is not below base {base}", path=path)
    return "" if rel == "." else rel


#: A directory's members in archive order, and the positions of the directories among them.
_Listing = tuple[list[tarball.Member], list[int]]
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Walk:
    """The members of each source, in archive order, with what is left out
    (excluded, wsrun's temporary files, the archive itself, special files)
    left out, and the newest mtime seen."""

    def __init__(self, ctx: StepContext, exclude: list[str], skip: set[str]) -> None:
        self.ctx = ctx
        self.exclude = exclude
        self.skip = skip
        self.newest = 0
        self.listing = self._view_listing if ctx.fs.virtual else self._disk_listing

    def source(self, path: str, root: str, info: Any) -> Iterator[list[tarball.Member]]:
        """``path`` stored as ``root`` ("": its contents at the top), as
        segments of members in archive order."""
        if root:
            m = self._member(
                root, path, info.kind, info.size, info.mode, info.mtime_ns, info.target
            )
            if m is not None:
                yield [m]
        if info.is_dir:
            yield from self._tree(path, root + "/" if root else "")

    def _tree(self, top: str, prefix: str) -> Iterator[list[tarball.Member]]:
        """Everything below ``top``, depth first, each directory's entries
        sorted by name: archive order. Only the listings of the directories
        being walked are held, and they go out in slices (a directory of
        files is one), not a member at a time."""
        stack = [(*self.listing(top, prefix), 0, 0)]
        while stack:
            members, dirs, at, d = stack.pop()
            if d == len(dirs):
                yield members[at:] if at else members
                continue
            i = dirs[d]
            yield members[at : i + 1]
            stack.append((members, dirs, i + 1, d + 1))
            stack.append((*self.listing(members[i][2], members[i][0]), 0, 0))

    def _left_out(self, name: str, stored: str) -> bool:
        """Whether an entry named ``name``, stored as ``stored``, is left out."""
        return fileio.is_temp_name(name) or _excluded(name, stored, self.exclude)

    def _disk_listing(self, directory: str, prefix: str) -> _Listing:
        """The members of one directory's entries, read straight from the disk
        when the view shows just the disk: a tuple per entry, without a
        FileInfo or a Member object (most of a big tree's planning)."""
        try:
            fd = os.open(directory, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        members: list[Any] = []
        dirs: list[int] = []
        add, lstat, tmp = members.append, os.lstat, fileio.TMP_SUFFIX
        skip = {os.path.basename(p) for p in self.skip if os.path.dirname(p) == directory}
        check = bool(self.exclude)
        newest = self.newest
        try:
            for name in sorted(os.listdir(fd)):
                if (check or name.endswith(tmp)) and self._left_out(name, prefix + name):
                    continue
                if skip and name in skip:
                    continue
                path = directory + "/" + name
                st = lstat(name, dir_fd=fd)
                mode, mtime_ns = st.st_mode, st.st_mtime_ns
                if mtime_ns > newest:
                    newest = mtime_ns
                kind = mode & 0o170000
                if kind == statmod.S_IFREG:  # plain tuples: a million Member() calls cost a second
                    add((prefix + name, "file", path, st.st_size, mode & 0o7777, st[8], ""))
                elif kind == statmod.S_IFDIR:
                    dirs.append(len(members))
                    add((prefix + name + "/", "dir", path, 0, mode & 0o7777, st[8], ""))
                elif kind == statmod.S_IFLNK:
                    target = os.readlink(name, dir_fd=fd)
                    add((prefix + name, "symlink", path, 0, mode & 0o7777, st[8], target))
                else:
                    self.ctx.log(
                        f"{path}: not a file, directory or symlink; left out of the archive"
                    )
        finally:
            os.close(fd)
            self.newest = newest
        return members, dirs

    def _view_listing(self, directory: str, prefix: str) -> _Listing:
        """The members of one directory's entries as the step's view shows
        them (a dry run, where earlier steps' plans are part of the view)."""
        view = self.ctx.fs
        members: list[Any] = []
        dirs: list[int] = []
        for name in view.listdir(directory):
            if (self.exclude or name.endswith(fileio.TMP_SUFFIX)) and self._left_out(
                name, prefix + name
            ):
                continue
            path = directory + "/" + name
            i = view.lstat(path)
            if i is None or path in self.skip:
                continue
            m = self._member(prefix + name, path, i.kind, i.size, i.mode, i.mtime_ns, i.target)
            if m is not None:
                if i.kind == "dir":
                    dirs.append(len(members))
                members.append(m)
        return members, dirs

    def _member(
        self,
        name: str,
        path: str,
        kind: str,
        size: int,
        mode: int,
        mtime_ns: int,
        target: str | None,
    ) -> tarball.Member | None:
        self.newest = max(self.newest, mtime_ns)
        return _member(name, path, kind, size, mode, mtime_ns, target, self.ctx)


def _excluded(base_name: str, name: str, patterns: list[str]) -> bool:
    import fnmatch  # only with exclude patterns (it imports re)

    return any(fnmatch.fnmatchcase(base_name, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _missing_parents(ctx: StepContext, directory: str) -> list[str]:
    missing = []
    while ctx.fs.lstat(directory) is None:
        missing.append(directory)
        directory = os.path.dirname(directory)
    info = ctx.fs.stat(directory)
    if info is None or not info.is_dir:
        raise StepError("is not a directory", path=directory)
    return missing[::-1]
