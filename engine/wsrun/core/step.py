"""The contract every step type follows, and the registry that finds them.

A step type is one module in ``wsrun.steps`` (or a third party's module
registered under the entry-point group ``wsrun.steps``) that defines:

- ``NAME``: the name recipes use in ``uses:``;
- ``DOC``: why a recipe author would use it (first line is the summary);
- ``SCHEMA``: the JSON Schema of its ``with:`` parameters, with a
  ``description`` (and ``examples`` where useful) on each property;
- ``EXAMPLES``: YAML snippets of the step in a recipe;
- ``OUTPUTS``: the names of its outputs and what each holds;
- ``UNRENDERED`` (optional): parameters the recipe passes through without
  evaluating ``{{ }}`` in them, because the step renders them itself;
- ``plan(params, ctx) -> Plan``: look at the world through ``ctx.fs`` and
  return the effects the step would have and the outputs later steps can use;
- ``apply(plan, ctx) -> Result``: perform exactly those effects;
- ``destinations(params, ctx) -> list[str]`` (optional, for step types that
  write): the paths it writes, which the runner locks before ``plan`` and
  releases after ``apply`` (``wsrun.core.locks``), so two runs never write one
  destination at once;
- ``prefetch(params, ctx) -> None`` (optional): in a real run's ``for_each``,
  called with the next item's parameters before an item runs, so a step type
  can start work for the next item that writes nothing (image-derivative
  encodes the next master in memory while this one is proven). It must return
  at once, never fail the run, and leave every check to ``plan`` and ``apply``.

``plan`` must not change anything; ``apply`` must not do anything ``plan`` did
not report. That is what makes a dry run faithful.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from wsrun.core.effects import Effect
from wsrun.core.fs import WorldView

#: Built-in step types: name -> module. Imported only when used, so that
#: ``wsrun --help`` stays fast.
BUILTIN_STEPS: dict[str, str] = {
    "copy": "wsrun.steps.copy",
    "move": "wsrun.steps.move",
    "mkdir": "wsrun.steps.mkdir",
    "remove": "wsrun.steps.remove",
    "symlink": "wsrun.steps.symlink",
    "tar": "wsrun.steps.tar",
    "untar": "wsrun.steps.untar",
    "checksum": "wsrun.steps.checksum",
    "manifest": "wsrun.steps.manifest",
    "write-json": "wsrun.steps.write_json",
    "find": "wsrun.steps.find",
    "template": "wsrun.steps.template",
    "shell": "wsrun.steps.shell",
    "rsync": "wsrun.steps.rsync",
    "noop": "wsrun.steps.noop",
    "ingest": "wsrun.steps.ingest",
    "set-state": "wsrun.steps.set_state",
    "get-state": "wsrun.steps.get_state",
    "wait-state": "wsrun.steps.wait_state",
    "ask": "wsrun.steps.ask",
    "fail": "wsrun.steps.fail",
    "wait-files": "wsrun.steps.wait_files",
    "archive-check": "wsrun.steps.archive_check",
    "list-state": "wsrun.steps.list_state",
    "s3-upload": "wsrun.steps.s3_upload",
    "s3-download": "wsrun.steps.s3_download",
    "s3-list": "wsrun.steps.s3_list",
    "s3-remove": "wsrun.steps.s3_remove",
    "which": "wsrun.steps.which",
    "http": "wsrun.steps.http",
    "publish": "wsrun.steps.publish",
    "call": "wsrun.steps.call",
    "reply": "wsrun.steps.reply",
}


#: Schema of a parameter that takes one path or a list of them (copy's
#: ``sources``, mkdir's and remove's ``path``, tar's ``source``).
PATHS: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}},
    ]
}


class StepError(Exception):
    """A step failed for a reason the operator can act on.

    ``path`` names the file or value at fault; the runner prints it with the
    step's id and recipe line, without a traceback. ``transient`` marks a
    failure worth trying again later (a service down or busy, a timeout):
    ``wsrun worker`` retries only those, not before ``retry_after`` seconds.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        *,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.transient = transient
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DuplicateWork(StepError):
    """The work is already claimed by another claimant (``set-state`` with
    ``claim``): ``wsrun worker`` acks the message as a duplicate."""


@dataclass
class Plan:
    """What a step would do: its effects, predicted outputs, and private data
    that ``apply`` needs to do exactly that."""

    effects: list[Effect] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    #: (destination, source) of real directory trees the plan copies whole,
    #: entry for entry (names, sizes, modes, mtimes, link targets): a dry run's
    #: view shows the source's real entries at the destination instead of
    #: holding a record per planned file (WorldView.copy_tree).
    trees: list[tuple[str, str]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "changed" if self.effects else "ok"


@dataclass
class Result:
    """What a step did."""

    effects: list[Effect] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "changed" if self.effects else "ok"


class ProgressTask(Protocol):
    def advance(self, bytes: int = 0, files: int = 0) -> None: ...

    def close(self) -> None: ...


class _NoProgressTask:
    def advance(self, bytes: int = 0, files: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class Batched:
    """A ProgressTask whose reports are told a batch at a time: once ``files``
    files or ``bytes`` bytes have gathered, and the rest on ``close``. A report
    per small file costs more than moving it; a report of a big file's chunk
    (``bytes`` and up) is told at once. Safe to share between threads."""

    def __init__(self, task: ProgressTask, files: int = 64, bytes: int = 1 << 20) -> None:
        self.task = task
        self.every = (files, bytes)
        self.gathered = [0, 0]  # files, bytes
        self.lock = threading.Lock()

    def advance(self, bytes: int = 0, files: int = 0) -> None:
        with self.lock:
            gathered = self.gathered
            gathered[0] += files
            gathered[1] += bytes
            if gathered[0] < self.every[0] and gathered[1] < self.every[1]:
                return
            files, bytes = gathered
            gathered[0] = gathered[1] = 0
        self.task.advance(bytes=bytes, files=files)

    def close(self) -> None:
        with self.lock:
            files, bytes = self.gathered
            self.gathered = [0, 0]
        if files or bytes:
            self.task.advance(bytes=bytes, files=files)
        self.task.close()


class FileProgress:
    """One file's bytes told to a task as they are written (or checked): at
    most its size in all, so a file that is written (or checked) again after
    a failed check is not counted twice. Called by one thread at a time."""

    def __init__(self, task: ProgressTask, size: int) -> None:
        self.task = task
        self.size = size
        self.told = 0

    def __call__(self, n: int) -> None:
        n = min(n, self.size - self.told)
        if n > 0:
            self.told += n
            self.task.advance(bytes=n)

    def finish(self) -> None:
        """The file is done: the file, and whatever of its bytes were not told."""
        self.task.advance(bytes=self.size - self.told, files=1)


class Progress:
    """Where long steps report bytes and files done. The default shows nothing;
    the command line swaps in a rich progress bar on a terminal."""

    def task(
        self, description: str, total_bytes: int | None = None, total_files: int | None = None
    ) -> ProgressTask:
        return _NoProgressTask()


@dataclass
class StepContext:
    """Everything a step may use besides its parameters."""

    fs: WorldView
    dry_run: bool = False
    run_id: str = ""
    workdir: str = field(default_factory=os.getcwd)
    step_id: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    progress: Progress = field(default_factory=Progress)
    log: Callable[[str], None] = lambda message: None
    #: ``time.monotonic()`` by which the step must finish (from ``timeout:``).
    deadline: float | None = None
    #: Inside an atomic group (wsrun.core.groups): paths under its destination are
    #: written under its staging directory.
    redirect: Any = None
    #: Inside an atomic group: the digests of files already in its staging
    #: directory (a wsrun.core.groups.DigestCache), so a continued run need not read
    #: them again; None elsewhere.
    digests: Any = None

    def path(self, value: str | os.PathLike[str]) -> str:
        """An absolute, normalised path; relative ones are taken from the workdir.
        Inside an atomic group, a path under its destination is the staged one."""
        path = os.path.normpath(os.path.join(self.workdir, os.fspath(value)))
        return path if self.redirect is None else self.redirect.staged(path)

    def final_path(self, path: str) -> str:
        """Where ``path`` (from ``path()``) will be once the step's atomic group
        is renamed into place: what a step records in a document it writes."""
        return path if self.redirect is None else self.redirect.final(path)

    def remaining(self) -> float | None:
        """Seconds left before the step's timeout, or None without one."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def check_deadline(self) -> None:
        """Long loops call this between units of work to honour ``timeout:``."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise StepError("timed out", transient=True)


class UnknownStep(LookupError):
    pass


def _entry_point_steps() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="wsrun.steps")}


_cache: dict[str, ModuleType] = {}


def ships_with_wsrun(name: str) -> bool:
    """Whether step type ``name`` is part of wsrun itself: built in, or a pack's
    step registered by wsrun's own distribution (``wsrun.packs``), so that its
    schema changes only with wsrun's version."""
    return name in BUILTIN_STEPS or name in _pack_steps()


@functools.cache
def _pack_steps() -> frozenset[str]:
    """The step types wsrun's own distribution registers: read from the entry
    points once a process, not once for each step a recipe uses."""
    from importlib.metadata import entry_points

    return frozenset(
        ep.name
        for ep in entry_points(group="wsrun.steps")
        if ep.dist is not None and ep.dist.name == "wsrun"
    )


def step_names() -> list[str]:
    """Every step type available: built in and from the ``wsrun.steps`` entry points."""
    return sorted({**BUILTIN_STEPS, **_entry_point_steps()})


def load_step(name: str) -> ModuleType:
    """The module implementing step type ``name``."""
    module = _cache.get(name)
    if module is not None:
        return module
    target = BUILTIN_STEPS.get(name) or _entry_point_steps().get(name)
    if target is None:
        raise UnknownStep(name)
    try:
        module = import_module(target.split(":")[0])
    except ImportError as e:
        raise UnknownStep(f"{name} (its module {target} cannot be imported: {e})") from None
    _cache[name] = module
    return module


def schema_path(name: str) -> Path:
    """Where the generated JSON Schema of a step type's parameters lives."""
    from wsrun.core.resources import schemas_dir

    return schemas_dir() / "steps" / f"{name}.schema.json"


def params_schema(module: ModuleType) -> dict[str, Any]:
    """The full JSON Schema document for a step's ``with:`` block."""
    schema = dict(module.SCHEMA)
    schema.setdefault("type", "object")
    schema.setdefault("additionalProperties", False)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://wsrun.example/schemas/steps/{module.NAME}.schema.json",
        "title": f"wsrun step '{module.NAME}' parameters",
        "description": module.DOC.strip(),
        **schema,
    }
