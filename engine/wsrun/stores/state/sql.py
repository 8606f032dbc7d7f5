"""The SQL the two state stores share, written once.

``SqlStateStore`` holds every query whose text is the same on SQLite and
PostgreSQL but for three things, given by the subclass: the table names
(``{entities}``, ``{history}``, ``{lifecycles}``), the parameter mark
(``{p}``: ``?`` or ``%s``) and the database's clock (``{now}``). A backend
keeps only what truly differs: how it connects and how a change and a claim
hold their locks (``BEGIN IMMEDIATE`` on SQLite, row locks with
``FOR UPDATE [SKIP LOCKED]`` on PostgreSQL).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from wsrun.stores.state.base import Change, Entity, StateStore
from wsrun.stores.state.lifecycle import Lifecycle

ENTITY_COLUMNS = "kind, id, state, substate, updated, attributes, version"
CHANGE_COLUMNS = "seq, kind, id, from_state, state, from_substate, substate, attributes, at, actor"

GET = f"SELECT {ENTITY_COLUMNS} FROM {{entities}} WHERE kind = {{p}} AND id = {{p}}"
LIFECYCLE = "SELECT definition FROM {lifecycles} WHERE kind = {p}"
REGISTER = (
    "INSERT INTO {lifecycles} (kind, definition, registered) VALUES ({p}, {p}, {now})"
    " ON CONFLICT (kind) DO UPDATE SET definition = excluded.definition,"
    " registered = excluded.registered"
)
LIST = (
    f"SELECT {ENTITY_COLUMNS} FROM {{entities}}{{where}}"
    " ORDER BY updated DESC, kind, id LIMIT {p} OFFSET {p}"
)
COUNT = "SELECT count(*) FROM {entities}{where}"
HISTORY = f"SELECT {CHANGE_COLUMNS} FROM {{history}} WHERE kind = {{p}} AND id = {{p}} ORDER BY seq"
INSERT_CHANGE = (
    "INSERT INTO {history} (kind, id, from_state, state, from_substate, substate,"
    " attributes, at, actor) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})"
)
# Pending changes nobody holds a lease on, oldest first, never one whose
# entity has an earlier change leased to another relay (each entity's changes
# reach the bus in order). ``{now}`` and ``{limit}`` are the backend's.
CLAIMABLE = (
    f"SELECT {CHANGE_COLUMNS} FROM {{history}} h"
    " WHERE published IS NULL AND (claim_until IS NULL OR claim_until < {now})"
    " AND NOT EXISTS (SELECT 1 FROM {history} e WHERE e.kind = h.kind AND e.id = h.id"
    " AND e.seq < h.seq AND e.published IS NULL AND e.claim_until >= {now})"
    " ORDER BY seq LIMIT {limit}"
)


class SqlStateStore(StateStore):
    """What the SQLite and PostgreSQL state stores share: the reads, the
    lifecycle registry and the row mapping."""

    #: Logical table name -> the backend's table.
    TABLES: Mapping[str, str] = {}
    #: The parameter mark of the driver.
    PARAM = "?"
    #: An SQL expression for the database clock, seconds since the epoch.
    NOW = ""

    def __init__(self) -> None:
        self._sql: dict[tuple[str, str], str] = {}
        #: Parsed lifecycles by their stored definition (parsing on every change costs).
        self._parsed: dict[str, Lifecycle] = {}

    def sql(self, template: str, **extra: str) -> str:
        """``template`` with this backend's table names, parameter mark and clock
        (and ``extra`` names), formatted once per process."""
        key = (template, repr(sorted(extra.items())) if extra else "")
        found = self._sql.get(key)
        if found is None:
            names = {"p": self.PARAM, "now": self.NOW, **self.TABLES, **extra}
            found = self._sql[key] = template.format(**names)
        return found

    @abstractmethod
    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of a read-only query (none when the store does not exist yet)."""

    @abstractmethod
    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        """Run one statement in its own transaction."""

    def _parse(self, definition: str | None) -> Lifecycle | None:
        """A stored lifecycle (None for none), parsed once per process per definition."""
        if definition is None:
            return None
        found = self._parsed.get(definition)
        if found is None:
            found = self._parsed[definition] = Lifecycle.from_json(json.loads(definition))
        return found

    def register_lifecycle(self, lifecycle: Lifecycle) -> None:
        self._write(self.sql(REGISTER), (lifecycle.kind, json.dumps(lifecycle.to_json())))

    def lifecycle(self, kind: str) -> Lifecycle | None:
        rows = self._read(self.sql(LIFECYCLE), (kind,))
        return self._parse(rows[0][0]) if rows else None

    def get(self, kind: str, id: str) -> Entity | None:
        rows = self._read(self.sql(GET), (kind, id))
        return entity(rows[0]) if rows else None

    def list(
        self,
        kind: str | None = None,
        state: str | None = None,
        substate: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Entity]:
        where, args = self._filters(kind, state, substate)
        rows = self._read(self.sql(LIST, where=where), [*args, limit, offset])
        return [entity(r) for r in rows]

    def count(
        self, kind: str | None = None, state: str | None = None, substate: str | None = None
    ) -> int:
        where, args = self._filters(kind, state, substate)
        rows = self._read(self.sql(COUNT, where=where), args)
        return int(rows[0][0]) if rows else 0

    def history(self, kind: str, id: str) -> list[Change]:
        return [change(r) for r in self._read(self.sql(HISTORY), (kind, id))]

    def _filters(
        self, kind: str | None, state: str | None, substate: str | None
    ) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for column, value in (("kind", kind), ("state", state), ("substate", substate)):
            if value is not None:
                clauses.append(f"{column} = {self.PARAM}")
                args.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def entity(row: Sequence[Any]) -> Entity:
    """An ``ENTITY_COLUMNS`` row as an Entity."""
    kind, id, state, substate, updated, attributes, version = row
    return Entity(kind, id, state, substate, updated, json.loads(attributes), version)


def change(row: Sequence[Any]) -> Change:
    """A ``CHANGE_COLUMNS`` row as a Change."""
    seq, kind, id, from_state, state, from_substate, substate, attributes, at, actor = row
    return Change(
        seq, kind, id, from_state, state, from_substate, substate, json.loads(attributes), at, actor
    )
