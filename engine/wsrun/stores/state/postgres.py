"""The state store in PostgreSQL: one database shared by workers on many hosts.

Open it with ``open_state_store("postgresql://user@host/db")``. The tables
(``state_entities``, ``state_history``, ``state_lifecycles``) come from the
state store's migrations (``wsrun/core/migrations/state/postgresql/``) and are
created by ``wsrun db upgrade``; a database whose schema is behind is refused
with that command in the message. The queries both state stores share are in
``wsrun.stores.state.sql``; this module keeps the row locking that differs.

Every change is one transaction that locks the entity's row
(``SELECT ... FOR UPDATE``) before it reads the state and the kind's
lifecycle, so racing workers are serialised and the loser decides against
the winner's state: no lost update, no illegal transition. A new entity is
inserted with ``ON CONFLICT DO NOTHING``; when another host created it at the
same moment, the change is decided again against that entity. The history
doubles as the outbox: relays claim pending changes with
``FOR UPDATE SKIP LOCKED`` and a lease, never one whose entity has an earlier
change still unpublished elsewhere, so each entity's changes reach the bus in
order. Times (``updated``, ``at``, leases) come from the database's clock, so
hosts with skewed clocks agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from wsrun.stores.state.base import UNSET, Change, StateConflict, StateError, resolve_change
from wsrun.stores.state.sql import CLAIMABLE, SqlStateStore, change, entity

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

#: The database's clock, in seconds since the epoch.
_NOW = "extract(epoch from clock_timestamp())::double precision"

# The entity, locked until the transaction ends, with the kind's lifecycle and
# the time: one round trip. The row is absent (NULLs) for an unknown entity.
_LOCK_ENTITY = f"""
WITH locked AS (
    SELECT state, substate, updated, attributes, version FROM state_entities
    WHERE kind = %(kind)s AND id = %(id)s FOR UPDATE
)
SELECT {_NOW}, (SELECT definition FROM state_lifecycles WHERE kind = %(kind)s),
       locked.state, locked.substate, locked.updated, locked.attributes, locked.version
FROM (SELECT 1) AS one LEFT JOIN locked ON true
"""
_CREATE = """
WITH created AS (
    INSERT INTO state_entities (kind, id, state, substate, attributes, created, updated, version)
    VALUES (%(kind)s, %(id)s, %(state)s, %(substate)s, %(attributes)s, %(at)s, %(at)s, 1)
    ON CONFLICT (kind, id) DO NOTHING
    RETURNING kind
)
INSERT INTO state_history (kind, id, from_state, state, from_substate, substate, attributes, at, actor)
SELECT %(kind)s, %(id)s, NULL, %(state)s, NULL, %(substate)s, %(given)s, %(at)s, %(actor)s
FROM created
RETURNING seq
"""
_UPDATE = """
WITH updated AS (
    UPDATE state_entities SET state = %(state)s, substate = %(substate)s,
        attributes = %(attributes)s, updated = %(at)s, version = version + 1
    WHERE kind = %(kind)s AND id = %(id)s
    RETURNING kind
)
INSERT INTO state_history (kind, id, from_state, state, from_substate, substate, attributes, at, actor)
SELECT %(kind)s, %(id)s, %(from_state)s, %(state)s, %(from_substate)s, %(substate)s,
       %(given)s, %(at)s, %(actor)s
FROM updated
RETURNING seq
"""
# The claimable changes (wsrun.stores.state.sql.CLAIMABLE) are locked without waiting
# for rows another relay is claiming right now.
_SKIP_LOCKED = " FOR UPDATE SKIP LOCKED"
# Of the locked changes, those with an earlier unpublished change of the same
# entity outside the batch (leased, or being claimed by another relay).
_BLOCKED = """
SELECT h.seq FROM state_history h WHERE h.seq = ANY(%(seqs)s) AND EXISTS (
    SELECT 1 FROM state_history e WHERE e.kind = h.kind AND e.id = h.id AND e.seq < h.seq
    AND e.published IS NULL AND NOT e.seq = ANY(%(seqs)s))
"""


class PostgresStateStore(SqlStateStore):
    """The state store in a PostgreSQL database (``postgresql://...``)."""

    TABLES = {
        "entities": "state_entities",
        "history": "state_history",
        "lifecycles": "state_lifecycles",
    }
    PARAM = "%s"
    NOW = _NOW

    def __init__(self, url: str) -> None:
        from wsrun.core import db, migrate

        super().__init__()
        #: The URL as shown in effects, outputs and messages: its password masked.
        self.url = db.mask(url)
        self._url = url
        try:
            migrate.require_current(url, "state")
        except db.DbError as e:
            raise StateError(f"state store: {e}") from None
        self._pool: ConnectionPool | None = None
        self._pool_pid = 0

    # ---- connection -----------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection from the process's pool for this database; a database
        that cannot be reached (or refuses a statement) is a one-line StateError."""
        import psycopg
        from psycopg_pool import PoolTimeout

        from wsrun.core import db

        try:
            # The pool is looked up once per process: building its key parses the URL.
            if self._pool is None or self._pool_pid != os.getpid() or self._pool.closed:
                self._pool, self._pool_pid = db.pool(self._url), os.getpid()
            with self._pool.connection() as conn:
                yield conn
        except db.DbError as e:
            raise StateError(f"state store: {e}") from None
        except (PoolTimeout, psycopg.Error) as e:
            first = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise StateError(f"state store {self.url}: {first}") from None

    def close(self) -> None:
        """Nothing of its own to release: the connection pool is the process's."""

    def _read(self, sql: str, args: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        with self._connection() as conn:
            conn.execute(sql, args)

    # ---- changes ----------------------------------------------------------------

    def transition(
        self,
        kind: str,
        id: str,
        *,
        state: str | None = None,
        substate: Any = UNSET,
        attributes: Mapping[str, Any] | None = None,
        expect_state: str | Sequence[str] | None = None,
        expect_version: int | None = None,
        create: bool = False,
        actor: str = "",
    ) -> Change:
        given = dict(attributes or {})
        given_json = json.dumps(given)  # refuse what cannot be stored before locking
        with self._connection() as conn, conn.transaction():
            # Twice at most: a second pass only when another host created the
            # entity between our read and our insert.
            for _ in range(2):
                now, definition, *row = conn.execute(
                    _LOCK_ENTITY, {"kind": kind, "id": id}
                ).fetchone()
                current = entity((kind, id, *row)) if row[0] is not None else None
                new_state, new_substate = resolve_change(
                    self._parse(definition),
                    current,
                    kind,
                    id,
                    state=state,
                    substate=substate,
                    expect_state=expect_state,
                    expect_version=expect_version,
                    create=create,
                )
                values = {
                    "kind": kind,
                    "id": id,
                    "state": new_state,
                    "substate": new_substate,
                    "given": given_json,
                    "at": now,
                    "actor": actor,
                }
                if current is None:
                    values["attributes"] = given_json
                    found = conn.execute(_CREATE, values).fetchone()
                else:
                    values["attributes"] = json.dumps({**current.attributes, **given})
                    values["from_state"] = current.state
                    values["from_substate"] = current.substate
                    found = conn.execute(_UPDATE, values).fetchone()
                if found is not None:
                    return Change(
                        found[0],
                        kind,
                        id,
                        current.state if current else None,
                        new_state,
                        current.substate if current else None,
                        new_substate,
                        given,
                        now,
                        actor,
                    )
        raise StateConflict(f"{kind} {id} changed while it was being created; try again")

    # ---- outbox -----------------------------------------------------------------

    def claim_pending_changes(
        self, consumer: str, limit: int = 100, lease: float = 30.0
    ) -> list[Change]:
        with self._connection() as conn, conn.transaction():
            rows = conn.execute(self.sql(CLAIMABLE, limit="%s") + _SKIP_LOCKED, (limit,)).fetchall()
            if not rows:
                return []
            seqs = [r[0] for r in rows]
            blocked = {r[0] for r in conn.execute(_BLOCKED, {"seqs": seqs}).fetchall()}
            rows = [r for r in rows if r[0] not in blocked]
            if rows:
                conn.execute(
                    f"UPDATE state_history SET claimed_by = %s, claim_until = {_NOW} + %s"
                    " WHERE seq = ANY(%s)",
                    (consumer, lease, [r[0] for r in rows]),
                )
        return [change(r) for r in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._connection() as conn:
            conn.execute(
                f"UPDATE state_history SET published = {_NOW}, claimed_by = NULL,"
                " claim_until = NULL WHERE seq = ANY(%s)",
                (sorted(seqs),),
            )
