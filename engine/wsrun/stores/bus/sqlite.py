"""The embedded message bus: one SQLite file, shared by the processes of one machine.

Every queued copy of a message is a row. SQLite serialises writers, so a claim
is a single ``UPDATE ... RETURNING`` that picks the oldest ready row and marks
it claimed in one statement: two consumers can never take the same row. The
file is in WAL mode (readers never block the writer) with a busy timeout, so
many processes publish and consume at once.

Waking consumers: ``wait`` polls ``PRAGMA data_version``, which changes when
any other connection commits and costs a few microseconds (it reads SQLite's
shared-memory index, not the file). Only when it changes does the consumer run
the indexed query for a ready message. The poll interval starts at 1 ms after
activity and doubles up to ``POLL_MAX`` (10 ms) when idle: a consumer notices a
message within about 10 ms, and an idle consumer does about a hundred trivial
reads a second (under 1% of a core). Writers wait for
the write lock in half-millisecond steps (SQLite's own busy handler sleeps up
to 100 ms at a time, which showed in the latency's tail). No sockets, files or threads
to clean up after a consumer is killed.

One piece: publish, claim, retry and dead-lettering are transactions on the same
tables and share the wake-up protocol described above.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wsrun.core.db import DbError
from wsrun.core.migrate import enable_wal, migrate_sqlite
from wsrun.stores.bus.base import (
    DEFAULT_BACKOFF,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETENTION,
    Bus,
    BusError,
    BusTimeout,
    Message,
    check_pattern,
    check_purge_status,
    check_selector,
    decode_body,
    parse_duration,
    retry_delay,
    route,
)

#: Longest pause between two looks at the database while waiting.
POLL_MAX = 0.010
#: First pause after something changed.
POLL_MIN = 0.001
#: SQLite's own wait for the write lock, per try (ms); we retry for ``LOCK_TIMEOUT``.
BUSY_SLICE_MS = 2
#: Seconds a write waits for the lock before it fails.
LOCK_TIMEOUT = 30.0
#: Seconds between two removals of done messages past the retention, per process.
PRUNE_EVERY = 60.0

# the body as bytes: a row another client wrote may hold text that is not UTF-8
COLUMNS = (
    "id, selector, CAST(body AS BLOB), queue, attempts, status, error, created, reply_to, correlation_id,"
    " headers, consumer, lease_until, available"
)


def sqlite_path(url: str) -> str:
    """The file of ``sqlite:///abs/path.db`` (also ``sqlite:////abs``) or
    ``sqlite://relative/path.db`` (from the current directory)."""
    parts = urlsplit(url)
    path = parts.netloc + parts.path if parts.netloc else "/" + parts.path.lstrip("/")
    if path in ("", "/"):
        raise BusError(f"{url}: no file in the URL (sqlite:///path/to/bus.db)")
    return os.path.abspath(path)


class SqliteBus(Bus):
    """The bus in one SQLite file. Thread-safe: each thread (and each process
    after a fork) gets its own connection."""

    def __init__(
        self,
        path: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        retention: float = DEFAULT_RETENTION,
        url: str | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.url = url or "sqlite:///" + self.path.lstrip("/")
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.retention = retention
        self._next_prune = 0.0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._db()  # create the schema now: errors show where the bus is opened

    @classmethod
    def from_url(cls, url: str) -> SqliteBus:
        """``sqlite:///path/bus.db?max_attempts=5&backoff=1&retention=7d``."""
        query = parse_qs(urlsplit(url).query)
        try:
            max_attempts = int(query.get("max_attempts", [DEFAULT_MAX_ATTEMPTS])[0])
            backoff = float(query.get("backoff", [DEFAULT_BACKOFF])[0])
            retention = parse_duration(query.get("retention", [DEFAULT_RETENTION])[0])
        except (ValueError, BusError) as e:
            raise BusError(f"{url}: {e}") from None
        return cls(
            sqlite_path(url),
            max_attempts=max_attempts,
            backoff=backoff,
            retention=retention,
            url=url,
        )

    # ---- connections -------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 30000")
        enable_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
        try:  # the tables come from the bus's migrations (wsrun/core/migrations/bus/)
            migrate_sqlite(db, "bus", self.path)
        except DbError as e:
            db.close()
            raise BusError(str(e)) from None
        # From now on a locked database is retried here, in short steps:
        # SQLite's own busy handler sleeps up to 100 ms at a time.
        db.execute(f"PRAGMA busy_timeout = {BUSY_SLICE_MS}")
        self._local.db, self._local.pid = db, os.getpid()
        with self._lock:
            self._connections.append(db)
        return db

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.ProgrammingError:
                    pass  # another thread's connection: closed when that thread ends
            self._connections.clear()
        self._local = threading.local()

    def _transaction(self) -> _Immediate:
        return _Immediate(self._db())

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """One statement that writes, in its own transaction."""
        return _locked_retry(lambda: self._db().execute(sql, args))

    # ---- topology --------------------------------------------------------------

    def declare_queue(self, name: str, patterns: Sequence[str]) -> None:
        if not name:
            raise BusError("a queue needs a name")
        patterns = [check_pattern(p) for p in patterns]
        with self._transaction() as db:
            db.execute(
                "INSERT INTO queues (name, patterns, created) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET patterns=excluded.patterns",
                (name, json.dumps(patterns), time.time()),
            )
            waiting = db.execute("SELECT seq, selector FROM messages WHERE queue=''").fetchall()
            taken = [
                (name, seq) for seq, selector in waiting if route(selector, [(name, patterns)])
            ]
            db.executemany("UPDATE messages SET queue=? WHERE seq=?", taken)

    def delete_queue(self, name: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM messages WHERE queue=?", (name,))
            db.execute("DELETE FROM queues WHERE name=?", (name,))

    def queues(self) -> dict[str, list[str]]:
        rows = self._db().execute("SELECT name, patterns FROM queues ORDER BY name").fetchall()
        return {name: json.loads(patterns) for name, patterns in rows}

    # ---- sending ---------------------------------------------------------------

    def publish(
        self,
        selector: str,
        body: dict[str, Any],
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        keep_unrouted: bool = True,
    ) -> str:
        check_selector(selector)
        origin = uuid.uuid4().hex[:16]
        text, head = _dump(body), json.dumps(headers or {})
        now = time.time()
        with self._transaction() as db:
            rows = db.execute("SELECT name, patterns FROM queues ORDER BY created").fetchall()
            targets = route(selector, [(n, json.loads(p)) for n, p in rows])
            if not targets and keep_unrouted:
                targets = [""]
            db.executemany(
                "INSERT INTO messages (id, origin, selector, body, queue, status, created, available,"
                " reply_to, correlation_id, headers) VALUES (?, ?, ?, ?, ?, 'ready', ?, ?, ?, ?, ?)",
                [
                    (
                        origin if i == 0 else f"{origin}.{i + 1}",
                        origin,
                        selector,
                        text,
                        queue,
                        now,
                        now,
                        reply_to,
                        correlation_id,
                        head,
                    )
                    for i, queue in enumerate(targets)
                ],
            )
        return origin

    def send_to_queue(
        self,
        queue: str,
        selector: str,
        body: dict[str, Any],
        *,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str | None:
        id = uuid.uuid4().hex[:16]
        now = time.time()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM queues WHERE name=?", (queue,)).fetchone() is None:
                return None
            db.execute(
                "INSERT INTO messages (id, origin, selector, body, queue, status, created, available,"
                " correlation_id, headers) VALUES (?, ?, ?, ?, ?, 'ready', ?, ?, ?, ?)",
                (
                    id,
                    id,
                    selector,
                    _dump(body),
                    queue,
                    now,
                    now,
                    correlation_id,
                    _dump(headers or {}),
                ),
            )
        return id

    # ---- consuming -------------------------------------------------------------

    def claim(self, queue: str, consumer: str, lease: float = DEFAULT_LEASE) -> Message | None:
        # Look before taking the write lock: consumers of an empty queue then
        # never queue up behind the writers of a busy bus.
        db, now = self._db(), time.time()
        ready = db.execute(
            "SELECT 1 FROM messages WHERE queue=? AND status='ready' AND available<=? LIMIT 1",
            (queue, now),
        ).fetchone()
        if ready:
            message = self._claim_ready(queue, consumer, lease)
            if message is not None:
                return message
        expired = db.execute(
            "SELECT 1 FROM messages WHERE queue=? AND status='claimed' AND lease_until<? LIMIT 1",
            (queue, now),
        ).fetchone()
        if expired and self._reclaim_expired(queue):
            return self._claim_ready(queue, consumer, lease)
        return None

    def _claim_ready(self, queue: str, consumer: str, lease: float) -> Message | None:
        now = time.time()
        rows = self._write(
            "UPDATE messages SET status='claimed', consumer=?, lease_until=?, attempts=attempts+1"
            " WHERE seq = (SELECT seq FROM messages WHERE queue=? AND status='ready'"
            " AND available<=? ORDER BY available, seq LIMIT 1)"
            f" RETURNING {COLUMNS}",
            (consumer, now + lease, queue, now),
        ).fetchall()
        return _message(rows[0]) if rows else None

    def _reclaim_expired(self, queue: str) -> int:
        """Claims whose consumer stopped renewing them (it died) become ready
        again, or dead when that was their last attempt."""
        now = time.time()
        cursor = self._write(
            "UPDATE messages SET"
            " status=CASE WHEN attempts>=? THEN 'dead' ELSE 'ready' END,"
            " error=CASE WHEN attempts>=? THEN 'lease expired: consumer ' || consumer ||"
            " ' stopped without finishing' ELSE error END,"
            " available=?, lease_until=NULL"
            " WHERE queue=? AND status='claimed' AND lease_until<?",
            (self.max_attempts, self.max_attempts, now, queue, now),
        )
        return cursor.rowcount

    def extend(self, message: Message, lease: float = DEFAULT_LEASE) -> bool:
        until = time.time() + lease
        cursor = self._write(
            "UPDATE messages SET lease_until=? WHERE id=? AND status='claimed' AND consumer=?",
            (until, message.id, message.consumer),
        )
        if cursor.rowcount:
            message.lease_until = until
        return bool(cursor.rowcount)

    def ack(self, message: Message) -> None:
        self._finish(message, "UPDATE messages SET status='done', lease_until=NULL", ())
        message.status = "done"
        if self.retention and time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY
            self.purge("done", self.retention)

    def fail(
        self, message: Message, error: str, *, retry: bool = True, delay: float | None = None
    ) -> str:
        if retry and message.attempts < self.max_attempts:
            available = time.time() + retry_delay(message.attempts, self.backoff, delay)
            self._finish(
                message,
                "UPDATE messages SET status='ready', error=?, available=?, lease_until=NULL",
                (error, available),
            )
            message.status, message.available = "ready", available
        else:
            self._finish(
                message, "UPDATE messages SET status='dead', error=?, lease_until=NULL", (error,)
            )
            message.status = "dead"
        message.error = error
        return message.status

    def release(self, message: Message) -> None:
        self._finish(
            message,
            "UPDATE messages SET status='ready', attempts=MAX(0, attempts-1), lease_until=NULL",
            (),
        )
        message.status = "ready"

    def _finish(self, message: Message, update: str, args: tuple[Any, ...]) -> None:
        """Apply ``update`` to a message this consumer still holds; a claim
        lost to lease expiry is left to whoever took it over."""
        self._write(
            f"{update} WHERE id=? AND status='claimed' AND consumer=?",
            (*args, message.id, message.consumer),
        )

    def wait(self, queue: str | Sequence[str], timeout: float) -> bool:
        names = [queue] if isinstance(queue, str) else list(queue)
        marks = ",".join("?" * len(names))
        db = self._db()
        deadline = time.monotonic() + timeout
        version: int | None = None
        wake_at = float("inf")  # epoch time a delayed retry or a lease comes due
        interval = POLL_MIN
        while True:
            current = db.execute("PRAGMA data_version").fetchone()[0]
            if current != version:
                version, interval = current, POLL_MIN
                ready, lease = db.execute(
                    f"SELECT (SELECT MIN(available) FROM messages WHERE queue IN ({marks}) AND status='ready'),"
                    f" (SELECT MIN(lease_until) FROM messages WHERE queue IN ({marks}) AND status='claimed')",
                    (*names, *names),
                ).fetchone()
                wake_at = min(x for x in (ready, lease, float("inf")) if x is not None)
            now = time.time()
            if wake_at <= now:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(max(0.0, min(interval, left, wake_at - now)))
            interval = min(interval * 2, POLL_MAX)

    # ---- request / reply ----------------------------------------------------------

    def call(self, selector: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        correlation_id = uuid.uuid4().hex
        queue = f"reply.{correlation_id}"
        self.declare_queue(queue, [])
        try:
            self.publish(selector, body, reply_to=queue, correlation_id=correlation_id)
            deadline = time.monotonic() + timeout
            while True:
                reply = self.claim(queue, "caller")
                if reply is not None:
                    self.ack(reply)
                    return reply.body
                left = deadline - time.monotonic()
                if left <= 0 or not self.wait(queue, left):
                    raise BusTimeout(f"no reply to {selector} within {timeout:g} s")
        finally:
            self.delete_queue(queue)

    # ---- inspecting --------------------------------------------------------------

    def messages(
        self,
        queue: str | None = None,
        status: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Message]:
        where, args = [], []
        if queue is not None:
            where.append("queue=?")
            args.append(queue)
        if status is not None:
            where.append("status=?")
            args.append(status)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = (
            self._db()
            .execute(
                f"SELECT {COLUMNS} FROM messages {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            )
            .fetchall()
        )
        return [_message(r) for r in rows]

    def get(self, id: str) -> Message | None:
        db = self._db()
        row = db.execute(f"SELECT {COLUMNS} FROM messages WHERE id=?", (id,)).fetchone()
        if row is None:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id LIKE ? ORDER BY seq LIMIT 2",
                (id.replace("%", "").replace("_", "") + "%",),
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return _message(row) if row else None

    def resend(self, id: str) -> Message:
        found = self.get(id)
        if found is None:
            raise BusError(f"no message '{id}'")
        if found.status not in ("dead", "done"):
            raise BusError(
                f"message {found.id} is {found.status}; only dead or done ones are resent"
            )
        self._write(
            "UPDATE messages SET status='ready', attempts=0, available=?, consumer=NULL,"
            " lease_until=NULL WHERE id=?",
            (time.time(), found.id),
        )
        resent = self.get(found.id)
        assert resent is not None
        return resent

    def counts(self) -> dict[str, dict[str, int]]:
        db = self._db()
        out: dict[str, dict[str, int]] = {name: {} for name in self.queues()}
        for queue, status, n in db.execute(
            "SELECT queue, status, COUNT(*) FROM messages GROUP BY queue, status"
        ):
            out.setdefault(queue, {})[status] = n
        return out

    def purge(
        self,
        status: str = "done",
        older_than: float = 0.0,
        queue: str | None = None,
    ) -> int:
        where, args = (
            "status=? AND created<?",
            [check_purge_status(status), time.time() - older_than],
        )
        if queue is not None:
            where += " AND queue=?"
            args.append(queue)
        return self._write(f"DELETE FROM messages WHERE {where}", tuple(args)).rowcount


class _Immediate:
    """``with`` block holding SQLite's write lock from the start (BEGIN
    IMMEDIATE), so a read-then-write cannot race another process."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        _locked_retry(lambda: self.db.execute("BEGIN IMMEDIATE"))
        return self.db

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _locked_retry(write: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
    """Run ``write``, retrying every half millisecond or so while another
    connection holds the write lock (up to ``LOCK_TIMEOUT``)."""
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            return write()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


def _dump(value: Any) -> str:
    if not isinstance(value, dict):
        raise BusError(f"a message body must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise BusError(f"a message body must be JSON: {e}") from None


def _message(row: tuple[Any, ...]) -> Message:
    body, invalid = decode_body(row[2])
    return Message(
        id=row[0],
        selector=row[1],
        body=body,
        invalid=invalid,
        queue=row[3],
        attempts=row[4],
        status=row[5],
        error=row[6],
        created=row[7],
        reply_to=row[8],
        correlation_id=row[9],
        headers=json.loads(row[10] or "{}"),
        consumer=row[11],
        lease_until=row[12],
        available=row[13],
    )
