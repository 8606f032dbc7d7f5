"""The ``untar`` step type: unpack a tar or zip archive into a directory."""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat as statmod
import time
from dataclasses import dataclass, field
from typing import Any

from wsrun.core import fileio
from wsrun.core.effects import Effect, create_dir, create_file, create_symlink
from wsrun.core.fs import ContentUnknown
from wsrun.core.step import Plan, Result, StepContext, StepError
from wsrun.formats import extract, tarball, tarread
from wsrun.formats.extract import Entry

NAME = "untar"
DOC = """Unpack a tar archive (uncompressed, gz, bz2, xz or zst) or a zip file into a directory.

Incoming archives come from outside and must not be trusted: the whole archive
is checked before anything is written, and the step refuses it (naming the
member) if any member would land outside the target directory - absolute
names, '..' components, symlinks or hard links pointing outside, members
written through a symlink, device and fifo members, names that appear twice.
GNU sparse and multi-volume members are refused as unsupported. Compression
is recognised from the content, not the file name.

Each file is written under a temporary name and renamed into place, with its
mode and mtime; files already present with the same size and mtime are left
alone, so a second run changes nothing. Hard links are made as hard links.
Directory modes and mtimes are set last (writing into a directory changes its
mtime). Files extracted before a failure stay in place, complete; running the
step again finishes the job.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "to"],
    "properties": {
        "source": {
            "description": "The archive: a tar (any compression, found from its first bytes) or a zip file.",
            "type": "string",
            "minLength": 1,
            "examples": ["incoming/run-42.tar.zst"],
        },
        "to": {
            "description": "The directory to unpack into; created if missing. Nothing is ever written outside it.",
            "type": "string",
            "minLength": 1,
            "examples": ["staging/run-42"],
        },
        "strip_components": {
            "description": "Leading path components to remove from member names (like GNU tar's "
            "--strip-components); members with no more components are skipped.",
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "examples": [1],
        },
        "format": {
            "description": "The archive format; `auto` recognises it from the content.",
            "enum": ["auto", "tar", "zip"],
            "default": "auto",
        },
    },
}

EXAMPLES = [
    """- id: unpack
  uses: untar
  with:
    source: incoming/run-42.tar.gz
    to: staging/run-42
""",
    """- id: unpack_zip
  uses: untar
  with:
    source: incoming/delivery.zip
    to: staging/delivery
    strip_components: 1
""",
]

OUTPUTS = {
    "dir": "absolute path of the target directory",
    "files": "absolute paths of the regular files the archive holds (extracted now or already present)",
    "members": "number of members unpacked into the directory (files, directories, links)",
}


@dataclass
class _Action:
    op: str  # "mkdir", "file", "symlink" or "hardlink"
    rel: str
    entry: Entry | None = None  # None for a parent directory the archive does not list


@dataclass
class _Data:
    source: str
    to: str
    format: str  # "tar" or "zip"
    compression: str
    stamp: tuple[int, int]  # size and mtime of the archive when planned
    actions: list[_Action] = field(default_factory=list)
    dirs: list[Entry] = field(default_factory=list)  # archive directories, for modes and mtimes


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    source = ctx.path(params["source"])
    to = ctx.path(params["to"])
    info = ctx.fs.stat(source)
    if info is None:
        raise StepError("archive does not exist", path=source)
    if not info.is_file:
        raise StepError("is not a file", path=source)
    target = ctx.fs.stat(to)
    if target is not None and not target.is_dir:
        raise StepError("exists and is not a directory", path=to)
    effects: list[Effect] = [] if target is not None else [create_dir(to)]
    try:
        fmt, compression, entries = _list(
            source, params.get("format", "auto"), params.get("strip_components", 0), ctx
        )
    except ContentUnknown:
        ctx.log(f"{source}: written by an earlier step; its members are known only in a real run")
        return Plan(effects=effects, outputs={"dir": to, "files": [], "members": None})
    extract.check_entries(entries, to, ctx.fs.lstat)

    data = _Data(source, to, fmt, compression, (info.size, info.mtime_ns))
    files: list[str] = []
    known_dirs: set[str] = set()
    written: set[str] = set()  # files (re)written by this run
    file_of: dict[str, Entry] = {}  # name -> the file entry whose content it has
    for e in entries:
        _parents(e.name, to, known_dirs, effects, data.actions, ctx)
        path = os.path.join(to, e.name)
        have = ctx.fs.lstat(path)
        if e.kind == "dir":
            if have is None:
                effects.append(create_dir(path))
                data.actions.append(_Action("mkdir", e.name, e))
            elif not have.is_dir:
                raise StepError(
                    "exists and is not a directory; the archive has a directory here", path=path
                )
            known_dirs.add(e.name)
            data.dirs.append(e)
            continue
        if have is not None and have.is_dir:
            raise StepError(
                f"exists and is a directory; the archive has a {e.kind} here", path=path
            )
        if e.kind == "symlink":
            if not (have is not None and have.is_symlink and have.target == e.linkname):
                effects.append(create_symlink(path, e.linkname))
                data.actions.append(_Action("symlink", e.name, e))
            continue
        content = e if e.kind == "file" else file_of[e.linkname]
        file_of[e.name] = content
        files.append(path)
        same = (
            have is not None
            and have.is_file
            and have.size == content.size
            and have.mtime_ns == content.mtime_ns
        )
        if same and (e.kind == "file" or e.linkname not in written):
            continue
        written.add(e.name)
        if e.kind == "file":
            effects.append(create_file(path, bytes=e.size, mode=e.mode))
        else:
            effects.append(
                create_file(path, bytes=content.size, source=os.path.join(to, e.linkname))
            )
        data.actions.append(_Action(e.kind, e.name, e))
    return Plan(
        effects=effects, outputs={"dir": to, "files": files, "members": len(entries)}, data=data
    )


def apply(plan: Plan, ctx: StepContext) -> Result:
    for path in plan.outputs["files"]:  # a killed run's temp files, also when nothing changed
        fileio.remove_temp_of(path)
    if not plan.effects:
        return Result(outputs=plan.outputs)
    d: _Data = plan.data
    st = os.stat(d.source)
    if (st.st_size, st.st_mtime_ns) != d.stamp:
        raise StepError("archive changed since the step was planned; run it again", path=d.source)
    os.makedirs(d.to, exist_ok=True)
    total = sum(a.entry.size for a in d.actions if a.op == "file" and a.entry is not None)
    task = ctx.progress.task("untar", total_bytes=total, total_files=len(d.actions))
    out = _Extractor(d.to)
    try:
        with _open_source(d) as source:
            for a in d.actions:
                ctx.check_deadline()
                out.extract(a, source)
                task.advance(bytes=a.entry.size if a.op == "file" and a.entry else 0, files=1)
        for e in reversed(d.dirs):
            out.set_dir(e)
    except Exception as e:
        if tarread.is_corrupt(e):
            raise StepError(f"cannot read the archive: {e}", path=d.source) from None
        raise
    finally:
        task.close()
    return Result(effects=plan.effects, outputs=plan.outputs)


# ---- listing -------------------------------------------------------------------


def _list(source: str, fmt: str, strip: int, ctx: StepContext) -> tuple[str, str, list[Entry]]:
    """The archive's format, compression and entries (names relative to the target)."""
    try:
        with ctx.fs.open(source) as f:
            found = tarball.sniff(f.read(8))
        if fmt == "zip" and found != "zip":
            raise StepError("is not a zip file", path=source)
        if fmt == "tar" and found == "zip":
            raise StepError("is a zip file, not a tar archive", path=source)
        if found == "zip":
            return "zip", "none", _zip_entries(source, strip, ctx)
        return "tar", found, _tar_entries(source, strip, ctx)
    except (StepError, ContentUnknown):
        raise
    except Exception as e:
        if tarread.is_corrupt(e):
            raise StepError(f"not a valid tar or zip archive: {e}", path=source) from None
        raise


def _tar_entries(source: str, strip: int, ctx: StepContext) -> list[Entry]:
    raw, compression, reader = tarread.open_tar(source, ctx.fs.open)
    entries = []
    with raw:
        index = -1
        while (h := reader.next()) is not None:
            index += 1
            if h.type == b"V":  # GNU volume label: nothing to extract
                continue
            if h.type in tarread.FILE_TYPES:
                kind = "file"
            else:
                kind = _TAR_KINDS.get(h.type, "")
                if not kind:
                    what = (
                        "device or fifo"
                        if h.type in (b"3", b"4", b"6")
                        else f"unsupported (type {h.type!r})"
                    )
                    raise StepError(f"{what} member; refusing to extract the archive", path=h.name)
            name = extract.relative_name(h.name, strip)
            if name is None:
                continue
            linkname = h.linkname
            if kind == "hardlink":
                try:
                    linkname = extract.relative_name(h.linkname, strip) or ""
                except StepError as e:
                    raise StepError(
                        f"hard link to {h.linkname!r}: {e.message}", path=h.name
                    ) from None
            mtime_ns = h.mtime * 1_000_000_000 if isinstance(h.mtime, int) else round(h.mtime * 1e9)
            offset = h.offset if compression == "none" else -1
            entries.append(
                Entry(name, kind, h.size, h.mode & 0o777, mtime_ns, linkname, index, offset)
            )
    return entries


_TAR_KINDS = {b"1": "hardlink", b"2": "symlink", b"5": "dir"}


def _zip_entries(source: str, strip: int, ctx: StepContext) -> list[Entry]:
    import zipfile

    entries = []
    with ctx.fs.open(source) as f, zipfile.ZipFile(f) as zf:
        for index, zi in enumerate(zf.infolist()):
            unix = zi.external_attr >> 16 if zi.create_system == 3 else 0
            linkname = ""
            if zi.is_dir():
                kind = "dir"
            elif statmod.S_ISLNK(unix):
                kind = "symlink"
                linkname = os.fsdecode(zf.read(zi))
            elif statmod.S_IFMT(unix) in (0, statmod.S_IFREG):  # many zips set no type bits
                kind = "file"
            else:
                raise StepError(
                    "device or fifo member; refusing to extract the archive", path=zi.filename
                )
            name = extract.relative_name(zi.filename, strip)
            if name is None:
                continue
            mode = statmod.S_IMODE(unix) & 0o777 or (0o755 if kind == "dir" else 0o644)
            mtime = int(time.mktime((*zi.date_time, 0, 0, -1)))
            size = zi.file_size if kind == "file" else 0
            entries.append(Entry(name, kind, size, mode, mtime * 1_000_000_000, linkname, index))
    return entries


def _parents(
    name: str,
    to: str,
    known: set[str],
    effects: list[Effect],
    actions: list[_Action],
    ctx: StepContext,
) -> None:
    """Plan the parent directories of ``name`` the archive does not list."""
    missing = []
    parent = posixpath.dirname(name)
    while parent and parent not in known:
        missing.append(parent)
        parent = posixpath.dirname(parent)
    for rel in reversed(missing):
        known.add(rel)
        if (
            ctx.fs.lstat(os.path.join(to, rel)) is None
        ):  # check_entries refused anything but a directory
            effects.append(create_dir(os.path.join(to, rel)))
            actions.append(_Action("mkdir", rel))


# ---- extracting -----------------------------------------------------------------


class _OffsetSource:
    """An uncompressed tar: member data is copied from its offset by the kernel."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def fill(self, e: Entry, out: int) -> None:
        tarball.copy_range(self.fd, out, e.size, e.offset)

    def close(self) -> None:
        os.close(self.fd)


class _StreamSource:
    """A compressed tar, decompressed once, front to back."""

    def __init__(self, path: str) -> None:
        self.raw, _, self.reader = tarread.open_tar(path)
        self.index = -1

    def fill(self, e: Entry, out: int) -> None:
        h = None
        while self.index < e.index:
            h = self.reader.next()
            if h is None:
                raise tarread.CorruptArchive("archive ended early")
            self.index += 1
        if h is None or h.size != e.size:
            raise tarread.CorruptArchive(f"{e.name}: size differs from the planned one")
        while data := self.reader.read(1 << 20):
            tarball.write_all(out, data)

    def close(self) -> None:
        self.raw.close()


class _ZipSource:
    def __init__(self, path: str) -> None:
        import zipfile

        self.zip = zipfile.ZipFile(path)
        self.infos = self.zip.infolist()

    def fill(self, e: Entry, out: int) -> None:
        with self.zip.open(self.infos[e.index]) as f:
            while data := f.read(1 << 20):
                tarball.write_all(out, data)

    def close(self) -> None:
        self.zip.close()


@contextlib.contextmanager
def _open_source(d: _Data) -> Any:
    if d.format == "zip":
        source: Any = _ZipSource(d.source)
    elif d.compression == "none":
        source = _OffsetSource(d.source)
    else:
        source = _StreamSource(d.source)
    try:
        yield source
    finally:
        source.close()


def _retry(create: Any, tmp: str) -> Any:
    """Create the link ``tmp`` exclusively, removing what a killed run left there first."""
    try:
        return create()
    except FileExistsError:
        os.unlink(tmp)
        return create()


class _Extractor:
    """Writes planned members below ``to``, checking again that no parent
    directory is a symlink (the disk may have changed since the plan)."""

    def __init__(self, to: str) -> None:
        self.to = to
        self.checked: set[str] = set()

    def _parent_ok(self, rel: str) -> None:
        missing = []
        parent = posixpath.dirname(rel)
        while parent and parent not in self.checked:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(missing):
            if not statmod.S_ISDIR(os.lstat(os.path.join(self.to, p)).st_mode):
                raise StepError(
                    "is no longer a directory; refusing to write through it",
                    path=os.path.join(self.to, p),
                )
            self.checked.add(p)

    def extract(self, a: _Action, source: Any) -> None:
        self._parent_ok(a.rel)
        path = os.path.join(self.to, a.rel)
        e = a.entry
        if a.op == "mkdir":
            try:
                os.mkdir(path, 0o700 if e is not None else 0o777)
            except FileExistsError:
                if not statmod.S_ISDIR(os.lstat(path).st_mode):
                    raise StepError("exists and is not a directory", path=path) from None
            return
        assert e is not None
        tmp = fileio.temp_path(path)
        # Created before the try: one that another process holds is not ours to remove.
        fd = fileio.create_temp(tmp, 0o600, os.O_WRONLY) if a.op == "file" else -1
        try:
            if a.op == "file":
                try:
                    source.fill(e, fd)
                    os.fchmod(fd, e.mode)
                    os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
                finally:
                    os.close(fd)
            elif a.op == "symlink":
                _retry(lambda: os.symlink(e.linkname, tmp), tmp)
                os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns), follow_symlinks=False)
            else:
                _retry(
                    lambda: os.link(os.path.join(self.to, e.linkname), tmp, follow_symlinks=False),
                    tmp,
                )
            os.replace(tmp, path)
            if a.op == "hardlink" and os.path.lexists(tmp):
                os.unlink(tmp)  # renaming onto another link to the same file keeps both names
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def set_dir(self, e: Entry) -> None:
        """Mode and mtime of an archive directory, without following a symlink."""
        fd = os.open(
            os.path.join(self.to, e.name),
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
        try:
            os.fchmod(fd, e.mode)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)
