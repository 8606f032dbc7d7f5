"""Safe extraction: which members of an archive may be written, checked before
anything is. A member that would land outside the target directory, directly, through
a symlink (from the archive or already on disk) or through a link, is refused.
"""

from __future__ import annotations

import os
import posixpath
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from wsrun.core.fs import FileInfo
from wsrun.core.step import StepError


@dataclass(slots=True)
class Entry:
    """One archive member to extract, its name relative to the target directory."""

    name: str
    kind: str  # "file", "dir", "symlink" or "hardlink"
    size: int
    mode: int
    mtime_ns: int
    linkname: str = ""  # symlink target as stored, or hardlink target (relative name)
    index: int = 0  # position in the archive
    offset: int = -1  # where the data starts in an uncompressed tar, -1 if not directly copyable


def relative_name(name: str, strip: int = 0) -> str | None:
    """The path a member name stands for below the target, with ``strip``
    leading components removed; None when nothing is left (e.g. ``./``).
    Raises StepError for absolute names and ``..`` components."""
    if name.startswith("/"):
        raise StepError("absolute member name; refusing to extract the archive", path=name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StepError("member name contains '..'; refusing to extract the archive", path=name)
    parts = parts[strip:]
    return "/".join(parts) if parts else None


class _Tree:
    """The target directory as extraction leaves it: archive members over the disk."""

    def __init__(self, to: str, lstat: Callable[[str], FileInfo | None]) -> None:
        self.to = to
        self.lstat = lstat
        self.kinds: dict[str, str] = {}
        self.links: dict[str, str] = {}
        self._disk: dict[str, FileInfo | None] = {}

    def disk(self, rel: str) -> FileInfo | None:
        if rel not in self._disk:
            self._disk[rel] = self.lstat(os.path.join(self.to, rel))
        return self._disk[rel]

    def kind(self, rel: str) -> str | None:
        if rel in self.kinds:
            return self.kinds[rel]
        info = self.disk(rel)
        return None if info is None else info.kind

    def link(self, rel: str) -> str | None:
        if rel in self.kinds:
            return self.links.get(rel)
        info = self.disk(rel)
        return info.target if info is not None and info.is_symlink else None

    def inside(self, rel_dir: str, target: str) -> bool:
        """Whether symlink ``target`` seen from ``rel_dir`` resolves inside the
        target directory, following the archive's links and those on disk."""
        if target.startswith("/"):
            start = _below(self.to, target)
            if start is None:
                return False
            todo = deque(start)
        else:
            todo = deque(rel_dir.split("/") + target.split("/"))
        stack: list[str] = []
        hops = 0
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return False
                stack.pop()
                continue
            stack.append(part)
            link = self.link("/".join(stack))
            if link is None:
                continue
            hops += 1
            if hops > 40:
                return False
            stack.pop()
            if link.startswith("/"):
                rebased = _below(self.to, link)
                if rebased is None:
                    return False
                stack = []
                todo.extendleft(reversed(rebased))
            else:
                todo.extendleft(reversed(link.split("/")))
        return True


def _below(root: str, path: str) -> list[str] | None:
    """The components of absolute ``path`` below ``root``, None if it is outside."""
    path = posixpath.normpath(path)
    if path == root:
        return []
    if not path.startswith(root.rstrip("/") + "/"):
        return None
    return path[len(root.rstrip("/")) + 1 :].split("/")


def check_entries(entries: list[Entry], to: str, lstat: Callable[[str], FileInfo | None]) -> None:
    """Refuse (StepError naming the member) an archive that would write
    outside ``to``: through a symlink (from the archive or already on disk),
    via a symlink or hard link pointing outside, or a hard link to anything but
    a file extracted before it. Names were checked by ``relative_name``."""
    tree = _Tree(to, lstat)
    files: set[str] = set()
    for e in entries:
        parts = e.name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            kind = tree.kind(parent)
            if kind == "symlink":
                raise StepError(
                    f"would be written through the symlink {parent}; refusing to extract the archive",
                    path=e.name,
                )
            if kind not in (None, "dir"):
                raise StepError(f"{parent} is not a directory", path=e.name)
        seen = tree.kinds.get(e.name)
        if seen is not None and not (seen == e.kind == "dir"):
            raise StepError("appears twice in the archive; refusing to extract it", path=e.name)
        if e.kind == "hardlink" and e.linkname not in files:
            raise StepError(
                f"hard link to {e.linkname!r}, which is not a file earlier in the archive; refusing to extract the archive",
                path=e.name,
            )
        tree.kinds[e.name] = e.kind
        if e.kind == "symlink":
            tree.links[e.name] = e.linkname
        elif e.kind in ("file", "hardlink"):
            files.add(e.name)
    for e in entries:
        if e.kind == "symlink" and not tree.inside(posixpath.dirname(e.name), e.linkname):
            raise StepError(
                f"symlink to {e.linkname!r} points outside the target directory; refusing to extract the archive",
                path=e.name,
            )
