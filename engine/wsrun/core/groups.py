"""Atomic groups: steps whose files land under one destination all or nothing.

A recipe step of the form ``group: {destination: D, ...}`` with ``steps:``
runs its steps with every path under D redirected (``StepContext.path``) to a
hidden staging directory beside D, deterministic per destination so a re-run
finds it. When every step succeeded the staging directory is renamed into
place; when one fails it is removed, or kept for the next run to continue
(``on_failure: keep``). This module holds what the runner needs for that:
the redirect, the decision what to do with an existing destination, the
rename into place, and the digests a kept staging area remembers.

The runner (``wsrun.core.runner``) drives the steps; see docs/recipes.md
("Atomic groups") for the language and docs/architecture.md for the choices.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from wsrun.core import resumes
from wsrun.core.fileio import hidden_name
from wsrun.core.fs import WorldView
from wsrun.core.removal import remove_tree
from wsrun.core.spool import Mapped, RenamedDict, is_lazy, lazy_mapping
from wsrun.core.step import StepError

STAGING_SUFFIX = ".wsrun-staging"
OLD_SUFFIX = ".wsrun-old"
DIGESTS_SUFFIX = ".wsrun-digests"
ON_FAILURE = ("remove", "keep")


def staging_of(top: str) -> str:
    """The staging directory of ``top`` (the directory renamed into place)."""
    head, tail = os.path.split(top)
    return os.path.join(head, hidden_name(tail, STAGING_SUFFIX))


def old_of(destination: str) -> str:
    """Where a replaced destination is kept until the new one is in place."""
    head, tail = os.path.split(destination)
    return os.path.join(head, hidden_name(tail, OLD_SUFFIX))


def digests_of(top: str) -> str:
    """The file beside the staging directory that remembers its files' digests."""
    head, tail = os.path.split(top)
    return os.path.join(head, hidden_name(tail, DIGESTS_SUFFIX))


def inside(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or below it."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


#: Values that hold no path (checked by exact type: a str subclass is a str).
_NO_PATHS = frozenset({int, float, bool, type(None)})


@dataclass(frozen=True)
class Redirect:
    """Paths under ``top`` are written under ``staging`` while the group runs."""

    top: str
    staging: str

    def staged(self, path: str) -> str:
        """Where a final path is while the group runs (others unchanged)."""
        if inside(path, self.top):
            return self.staging + path[len(self.top) :]
        return path

    def final(self, path: str) -> str:
        """Where a staged path will be once the group is committed."""
        if inside(path, self.staging):
            return self.top + path[len(self.staging) :]
        return path

    def finals(self, value: Any) -> Any:
        """``value`` (outputs, effects) with every staged path in it, keys and
        values, replaced by its final path."""
        kind = type(value)
        if kind is str:
            return self.final(value) if value.startswith(self.staging) else value
        if kind in _NO_PATHS:
            return value
        if kind is dict:  # a million effects: their keys and numbers without a call each
            one = self.finals
            staging = self.staging
            return {
                (one(k) if type(k) is not str or k.startswith(staging) else k): (
                    v if type(v) in _NO_PATHS else one(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, str):
            return self.final(value) if value.startswith(self.staging) else value
        if isinstance(value, dict):
            return {self.finals(k): self.finals(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.finals(v) for v in value]
        if lazy_mapping(value):  # a spooled output (copy's checksums): renamed as read
            return RenamedDict(value, self.finals, self.staged)
        if is_lazy(value):
            return Mapped(value, self.finals)
        return value


class DigestCache:
    """Digests of the files a group's steps wrote into its staging directory.

    Kept in a file beside the staging directory (never inside it, so it never
    reaches the destination), one JSON line per file: (path relative to the
    staging directory, size, mtime_ns, algorithm, digest). A run that continues a
    kept staging directory takes a file's digest from here when the file still
    has the recorded size and mtime, instead of reading it again. Each line is
    one ``write`` on an ``O_APPEND`` file, so a killed run leaves whole lines
    (a torn last line is ignored).

    What a killed run recorded is looked up in a private temporary SQLite
    database, not a dict: a million records held in Python took 400 MB. This
    run's own additions are only in the file."""

    def __init__(self, path: str, staging: str) -> None:
        self.path = path
        self.staging = staging
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.known = self._index()

    def _index(self) -> sqlite3.Connection | None:
        """The records a killed run left, by (path, size, mtime, algorithm);
        None when there are none. A path recorded twice keeps its last digest."""
        records = self.records()
        first = next(records, None)
        if first is None:
            return None
        # "": a temporary file of SQLite's own, removed when it is closed
        db = sqlite3.connect("", check_same_thread=False)
        db.execute(
            "CREATE TABLE known (rel BLOB, size INTEGER, mtime_ns INTEGER, algorithm TEXT,"
            " digest TEXT, PRIMARY KEY (rel, size, mtime_ns, algorithm)) WITHOUT ROWID"
        )
        db.executemany(
            "INSERT OR REPLACE INTO known VALUES (?, ?, ?, ?, ?)",
            (
                (_key(rel), size, mtime_ns, algorithm, digest)
                for rel, size, mtime_ns, algorithm, digest in itertools.chain([first], records)
            ),
        )
        db.commit()
        return db

    def records(self) -> Iterator[tuple[str, int, int, str, str]]:
        """Every whole line of the record, as written (a torn last line is left out)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        rel, size, mtime_ns, algorithm, digest = json.loads(line)
                    except (ValueError, TypeError):
                        continue
                    yield rel, size, mtime_ns, algorithm, digest
        except FileNotFoundError:
            return

    def _rel(self, path: str) -> str | None:
        return os.path.relpath(path, self.staging) if inside(path, self.staging) else None

    def covers(self, path: str) -> bool:
        """``path`` is in the staging directory (its digest is recorded here)."""
        return inside(path, self.staging)

    def get(self, path: str, size: int, mtime_ns: int, algorithm: str) -> str | None:
        """The recorded digest of ``path`` if it still has this size and mtime."""
        rel = self._rel(path)
        if rel is None or self.known is None:
            return None
        with self.lock:
            row = self.known.execute(
                "SELECT digest FROM known WHERE rel=? AND size=? AND mtime_ns=? AND algorithm=?",
                (_key(rel), size, mtime_ns, algorithm),
            ).fetchone()
        return row[0] if row else None

    def add(self, path: str, size: int, mtime_ns: int, algorithm: str, digest: str) -> None:
        """Remember the digest of a file just written into the staging directory."""
        rel = self._rel(path)
        if rel is None:
            return
        line = json.dumps([rel, size, mtime_ns, algorithm, digest]).encode() + b"\n"
        with self.lock:
            if self.fd is None:
                self.fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            os.write(self.fd, line)

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            if self.known is not None:
                self.known.close()
                self.known = None


def _key(rel: str) -> bytes:
    """A recorded path as the database keeps it: names that are not UTF-8
    (surrogates in Python) as their bytes."""
    return rel.encode("utf-8", "surrogatepass")


@dataclass
class Decision:
    """What a group does with its destination, decided before its steps run."""

    destination: str
    #: "new" (missing: created), "fill" (an empty directory), "replace",
    #: "probe" (non-empty: re-run the steps against it; unchanged if none
    #: has anything to do).
    mode: str
    #: The directory renamed into place: the destination, or its topmost
    #: missing ancestor.
    top: str
    #: Directories from ``top`` down to the destination that do not exist.
    missing: list[str] = field(default_factory=list)

    @property
    def staging(self) -> str:
        return staging_of(self.top)


def topmost_missing(destination: str) -> str:
    """The destination, or its topmost ancestor that does not exist (on disk):
    what a new destination's group locks and renames into place."""
    path = destination
    while not os.path.lexists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def decide(view: WorldView, destination: str, within: str | None) -> Decision:
    """What to do with ``destination`` as the view shows it. ``within``, when
    given, is a directory that must exist and hold the destination."""
    if within is not None:
        if not inside(destination, within):
            raise StepError(f"the destination {destination} is not inside {within}", path=within)
        if not view.is_dir(within):
            raise StepError("does not exist (the destination is created inside it)", path=within)
    info = view.stat(destination)
    if info is not None:
        if not info.is_dir:
            raise StepError("the destination exists and is not a directory", path=destination)
        if not view.listdir(destination):
            return Decision(destination, "fill", destination)
        return Decision(destination, "probe", destination)
    missing = [destination]
    path = os.path.dirname(destination)
    while True:
        found = view.stat(path)
        if found is not None:
            if not found.is_dir:
                raise StepError(f"cannot write {destination}: not a directory", path=path)
            break
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    missing.reverse()
    return Decision(destination, "new", missing[0], missing)


def begin(decision: Decision) -> None:
    """Make the staging directory (real run), or continue the one a killed
    run, or a failed one with ``on_failure: keep``, left; then the
    directories down to the destination inside it."""
    staging = decision.staging
    if decision.mode == "replace":
        leftover = old_of(decision.destination)
        if os.path.lexists(leftover):  # a killed replacement's
            shutil.rmtree(leftover)
    os.makedirs(staging, exist_ok=True)
    for path in decision.missing[1:]:
        os.makedirs(staging + path[len(decision.top) :], exist_ok=True)


def commit(
    decision: Decision,
    log: Any,
    digests: DigestCache | None = None,
    removed: Callable[[int], None] | None = None,
) -> None:
    """Rename the staging directory into place (real run); the digests recorded
    for its files are then recorded on this host under their final paths
    (wsrun.core.resumes), so a later run finds them there without reading.
    ``removed(n)``: files of a replaced destination removed (its progress)."""
    staging, top = decision.staging, decision.top
    if decision.mode != "replace":
        # over a missing path, or over an empty destination directory
        os.rename(staging, top)
    else:
        old = old_of(top)
        if os.path.lexists(old):
            shutil.rmtree(old)
        os.rename(top, old)
        try:
            os.rename(staging, top)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rename(old, top)
            raise
        try:
            remove_tree(old, removed)
        except OSError as e:  # the new result is in place: do not fail it for this
            log(f"warning: could not remove the replaced {top} ({old}): {e}")
    if digests is not None:
        records = resumes.records()
        for rel, size, mtime_ns, algorithm, digest in digests.records():  # read from its file
            path = os.path.join(top, rel)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                records.record(path, algorithm, digest, before=st)
        records.flush()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(digests_of(top))


def discard_leftovers(destination: str) -> None:
    """The destination already holds the group's result: remove what a killed
    run replacing it left beside it (its staging area, the old copy)."""
    for path in (staging_of(destination), old_of(destination)):
        if os.path.lexists(path):
            shutil.rmtree(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(digests_of(destination))


def abort(decision: Decision, keep: bool) -> bool:
    """After a failure (real run): remove the staging directory, or keep it for
    the next run unless nothing was written into it. True if kept."""
    staging = decision.staging
    if keep and os.path.isdir(staging) and _holds_files(staging):
        return True
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(digests_of(decision.top))
    return False


def _holds_files(directory: str) -> bool:
    for _, _, files in os.walk(directory):
        if files:
            return True
    return False
