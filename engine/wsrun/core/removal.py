"""Removing a file or a whole tree, with progress: the ``remove`` step, copy's
``delete``, move, and an atomic group replacing a destination all remove
through here, so a tree of a million files shows how far it is."""

from __future__ import annotations

import contextlib
import errno
import os
import stat as statmod
from collections.abc import Callable

#: Files a tree's removal reports at a time.
REPORT_EVERY = 256


def remove_tree(path: str, removed: Callable[[int], None] | None = None) -> None:
    """Remove a file, symlink or whole tree at ``path`` if there is one; never
    follows symlinks; makes read-only directories writable on the way.

    A tree is walked through directory descriptors, each directory opened with
    O_NOFOLLOW below the one before (as ``shutil.rmtree`` does), so a directory
    swapped for a symlink meanwhile is removed, not followed; each directory's
    entries are removed as they are read, not listed first (a million in one
    directory are not held). ``removed(n)`` hears of the files and symlinks
    removed, REPORT_EVERY at a time: a million-file tree shows its progress."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not statmod.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if removed is not None:
            removed(1)
        return
    parent, name = os.path.split(os.path.abspath(path))
    counted = [0]

    def count() -> None:
        counted[0] += 1
        if counted[0] >= REPORT_EVERY and removed is not None:
            removed(counted[0])
            counted[0] = 0

    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_dir(parent_fd, name, parent, count)
    finally:
        os.close(parent_fd)
        if counted[0] and removed is not None:
            removed(counted[0])


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_dir(parent_fd: int, name: str, parent: str, count: Callable[[], None]) -> None:
    """Empty directory ``name`` of ``parent_fd`` (the directory ``parent``, for
    errors), then remove it."""
    path = os.path.join(parent, name)
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except PermissionError:  # not readable: owner rwx, then again
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if not statmod.S_ISDIR(st.st_mode):
                raise
            os.chmod(name, _writable(st.st_mode), dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(e.errno, e.strerror, path) from None
        _unlink(parent_fd, name, parent, count)  # no longer a directory: a symlink or file now
        return
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    _remove_dir(fd, entry.name, path, count)
                else:
                    _unlink(fd, entry.name, path, count)
    finally:
        os.close(fd)
    try:
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except PermissionError:  # the parent is read-only
            os.fchmod(parent_fd, _writable(os.fstat(parent_fd).st_mode))
            os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def _unlink(dir_fd: int, name: str, parent: str, count: Callable[[], None]) -> None:
    try:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except PermissionError:  # a read-only directory
            os.fchmod(dir_fd, _writable(os.fstat(dir_fd).st_mode))
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.path.join(parent, name)) from None
    count()


def _writable(mode: int) -> int:
    return statmod.S_IMODE(mode) | statmod.S_IRWXU
