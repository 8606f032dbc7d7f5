"""The ``copy`` step type: copy files and directory trees into a directory.

One piece: planning (what exists, what changes) and applying (the planned list on a
few threads) share the CopyJob; copying one file is ``wsrun.core.filecopy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import os
import stat as statmod
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from wsrun.core import follow, resumes
from wsrun.core.effects import EffectSpool, create_dir, create_file, create_symlink, remove
from wsrun.core.filecopy import (
    BUFFER_SIZE,
    MMAP_MIN,
    copy_file_placed,
    copy_symlink,
    current_umask,
    hash_file,
)
from wsrun.core.fileio import (
    TMP_SUFFIX,
    is_temp_name,
    remove_leftover,
    remove_stray_temps,
)
from wsrun.core.fs import FileInfo, WorldView, disk_info, info_from_stat, norm, walk_disk
from wsrun.core.removal import remove_tree
from wsrun.core.spool import SortedSpool, Spool, SpooledDict
from wsrun.core.step import PATHS, Plan, Result, StepContext, StepError

NAME = "copy"
DOC = """Copy files and directory trees into a directory, preserving modes and mtimes.

Use it to stage data products for delivery, QA or archiving. Each source lands
at ``to/<basename>`` (like ``cp -a SRC... DIR/``), or, with ``base``, at its path
relative to ``base`` (like ``rsync -R``) so a list of files found in a tree keeps
its layout. Files whose size and mtime (or checksum) already match are skipped,
so re-running after an interruption only copies what is missing; files at the
destination that are not in the sources are left alone. Checksums, when asked,
are computed while copying: each file is read once, and recorded (see
``checksum``), so a re-run reads again only files written or changed since.
With ``files`` instead of ``sources`` each source goes where the map says (a
layout decided by an earlier step, e.g. a delivery's by product type), and with
``follow_symlinks`` the copy holds content, never links.
"""

#: ``wsrun resume`` plans this step again even when the run finished it, so a
#: source changed since is re-checked (wsrun.core.runner); unchanged files cost a stat.
RECHECK_ON_RESUME = True

ALGORITHMS = ("sha256", "md5", "sha1")

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "oneOf": [{"required": ["sources"]}, {"required": ["files"]}],
    "properties": {
        "sources": {
            "description": "A file or directory to copy, or a list of them. A directory is "
            "copied as a whole tree; symlinks are copied as symlinks.",
            **PATHS,
            "examples": ["products/run42", ["products/a.fits", "products/b.fits"]],
        },
        "files": {
            "description": "Instead of `sources`: where each source goes, as {path under "
            "`to`: source file or directory}, in order (missing directories on the way are "
            "created). E.g. the `placement` output of nrao's find-products.",
            "type": "object",
            "additionalProperties": {"type": "string", "minLength": 1},
            "examples": [
                {"images/a.fits": "products/a.fits", "logs/casa.log": "working/casa.log"},
                "{{ steps.products.outputs.placement }}",
            ],
        },
        "follow_symlinks": {
            "description": "Copy what symbolic links point to (files and whole trees) instead "
            "of the links, so the copy holds content only; a dangling link fails the step.",
            "type": "boolean",
            "default": False,
        },
        "delete": {
            "description": "Remove whatever is at `to` that the copy does not put there "
            "(like rsync --delete), except `keep`: the destination then holds exactly the "
            "sources, e.g. a staging area a killed run left, continued with other sources.",
            "type": "boolean",
            "default": False,
        },
        "keep": {
            "description": "With `delete`: paths under `to` left alone (files other steps write).",
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "default": [],
            "examples": [["SHA256SUMS", "delivery.json"]],
        },
        "to": {
            "description": "The destination directory (created if missing).",
            "type": "string",
            "minLength": 1,
            "examples": ["delivery/{{ inputs.user }}"],
        },
        "base": {
            "description": "Keep each source's path relative to this directory under `to` "
            "(like rsync -R). Every source must lie inside it.",
            "type": "string",
            "minLength": 1,
            "examples": ["products"],
        },
        "checksum": {
            "description": "Compute a checksum of every file while copying it; the result is "
            "the `checksums` output.",
            "enum": ["none", *ALGORITHMS],
            "default": "none",
        },
        "compare": {
            "description": "How to decide that a file already at the destination is unchanged: "
            "by size and mtime, or by size and content checksum (reads both files).",
            "enum": ["size_mtime", "checksum"],
            "default": "size_mtime",
        },
        "workers": {
            "description": "Files copied in parallel (default: the number of CPUs).",
            "type": "integer",
            "minimum": 1,
            "examples": [4],
        },
    },
}

EXAMPLES = [
    """- id: stage
  uses: copy
  with:
    sources: products/run42
    to: staging/qa
""",
    """- id: deliver
  uses: copy
  with:
    sources: "{{ steps.find.outputs.files }}"
    base: products
    to: delivery/{{ inputs.user }}
    checksum: sha256
""",
    """- id: content
  uses: copy
  with:
    files:
      images/a.fits: products/a.fits
      raw/eb1: /cache/eb1  # a symbolic link into a cache
    to: delivery
    follow_symlinks: true
    checksum: sha256
""",
]

OUTPUTS = {
    "files": "destination paths of all regular files copied or already in place, sorted",
    "symlinks": "destination paths of all symlinks, sorted",
    "copied": "number of regular files written",
    "unchanged": "number of regular files already in place",
    "bytes": "total size of all regular files (copied and unchanged)",
    "checksums": "{destination path: hex digest} of every file, when `checksum` is set "
    "(in a dry run: those of unchanged files this host recorded, null for the others)",
}


@dataclass
class CopyJob:
    """Everything apply needs, decided at plan time."""

    #: Directories to create, parents first: (path, mode, mtime_ns); mode and
    #: mtime are None for directories that only hold the copied tree.
    dirs: list[tuple[str, int | None, int | None]] = field(default_factory=list)
    #: Regular files to write: (source, destination, size, mode, mtime_ns);
    #: spooled to disk when there are many (wsrun.core.spool).
    files: Spool[tuple[str, str, int, int, int]] = field(default_factory=Spool)
    #: Their total size, counted as they are planned.
    bytes: int = 0
    #: Symlinks to write: (destination, target, mtime_ns).
    links: list[tuple[str, str, int]] = field(default_factory=list)
    #: Unchanged files whose checksum must still be read from the destination.
    to_hash: Spool[str] = field(default_factory=Spool)
    #: (destination, digest) of unchanged files whose digest is known from the
    #: plan (the group's record, compare: checksum); spooled, as a resumed
    #: delivery may have a million of them.
    known: SortedSpool[tuple[str, str]] = field(default_factory=SortedSpool)
    #: Existing directories that may hold a killed run's temp files (those
    #: receiving a single file; others may write there too).
    write_dirs: set[str] = field(default_factory=set)
    #: A killed run's temp files seen while walking a destination tree: inside
    #: what this step writes (and has locked), so removed whatever their age.
    strays: list[str] = field(default_factory=list)
    #: What ``delete`` removes first (trees whole).
    removals: list[str] = field(default_factory=list)
    algorithm: str | None = None
    workers: int = 1


#: Progress is reported every this many small files copied, or after any file
#: of this size or more.
PROGRESS_FILES = 64
PROGRESS_BYTES = 1 << 20

#: Up to this many sources, each one's place under ``to`` is locked; with more,
#: all of ``to``.
LOCK_EACH_MAX = 32


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans: each
    source's place under ``to``, so runs copying other things into one shared
    directory (a cache) do not wait for each other; with ``files`` (a layout of
    its own) or ``delete``, all of ``to``."""
    to = ctx.path(params["to"])
    if params.get("files") is not None or params.get("delete"):
        return [to]
    sources = params["sources"]
    sources = [sources] if isinstance(sources, str) else sources
    if len(sources) > LOCK_EACH_MAX:
        return [to]
    base = ctx.path(params["base"]) if params.get("base") else None
    places = []
    for source in sources:
        path = ctx.path(source)
        rel = os.path.basename(path) if base is None else os.path.relpath(path, base)
        if rel in ("", os.curdir) or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return [to]  # plan refuses it, or it is `to` as a whole
        places.append(os.path.join(to, rel))
    return places


def _outside(rel: str) -> bool:
    """A `files` path that does not name a place below `to`."""
    norm = os.path.normpath(rel)
    return (
        os.path.isabs(rel) or norm in (os.curdir, os.pardir) or norm.startswith(os.pardir + os.sep)
    )


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    algorithm = params.get("checksum", "none")
    planner = _Planner(
        ctx,
        to=ctx.path(params["to"]),
        base=ctx.path(params["base"]) if params.get("base") else None,
        algorithm=None if algorithm == "none" else algorithm,
        compare=params.get("compare", "size_mtime"),
        follow_symlinks=bool(params.get("follow_symlinks")),
    )
    planner.job.workers = params.get("workers") or os.cpu_count() or 1
    planner.ensure_dir(planner.to, what="destination")
    if params.get("files") is not None:
        if params.get("base"):
            raise StepError("give `base` with `sources`, not with `files`")
        planner.add_mapped(params["files"])
    else:
        sources = params["sources"]
        if isinstance(sources, str):
            sources = [sources]
        planner.add_sources(list(dict.fromkeys(ctx.path(s) for s in sources)))
    if params.get("compare") == "checksum":
        planner.compare_checksums()
    if params.get("delete"):
        planner.delete_others(params.get("keep") or [])
    return planner.finish()


class _Planner:
    """Walks each source once and its destination once, deciding what to write."""

    def __init__(
        self,
        ctx: StepContext,
        to: str,
        base: str | None,
        algorithm: str | None,
        compare: str,
        follow_symlinks: bool = False,
    ) -> None:
        self.ctx = ctx
        self.follow_symlinks = follow_symlinks
        self.fs = ctx.fs
        self.to = to
        self.base = base
        self.algorithm = algorithm
        self.compare = compare
        self.job = CopyJob(algorithm=algorithm)
        self.effects = EffectSpool()
        #: Destination directory -> True if this step creates it, False if it exists.
        self.dirs: dict[str, bool] = {}
        #: Destination path -> source path, to catch two sources landing in one place.
        self.claimed: dict[str, str] = {}
        #: Destination paths of every regular file (copied or unchanged) and of
        #: every symlink, sorted as they are read; their count and total size.
        self.files: SortedSpool[str] = SortedSpool()
        self.symlinks: SortedSpool[str] = SortedSpool()
        self.file_bytes = 0
        #: (destination, source) of real trees copied whole (Plan.trees).
        self.trees: list[tuple[str, str]] = []
        #: (source, destination, index in job.files) of same-sized files to
        #: compare by checksum.
        self.suspects: list[tuple[str, str, int]] = []

    def ensure_dir(self, path: str, what: str = "") -> None:
        """Plan creating ``path`` and its missing parents, unless it is a directory."""
        if path in self.dirs:
            return
        if path in self.claimed:
            raise StepError(
                f"{self.claimed[path]} and a directory would both be copied here", path=path
            )
        info = self.fs.stat(path)
        if info is None:
            parent = os.path.dirname(path)
            if parent != path:
                self.ensure_dir(parent)
            self._new_dir(path, None)
        elif info.is_dir:
            self.dirs[path] = False
        else:
            raise StepError(f"{what + ' ' if what else ''}is not a directory", path=path)

    def _new_dir(self, path: str, info: FileInfo | None) -> None:
        self.effects.append(create_dir(path))
        self.job.dirs.append((path, info.mode if info else None, info.mtime_ns if info else None))
        self.dirs[path] = True

    def destination(self, source: str) -> str:
        if self.base is None:
            return os.path.join(self.to, os.path.basename(source))
        rel = os.path.relpath(source, self.base)
        if rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise StepError(f"is not inside base {self.base}", path=source)
        return os.path.join(self.to, rel)

    def add_sources(self, sources: list[str]) -> None:
        infos = {}
        for source in sources:
            info = self.fs.lstat(source)
            if info is None:
                raise StepError("no such file or directory", path=source)
            infos[source] = info
        if self.base is not None:
            # Destinations mirror sources, so a source inside a listed directory
            # is copied with that directory.
            trees = {s for s, i in infos.items() if i.is_dir}
            infos = {s: i for s, i in infos.items() if not _inside_any(s, trees)}
        for source, info in infos.items():
            self.add_source(source, info)

    def add_mapped(self, mapped: dict[str, str]) -> None:
        """Plan ``files``: each source to its own place under ``to``."""
        for rel, given in mapped.items():
            if _outside(rel):
                raise StepError(f"{rel!r} is not a path below the destination", path=self.to)
            source = self.ctx.path(given)
            info = self.fs.stat(source) if self.follow_symlinks else self.fs.lstat(source)
            if info is None:
                lost = self.follow_symlinks and self.fs.lstat(source) is not None
                raise StepError(
                    "dangling symbolic link" if lost else "no such file or directory", path=source
                )
            self.add_source(source, info, os.path.join(self.to, os.path.normpath(rel)))

    def add_source(self, source: str, info: FileInfo, dest: str | None = None) -> None:
        if dest is None:
            dest = self.destination(source)
        elif self.follow_symlinks:
            source = follow.resolve(self.fs, source)
        claimed = self.claimed.setdefault(dest, source)
        if claimed != source:
            raise StepError(f"{claimed} and {source} would both be copied here", path=dest)
        if info.is_dir and (dest + os.sep).startswith(source + os.sep) and dest != source:
            raise StepError(f"cannot copy a directory into itself ({dest})", path=source)
        parent = os.path.dirname(dest)
        self.ensure_dir(parent)
        dest_info = None if self.dirs[parent] else self.fs.lstat(dest)
        if info.is_dir:
            self.add_dir(source, dest, info, dest_info)
            if self.follow_symlinks:
                whole = self.add_followed_tree(source, dest, existing=dest_info is not None)
            else:
                whole = self.add_tree(source, dest, existing=dest_info is not None)
            if whole and dest_info is None and self.fs.is_real_tree(source):
                self.trees.append((dest, source))  # a new, exact copy of a real tree
            return
        planned = len(self.effects)
        self.add_entry(source, dest, info, dest_info)
        if len(self.effects) > planned and not self.dirs[parent]:
            self.job.write_dirs.add(parent)  # may hold a killed run's temp file

    def add_tree(self, source: str, dest: str, existing: bool) -> bool:
        """Plan the contents of the directory ``source``, walking it once (and
        ``dest``, if it exists, once); True if every entry is copied (none is
        skipped as a killed run's temp file)."""
        existing_at = _Existing(self.fs, dest) if existing else None
        if existing:
            self.job.strays.extend(_temp_files(self.fs, dest))
        src_prefix, dest_prefix = source + os.sep, dest + os.sep
        add_file = self.add_file
        skipped: set[str] = set()  # temp files a killed run left, and their contents
        for rel, info, st in self._entries(source):
            if (rel.endswith(TMP_SUFFIX) and is_temp_name(os.path.basename(rel))) or (
                skipped and os.path.dirname(rel) in skipped
            ):
                skipped.add(rel)
                continue
            dest_info = existing_at.get(rel) if existing_at else None
            if st is not None:  # the common case first
                path = src_prefix + rel
                # the source's FileInfo only while the effect is held (a spooled one drops it)
                known = None if self.effects.spilled else info_from_stat(st, path)
                mode = st.st_mode & 0o7777
                add_file(
                    path, dest_prefix + rel, st.st_size, mode, st.st_mtime_ns, dest_info, known
                )
            else:
                assert info is not None
                self.add_entry(src_prefix + rel, dest_prefix + rel, info, dest_info)
        return not skipped

    def _entries(self, source: str) -> Iterator[tuple[str, FileInfo | None, os.stat_result | None]]:
        """The entries below the directory ``source`` as the view shows them:
        (relative path, info, None), or for a regular file read straight from
        the disk (the view is the disk) (relative path, None, its lstat),
        without a FileInfo per file (the most of a million files' plan)."""
        if self.fs.virtual:
            return ((rel, info, None) for rel, info in self.fs.walk(source))
        return (
            (rel, None, st)
            if statmod.S_ISREG(st.st_mode)
            else (rel, disk_info(source, rel, st), None)
            for rel, st in walk_disk(norm(source))
        )

    def add_followed_tree(self, source: str, dest: str, existing: bool) -> bool:
        """``add_tree`` reading through symbolic links (``follow_symlinks``);
        True if the tree had none to follow (nor temp files to leave out): its
        copy is then the tree as it is."""
        existing_at = _Existing(self.fs, dest) if existing else None
        if existing:
            self.job.strays.extend(_temp_files(self.fs, dest))
        dest_prefix = dest + os.sep
        seen: list[str] = []
        for rel, info, real in follow.walk(self.fs, source, seen=seen):
            dest_info = existing_at.get(rel) if existing_at else None
            self.add_entry(real, dest_prefix + rel, info, dest_info)
        return not seen

    def add_entry(self, source: str, dest: str, info: FileInfo, dest_info: FileInfo | None) -> None:
        """Plan one entry: a file, a symlink, or a directory without its contents."""
        if info.is_dir:
            self.add_dir(source, dest, info, dest_info)
        elif info.is_symlink:
            self.add_symlink(dest, info, dest_info)
        elif info.is_file:
            self.add_file(source, dest, info.size, info.mode, info.mtime_ns, dest_info, info)
        else:
            raise StepError("cannot copy a special file (device, fifo or socket)", path=source)

    def add_dir(self, source: str, dest: str, info: FileInfo, dest_info: FileInfo | None) -> None:
        if dest in self.dirs:
            return  # a parent planned for an earlier source
        if dest_info is None:
            self._new_dir(dest, info)
        elif dest_info.is_dir:
            self.dirs[dest] = False
        else:
            raise StepError(f"cannot overwrite non-directory with directory {source}", path=dest)

    def add_symlink(self, dest: str, info: FileInfo, dest_info: FileInfo | None) -> None:
        assert info.target is not None
        if dest_info is not None and dest_info.is_dir:
            raise StepError(f"cannot overwrite directory with symlink to {info.target}", path=dest)
        self.symlinks.append(dest)
        if dest_info is None or dest_info.target != info.target:
            self.effects.append(create_symlink(dest, info.target))
            self.job.links.append((dest, info.target, info.mtime_ns))

    def add_file(
        self,
        source: str,
        dest: str,
        size: int,
        mode: int,
        mtime_ns: int,
        dest_info: FileInfo | None,
        info: FileInfo | None = None,
    ) -> None:
        """Plan one regular file of ``size``, ``mode`` and ``mtime_ns`` (its
        ``info``, when known, is kept with the effect for a dry run's view)."""
        self.files.append(dest)
        self.file_bytes += size
        if dest_info is not None:
            if dest_info.is_dir:
                raise StepError(
                    f"cannot overwrite directory with non-directory {source}", path=dest
                )
            if dest_info.is_file and dest_info.size == size:
                if self.compare == "checksum":
                    self.suspects.append((source, dest, len(self.job.files)))
                elif dest_info.mtime_ns == mtime_ns and dest_info.mode == mode:
                    if self.algorithm:
                        cache = self.ctx.digests  # inside an atomic group
                        known = cache and cache.get(dest, size, mtime_ns, self.algorithm)
                        if known:
                            self.job.known.append((dest, known))
                        else:
                            self.job.to_hash.append(dest)
                    return
        self.effects.append(create_file(dest, size, source=source, source_info=info))
        self.job.files.append((source, dest, size, mode, mtime_ns))
        self.job.bytes += size

    def compare_checksums(self) -> None:
        """Drop planned copies of same-sized files whose content already matches."""
        algorithm = self.algorithm or "sha256"

        def digests(suspect: tuple[str, str, int], buf: bytearray | None) -> tuple[str, str]:
            source, dest, _ = suspect
            return _digest_view(self.fs, source, algorithm), _digest_view(self.fs, dest, algorithm)

        results = run_parallel(self.suspects, digests, self.job.workers, self.ctx)
        drop = set()
        for (_, dest, index), (src_hex, dest_hex) in zip(self.suspects, results, strict=True):
            if src_hex == dest_hex:
                drop.add(index)
                if self.algorithm:
                    self.job.known.append((dest, dest_hex))
        if drop:
            old_files, old_effects = self.job.files, self.effects
            dropped = {f[1] for i, f in enumerate(old_files) if i in drop}
            self.job.files, self.job.bytes = Spool(), 0
            for i, f in enumerate(old_files):
                if i not in drop:
                    self.job.files.append(f)
                    self.job.bytes += f[2]
            self.effects = EffectSpool(
                e for e in old_effects if not (e.op == "create_file" and e.path in dropped)
            )
            old_files.close()
            old_effects.close()

    def delete_others(self, keep: list[str]) -> None:
        """Plan removing what is at ``to`` but not copied there (``delete``)."""
        if self.dirs.get(self.to):
            return  # created by this step: nothing else there
        wanted: Container[str] | None = None  # made when there is something to look at
        kept = {os.path.join(self.to, os.path.normpath(k)) for k in keep}
        gone: set[str] = set()
        removals = []
        prefix = self.to + os.sep
        for rel, info in self.fs.walk(self.to):
            path = prefix + rel
            if wanted is None:
                wanted = self._wanted()
            if path in wanted or path in kept or _inside_any(path, gone | kept):
                continue
            if info.is_file and is_temp_name(os.path.basename(rel)):
                self.job.strays.append(path)
                continue
            gone.add(path)
            removals.append(remove(path))
            self.job.removals.append(path)
        if removals:
            effects = EffectSpool(removals)
            effects.extend(self.effects)
            self.effects.close()
            self.effects = effects

    def _wanted(self) -> Container[str]:
        """Every path this step copies or keeps: a set, or for a million files
        a ``SpooledDict`` looked up a chunk at a time (a killed delivery's
        staging area is walked in nearly sorted order)."""
        if not (self.files.spilled or self.symlinks.spilled):
            return set(self.files) | set(self.symlinks) | set(self.dirs)
        paths = heapq.merge(self.files, self.symlinks, sorted(self.dirs))
        return SpooledDict((path, True) for path, _ in itertools.groupby(paths))

    def finish(self) -> Plan:
        outputs: dict[str, Any] = {
            "files": _listed(self.files),
            "symlinks": _listed(self.symlinks),
            "copied": len(self.job.files),
            "unchanged": len(self.files) - len(self.job.files),
            "bytes": self.file_bytes,
        }
        if self.algorithm and self.ctx.dry_run:
            outputs["checksums"] = self.planned_checksums(self.algorithm)
        effects = self.effects if self.effects.spilled else list(self.effects)
        return Plan(effects=effects, outputs=outputs, data=self.job, trees=self.trees)

    def planned_checksums(self, algorithm: str) -> Mapping[str, str | None]:
        """A dry run's `checksums`: the digests of unchanged files known without
        reading them (the group's record, this host's records), null for the
        rest. Past a spool's worth of files they stream from disk, and only the
        group's record is consulted (a lookup per file would cost more than the plan)."""
        known = self.job.known
        if self.files.spilled:
            return SpooledDict(_with_known(self.files, known))
        out: dict[str, str | None] = dict.fromkeys(self.files)
        out.update(known)
        records = resumes.records()
        for path in self.job.to_hash:
            out[path] = records.digest(path, algorithm)
        return out


def _with_known(
    paths: Iterable[str], known: Iterable[tuple[str, str]]
) -> Iterator[tuple[str, str | None]]:
    """(path, its known digest or None) for sorted ``paths``, read beside the
    sorted ``known`` pairs (two spools of a million, merged, not looked up)."""
    pairs = iter(known)
    pending = next(pairs, None)
    for path in paths:
        while pending is not None and pending[0] < path:
            pending = next(pairs, None)
        yield path, pending[1] if pending is not None and pending[0] == path else None


def _listed(names: SortedSpool[str]) -> Sequence[str]:
    """A sorted list of paths: a list while short (as it always was), the
    spool itself, read lazily, when there are too many to hold."""
    return names if names.spilled else list(names)


class _Existing:
    """What is already at a destination tree, looked up one directory at a time:
    the source walk visits each directory's entries together, so only that
    directory's listing is held (a dict of a million entries was 400 MB)."""

    def __init__(self, fs: WorldView, dest: str) -> None:
        self.fs = fs
        self.dest = dest
        self.dir: str | None = None
        self.infos: dict[str, FileInfo] = {}

    def get(self, rel: str) -> FileInfo | None:
        """What is at ``dest/rel``, as a walk of ``dest`` would report it (None
        below a symlink or a non-directory: a walk does not go there)."""
        directory, _, name = rel.rpartition("/")
        if directory != self.dir:
            self.dir = directory
            self.infos = self._list(directory)
        return self.infos.get(name)

    def _list(self, directory: str) -> dict[str, FileInfo]:
        path = self.dest
        for part in directory.split("/") if directory else ():
            path = path + "/" + part
            info = self.fs.lstat(path)
            if info is None or not info.is_dir:
                return {}
        if self.fs.virtual:
            found = ((n, self.fs.lstat(path + "/" + n)) for n in self.fs.listdir(path))
            return {n: i for n, i in found if i is not None}
        try:
            with os.scandir(path) as it:
                return {
                    e.name: info_from_stat(
                        e.stat(follow_symlinks=False),
                        e.path,
                        os.readlink(e.path) if e.is_symlink() else None,
                    )
                    for e in it
                }
        except (FileNotFoundError, NotADirectoryError):
            return {}


def _temp_files(fs: WorldView, dest: str) -> Iterator[str]:
    """A killed run's temp files anywhere below ``dest``, by name (no stat on disk)."""
    if fs.virtual:
        for rel, _ in fs.walk(dest):
            if rel.endswith(TMP_SUFFIX) and is_temp_name(os.path.basename(rel)):
                yield os.path.join(dest, rel)
        return
    for top, dirs, names in os.walk(dest):
        for name in (*dirs, *names):  # a symlink to a directory is listed in dirs
            if name.endswith(TMP_SUFFIX) and is_temp_name(name):
                yield os.path.join(top, name)


def _inside_any(path: str, directories: set[str]) -> bool:
    """True if ``path`` is strictly below one of ``directories``."""
    parent = os.path.dirname(path)
    while parent != path:
        if parent in directories:
            return True
        path, parent = parent, os.path.dirname(parent)
    return False


def _digest_view(fs: WorldView, path: str, algorithm: str) -> str:
    with fs.open(path) as f:
        return hashlib.file_digest(
            f, lambda: hashlib.new(algorithm, usedforsecurity=False)
        ).hexdigest()


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: CopyJob = plan.data
    if job.removals:  # delete: what is not the sources' (a killed run's million, maybe)
        task = ctx.progress.task("delete")
        try:
            for path in job.removals:
                remove_tree(path, lambda n: task.advance(files=n))
        finally:
            task.close()
    umask = current_umask()
    created: list[tuple[str, int, int]] = []
    try:
        for path, mode, mtime_ns in job.dirs:
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                continue
            if mode is not None and mtime_ns is not None:
                created.append((path, mode, mtime_ns))
                if mode != 0o777 & ~umask:
                    # Set now, so a killed run leaves the right modes; keep
                    # it writable until the files are in.
                    os.chmod(path, mode | statmod.S_IRWXU)
        outputs = _copy_files(plan, ctx, umask)
    except BaseException:
        with contextlib.suppress(OSError):
            _finish_dirs(created)
        raise
    _finish_dirs(created)
    return Result(effects=plan.effects, outputs=outputs)


def _copy_files(plan: Plan, ctx: StepContext, umask: int) -> dict[str, Any]:
    job: CopyJob = plan.data
    for directory in job.write_dirs:
        remove_stray_temps(directory)
    for path in job.strays:
        with contextlib.suppress(OSError):  # TempBusy: a live writer's after all
            remove_leftover(path)
    for dest, target, mtime_ns in job.links:
        copy_symlink(target, dest, mtime_ns)
    task = ctx.progress.task("copy", total_bytes=job.bytes, total_files=len(job.files))
    lock = threading.Lock()
    #: (destination, hex digest) of every file, sorted as read; spooled when many.
    digests: SortedSpool[tuple[str, str]] = SortedSpool(job.known)

    records = resumes.records() if job.algorithm else None
    recording = records if records is not None and records.enabled else None
    cache = ctx.digests if job.algorithm else None  # inside an atomic group
    algorithm = job.algorithm
    #: Files and bytes copied but not yet reported: progress is told every
    #: PROGRESS_FILES files (a report per file cost more than a small copy).
    unreported = [0, 0]

    def copied(n: int) -> None:
        task.advance(bytes=n)

    def copy_one(item: tuple[str, str, int, int, int], buf: bytearray | None) -> None:
        source, dest, size, mode, mtime_ns = item
        record = None
        if cache is not None and algorithm:

            def record(digest: str) -> None:
                cache.add(dest, size, mtime_ns, algorithm, digest)

        follow = copied if size >= MMAP_MIN else None  # a 20 GB file shows moving bytes
        digest, st = copy_file_placed(
            source, dest, mode, mtime_ns, umask, algorithm, buf, size, record, follow
        )
        if recording is not None and digest and algorithm and not (cache and cache.covers(dest)):
            # a re-run need not read it again (a staged file's digest is in the
            # group's record, and recorded here under its final path once committed)
            recording.record(dest, algorithm, digest, st=st)
        with lock:
            if digest is not None:
                digests.append((dest, digest))
            unreported[0] += 1
            unreported[1] += 0 if follow else size
            if unreported[0] < PROGRESS_FILES and size < PROGRESS_BYTES:
                return
            files, bytes_ = unreported
            unreported[0] = unreported[1] = 0
        task.advance(bytes=bytes_, files=files)

    try:
        run_parallel(
            _largest_first(job.files),
            copy_one,
            job.workers,
            ctx,
            buffered=job.algorithm is not None,
        )
    finally:
        if unreported[0]:
            task.advance(bytes=unreported[1], files=unreported[0])
        task.close()
        if records:
            records.flush()
    outputs = dict(plan.outputs)
    if job.algorithm:
        algorithm = job.algorithm
        assert records is not None
        # files already in place: hashed for the checksums output (bytes counted as read),
        # or their recorded digest reused when the file is unchanged since
        hashing = ctx.progress.task("hash", total_files=len(job.to_hash))

        def hash_one(path: str, buf: bytearray | None) -> None:
            digest = _recorded_or_hashed(records, path, algorithm, buf)
            with lock:
                hashing.advance(bytes=os.path.getsize(path), files=1)
                digests.append((path, digest))

        try:
            run_parallel(job.to_hash, hash_one, job.workers, ctx, buffered=True)
        finally:
            hashing.close()
        records.flush()
        # A million checksums stay on disk, looked up a chunk at a time.
        outputs["checksums"] = SpooledDict(digests) if digests.spilled else dict(digests)
        digests.close()
    return outputs


def _recorded_or_hashed(
    records: resumes.Records, path: str, algorithm: str, buf: bytearray | None
) -> str:
    """The digest of a file already in place: recorded when it was written (or
    last hashed) if it has not changed since, else read and recorded."""
    st = os.stat(path)
    known = records.digest(path, algorithm, st)
    if known is None:
        known = hash_file(path, algorithm, buf)
        records.record(path, algorithm, known, before=st)
    return known


def _largest_first(files: Spool[tuple[str, str, int, int, int]]) -> Sequence[Any]:
    """Files in the order to copy them: largest first, so one big file does not
    start last and run alone. A spooled list stays spooled: its big files
    (MMAP_MIN and up, whose order matters) first, then the rest as planned."""
    if not files.spilled:
        return sorted(files, key=lambda f: f[2], reverse=True)
    ordered: Spool[tuple[str, str, int, int, int]] = Spool()
    ordered.extend(sorted((f for f in files if f[2] >= MMAP_MIN), key=lambda f: f[2], reverse=True))
    ordered.extend(f for f in files if f[2] < MMAP_MIN)
    return ordered


def _finish_dirs(created: list[tuple[str, int, int]]) -> None:
    """Final modes and mtimes of created directories: last, since writing into
    a directory changes its mtime (and a read-only one must stay writable till then)."""
    for path, mode, mtime_ns in reversed(created):
        if mode & statmod.S_IRWXU != statmod.S_IRWXU:
            os.chmod(path, mode)
        os.utime(path, ns=(mtime_ns, mtime_ns))


# ---- running many files on a few threads ------------------------------------

T = TypeVar("T")
R = TypeVar("R")

#: From this many items on, a thread takes TAKE_MANY at a time.
TAKE_MANY_FROM = 4096
TAKE_MANY = 16


def run_parallel(
    items: Sequence[T],
    fn: Callable[[T, bytearray | None], R],
    workers: int,
    ctx: StepContext,
    buffered: bool = False,
) -> list[R]:
    """``fn(item, buf)`` on every item, on up to ``workers`` threads; results in
    item order.

    With ``buffered``, ``buf`` is a read buffer owned by the thread (so none is
    allocated per file); otherwise None. The first error stops the other
    threads after their current item and is raised.
    """
    results: list[Any] = [None] * len(items)

    def call(i: int, item: T, buf: bytearray | None) -> None:
        results[i] = fn(item, buf)

    count = min(workers, len(items))
    if count <= 1:
        buf = bytearray(BUFFER_SIZE) if buffered and items else None
        for i, item in enumerate(items):
            ctx.check_deadline()
            call(i, item, buf)
        return results
    indexes = enumerate(items)  # read once, in order, under the lock (items may be spooled)
    # Many items are taken a few at a time: one lock round per item cost as
    # much as copying a small file. Few (big files, largest first) go one by one.
    take = 1 if len(items) < TAKE_MANY_FROM else TAKE_MANY
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        buf = bytearray(BUFFER_SIZE) if buffered else None
        while not stop.is_set():
            with lock:
                pairs = list(itertools.islice(indexes, take))
            if not pairs:
                return
            for i, item in pairs:
                if stop.is_set():
                    return
                try:
                    ctx.check_deadline()
                    call(i, item, buf)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(e)
                    stop.set()
                    return

    threads = [threading.Thread(target=worker, name=f"wsrun-copy-{n}") for n in range(count)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return results
