"""The embedded state store: one SQLite file, safe for many processes.

WAL mode lets readers run while one writer commits; ``busy_timeout`` makes a
writer wait for the lock instead of failing; every change is one
``BEGIN IMMEDIATE`` transaction (the write lock is taken before the entity is
read, so two racing transitions are serialised and the loser sees the
winner's state). The history table doubles as the outbox: a change is
pending until ``published`` is set.

A store that was never written to is not created by reading it, so a dry run
leaves no file behind. Opening the file applies the state store's pending
migrations (``wsrun/core/migrations/state/sqlite/``, see ``wsrun.core.migrate``);
the queries both state stores share are in ``wsrun.stores.state.sql``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from wsrun.core.db import DbError
from wsrun.core.migrate import enable_wal, migrate_sqlite
from wsrun.stores.state.base import UNSET, Change, StateError, resolve_change
from wsrun.stores.state.sql import (
    CLAIMABLE,
    GET,
    INSERT_CHANGE,
    LIFECYCLE,
    SqlStateStore,
    change,
    entity,
)


def path_from_url(url: str) -> str:
    """``sqlite:///abs/state.db`` -> ``/abs/state.db``; a bare path is itself."""
    return url[len("sqlite://") :] if url.startswith("sqlite://") else url


class SqliteStateStore(SqlStateStore):
    """The state store in one SQLite file (the embedded default)."""

    TABLES = {"entities": "entities", "history": "history", "lifecycles": "lifecycles"}
    PARAM = "?"
    NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.path = os.path.abspath(path_from_url(url))
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()  # one connection, shared by a process's threads

    # ---- connection -----------------------------------------------------------

    def _connect(self, write: bool) -> sqlite3.Connection | None:
        """The connection; None when only reading a store that does not exist yet."""
        if self._db is not None:
            return self._db
        if not write and not os.path.exists(self.path):
            return None
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 30000")
        enable_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        try:  # the tables come from the state store's migrations (wsrun/core/migrations/state/)
            migrate_sqlite(db, "state", self.path)
        except DbError as e:
            db.close()
            raise StateError(f"state store {e}") from None
        self._db = db
        return db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            db = self._connect(write=False)
            return [] if db is None else db.execute(sql, args).fetchall()

    def _write(self, sql: str, args: Sequence[Any] = ()) -> None:
        with self._lock:
            db = self._connect(write=True)
            assert db is not None
            with _immediate(db):
                db.execute(sql, args)

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
        with self._lock:
            db = self._connect(write=True)
            assert db is not None
            with _immediate(db):
                rows = db.execute(self.sql(GET), (kind, id)).fetchall()
                current = entity(rows[0]) if rows else None
                found = db.execute(self.sql(LIFECYCLE), (kind,)).fetchall()
                lifecycle = self._parse(found[0][0]) if found else None
                new_state, new_substate = resolve_change(
                    lifecycle,
                    current,
                    kind,
                    id,
                    state=state,
                    substate=substate,
                    expect_state=expect_state,
                    expect_version=expect_version,
                    create=create,
                )
                now = time.time()
                if current is None:
                    db.execute(
                        "INSERT INTO entities (kind, id, state, substate, attributes, created,"
                        " updated, version) VALUES (?, ?, ?, ?, ?, ?, ?, 1)",
                        (kind, id, new_state, new_substate, given_json, now, now),
                    )
                else:
                    merged = json.dumps({**current.attributes, **given})
                    db.execute(
                        "UPDATE entities SET state=?, substate=?, attributes=?, updated=?,"
                        " version=version+1 WHERE kind=? AND id=?",
                        (new_state, new_substate, merged, now, kind, id),
                    )
                from_state = current.state if current else None
                from_substate = current.substate if current else None
                cursor = db.execute(
                    self.sql(INSERT_CHANGE),
                    (
                        kind,
                        id,
                        from_state,
                        new_state,
                        from_substate,
                        new_substate,
                        given_json,
                        now,
                        actor,
                    ),
                )
                seq = cursor.lastrowid
        assert seq is not None
        return Change(
            seq, kind, id, from_state, new_state, from_substate, new_substate, given, now, actor
        )

    # ---- outbox -----------------------------------------------------------------

    def claim_pending_changes(
        self, consumer: str, limit: int = 100, lease: float = 30.0
    ) -> list[Change]:
        with self._lock:
            db = self._connect(write=False)
            if db is None:
                return []
            with _immediate(db):
                now = time.time()
                # Not a change whose entity has an earlier one leased to
                # another relay: each entity's changes are published in order.
                rows = db.execute(
                    self.sql(CLAIMABLE, now="?1", limit="?2"), (now, limit)
                ).fetchall()
                if rows:
                    db.executemany(
                        "UPDATE history SET claimed_by=?, claim_until=? WHERE seq=?",
                        [(consumer, now + lease, r[0]) for r in rows],
                    )
        return [change(r) for r in rows]

    def mark_published(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._lock:
            db = self._connect(write=True)
            assert db is not None
            with _immediate(db):
                now = time.time()
                db.executemany(
                    "UPDATE history SET published=?, claimed_by=NULL, claim_until=NULL WHERE seq=?",
                    [(now, s) for s in seqs],
                )


@contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken up front (waits up to busy_timeout)."""
    _retry_locked(lambda: db.execute("BEGIN IMMEDIATE"))
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _retry_locked(action: Any, attempts: int = 50) -> None:
    """Run ``action``, retrying while SQLite reports the database locked (a
    few statements, such as switching to WAL, do not wait on busy_timeout)."""
    for attempt in range(attempts):
        try:
            action()
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
