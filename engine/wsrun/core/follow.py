"""Trees read through their symbolic links: what a copy or archive of content
(never links) holds, e.g. a delivery whose raw data links into a cache.

Shared by ``copy`` and ``tar`` with ``follow_symlinks: true`` and by the NRAO
``find-products`` step, so all three see the same files in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from wsrun.core.fileio import TMP_SUFFIX, is_temp_name
from wsrun.core.fs import FileInfo, WorldView, norm
from wsrun.core.step import StepError

#: Symbolic links to directories followed inside one another at most.
MAX_LINK_DEPTH = 20


def resolve(fs: WorldView, path: str) -> str:
    """``path`` with its last component's symbolic links followed."""
    for _ in range(40):
        info = fs.lstat(path)
        if info is None or not info.is_symlink:
            return path
        assert info.target is not None
        path = norm(os.path.join(os.path.dirname(path), info.target))
    raise OSError(40, "Too many levels of symbolic links", path)


def walk(
    fs: WorldView, root: str, depth: int = 0, seen: list[str] | None = None
) -> Iterator[tuple[str, FileInfo, str]]:
    """Everything below the directory ``root`` as (relative path, info, real
    path), in ``fs.walk`` order, with symbolic links followed: a link to a file
    is that file, a link to a directory is that directory and its contents. A
    dangling link, a special file (device, fifo, socket) or links nested too
    deep fail; a killed run's temporary files are left out. Yielded as walked:
    a tree of a million files is never held. ``seen`` is given every link
    followed and every temporary file left out (the walk then differs from
    the tree as it is)."""
    prefix = root + os.sep
    for rel, info in fs.walk(root):
        path = prefix + rel
        if info.is_symlink:
            if seen is not None:
                seen.append(path)
            target = fs.stat(path)
            if target is None:
                raise StepError("dangling symbolic link", path=path)
            if target.is_dir:
                if depth >= MAX_LINK_DEPTH:
                    raise StepError("too many nested symbolic links to directories", path=path)
                yield rel, target, resolve(fs, path)
                for r, i, p in walk(fs, path, depth + 1, seen):
                    yield rel + os.sep + r, i, p
                continue
            info, path = target, resolve(fs, path)
        if not (info.is_file or info.is_dir):
            raise StepError("cannot copy a special file (device, fifo or socket)", path=path)
        if info.is_file and rel.endswith(TMP_SUFFIX) and is_temp_name(os.path.basename(rel)):
            if seen is not None:
                seen.append(path)
            continue  # a copy a killed wsrun run left
        yield rel, info, path
