"""The ``move`` step type: move a file or directory tree to a new path."""

from __future__ import annotations

import errno
import os
import stat as statmod
from dataclasses import dataclass, field
from typing import Any

from wsrun.core import resumes
from wsrun.core.effects import Effect, create_dir, move, remove
from wsrun.core.filecopy import MMAP_MIN, copy_file, copy_symlink, current_umask, hash_file
from wsrun.core.fileio import temp_path
from wsrun.core.fs import FileInfo, WorldView
from wsrun.core.removal import remove_tree
from wsrun.core.step import Batched, Plan, ProgressTask, Result, StepContext, StepError
from wsrun.steps.copy import run_parallel

NAME = "move"
DOC = """Move a file or directory tree to a new path (like ``mv SRC DST``).

Use it to publish a finished product under its final name, or to take a
staged tree out of a QA area. Within one filesystem it is a single rename.
Across filesystems the tree is copied beside the target under a temporary
name, verified (sizes and SHA-256), renamed into place, and only then is the
source removed, so no reader ever sees half a tree and nothing is lost if the
run is killed; a re-run after a kill continues the copy it left, copying only
the files that are not there yet (or changed since). Re-running after the move
(source gone, target there) does nothing. Progress counts the files (and
bytes) moved; across filesystems, the bytes of a big file as they are copied,
then as they are checked.
"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source", "to"],
    "properties": {
        "source": {
            "description": "The file, symlink or directory to move.",
            "type": "string",
            "minLength": 1,
            "examples": ["staging/run42"],
        },
        "to": {
            "description": "The exact new path (not a directory to move into). Missing parent "
            "directories are created.",
            "type": "string",
            "minLength": 1,
            "examples": ["archive/2024/run42"],
        },
        "overwrite": {
            "description": "Replace what is at `to` (a file with a file, a directory with a "
            "directory). Without it, an existing `to` is an error.",
            "type": "boolean",
            "default": False,
        },
    },
}

EXAMPLES = [
    """- id: publish
  uses: move
  with:
    source: staging/run42
    to: archive/2024/run42
""",
]

OUTPUTS = {
    "path": "the new path (absolute)",
    "bytes": "total size of the regular files moved (0 when nothing was left to move)",
    "moved": "true if this run moved something, false if it was already done",
}


#: Added to the target's name for the temp name of a directory being replaced.
_ASIDE = ".old"


@dataclass
class MoveJob:
    source: str
    to: str
    #: Regular files and their bytes at or below ``source``: the progress totals.
    files: int = 0
    bytes: int = 0
    #: Missing parent directories of ``to``, outermost first.
    parents: list[str] = field(default_factory=list)


def destinations(params: dict[str, Any], ctx: StepContext) -> list[str]:
    """The paths this step writes, locked (wsrun.core.locks) before it plans."""
    return [ctx.path(params["source"]), ctx.path(params["to"])]


def plan(params: dict[str, Any], ctx: StepContext) -> Plan:
    source = ctx.path(params["source"])
    to = ctx.path(params["to"])
    src = ctx.fs.lstat(source)
    dst = ctx.fs.lstat(to)
    outputs: dict[str, Any] = {"path": to, "bytes": 0, "moved": False}
    if src is None:
        if dst is None:
            raise StepError("no such file or directory", path=source)
        return Plan(outputs=outputs)
    if source == to:
        return Plan(outputs=outputs)
    if src.is_dir and to.startswith(source + os.sep):
        raise StepError(f"cannot move a directory into itself ({to})", path=source)
    job = MoveJob(source, to)
    effects: list[Effect] = []
    if dst is not None:
        if not params.get("overwrite", False):
            raise StepError("already exists; set overwrite: true to replace it", path=to)
        if dst.is_dir != src.is_dir:
            kinds = ("directory", "non-directory") if dst.is_dir else ("non-directory", "directory")
            raise StepError(f"cannot overwrite {kinds[0]} with {kinds[1]}", path=to)
        effects.append(remove(to, bytes=tree_size(ctx.fs, to, dst)[1]))
    else:
        job.parents = missing_parents(ctx.fs, to)
        effects.extend(create_dir(p) for p in job.parents)
    job.files, job.bytes = tree_size(ctx.fs, source, src)
    effects.append(move(source, to, bytes=job.bytes))
    outputs.update(bytes=job.bytes, moved=True)
    return Plan(effects=effects, outputs=outputs, data=job)


def tree_size(fs: WorldView, path: str, info: FileInfo) -> tuple[int, int]:
    """How many regular files are at or below ``path`` and their total size
    (symlinks not followed)."""
    if not info.is_dir:
        return (1, info.size) if info.is_file else (0, 0)
    files = size = 0
    for _, i in fs.walk(path):
        if i.is_file:
            files += 1
            size += i.size
    return files, size


def missing_parents(fs: WorldView, path: str) -> list[str]:
    """The parent directories of ``path`` that do not exist yet, outermost first."""
    missing = []
    parent = os.path.dirname(path)
    while (info := fs.stat(parent)) is None:
        missing.append(parent)
        parent = os.path.dirname(parent)
    if not info.is_dir:
        raise StepError("is not a directory", path=parent)
    return missing[::-1]


def apply(plan: Plan, ctx: StepContext) -> Result:
    job: MoveJob | None = plan.data
    if job is None:
        return Result(outputs=plan.outputs)
    for parent in job.parents:
        os.mkdir(parent)
    task = ctx.progress.task("move", total_bytes=job.bytes, total_files=job.files)
    try:
        try:
            put_in_place(job.source, job.to)
            task.advance(bytes=job.bytes, files=job.files)  # one rename moved them all
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            move_across(job.source, job.to, ctx, task)
    finally:
        task.close()
    return Result(effects=plan.effects, outputs=plan.outputs)


def put_in_place(new: str, to: str) -> None:
    """Rename ``new`` onto ``to``. A directory at ``to`` is renamed aside first
    and removed after (rename(2) only replaces an empty one), so readers see the
    old tree or the new one, and a failure puts the old one back."""
    if not os.path.isdir(to) or os.path.islink(to):
        os.rename(new, to)
        return
    aside = temp_path(to + _ASIDE)
    remove_tree(aside)  # a killed run's leftover
    os.rename(to, aside)
    try:
        os.rename(new, to)
    except BaseException:
        os.rename(aside, to)
        raise
    remove_tree(aside)


def move_across(source: str, to: str, ctx: StepContext, task: ProgressTask) -> None:
    """Copy to a temp name beside ``to``, verify, rename into place, remove ``source``.

    A tree a killed run left at the temp name is continued, not started over:
    files already there with the source's size, mtime and mode and a digest
    recorded when they were written (wsrun.core.resumes) are kept; the rest is
    copied, and what the source no longer has is removed. Every file is then
    verified as usual. ``task`` counts the files and bytes copied (a kept
    file at once, a big file's bytes as they go)."""
    tmp = temp_path(to)
    if not (os.path.isdir(source) and not os.path.islink(source) and _plain_dir(tmp)):
        remove_tree(tmp)  # a killed run's leftover that cannot be continued
    try:
        copy_verified(source, tmp, ctx, task)
        put_in_place(tmp, to)
    except BaseException:
        remove_tree(tmp)
        raise
    remove_tree(source)


def copy_verified(source: str, dest: str, ctx: StepContext, task: ProgressTask) -> None:
    """Copy the tree ``source`` to ``dest`` (modes, mtimes, symlinks kept), then
    check every file's size and SHA-256 against what was read from the source.
    ``task`` counts the copy; a task of its own, ``verify``, the check."""
    st = os.lstat(source)
    files: list[tuple[str, str, int, int, int]] = []
    dirs: list[tuple[str, os.stat_result]] = []
    kept: dict[str, str] = {}  # a killed run's copies still good: path -> recorded digest
    records = resumes.records()
    if statmod.S_ISLNK(st.st_mode):
        copy_symlink(os.readlink(source), dest, st.st_mtime_ns)
    elif statmod.S_ISDIR(st.st_mode):
        existing = _take_over(dest)
        dirs.append((dest, st))
        for root, dirnames, filenames in os.walk(source):
            out = os.path.normpath(os.path.join(dest, os.path.relpath(root, source)))
            for name in dirnames + filenames:
                path, target = os.path.join(root, name), os.path.join(out, name)
                info = os.lstat(path)
                there = existing.pop(target, None)
                if statmod.S_ISLNK(info.st_mode):
                    if there is not None and statmod.S_ISDIR(there.st_mode):
                        remove_tree(target)
                    copy_symlink(os.readlink(path), target, info.st_mtime_ns)
                elif statmod.S_ISDIR(info.st_mode):
                    if there is None or not statmod.S_ISDIR(there.st_mode):
                        remove_tree(target)
                        os.mkdir(target)
                    dirs.append((target, info))
                elif statmod.S_ISREG(info.st_mode):
                    if there is not None and statmod.S_ISDIR(there.st_mode):
                        remove_tree(target)
                    elif there is not None and _same(there, info):
                        known = records.digest(target, "sha256", there)
                        if known is not None:
                            kept[target] = known
                            continue
                    files.append((path, target, info.st_size, info.st_mode, info.st_mtime_ns))
                else:
                    raise StepError("cannot copy a special file across filesystems", path=path)
        for gone in sorted(existing, reverse=True):  # no longer in the source
            remove_tree(gone)
    elif statmod.S_ISREG(st.st_mode):
        files.append((source, dest, st.st_size, st.st_mode, st.st_mtime_ns))
    else:
        raise StepError("cannot copy a special file across filesystems", path=source)
    umask = current_umask()
    sizes = {f[1]: f[2] for f in files}
    sizes.update((target, os.lstat(target).st_size) for target in kept)
    copying = Batched(task)
    copying.advance(bytes=sum(sizes[target] for target in kept), files=len(kept))

    def copy_one(f: tuple[str, str, int, int, int], buf: bytearray | None) -> str | None:
        follow = copying.advance if f[2] >= MMAP_MIN else None  # a big file's bytes as they go
        digest = copy_file(
            f[0], f[1], f[3] & 0o7777, f[4], umask, "sha256", buf, f[2], None, follow
        )
        if digest is not None:
            records.record(f[1], "sha256", digest)  # a killed move keeps it
        copying.advance(bytes=0 if follow else f[2], files=1)
        return digest

    workers = os.cpu_count() or 1
    try:
        copied = run_parallel(files, copy_one, workers, ctx, buffered=True)
    finally:
        records.flush()
        copying.close()
    digests = {f[1]: d for f, d in zip(files, copied, strict=True)}
    digests.update(kept)
    every = files + [(path, target, 0, 0, 0) for target, path in _sources_of(kept, source, dest)]
    checking = Batched(
        ctx.progress.task("verify", total_bytes=sum(sizes.values()), total_files=len(every))
    )

    def check_one(f: tuple[str, str, int, int, int], buf: bytearray | None) -> bool:
        size = sizes[f[1]]
        follow = checking.advance if size >= MMAP_MIN else None
        ok = (
            os.lstat(f[1]).st_size == size
            and hash_file(f[1], "sha256", buf, follow) == digests[f[1]]
        )
        checking.advance(bytes=0 if follow else size, files=1)
        return ok

    try:
        checks = run_parallel(every, check_one, workers, ctx, buffered=True)
    finally:
        checking.close()
    for f, ok in zip(every, checks, strict=True):
        if not ok:
            raise StepError(f"copy does not match its source {f[0]}", path=f[1])
    for path, info in reversed(dirs):
        os.chmod(path, info.st_mode & 0o7777)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _plain_dir(path: str) -> bool:
    """Whether ``path`` is a directory (not a link to one)."""
    try:
        return statmod.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _take_over(dest: str) -> dict[str, os.stat_result]:
    """Make ``dest`` a writable directory and return what a killed run left
    below it (every path -> its lstat); its directories are made writable,
    since a killed run may have set their final modes already."""
    if not _plain_dir(dest):
        remove_tree(dest)
        os.mkdir(dest)
        return {}
    found: dict[str, os.stat_result] = {}
    os.chmod(dest, os.lstat(dest).st_mode & 0o7777 | statmod.S_IRWXU)
    for root, dirnames, filenames in os.walk(dest):
        for name in dirnames:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if statmod.S_ISDIR(st.st_mode):
                os.chmod(path, st.st_mode & 0o7777 | statmod.S_IRWXU)
            found[path] = st
        for name in filenames:
            path = os.path.join(root, name)
            found[path] = os.lstat(path)
    return found


def _same(there: os.stat_result, info: os.stat_result) -> bool:
    """A kept copy matches its source's size, mtime and mode."""
    return (there.st_size, there.st_mtime_ns, there.st_mode) == (
        info.st_size,
        info.st_mtime_ns,
        info.st_mode,
    )


def _sources_of(kept: dict[str, str], source: str, dest: str) -> list[tuple[str, str]]:
    """(destination, source) of each kept copy, for the verification's messages."""
    return [(t, os.path.join(source, os.path.relpath(t, dest))) for t in sorted(kept)]
