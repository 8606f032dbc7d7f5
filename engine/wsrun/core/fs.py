"""The filesystem as steps see it while planning.

In a real run a step plans against the disk as it is. In a dry run nothing is
written, so each step plans against a ``WorldView`` that layers the effects of
the steps planned before it over the real disk: step 3 sees the files step 2
would have created, and a dry run prints what the real run will do.
"""

from __future__ import annotations

import io
import operator
import os
import stat as statmod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from wsrun.core.effects import Effect


@dataclass(slots=True, frozen=True)
class FileInfo:
    """What a step may know about a path without reading it."""

    kind: str  # "file", "dir", "symlink" or "other"
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    target: str | None = None  # for symlinks
    #: Where the content can be read: a real file (dry run: the source of a
    #: planned copy), or None when it is only known after the real run.
    content_from: str | None = None
    content: bytes | None = None
    #: False for a planned file whose size is only known after the real run
    #: (a compressed archive); ``size`` is then 0.
    size_known: bool = True

    @property
    def is_file(self) -> bool:
        return self.kind == "file"

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_symlink(self) -> bool:
        return self.kind == "symlink"


#: FileInfo.kind by the file type bits of st_mode.
_KINDS = {statmod.S_IFREG: "file", statmod.S_IFDIR: "dir", statmod.S_IFLNK: "symlink"}


def info_from_stat(st: os.stat_result, path: str, target: str | None = None) -> FileInfo:
    m = st.st_mode
    kind = _KINDS.get(statmod.S_IFMT(m), "other")
    return FileInfo(
        kind,
        st.st_size,
        st.st_mtime_ns,
        m & 0o7777,
        target,
        path if kind == "file" else None,
    )


def real_lstat(path: str) -> FileInfo | None:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    target = os.readlink(path) if statmod.S_ISLNK(st.st_mode) else None
    return info_from_stat(st, path, target)


def norm(path: str | os.PathLike[str]) -> str:
    """Absolute and normalised; already-clean absolute paths (what steps pass)
    are returned as they are, without the cost of abspath."""
    if (
        isinstance(path, str)
        and path[:1] == "/"
        and "//" not in path
        and "/." not in path
        and path[-1:] != "/"
    ):
        return path
    return os.path.abspath(os.fspath(path))


#: Effects on the filesystem; the view keeps any other effect in ``planned_other``.
FILE_OPS = frozenset({"create_file", "create_dir", "create_symlink", "remove", "move"})


class ContentUnknown(Exception):
    """The content of a planned file is only known once the real run writes it."""


class WorldView:
    """The disk plus the planned effects of earlier steps (none in a real run).

    Paths are absolute and normalised (no symlink resolution). Lookups go to the
    overlay first: a path planned for creation, a path under a removed or
    re-created directory, or a path under a moved directory; then to the disk.
    """

    def __init__(self) -> None:
        self._nodes: dict[str, FileInfo] = {}
        self._children: dict[str, set[str]] = {}
        self._removed: set[str] = set()  # hides the real path and all below it
        self._aliases: dict[str, str] = {}  # moved real directory: new path -> real path
        self._has_links = False  # any planned symlink (lookups must follow it)
        self._dir_cache: dict[str, str | None] = {}
        #: Planned effects on things other than files (``set_state``, ``record``,
        #: ``publish``, ``upload``), in plan order. Steps that read a store in a
        #: dry run replay these over what the store holds, so a step sees the
        #: state an earlier planned step would have set (wsrun.stores.state.planning).
        self.planned_other: list[Effect] = []

    @property
    def virtual(self) -> bool:
        """True once any effect has been layered over the disk."""
        return bool(self._nodes or self._removed or self._aliases)

    # ---- reading -----------------------------------------------------------

    def lstat(self, path: str) -> FileInfo | None:
        path = norm(path)
        if not self.virtual:
            return real_lstat(path)
        node = self._nodes.get(path)
        if node is not None:
            return node
        through = self._through_planned_link(path)
        if through is not None:
            return self.lstat(through)
        real = self._real_path(path)
        return None if real is None else real_lstat(real)

    def _through_planned_link(self, path: str) -> str | None:
        """Where ``path`` leads when one of its parents is a planned symlink."""
        if not self._has_links:
            return None
        a = os.path.dirname(path)
        while a != os.path.dirname(a):
            node = self._nodes.get(a)
            if node is not None and node.is_symlink:
                assert node.target is not None
                return norm(os.path.join(os.path.dirname(a), node.target)) + path[len(a) :]
            a = os.path.dirname(a)
        return None

    def _real_path(self, path: str) -> str | None:
        """The real path that shows at ``path``, or None if the overlay hides it."""
        alias = self._aliases.get(path)
        if alias is not None:
            return alias
        if path in self._removed:
            return None
        cut = path.rfind("/")
        if cut <= 0:
            return path
        parent_real = self._real_dir(path[:cut])
        return None if parent_real is None else parent_real + path[cut:]

    def _real_dir(self, directory: str) -> str | None:
        """What ``_real_path`` gives for a directory's children's parent,
        remembered: a dry run of 100,000 files asks about the same few
        directories again and again. A planned (virtual) directory has no real
        children, even when it replaces a removed real one."""
        try:
            return self._dir_cache[directory]
        except KeyError:
            pass
        real = None if directory in self._nodes else self._real_path(directory)
        self._dir_cache[directory] = real
        return real

    def stat(self, path: str) -> FileInfo | None:
        """Like ``lstat`` but follows symlinks (virtual ones too)."""
        path = norm(path)
        for _ in range(40):
            info = self.lstat(path)
            if info is None or not info.is_symlink:
                return info
            assert info.target is not None
            path = norm(os.path.join(os.path.dirname(path), info.target))
        raise OSError(40, "Too many levels of symbolic links", path)

    def _follow(self, path: str) -> str:
        """``path`` with planned symlinks (in it or at its end) resolved."""
        if not self._has_links:
            return path
        for _ in range(40):
            through = self._through_planned_link(path)
            if through is not None:
                path = through
                continue
            node = self._nodes.get(path)
            if node is None or not node.is_symlink:
                return path
            assert node.target is not None
            path = norm(os.path.join(os.path.dirname(path), node.target))
        raise OSError(40, "Too many levels of symbolic links", path)

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def is_dir(self, path: str) -> bool:
        info = self.stat(path)
        return info is not None and info.is_dir

    def is_file(self, path: str) -> bool:
        info = self.stat(path)
        return info is not None and info.is_file

    def listdir(self, path: str) -> list[str]:
        """Sorted names in the directory ``path`` (which must be a directory)."""
        path = self._follow(norm(path))
        names: set[str] = set()
        real = None if path in self._nodes else self._real_path(path)
        if real is not None:
            try:
                names.update(os.listdir(real))
            except (FileNotFoundError, NotADirectoryError):
                pass
        if self.virtual:
            names = {n for n in names if self.lstat(os.path.join(path, n)) is not None}
            names.update(self._children.get(path, ()))
        return sorted(names)

    def walk(self, root: str) -> Iterator[tuple[str, FileInfo]]:
        """Every entry below ``root`` as (path relative to root, info), sorted,
        parents before children; symlinks are reported, not followed."""
        root = norm(root)
        if not self.virtual:
            yield from _walk_real(root)
            return
        stack = [""]
        while stack:
            rel = stack.pop()
            base = os.path.join(root, rel) if rel else root
            entries = []
            for name in self.listdir(base):
                child_rel = os.path.join(rel, name) if rel else name
                info = self.lstat(os.path.join(root, child_rel))
                if info is not None:
                    entries.append((child_rel, info))
            for child_rel, info in entries:
                yield child_rel, info
            stack.extend(r for r, i in reversed(entries) if i.is_dir)

    def open(self, path: str) -> BinaryIO:
        """Open a file's content for reading, planned or real."""
        info = self.stat(path)
        if info is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        if info.content is not None:
            return io.BytesIO(info.content)
        if info.content_from is None:
            raise ContentUnknown(f"{path}: content is only known after a real run")
        return open(info.content_from, "rb")

    # ---- layering planned effects -------------------------------------------

    def record(self, effect: Effect) -> None:
        """Layer one planned effect over the view."""
        op = effect.op
        if op not in FILE_OPS:
            self.planned_other.append(effect)
            return
        path = norm(effect.path)
        if op == "create_file":
            src = effect.source_info
            if effect.source and (
                src is None or src.is_symlink or norm(effect.source) in self._nodes
            ):
                src = self.stat(effect.source)
            content_from = src.content_from if src is not None else None
            mtime = src.mtime_ns if src is not None else 0
            mode = effect.mode if effect.mode is not None else (src.mode if src else 0o644)
            content = (
                effect.content if effect.content is not None else (src.content if src else None)
            )
            self._put(
                path,
                FileInfo(
                    "file",
                    effect.bytes or 0,
                    mtime,
                    mode,
                    content_from=content_from,
                    content=content,
                    size_known=effect.bytes is not None,
                ),
            )
        elif op == "create_dir":
            existing = self.lstat(path)
            if existing is None or not existing.is_dir:
                self._put(path, FileInfo("dir", mode=effect.mode or 0o755))
        elif op == "create_symlink":
            self._has_links = True
            self._put(path, FileInfo("symlink", target=effect.target))
        elif op == "remove":
            self._remove(path)
        elif op == "move":
            assert effect.target is not None
            self._move(path, norm(effect.target))

    def is_real_tree(self, path: str) -> bool:
        """True if what shows at and below ``path`` is the real disk there,
        untouched by any planned effect (so it can be copied as a whole)."""
        path = norm(path)
        if not self.virtual:
            return True
        if self._has_links or self._real_path(path) != path:
            return False
        inside = path + os.sep
        return not any(
            p == path or p.startswith(inside)
            for table in (self._nodes, self._aliases, self._removed)
            for p in table
        )

    def copy_tree(self, dest: str, source: str) -> None:
        """Plan ``dest`` as an exact copy of the real directory tree ``source``
        (see ``is_real_tree``): one fact however many files it holds."""
        dest, source = norm(dest), norm(source)
        self._dir_cache.clear()
        if self.lstat(dest) is not None:
            self._remove(dest)
        self._ensure_parents(os.path.dirname(dest))
        self._removed.discard(dest)
        self._aliases[dest] = source
        self._children.setdefault(os.path.dirname(dest), set()).add(os.path.basename(dest))

    def _ensure_parents(self, parent: str) -> None:
        if parent and parent not in self._nodes and self.lstat(parent) is None:
            self._put(parent, FileInfo("dir", mode=0o755))

    def _put(self, path: str, info: FileInfo) -> None:
        cut = path.rfind("/")
        parent = path[:cut] or "/"
        if parent != path:
            self._ensure_parents(parent)
        self._removed.discard(path)
        self._dir_cache.pop(path, None)
        self._nodes[path] = info
        children = self._children.get(parent)
        if children is None:
            children = self._children[parent] = set()
        children.add(path[cut + 1 :])

    def _remove(self, path: str) -> None:
        self._dir_cache.clear()
        prefix = path + os.sep
        for p in [p for p in self._nodes if p == path or p.startswith(prefix)]:
            del self._nodes[p]
            self._children.pop(p, None)
        for p in [p for p in self._aliases if p == path or p.startswith(prefix)]:
            del self._aliases[p]
        self._children.get(os.path.dirname(path), set()).discard(os.path.basename(path))
        self._removed.add(path)

    def _move(self, src: str, dst: str) -> None:
        self._dir_cache.clear()
        info = self.lstat(src)
        if info is None:
            return
        prefix = src + os.sep
        moved = {p: n for p, n in self._nodes.items() if p == src or p.startswith(prefix)}
        # What is planned below a real directory (files planned into it, real ones
        # removed or moved there) moves with it, as on disk.
        hidden = [p for p in self._removed if p.startswith(prefix)]
        aliased = {p: r for p, r in self._aliases.items() if p.startswith(prefix)}
        real = self._real_path(src) if src not in self._nodes else None
        self._remove(src)
        if self.lstat(dst) is not None:
            self._remove(dst)
        self._ensure_parents(os.path.dirname(dst))
        if real is not None and info.is_dir:
            self._removed.discard(dst)
            self._aliases[dst] = real
            self._children.setdefault(os.path.dirname(dst), set()).add(os.path.basename(dst))
            self._removed.update(dst + p[len(src) :] for p in hidden)
        for p, r in aliased.items():
            moved_to = dst + p[len(src) :]
            self._aliases[moved_to] = r
            self._children.setdefault(os.path.dirname(moved_to), set()).add(
                os.path.basename(moved_to)
            )
        if real is None or not info.is_dir:
            for p, n in moved.items():
                self._put(dst + p[len(src) :], n)
            if not moved:
                self._put(dst, info)
        else:
            for p, n in moved.items():
                if p != src:
                    self._put(dst + p[len(src) :], n)


def _walk_real(root: str) -> Iterator[tuple[str, FileInfo]]:
    for rel, st in walk_disk(root):
        yield rel, disk_info(root, rel, st)


def disk_info(root: str, rel: str, st: os.stat_result) -> FileInfo:
    """The FileInfo of the entry ``rel`` below ``root`` that ``walk_disk`` gave
    with its lstat ``st``, as ``WorldView.walk`` gives it."""
    path = (root if root.endswith("/") else root + "/") + rel
    return info_from_stat(st, path, os.readlink(path) if statmod.S_ISLNK(st.st_mode) else None)


#: Flags to open a directory whose entries are looked up in it.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
_NAME = operator.attrgetter("name")


def walk_disk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path relative to ``root``, its lstat) of every entry below the real
    directory ``root``, in ``WorldView.walk``'s order: sorted, a directory's
    entries before those of its subdirectories. For a step's plan when its
    view is the disk (not ``virtual``): a million files without a FileInfo
    each, every entry looked up in its open directory, not by its whole path."""
    base = root if root.endswith("/") else root + "/"
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            fd = os.open(base + rel if rel else root, _DIR_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            continue
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=_NAME)
            prefix = rel + "/" if rel else ""
            dirs = []
            for e in entries:
                child = prefix + e.name
                st = e.stat(follow_symlinks=False)  # fstatat in the directory
                yield child, st
                if statmod.S_ISDIR(st.st_mode):
                    dirs.append(child)
        finally:
            os.close(fd)
        pending.extend(reversed(dirs))
