"""The ``checksum`` step type: hash files and write a ``sha256sum -c`` compatible list."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

from wsrun.core import spool
from wsrun.core.effects import Effect, create_file
from wsrun.core.fileio import atomic_write, is_temp_name, write_bytes_atomic
from wsrun.core.fs import ContentUnknown, FileInfo
from wsrun.core.hashing import ALGORITHMS, hash_each, hash_files
from wsrun.core.spool import SortedSpool, Spool, SpooledDict, lazy_mapping
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.steps.find import as_list, compile_globs, excluded

NAME = "checksum"
DOC = """Hash files and write a checksum list that ``sha256sum -c`` accepts.

Recipients verify a delivery with the standard tools (``sha256sum -c
SHA256SUMS`` run in the directory of the list), and later steps get every digest
from the outputs. Directories contribute every regular file below them (symbolic
links and wsrun's temporary files are skipped); the list itself is never listed.
Lines are ``<hex>  <path>`` sorted by path, the paths relative to
``relative_to``; names with a backslash, newline or carriage return are escaped
the way GNU coreutils does (tested against coreutils 9.1). A checksum list and a
manifest in the same directory must not both cover each other, or each run
changes both: exclude the list from the manifest (or the manifest from the
list). A file hashed before on this host (by this step, or by ``copy`` with
``checksum``) and unchanged since (same inode, size, mtime and ctime, see
``$WSRUN_HOME/resume.db``) is not read again, so a re-run after a kill hashes
only what it had not, and any file changed meanwhile is read again. Without ``to`` the step only computes the digests; with ``to`` and no
files it fails, because ``sha256sum -c`` rejects an empty list. Re-running when
the list is already up to date changes nothing. In a dry run, files an earlier
step would generate are hashed from their planned content; when that content is
only known after the real run (an archive being unpacked, a command's output),
their digests are null and so is the planned content of the list (its size is
still exact).
"""
#: ``wsrun resume`` plans this step again even when the run finished it, so a
#: source changed since is re-checked (wsrun.core.runner); unchanged files cost a stat.
RECHECK_ON_RESUME = True

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["paths"],
    "properties": {
        "paths": {
            "oneOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}},
            ],
            "description": "File or directory, or a list of them, to hash; relative paths "
            "are taken from the workdir.",
            "examples": ["delivery", ["products/a.fits", "products/b.fits"]],
        },
        "to": {
            "type": "string",
            "description": "Checksum list to write. Without it the step only computes digests.",
            "examples": ["delivery/SHA256SUMS"],
        },
        "algorithm": {
            "type": "string",
            "enum": list(ALGORITHMS),
            "default": "sha256",
            "description": "Hash algorithm; check the list with the matching <algorithm>sum tool.",
        },
        "exclude": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            "default": [],
            "description": "Globs (as in `find`) of paths to leave out, relative to each "
            "directory in `paths`; excluding a directory leaves out everything below it.",
            "examples": [["MANIFEST.json", "scratch"]],
        },
        "digests": {
            "type": "object",
            "additionalProperties": {"type": ["string", "null"]},
            "default": {},
            "description": "Digests already known, path -> hex digest (e.g. the `checksums` "
            "output of copy, which hashes while it copies): those files are not read again. "
            "Give only digests of `algorithm`; a null digest is one known only after the real "
            "run (a dry run).",
            "examples": ["{{ steps.copy.outputs.checksums }}"],
        },
        "relative_to": {
            "type": "string",
            "description": "Directory the listed paths are relative to (run the check "
            "from there). Default: the directory of `to`.",
        },
    },
}
EXAMPLES = [
    """- id: sums
  uses: checksum
  with:
    paths: delivery
    to: delivery/SHA256SUMS
    exclude: ["**/.*"]
""",
    """- id: digests
  uses: checksum
  with:
    paths: "{{ steps.images.outputs.files }}"
    algorithm: md5
""",
]
OUTPUTS = {
    "checksums": "absolute path -> hex digest of every hashed file "
    "(null in a dry run when the file's content is only known after the real run)",
    "file": "absolute path of the checksum list, or null without `to`",
}


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])] if params.get("to") else []


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    algorithm = params.get("algorithm", "sha256")
    to = ctx.path(params["to"]) if params.get("to") else None
    if to is not None and params.get("relative_to") is None:
        base = os.path.dirname(to)
    else:
        base = ctx.path(params.get("relative_to", "."))
    paths = params["paths"]
    exclude = compile_globs(as_list(params.get("exclude"), []))
    listed: Spool[tuple[str, int]] = Spool()
    collect_files(ctx, [paths] if isinstance(paths, str) else paths, to, exclude, listed)
    given = params.get("digests") or {}
    if listed.spilled or lazy_mapping(given):
        return _plan_spooled(ctx, listed, given, algorithm, to, base)
    files = dict(listed)
    known = {ctx.path(p): d for p, d in given.items()}
    unknown = [p for p in files if p not in known]
    digests = hash_files(ctx, unknown, algorithm, sum(files[p] for p in unknown), reuse=True)
    checksums = {
        p: known[p] if p in known else (d[0] if (d := digests[p]) else None) for p in files
    }
    outputs: dict[str, Any] = {"checksums": checksums, "file": to}
    if to is None:
        return Plan(outputs=outputs)
    if not files:
        raise StepError("no files to list (sha256sum -c rejects an empty list)", path=to)

    entries = sorted((os.path.relpath(p, base), h) for p, h in checksums.items())
    # The size is exact even when a dry run cannot know a digest: all have the same length.
    placeholder = "0" * (hashlib.new(algorithm).digest_size * 2)
    lines = [sums_line(name, h or placeholder) for name, h in entries]
    content = None if None in checksums.values() else b"".join(lines)
    effects, mode = plan_write(ctx, to, content, sum(map(len, lines)))
    return Plan(effects=effects, outputs=outputs, data=(to, content, mode))


@dataclass
class StreamedWrite:
    """A generated file too big to hold (a million files' checksum list or
    manifest): ``pieces()`` makes its content again as it is written (None:
    known only after the real run); ``spools`` are closed once it is."""

    to: str
    mode: int
    pieces: Callable[[], Iterable[bytes]] | None
    spools: list[Spool[Any]]


def _plan_spooled(
    ctx: StepContext,
    listed: Spool[tuple[str, int]],
    given: Mapping[str, str | None],
    algorithm: str,
    to: str | None,
    base: str,
) -> Plan:
    """``plan`` for a million files: the files, digests and lines stream through
    spools on disk, sorted by path, and the ``checksums`` output is a
    ``SpooledDict``; nothing per file is held. Known digests are joined by path
    (a spooled mapping, such as copy's ``checksums``, is read in order once)."""
    files: SortedSpool[tuple[str, int]] = SortedSpool(listed)
    listed.close()
    if lazy_mapping(given):
        known: Iterable[tuple[str, str | None]] = ((ctx.path(p), d) for p, d in given.items())
    else:
        known = sorted((ctx.path(p), d) for p, d in given.items())
    joined: Spool[tuple[str, int, Any]] = Spool()  # path, size, digest or _UNKNOWN
    unknown_bytes = 0
    unknown = 0
    for path, size, digest in _join(_unique(files), known):
        joined.append((path, size, digest))
        if digest is _UNKNOWN:
            unknown += 1
            unknown_bytes += size
    files.close()
    hashed = hash_each(
        ctx,
        (p for p, _, d in joined if d is _UNKNOWN),
        algorithm,
        unknown_bytes,
        unknown,
        reuse=True,
    )
    pairs = _filled(joined, hashed)
    with contextlib.closing(hashed):
        checksums: Mapping[str, str | None] = SpooledDict(pairs)
    joined.close()
    if len(checksums) < spool.SPILL_AT:  # few files after all (a spooled `digests`)
        checksums = dict(checksums.items())
    outputs: dict[str, Any] = {"checksums": checksums, "file": to}
    if to is None:
        return Plan(outputs=outputs)
    if not checksums:
        raise StepError("no files to list (sha256sum -c rejects an empty list)", path=to)
    prefix = base.rstrip("/") + "/"
    entries: SortedSpool[tuple[str, str | None]] = SortedSpool(
        (p[len(prefix) :] if p.startswith(prefix) else os.path.relpath(p, base), h)
        for p, h in checksums.items()
    )
    placeholder = "0" * (hashlib.new(algorithm).digest_size * 2)
    complete = all(h is not None for _, h in entries)
    size = sum(len(line) for line in _lines(entries, placeholder))
    pieces = (lambda: _lines(entries, placeholder)) if complete else None
    effects, mode = plan_write_stream(ctx, to, pieces, size)
    if not effects:
        entries.close()
        return Plan(outputs=outputs)
    return Plan(effects=effects, outputs=outputs, data=StreamedWrite(to, mode, pieces, [entries]))


FS_ENCODING = sys.getfilesystemencoding()  # os.fsencode without its per-call overhead
#: Stands for a digest still to be computed in ``_plan_spooled``.
_UNKNOWN = "?"


def _unique(files: Iterable[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """Sorted (path, size) once each."""
    last = None
    for path, size in files:
        if path != last:
            yield path, size
            last = path


def _join(
    files: Iterable[tuple[str, int]], known: Iterable[tuple[str, str | None]]
) -> Iterator[tuple[str, int, Any]]:
    """(path, size, known digest or ``_UNKNOWN``) of each file; both inputs
    sorted by path."""
    known_it = iter(known)
    k = next(known_it, None)
    for path, size in files:
        while k is not None and k[0] < path:
            k = next(known_it, None)
        if k is not None and k[0] == path:
            yield path, size, k[1]
        else:
            yield path, size, _UNKNOWN


def _filled(
    joined: Iterable[tuple[str, int, Any]],
    hashed: Iterator[tuple[str, tuple[str, int] | None]],
) -> Iterator[tuple[str, str | None]]:
    """(path, digest) of each file: the known digest, or the next hashed one
    (``hashed`` comes in the same order)."""
    for path, _, digest in joined:
        if digest is _UNKNOWN:
            done, result = next(hashed)
            assert done == path
            yield path, result[0] if result else None
        else:
            yield path, digest


def _lines(entries: Iterable[tuple[str, str | None]], placeholder: str) -> Iterator[bytes]:
    for name, h in entries:
        yield sums_line(name, h or placeholder)


def apply(plan: Plan, ctx: StepContext) -> Result:
    return apply_write(plan)


def collect_files(
    ctx: StepContext,
    paths: Iterable[str],
    to: str | None,
    exclude: re.Pattern[str] | None,
    out: Spool[tuple[str, int]],
) -> None:
    """Every file named or below a named directory, with its size, appended
    to ``out`` in order (a file may come twice: the caller keeps the first).

    ``to`` (the list being written) is skipped inside directories and refused
    when named directly; ``exclude`` applies inside directories.
    """
    for given in paths:
        path = ctx.path(given)
        info = ctx.fs.stat(path)
        if info is None:
            raise StepError("no such file or directory", path=path)
        if info.is_file:
            if path == to:
                raise StepError("cannot list the checksum list itself", path=path)
            out.append((path, info.size))
        elif info.is_dir:
            if ctx.fs.virtual:
                found: Iterable[tuple[str, str, int]] = (
                    (os.path.join(path, rel), rel, entry.size)
                    for rel, entry in ctx.fs.walk(path)
                    if entry.is_file
                )
            else:
                found = _disk_files(path.rstrip("/") or "/", "")
            for full, rel, size in found:
                if full == to or is_temp_name(rel.rpartition("/")[2]):
                    continue
                if exclude is None or not excluded(rel, exclude):
                    out.append((full, size))
        else:
            raise StepError("not a regular file or directory", path=path)


def _disk_files(root: str, rel: str) -> Iterator[tuple[str, str, int]]:
    """(path, path relative to the walk's top, size) of every regular file
    below ``root``, in the order ``WorldView.walk`` gives, read straight from
    the disk: without a FileInfo per entry (a million of them)."""
    top = root + "/" + rel if rel else root
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    prefix = rel + "/" if rel else ""
    dirs = []
    for e in entries:
        if e.is_file(follow_symlinks=False):
            yield e.path, prefix + e.name, e.stat(follow_symlinks=False).st_size
        elif e.is_dir(follow_symlinks=False):
            dirs.append(prefix + e.name)
    for d in dirs:
        yield from _disk_files(root, d)


def sums_line(name: str, hexdigest: str) -> bytes:
    """One line of a coreutils checksum list; like coreutils, a name with a
    backslash, newline or carriage return is escaped and the line starts with ``\\``."""
    if "\\" not in name and "\n" not in name and "\r" not in name:  # the usual name, fast
        return f"{hexdigest}  {name}\n".encode(FS_ENCODING, "surrogateescape")
    raw = os.fsencode(name)
    if b"\\" in raw or b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + hexdigest.encode() + b"  " + raw + b"\n"
    return hexdigest.encode() + b"  " + raw + b"\n"


# ---- shared by the steps that generate a file (checksum, manifest, template) ----


def plan_write(
    ctx: StepContext, path: str, content: bytes | None, size: int | None, mode: int | None = None
) -> tuple[list[Effect], int]:
    """The effects of writing ``content`` to ``path`` (none when it is already
    there), and the mode to write it with (``mode``, else the existing file's).

    ``content`` is None in a dry run when it is only known after the real run.
    """
    parent = os.path.dirname(path)
    if not ctx.fs.is_dir(parent):
        raise StepError("directory does not exist (create it in an earlier step)", path=parent)
    existing = ctx.fs.lstat(path)
    if existing is not None:
        if not existing.is_file:
            raise StepError("exists and is not a regular file; refusing to replace it", path=path)
        same_size = content is not None and existing.size == len(content)
        if same_size and mode in (None, existing.mode) and _read(ctx, path) == content:
            return [], existing.mode
    write_mode = mode if mode is not None else existing.mode if existing else 0o644
    return [create_file(path, bytes=size, content=content, mode=mode)], write_mode


def plan_write_stream(
    ctx: StepContext,
    path: str,
    content: Callable[[], Iterable[bytes]] | None,
    size: int,
    mode: int | None = None,
) -> tuple[list[Effect], int]:
    """``plan_write`` for content too big to hold (a million files' checksum
    list): ``content()`` makes it again, in pieces, each time it is called;
    None when it is only known after the real run. The file already there is
    compared piece by piece; in a dry run the content goes to a temporary file
    that later steps of the run read as the planned file."""
    parent = os.path.dirname(path)
    if not ctx.fs.is_dir(parent):
        raise StepError("directory does not exist (create it in an earlier step)", path=parent)
    existing = ctx.fs.lstat(path)
    if existing is not None:
        if not existing.is_file:
            raise StepError("exists and is not a regular file; refusing to replace it", path=path)
        same_size = content is not None and existing.size == size
        if same_size and mode in (None, existing.mode) and _holds(ctx, path, content()):  # type: ignore[misc]
            return [], existing.mode
    write_mode = mode if mode is not None else existing.mode if existing else 0o644
    planned = _planned_file(content(), size) if content is not None and ctx.dry_run else None
    return [create_file(path, bytes=size, mode=mode, source_info=planned)], write_mode


#: Planned contents of a dry run's big generated files: anonymous temporary
#: files, open (and so readable through /proc/self/fd) until the process ends.
_PLANNED: list[IO[bytes]] = []


def _planned_file(pieces: Iterable[bytes], size: int) -> FileInfo:
    f = tempfile.TemporaryFile(prefix="wsrun-planned-")  # noqa: SIM115  (kept open on purpose)
    for piece in pieces:
        f.write(piece)
    f.flush()
    _PLANNED.append(f)
    return FileInfo("file", size, content_from=f"/proc/self/fd/{f.fileno()}")


def _holds(ctx: StepContext, path: str, pieces: Iterable[bytes]) -> bool:
    """Whether the file at ``path`` has exactly the content ``pieces`` make."""
    try:
        f = ctx.fs.open(path)
    except ContentUnknown:
        return False
    with f:
        for piece in pieces:
            if f.read(len(piece)) != piece:
                return False
        return f.read(1) == b""


def _read(ctx: StepContext, path: str) -> bytes | None:
    try:
        with ctx.fs.open(path) as f:
            return f.read()
    except ContentUnknown:
        return None


def apply_write(plan: Plan) -> Result:
    """Write the planned content (``plan.data`` is ``(path, content, mode)``,
    or a ``StreamedWrite``)."""
    data = plan.data
    if isinstance(data, StreamedWrite):
        if plan.effects:
            if data.pieces is None:
                raise StepError("content unknown: a dry-run plan cannot be applied", path=data.to)
            with atomic_write(data.to, data.mode) as f:
                for piece in data.pieces():
                    f.write(piece)
        for s in data.spools:
            s.close()
        return Result(effects=plan.effects, outputs=plan.outputs)
    if plan.effects:
        path, content, mode = plan.data
        if content is None:
            raise StepError("content unknown: a dry-run plan cannot be applied", path=path)
        write_bytes_atomic(path, content, mode)
    return Result(effects=plan.effects, outputs=plan.outputs)
