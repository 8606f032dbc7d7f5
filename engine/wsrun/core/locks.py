"""Destination locks: one run at a time writes a destination.

Two runs writing one destination would share its deterministic temporary
names (see ``wsrun.core.fileio``) and corrupt each other's work, so every step that
writes takes a lock on its destination before it plans (the plan is then made
against what the other run left complete), and releases it when it is done.

A lock is an ``flock`` on a file under ``$WSRUN_HOME/locks`` named by a hash
of the destination's real path: nothing is added to the destination's
directory, the kernel releases the lock when its holder dies (even by
SIGKILL), and the file records the run and pid that hold it, so a refusal
can name them. Locks nest along paths: writing ``d`` excludes writing
``d/x`` and the other way round (a writer holds a shared lock on each
ancestor of its destination and an exclusive lock on the destination).

A run that finds its destination locked waits for it, polling, for
``$WSRUN_LOCK_WAIT`` seconds (default 60; 0 refuses at once), then fails
with one line naming the destination and the run that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from wsrun.core.fileio import remove_temp_of
from wsrun.core.step import StepContext, StepError

WAIT_ENV = "WSRUN_LOCK_WAIT"
DEFAULT_WAIT = 60.0
#: Longest pause between two attempts while waiting.
POLL = 0.2


class DestinationBusy(StepError):
    """Another run holds the lock on a destination."""


def lock_dir() -> str:
    from wsrun.core.journal import default_home

    return os.path.join(default_home(), "locks")


def _is_path(name: str) -> bool:
    return name.startswith("/")


def _canonical(name: str) -> str:
    return os.path.realpath(name) if _is_path(name) else name


def _ancestors(path: str) -> list[str]:
    """The directories above an absolute path, outermost first ("/" excluded)."""
    found = []
    parent = os.path.dirname(path)
    while parent != "/" and parent != path:
        found.append(parent)
        path, parent = parent, os.path.dirname(parent)
    return found[::-1]


def _file_of(name: str) -> str:
    return hashlib.sha256(os.fsencode(name)).hexdigest()[:32] + ".lock"


def _related(a: str, b: str) -> bool:
    """Whether writing ``a`` and writing ``b`` exclude each other."""
    if a == b:
        return True
    if not (_is_path(a) and _is_path(b)):
        return False
    return a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


@dataclass
class Held:
    """Locks taken by one step; ``release`` gives them back."""

    directory: str = ""
    #: (lock file path, fd, exclusive)
    files: list[tuple[str, int, bool]] = field(default_factory=list)

    def release(self) -> None:
        """Unlock and remove the lock files nobody else holds (so they do not
        pile up); a process that opened one meanwhile notices and opens anew."""
        for path, fd, exclusive in reversed(self.files):
            try:
                if not exclusive:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            except BlockingIOError:
                pass  # another writer still holds it
            finally:
                os.close(fd)
        self.files.clear()


def _try_lock(path: str, exclusive: bool) -> int | None:
    """An fd holding the lock file ``path``, or None if another holder conflicts."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            return fd
        os.close(fd)  # its holder removed it on release: take the new one


def _record(fd: int, name: str, run_id: str) -> None:
    owner = {"path": name, "run": run_id or "?", "pid": os.getpid()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode() + b"\n", 0)


def holders(directory: str, name: str) -> list[dict[str, Any]]:
    """Who holds an exclusive lock that conflicts with writing ``name``."""
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for entry in sorted(names):
        path = os.path.join(directory, entry)
        try:
            with open(path, "rb") as f:
                owner = json.loads(f.read() or b"null")
                if not isinstance(owner, dict) or not _related(str(owner.get("path")), name):
                    continue
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    continue  # nobody holds it exclusively: a finished writer's record
                except BlockingIOError:
                    found.append(owner)
        except (OSError, ValueError):
            continue
    return found


def describe(directory: str, name: str) -> str:
    """Who is writing ``name`` (or something inside or around it), in words."""
    for owner in holders(directory, name):
        where = "" if owner.get("path") == name else f" (writing {owner.get('path')})"
        return f"is being written by run {owner.get('run')} (pid {owner.get('pid')}){where}"
    return "is being written by another run"


def acquire(
    names: list[str],
    run_id: str,
    wait: float,
    log: Callable[[str], None] = lambda message: None,
    deadline: float | None = None,
) -> Held:
    """Lock every destination in ``names`` (absolute paths, or other names such
    as an archive's URL), all or none: waits up to ``wait`` seconds (and not
    past the monotonic ``deadline``), then raises DestinationBusy."""
    wanted: dict[str, bool] = {}  # canonical name -> exclusive
    for name in dict.fromkeys(_canonical(n) for n in names):
        if _is_path(name):
            for parent in _ancestors(name):
                wanted.setdefault(parent, False)
        wanted[name] = True
    held = Held(lock_dir())
    if not wanted:
        return held
    os.makedirs(held.directory, exist_ok=True)
    began = time.monotonic()
    give_up = began + wait
    if deadline is not None:
        give_up = min(give_up, deadline)
    told = False
    pause = 0.01
    while True:
        blocked = None
        for name in sorted(wanted):
            path = os.path.join(held.directory, _file_of(name))
            fd = _try_lock(path, wanted[name])
            if fd is None:
                blocked = name
                break
            held.files.append((path, fd, wanted[name]))
            if wanted[name]:
                _record(fd, name, run_id)
        if blocked is None:
            return held
        held.release()
        subject = next((n for n in wanted if wanted[n] and _related(n, blocked)), blocked)
        if time.monotonic() >= give_up:
            seconds = time.monotonic() - began
            waited = f" (waited {seconds:.0f} s)" if seconds >= 1 else ""
            raise DestinationBusy(
                f"destination {describe(held.directory, subject)}{waited}", path=subject
            )
        if not told:
            log(f"waiting: {subject} {describe(held.directory, subject)}")
            told = True
        time.sleep(min(pause, max(0.0, give_up - time.monotonic())))
        pause = min(POLL, pause * 2)


def wait_seconds(env: Mapping[str, str]) -> float:
    value = env.get(WAIT_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_WAIT
    except ValueError:
        raise StepError(f"${WAIT_ENV} must be a number of seconds, not {value!r}") from None


def for_step(
    module: ModuleType,
    params: dict[str, Any],
    ctx: StepContext,
    covered: Callable[[str], bool] | None = None,
) -> Held:
    """Lock what a step is about to write (nothing in a dry run, nor for a
    step type that writes nothing): the paths its ``destinations(params, ctx)``
    names, except those ``covered`` says a lock this run holds already covers
    (an atomic group's destination and staging directory)."""
    destinations = getattr(module, "destinations", None)
    if ctx.dry_run or destinations is None:
        return Held()
    names = destinations(params, ctx)
    if covered is not None:
        names = [n for n in names if not (_is_path(n) and covered(n))]
    if not names:
        return Held()
    held = acquire(names, ctx.run_id, wait_seconds(ctx.env), ctx.log, ctx.deadline)
    for name in names:
        if _is_path(name) and not getattr(module, "CONTINUES_TEMPS", False):
            # A killed run's, also when this run has nothing to write (its
            # source went back to what the destination holds). A step that
            # may continue a killed run's temp file removes the others itself.
            remove_temp_of(name)
    return held
