"""Effects: what a step does to the world, as plain data.

A step's ``plan`` returns effects and its ``apply`` performs exactly those, so a
dry run can print what a real run will do, and tests can compare the two.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wsrun.core.spool import Mapped, Spool

#: Every effect kind a step may report.
OPS = (
    "create_file",
    "create_dir",
    "create_symlink",
    "remove",
    "move",
    "upload",
    "set_state",
    "publish",
    "record",
    "run",
)


@dataclass(slots=True)
class Effect:
    """One change to the world: a file written, a link made, a message sent.

    ``bytes`` is the size of what is written, when it is known before the
    write (it is not for compressed archives). ``source`` is where content comes
    from; ``target`` is what a symlink points at or where a move goes.
    """

    op: str
    path: str
    bytes: int | None = None
    source: str | None = None
    target: str | None = None
    mode: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Content of a generated file, so a dry run's later steps can read it.
    #: Never printed or journaled.
    content: builtins.bytes | None = field(default=None, repr=False, compare=False)
    #: What the step already knows of ``source`` (a wsrun.core.fs.FileInfo), so a
    #: dry run need not look at it again. Never printed or journaled.
    source_info: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.bytes is not None:
            d["bytes"] = self.bytes
        if self.source is not None:
            d["source"] = self.source
        if self.target is not None:
            d["target"] = self.target
        if self.mode is not None:
            d["mode"] = self.mode
        d.update(self.extra)
        return d


def create_file(
    path: str,
    bytes: int | None,
    source: str | None = None,
    content: bytes | None = None,
    mode: int | None = None,
    source_info: Any = None,
    **extra: Any,
) -> Effect:
    """A regular file written at ``path``; ``source`` is the file it copies, if any."""
    return Effect(
        "create_file",
        path,
        bytes=bytes,
        source=source,
        mode=mode,
        extra=extra,
        content=content,
        source_info=source_info,
    )


def create_dir(path: str, **extra: Any) -> Effect:
    return Effect("create_dir", path, extra=extra)


def create_symlink(path: str, target: str, **extra: Any) -> Effect:
    return Effect("create_symlink", path, target=target, extra=extra)


def remove(path: str, bytes: int | None = None, **extra: Any) -> Effect:
    """``path`` removed (a whole tree if a directory); ``bytes`` is the size of its files."""
    return Effect("remove", path, bytes=bytes, extra=extra)


def move(path: str, target: str, bytes: int | None = None, **extra: Any) -> Effect:
    """Move ``path`` to ``target``."""
    return Effect("move", path, bytes=bytes, target=target, extra=extra)


def _effect_record(e: Effect) -> tuple[Any, ...]:
    return (e.op, e.path, e.bytes, e.source, e.target, e.mode, e.extra or None)


def _effect_from(record: tuple[Any, ...]) -> Effect:
    op, path, size, source, target, mode, extra = record
    return Effect(op, path, size, source, target, mode, extra or {})


def effect_dict(e: Effect) -> dict[str, Any]:
    """``e.to_dict()`` as a function, for lazy views (wsrun.core.spool.Mapped)."""
    return e.to_dict()


def _record_dict(record: tuple[Any, ...]) -> dict[str, Any]:
    """``_effect_from(record).to_dict()`` without the Effect in between."""
    op, path, size, source, target, mode, extra = record
    d: dict[str, Any] = {"op": op, "path": path}
    if size is not None:
        d["bytes"] = size
    if source is not None:
        d["source"] = source
    if target is not None:
        d["target"] = target
    if mode is not None:
        d["mode"] = mode
    if extra:
        d.update(extra)
    return d


class EffectDicts(Mapped[Effect, dict[str, Any]]):
    """``Mapped(spool, effect_dict)``, the effects of a spooled plan as dicts,
    made straight from the spool's records: a dry run of a million files reads
    its plan three times (overlay, journal, --json), and an Effect object made
    per record and read only to make its dict cost as much as the rest."""

    def __init__(self, spool: EffectSpool) -> None:
        super().__init__(spool, effect_dict)
        self.spool = spool

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.spool.iter_as(_record_dict, effect_dict)


def outside(effects: Sequence[Effect], trees: Collection[str]) -> Iterator[Effect]:
    """The ``effects`` whose path is neither one of ``trees`` nor below one
    (a dry run's overlay records a tree copied whole as one fact); a spooled
    plan's others are skipped by their path, never decoded."""
    inside = tuple(tree + os.sep for tree in trees)

    def kept(path: str) -> bool:
        return path not in trees and not path.startswith(inside)

    if not isinstance(effects, EffectSpool):
        return (e for e in effects if kept(e.path))
    found = effects.iter_as(
        lambda r: _effect_from(r) if kept(r[1]) else None,
        lambda e: e if kept(e.path) else None,
    )
    return (e for e in found if e is not None)


class EffectSpool(Spool[Effect]):
    """A step's planned effects when there may be very many (a copy of a
    million files): a list while short, spooled to a temporary file past
    ``wsrun.core.spool.SPILL_AT``. ``content`` and ``source_info`` are dropped when an
    effect is spooled (a dry run re-reads the source's facts instead), so steps
    spool only effects without ``content``. ``files`` and ``bytes`` count the
    ``create_file`` effects and their known sizes as they are appended, so totals
    need no pass over the spool."""

    def __init__(self, items: Iterable[Effect] = ()) -> None:
        self.files = 0
        self.bytes = 0
        super().__init__(items)

    def append(self, item: Effect) -> None:
        if item.content is not None:
            raise ValueError(f"{item.path}: an effect with content cannot be spooled")
        if item.op == "create_file":
            self.files += 1
            self.bytes += item.bytes or 0
        super().append(item)

    def _encode(self, item: Effect) -> Any:
        return _effect_record(item)

    def _decode(self, record: Any) -> Effect:
        return _effect_from(record)
