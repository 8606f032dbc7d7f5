"""The archive's metadata database: ingestions, products, files, provenance.

Two kinds: SQLite (a file beside the embedded archive's content, one writer at
a time through a file lock) and PostgreSQL (one database shared by many hosts).
Both speak the same SQL, written once in ``SqlMetadata``; the subclasses say
how to connect, what the tables are called and how writers exclude each other.

How concurrent writers stay correct on PostgreSQL, where ingests on several
hosts run at once:

- Each ingest holds a shared advisory lock while it stores files and commits.
  Removing stored content that nothing refers to (after a failed ingest, a
  reingest, a killed process) needs the exclusive lock, which is only granted
  when no ingest is in flight; until then such content is listed in
  ``archive_unreferenced``. So no content an ingest is about to refer to is
  ever removed under it.
- The commit takes a transaction-level advisory lock, re-reads which science
  products already exist, refuses or replaces them, and inserts; a unique index
  on (ingestion_path, filename) of science products makes a double ingest
  impossible even without the lock.

One piece: the SQLite and PostgreSQL metadata speak the same SQL through
``SqlMetadata``; the subclasses only connect, name tables and lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from wsrun.core.db import DbError
from wsrun.core.migrate import check_sqlite, enable_wal, migrate_sqlite
from wsrun.core.spool import Spool
from wsrun.stores.archive.content import AlreadyIngested, ArchiveError

if TYPE_CHECKING:
    from wsrun.stores.archive.records import IngestRequest, ProductRecord, StoredFile

T = TypeVar("T")

#: A stored file's row: (product locator, name, size, sha256).
FileRow = tuple[str, str, int, str]
#: Rows per INSERT batch, and rows fetched at a time by a streaming read: an
#: execution block of a million files is never a list of a million rows.
ROWS_AT_ONCE = 5000


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` as lists of at most ``size``, read as they are needed."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


class ArchiveMetadata(ABC):
    """What an archive records about its products, and how its writers take turns."""

    @abstractmethod
    def writer(self) -> contextlib.AbstractContextManager[bool]:
        """Held for a whole ingest (storing files, then the commit); yields whether
        this writer excludes all others (and so may remove unreferenced content)."""

    @abstractmethod
    def sweeper(self) -> contextlib.AbstractContextManager[bool]:
        """Exclusive access for removing unreferenced content, if it can be had
        now; yields whether it was granted."""

    def track(self, shas: list[str]) -> None:
        """Note content that may end up unreferenced (before it is placed), for a
        later sweep. Writers that exclude all others need not."""
        return None

    def candidates(self, limit: int) -> list[str] | None:
        """Up to ``limit`` of the content noted by ``track``, oldest first; None
        when the sweep must list the store."""
        return None

    def forget(self, shas: list[str]) -> None:
        """Drop swept content from the notes."""
        return None

    @abstractmethod
    def commit(self, request: IngestRequest, files: Iterable[FileRow]) -> Spool[str]:
        """Record ``request`` and its stored ``files`` in one transaction,
        replacing the science products it re-ingests (refused unless
        ``request.reingest``); the content the replaced products used (spooled:
        a replaced execution block may hold a million files)."""

    @abstractmethod
    def existing(
        self, ingestion_path: str, filenames: list[str], files: bool = True
    ) -> list[ProductRecord]:
        """Science products ingested from ``ingestion_path`` under these names
        (without their files unless ``files``)."""

    @abstractmethod
    def ingestion(self, locator: str, files: bool = True) -> tuple[Any, list[ProductRecord]]:
        """The manifest and every product of the ingestion ``locator`` belongs to
        (without their files unless ``files``)."""

    @abstractmethod
    def stored_files(self, locator: str) -> Iterator[StoredFile]:
        """A product's files, read as they are needed, sorted by name as Python
        sorts strings (code point order), whatever the database's collation."""

    @abstractmethod
    def file_counts(self, locators: list[str]) -> dict[str, int]:
        """How many files each product has (products without files left out)."""

    @abstractmethod
    def products(self) -> list[ProductRecord]:
        """Every product, oldest first (files and links not filled in)."""

    @abstractmethod
    def product(self, locator: str) -> ProductRecord | None:
        """One product with its files, provenance and ancillary products."""

    @abstractmethod
    def records(self, locators: list[str], files: bool = True) -> list[ProductRecord]:
        """Several products as ``product`` gives them, in order (unknown ones
        left out; without their files unless ``files``)."""

    @abstractmethod
    def files(self) -> list[tuple[str, str, int, str]]:
        """(locator, name, size, sha256) of every stored file of every product."""

    @abstractmethod
    def referenced(self, shas: list[str]) -> set[str]:
        """Which of ``shas`` some product's file refers to."""

    @abstractmethod
    def all_referenced(self) -> set[str]:
        """Every sha256 some product's file refers to."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class SqlMetadata(ArchiveMetadata):
    """The queries, in SQL both SQLite and PostgreSQL run. Statements name tables
    as ``{products}`` and take ``?`` parameters; subclasses map both."""

    #: Logical table name -> real name.
    TABLES: dict[str, str] = {}
    #: The column giving insertion order.
    ORDER = "rowid"
    PARAM = "?"
    #: How ``ORDER BY name`` sorts by code point (SQLite's default, BINARY, does).
    BYTEWISE = ""

    def __init__(self) -> None:
        self._sql_cache: dict[str, str] = {}

    def sql(self, text: str) -> str:
        """``text`` with this backend's table names and parameter style."""
        found = self._sql_cache.get(text)
        if found is None:
            found = text.format(**self.TABLES, order=self.ORDER).replace("?", self.PARAM)
            self._sql_cache[text] = found
        return found

    @abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (``sql`` already mapped)."""

    @abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        """One write transaction that excludes other commits; statements inside go
        through ``_exec``; reads inside through ``_read``."""

    @abstractmethod
    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """One statement inside ``_transaction`` (``sql`` already mapped)."""

    @abstractmethod
    def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """One statement for each of ``rows`` inside ``_transaction``, in one go."""

    @abstractmethod
    def _execute_each(self, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """Rows of one read inside ``_transaction``, fetched ``ROWS_AT_ONCE`` at a time."""

    @abstractmethod
    def _stream(self, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """Rows of one read outside any transaction, fetched ``ROWS_AT_ONCE`` at a time."""

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Every write of an ingest goes through here or ``_exec_many`` (tests inject
        failures)."""
        return self._execute(self.sql(sql), args)

    def _exec_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self._execute_many(self.sql(sql), rows)

    def _read_each(self, sql: str, args: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """A read inside the transaction whose rows are too many to hold."""
        return self._execute_each(self.sql(sql), args)

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read inside the transaction."""
        return self._execute(self.sql(sql), args)

    def q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction."""
        return self._query(self.sql(sql), args)

    def _track_replaced(self, shas: Iterable[str]) -> None:
        """Inside the commit: note the replaced products' content for the sweep."""

    # ---- writing ----------------------------------------------------------

    def commit(self, request: IngestRequest, files: Iterable[FileRow]) -> Spool[str]:
        now = time.time()
        names = list(dict.fromkeys(p.filename for p in request.products))
        with self._transaction():
            replaced = [
                (loc, name)
                for name in names
                for (loc,) in self._read(
                    "SELECT locator FROM {products}"
                    " WHERE ingestion_path=? AND filename=? AND science=1",
                    (request.ingestion_path, name),
                )
            ]
            if replaced and not request.reingest:
                raise AlreadyIngested(
                    f"{replaced[0][1]} from {request.ingestion_path} is already ingested as "
                    f"{replaced[0][0]}"
                )
            old_blobs: Spool[str] = Spool()
            ingestions = {
                i
                for loc, _ in replaced
                for (i,) in self._read("SELECT ingestion FROM {products} WHERE locator=?", (loc,))
            }
            for ingestion in sorted(ingestions):
                self._drop_ingestion(ingestion, old_blobs)
            self._track_replaced(old_blobs)
            [(ingestion_id,)] = self._exec(
                "INSERT INTO {ingestions} (telescope, ingestion_path, ingested, manifest, metadata)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (
                    request.telescope,
                    request.ingestion_path,
                    now,
                    json.dumps(request.manifest),
                    json.dumps(request.metadata),
                ),
            )
            products = list(request.all_products())
            self._exec_many(
                "INSERT INTO {products} (locator, ingestion, telescope, type, filename,"
                " ingestion_path, science, parent, ingested) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        product.locator,
                        ingestion_id,
                        request.telescope,
                        product.type,
                        product.filename,
                        request.ingestion_path,
                        int(science),
                        parent,
                        now,
                    )
                    for product, parent, science in products
                ],
            )
            for batch in batches(files, ROWS_AT_ONCE):
                self._exec_many(
                    "INSERT INTO {files} (locator, name, size, sha256) VALUES (?, ?, ?, ?)",
                    batch,  # type: ignore[arg-type]  # FileRow is a tuple
                )
            self._exec_many(
                "INSERT INTO {provenance} (product, input) VALUES (?, ?)",
                [
                    (product.locator, input_)
                    for product in request.products
                    for input_ in dict.fromkeys(request.inputs)
                ],
            )
        return old_blobs

    def _drop_ingestion(self, ingestion: int, blobs: Spool[str]) -> None:
        """Delete an ingestion's records; the content its files used goes to ``blobs``."""
        locs = [
            r[0]
            for r in self._read("SELECT locator FROM {products} WHERE ingestion=?", (ingestion,))
        ]
        for loc in locs:
            for (sha,) in self._read_each("SELECT sha256 FROM {files} WHERE locator=?", (loc,)):
                blobs.append(sha)
            self._exec("DELETE FROM {files} WHERE locator=?", (loc,))
            self._exec("DELETE FROM {provenance} WHERE product=?", (loc,))
        self._exec("DELETE FROM {products} WHERE ingestion=?", (ingestion,))
        self._exec("DELETE FROM {ingestions} WHERE id=?", (ingestion,))

    # ---- reading ----------------------------------------------------------

    def referenced(self, shas: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk in self._chunks(list(dict.fromkeys(shas))):
            among = ", ".join("?" * len(chunk))
            sql = f"SELECT sha256 FROM {{files}} WHERE sha256 IN ({among})"
            found.update(r[0] for r in self.q(sql, chunk))
        return found

    def _chunks(self, items: list[str]) -> Iterator[tuple[str, ...]]:
        """``items`` in pieces small enough for one ``IN (...)`` each."""
        for i in range(0, len(items), self.BATCH):
            yield tuple(items[i : i + self.BATCH])

    def all_referenced(self) -> set[str]:
        return {r[0] for r in self.q("SELECT DISTINCT sha256 FROM {files}")}

    def files(self) -> list[tuple[str, str, int, str]]:
        rows = self.q("SELECT locator, name, size, sha256 FROM {files} ORDER BY locator, name")
        return [(loc, name, int(size), sha) for loc, name, size, sha in rows]

    def existing(
        self, ingestion_path: str, filenames: list[str], files: bool = True
    ) -> list[ProductRecord]:
        by_name: dict[str, list[str]] = {}
        for chunk in self._chunks(list(dict.fromkeys(filenames))):
            among = ", ".join("?" * len(chunk))
            for locator, name in self.q(
                "SELECT locator, filename FROM {products} WHERE ingestion_path=? AND science=1"
                f" AND filename IN ({among})",
                (ingestion_path, *chunk),
            ):
                by_name.setdefault(name, []).append(locator)
        locators = [loc for name in dict.fromkeys(filenames) for loc in by_name.get(name, [])]
        return self.records(locators, files)

    def ingestion(self, locator: str, files: bool = True) -> tuple[Any, list[ProductRecord]]:
        rows = self.q(
            "SELECT i.id, i.manifest FROM {ingestions} i JOIN {products} p ON p.ingestion=i.id"
            " WHERE p.locator=?",
            (locator,),
        )
        if not rows:
            return None, []
        ingestion, manifest = rows[0]
        locs = self.q(
            "SELECT locator FROM {products} WHERE ingestion=? ORDER BY {order}", (ingestion,)
        )
        return json.loads(manifest), self.records([r[0] for r in locs], files)

    def stored_files(self, locator: str) -> Iterator[StoredFile]:
        from wsrun.stores.archive.records import StoredFile

        sql = self.sql(
            f"SELECT name, size, sha256 FROM {{files}} WHERE locator=? ORDER BY name{self.BYTEWISE}"
        )
        for name, size, sha in self._stream(sql, (locator,)):
            yield StoredFile(name, int(size), sha)

    def file_counts(self, locators: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for chunk in self._chunks(locators):
            among = ", ".join("?" * len(chunk))
            sql = f"SELECT locator, count(*) FROM {{files}} WHERE locator IN ({among}) GROUP BY locator"
            counts.update((loc, int(n)) for loc, n in self.q(sql, chunk))
        return counts

    _COLUMNS = "locator, type, telescope, filename, ingestion_path, ingested, science, parent"

    def _record(self, row: tuple[Any, ...]) -> ProductRecord:
        from wsrun.stores.archive.records import ProductRecord

        loc, type_, tel, filename, path, ingested, science, parent = row
        return ProductRecord(loc, type_, tel, filename, path, ingested, bool(science), parent)

    def products(self) -> list[ProductRecord]:
        rows = self.q(f"SELECT {self._COLUMNS} FROM {{products}} ORDER BY ingested, {{order}}")
        return [self._record(r) for r in rows]

    def product(self, locator: str) -> ProductRecord | None:
        found = self.records([locator])
        return found[0] if found else None

    #: Locators per query of ``records`` (SQLite allows 32,766 parameters).
    BATCH = 500

    def records(self, locators: list[str], files: bool = True) -> list[ProductRecord]:
        """Products with their files (unless not ``files``), provenance and
        ancillary products, in the order of ``locators`` (unknown ones left
        out): a few queries for all."""
        from wsrun.stores.archive.records import StoredFile

        found: dict[str, ProductRecord] = {}
        for chunk in self._chunks(locators):
            among = ", ".join("?" * len(chunk))
            for row in self.q(
                f"SELECT {self._COLUMNS} FROM {{products}} WHERE locator IN ({among})", chunk
            ):
                found[row[0]] = self._record(row)
            for loc, name, size, sha in (
                self.q(
                    f"SELECT locator, name, size, sha256 FROM {{files}} WHERE locator IN ({among})"
                    " ORDER BY name",
                    chunk,
                )
                if files
                else ()
            ):
                found[loc].files.append(StoredFile(name, int(size), sha))
            for product, input_ in self.q(
                f"SELECT product, input FROM {{provenance}} WHERE product IN ({among})"
                " ORDER BY input",
                chunk,
            ):
                found[product].inputs.append(input_)
            for product, input_ in self.q(
                f"SELECT product, input FROM {{provenance}} WHERE input IN ({among})"
                " ORDER BY product",
                chunk,
            ):
                if input_ in found:
                    found[input_].outputs.append(product)
            for loc, parent in self.q(
                f"SELECT locator, parent FROM {{products}} WHERE parent IN ({among})"
                " ORDER BY filename",
                chunk,
            ):
                if parent in found:
                    found[parent].ancillary.append(loc)
        return [found[loc] for loc in locators if loc in found]


class SqliteMetadata(SqlMetadata):
    """``archive.db`` in the embedded archive's directory; a file lock beside it
    lets one writer (ingest or sweep) work at a time."""

    TABLES = {t: t for t in ("ingestions", "products", "files", "provenance")}

    def __init__(self, root: str, create: bool = True) -> None:
        super().__init__()
        self.root = root
        self.db_path = os.path.join(root, "archive.db")
        if not create:
            # Read only: nothing is created, not even the database.
            if not os.path.exists(self.db_path):
                raise ArchiveError(f"{root}: no archive here")
            self.db = sqlite3.connect(
                f"file:{self.db_path}?mode=ro", uri=True, timeout=30, isolation_level=None
            )
            self.db.execute("PRAGMA busy_timeout = 30000")
            if not self._query("SELECT 1 FROM sqlite_master WHERE name = 'products'"):
                self.db.close()  # being created by another process right now
                raise ArchiveError(f"{root}: no archive here")
            try:  # a reader does not migrate, but refuses what a newer wsrun wrote
                check_sqlite(self.db, "archive", self.db_path)
            except DbError as e:
                self.db.close()
                raise ArchiveError(str(e)) from None
            return
        os.makedirs(root, exist_ok=True)
        # Under the writers' lock: two processes setting up a new database at
        # once fail ("database is locked": switching to WAL does not wait).
        with self._locked():
            self.db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 30000")
            enable_wal(self.db)
            # The tables come from the archive's migrations (wsrun/core/migrations/archive/),
            # each one transaction: a reader sees all of a migration's tables or none.
            try:
                migrate_sqlite(self.db, "archive", self.db_path)
            except DbError as e:
                self.db.close()
                raise ArchiveError(str(e)) from None

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[bool]:
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def writer(self) -> contextlib.AbstractContextManager[bool]:
        return self._locked()

    def sweeper(self) -> contextlib.AbstractContextManager[bool]:
        return self._locked()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.db.executemany(sql, rows)

    def _execute_each(self, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        cursor = self.db.execute(sql, args)
        try:
            while rows := cursor.fetchmany(ROWS_AT_ONCE):
                yield from rows
        finally:
            cursor.close()

    _stream = _execute_each


class PostgresMetadata(SqlMetadata):
    """Tables ``archive_*`` of a PostgreSQL database (``wsrun db upgrade`` creates them)."""

    TABLES = {t: f"archive_{t}" for t in ("ingestions", "products", "files", "provenance")}
    ORDER = "seq"
    PARAM = "%s"
    BYTEWISE = ' COLLATE "C"'
    _WRITERS = "hashtext('wsrun_archive_writers:' || current_schema())"
    _COMMITS = "hashtext('wsrun_archive_commits:' || current_schema())"

    def __init__(self, url: str) -> None:
        from wsrun.core import db, migrate

        super().__init__()
        self.url = url
        try:
            migrate.require_current(url, "archive")
        except db.DbError as e:
            raise ArchiveError(str(e)) from None
        self._tx: Any = None
        #: The connection holding the writer's lock, during an ingest.
        self._writer_conn: Any = None

    def close(self) -> None:
        """The pool is shared by the process; nothing of this archive's own to release."""

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection; the database unreachable is an ArchiveError."""
        from wsrun.core import db

        try:
            with db.connection(self.url) as conn:
                yield conn
        except db.DbError as e:
            raise ArchiveError(str(e)) from None

    @contextlib.contextmanager
    def _session_lock(self, sql: str) -> Iterator[tuple[bool, Any]]:
        """A connection of its own holding an advisory lock for the block (a
        killed process's connection closes, which releases it): (granted, connection)."""
        from wsrun.core import db

        try:
            conn = db.connect(self.url)
        except db.DbError as e:
            raise ArchiveError(str(e)) from None
        try:
            row = conn.execute(sql.format(key=self._WRITERS)).fetchone()
            yield (bool(row[0]) if row and row[0] is not None else True), conn
        finally:
            # Released before returning: the server handles a closed connection
            # asynchronously, and a sweep right after must find the lock free.
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock_all()")
            conn.close()

    def writer(self) -> contextlib.AbstractContextManager[bool]:
        @contextlib.contextmanager
        def shared() -> Iterator[bool]:
            with self._session_lock("SELECT pg_advisory_lock_shared({key})") as (_, conn):
                # Notes of stored content need not wait for the disk: losing one in
                # a server crash leaves an unswept file, never a missing one.
                conn.execute("SET synchronous_commit TO off")
                self._writer_conn = conn
                try:
                    yield False
                finally:
                    self._writer_conn = None

        return shared()

    @contextlib.contextmanager
    def sweeper(self) -> Iterator[bool]:
        with self._session_lock("SELECT pg_try_advisory_lock({key})") as (granted, _):
            yield granted

    def track(self, shas: list[str]) -> None:
        if self._writer_conn is not None:
            self._note(self._writer_conn, shas)
            return
        with self._connection() as conn:
            self._note(conn, shas)

    def _note(self, conn: Any, shas: Iterable[str]) -> None:
        sql = (
            "INSERT INTO archive_unreferenced (sha256, since) VALUES (%s, %s)"
            " ON CONFLICT (sha256) DO NOTHING"
        )
        for batch in batches(shas, ROWS_AT_ONCE):
            rows = [(sha, time.time()) for sha in dict.fromkeys(batch)]
            if len(rows) == 1:
                conn.execute(sql, rows[0])
            else:
                conn.cursor().executemany(sql, rows)

    def candidates(self, limit: int) -> list[str] | None:
        sql = "SELECT sha256 FROM archive_unreferenced ORDER BY since, sha256 LIMIT %s"
        return [r[0] for r in self.q(sql, (limit,))]

    def forget(self, shas: list[str]) -> None:
        if shas:
            with self._connection() as conn:
                conn.execute("DELETE FROM archive_unreferenced WHERE sha256 = ANY(%s)", (shas,))

    def _track_replaced(self, shas: Iterable[str]) -> None:
        self._note(self._tx, shas)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._connection() as conn, conn.transaction():
            conn.execute(f"SELECT pg_advisory_xact_lock({self._COMMITS})")
            self._tx = conn
            try:
                yield
            finally:
                self._tx = None

    def _execute(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        cur = self._tx.execute(sql, args)
        return cur.fetchall() if cur.description else []

    def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._tx.cursor().executemany(sql, rows)  # pipelined: one round trip

    def _execute_each(self, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        yield from self._server_cursor(self._tx, sql, args)

    def _stream(self, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        with self._connection() as conn, conn.transaction():
            yield from self._server_cursor(conn, sql, args)

    @staticmethod
    def _server_cursor(conn: Any, sql: str, args: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """Rows held by the server and fetched a batch at a time (a plain
        cursor receives every row at once); inside a transaction."""
        with conn.cursor(name="wsrun_archive_rows") as cursor:
            cursor.itersize = ROWS_AT_ONCE
            cursor.execute(sql, args)
            yield from cursor
