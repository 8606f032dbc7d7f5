"""One migration mechanism for every SQL store wsrun keeps, on SQLite and PostgreSQL.

Each store (``state``, ``journal``, ``archive``, ``bus``) has its own numbered
migrations in ``wsrun/core/migrations/<store>/<dialect>/NNNN_name.sql`` (or
``.py``, a module whose ``upgrade(conn)`` does what SQL cannot say, such as
"add this column if an old file lacks it"). Dialect differences live in one
place only: the dialect folder. A store present on both dialects has the same
numbers and names in each, so "journal version 2" means the same tables
everywhere (a test holds the folders to that).

What a database holds is recorded in its ``wsrun_schema`` table: one row per
applied migration (store, version, name, sha256 of the file, when). Every
check compares that table with the shipped files and refuses, in one line:

- a database a newer wsrun migrated (a version this wsrun does not ship),
- an applied migration whose file has since been edited (checksum differs),
- (PostgreSQL, on open) pending migrations: ``wsrun db upgrade`` applies them.

Each migration is applied in its own transaction together with its row,
under a lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-level
advisory lock per schema), re-reading what is applied once the lock is held:
processes opening a new database at once apply each migration exactly once,
and a migration that fails leaves nothing of itself behind.

SQLite stores migrate themselves when they open (an embedded file has no
operator); a PostgreSQL database shared by many hosts is migrated by
``wsrun db upgrade``. PostgreSQL databases migrated before stores had their
own numbering record ``0001_archive`` ... ``0004_journal_compact`` in a
``wsrun_migrations`` table; they are read as the same migrations under their
per-store names (``LEGACY_POSTGRES``), copied into ``wsrun_schema`` on the
next upgrade, and the old table is left as it was.

One piece: the SQLite and PostgreSQL halves apply the same records, locks and
checks; split by dialect, the record-keeping would be written twice.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from wsrun.core.db import DbError, SchemaBehind, checked_schemas, conninfo, is_postgres, mask

DIALECTS = ("sqlite", "postgresql")
#: The stores with tables, and the dialects each exists on.
STORES: dict[str, tuple[str, ...]] = {
    "state": ("sqlite", "postgresql"),
    "journal": ("sqlite", "postgresql"),
    "archive": ("sqlite", "postgresql"),
    "bus": ("sqlite",),
    "resumes": ("sqlite",),
}
TABLE = "wsrun_schema"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")

#: The one-sequence PostgreSQL migrations of earlier wsrun versions, by their
#: recorded name: (store, version) of the same file under today's layout.
LEGACY_POSTGRES: dict[str, tuple[str, int]] = {
    "0001_archive": ("archive", 1),
    "0002_journal": ("journal", 1),
    "0003_state": ("state", 1),
    "0004_journal_compact": ("journal", 2),
}


class SchemaNewer(DbError):
    """The database was migrated by a newer wsrun than this one."""


class MigrationChanged(DbError):
    """An applied migration's file differs from what was applied."""


@dataclass(frozen=True)
class Migration:
    """One numbered migration file of one store in one dialect."""

    store: str
    dialect: str
    version: int
    name: str
    source: str
    python: bool = False

    @property
    def checksum(self) -> str:
        """sha256 of the file's text: an edit after it was applied is detected."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def apply(self, conn: Any) -> None:
        """Run the migration on ``conn`` (inside the caller's transaction)."""
        if self.python:
            namespace: dict[str, Any] = {"__name__": f"wsrun_migration_{self.store}_{self.name}"}
            exec(
                compile(self.source, f"<{self.store}/{self.dialect}/{self.name}.py>", "exec"),
                namespace,
            )
            namespace["upgrade"](conn)
        elif self.dialect == "sqlite":
            run_script(conn, self.source)
        else:
            conn.execute(self.source)


@dataclass(frozen=True)
class Applied:
    """One row of ``wsrun_schema``."""

    store: str
    version: int
    name: str
    checksum: str
    at: str


@dataclass
class Status:
    """Where one store's schema in one database stands against this wsrun."""

    url: str
    store: str
    dialect: str
    current: int
    latest: int
    applied: list[Applied] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    #: Applied migrations whose file has changed since.
    changed: list[str] = field(default_factory=list)
    #: Applied migrations this wsrun does not ship (a newer wsrun applied them).
    unknown: list[str] = field(default_factory=list)
    #: False for a SQLite file that does not exist yet.
    exists: bool = True

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed and not self.unknown

    def problem(self) -> str | None:
        """The one-line refusal for a database newer than this wsrun or an
        edited migration, or None."""
        where = f"{self.url}: {self.store} schema"
        if self.unknown:
            return (
                f"{where} is at version {max(a.version for a in self.applied)}, newer than this"
                f" wsrun knows ({self.latest}; {', '.join(self.unknown)} unknown):"
                " use a newer wsrun"
            )
        if self.changed:
            return (
                f"{where}: migration {', '.join(self.changed)} was edited after it was applied"
                " (checksum differs); restore the file as shipped"
            )
        return None


def _bundled(store: str, dialect: str) -> list[Migration]:
    """The migration files the package ships for ``store`` in ``dialect``."""
    folder = resources.files("wsrun.core") / "migrations" / store / dialect
    found = []
    if folder.is_dir():
        for entry in folder.iterdir():
            m = _NAME.match(entry.name)
            if m:
                found.append(
                    Migration(
                        store,
                        dialect,
                        int(m[1]),
                        f"{m[1]}_{m[2]}",
                        entry.read_text("utf-8"),
                        python=m[3] == "py",
                    )
                )
    return found


#: Where migrations come from: (store, dialect) -> migrations (tests swap it).
source: Callable[[str, str], list[Migration]] = _bundled


def migrations(store: str, dialect: str) -> list[Migration]:
    """The migrations of ``store`` in ``dialect``, in order."""
    if store not in STORES:
        raise DbError(f"no store '{store}' (known: {', '.join(STORES)})")
    found = sorted(_cached(store, dialect, source), key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DbError(f"two {store} migrations share a number: {[m.name for m in found]}")
    return found


@functools.lru_cache(maxsize=64)
def _cached(
    store: str, dialect: str, loader: Callable[[str, str], list[Migration]]
) -> tuple[Migration, ...]:
    return tuple(loader(store, dialect))


def store_status(
    url: str, store: str, dialect: str, rows: list[Applied], exists: bool = True
) -> Status:
    known = migrations(store, dialect)
    by_version = {m.version: m for m in known}
    mine = [a for a in rows if a.store == store]
    done = {a.version for a in mine}
    return Status(
        url=url,
        store=store,
        dialect=dialect,
        current=max(done, default=0),
        latest=max(by_version, default=0),
        applied=mine,
        pending=[m for m in known if m.version not in done],
        changed=[
            a.name
            for a in mine
            if a.version in by_version and by_version[a.version].checksum != a.checksum
        ],
        unknown=[a.name for a in mine if a.version not in by_version],
        exists=exists,
    )


# ---- SQLite ---------------------------------------------------------------------


def enable_wal(conn: sqlite3.Connection, attempts: int = 50) -> None:
    """Put a SQLite database in WAL mode, retrying while it is locked: switching the
    journal mode does not wait on busy_timeout, so processes opening one new file at
    once would otherwise fail with "database is locked"."""
    for attempt in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run the statements of ``script`` one by one, inside the caller's
    transaction (``executescript`` would commit it first)."""
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\r\n;"):
                conn.execute(statement)
            statement = ""
    if statement.strip(" \t\r\n;"):
        raise DbError(f"incomplete SQL statement: {statement.strip()[:60]}")


def add_missing_columns(conn: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    """``ALTER TABLE table ADD COLUMN`` each of ``columns`` (name -> type) the
    table lacks: for files made before their schema was recorded."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


_SQLITE_TABLE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    store TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (store, version)
)"""


def _sqlite_rows(conn: sqlite3.Connection) -> list[Applied]:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    if found is None:
        return []
    rows = conn.execute(
        f"SELECT store, version, name, checksum, applied_at FROM {TABLE} ORDER BY store, version"
    ).fetchall()
    return [Applied(*r) for r in rows]


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken first. A few statements (switching
    to WAL) make a racing opener see "locked" without waiting: retried."""
    for attempt in range(100):
        try:
            conn.execute("BEGIN IMMEDIATE")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or attempt == 99:
                raise
            time.sleep(0.02 * min(attempt + 1, 10))
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def sqlite_status(conn: sqlite3.Connection, store: str, where: str) -> Status:
    """The schema state of ``store`` in the SQLite database of ``conn`` (nothing changes)."""
    return store_status(where, store, "sqlite", _sqlite_rows(conn))


def check_sqlite(conn: sqlite3.Connection, store: str, where: str) -> Status:
    """For a reader that may not write: refuse a file a newer wsrun migrated or
    whose applied migrations were edited; pending ones are allowed."""
    found = sqlite_status(conn, store, where)
    problem = found.problem()
    if problem:
        raise (SchemaNewer if found.unknown else MigrationChanged)(problem)
    return found


def migrate_sqlite(conn: sqlite3.Connection, store: str, where: str) -> list[str]:
    """Bring ``store``'s tables in the SQLite database of ``conn`` (autocommit
    mode, busy_timeout set) up to date; the names applied. Each migration is one
    ``BEGIN IMMEDIATE`` transaction that re-reads what is applied first, so
    processes opening a new file at once apply each migration once."""
    found = check_sqlite(conn, store, where)
    if not found.pending:
        return []
    done = []
    for migration in found.pending:
        try:
            with _immediate(conn):
                conn.execute(_SQLITE_TABLE)
                now = check_sqlite(conn, store, where)
                if migration.version not in {m.version for m in now.pending}:
                    continue  # another process applied it while we waited
                migration.apply(conn)
                conn.execute(
                    f"INSERT INTO {TABLE} (store, version, name, checksum, applied_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (store, migration.version, migration.name, migration.checksum, _now()),
                )
        except DbError:
            raise
        except Exception as e:  # SQL or a Python migration's own failure: rolled back
            raise DbError(
                f"{where}: {store} migration {migration.name} failed: {_first_line(e)}"
            ) from None
        done.append(migration.name)
    return done


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


def sqlite_file(url: str) -> str:
    """The file of ``sqlite:///abs/path.db`` (also ``sqlite:////abs``),
    ``sqlite://relative/path.db`` (from the current directory) or a bare path."""
    from urllib.parse import urlsplit

    if "://" not in url:
        return os.path.abspath(url)
    parts = urlsplit(url)
    path = parts.netloc + parts.path if parts.netloc else "/" + parts.path.lstrip("/")
    if path in ("", "/"):
        raise DbError(f"{url}: no file in the URL (sqlite:///path/to/file.db)")
    return os.path.abspath(path)


@contextlib.contextmanager
def sqlite_connection(url: str, create: bool) -> Iterator[sqlite3.Connection | None]:
    path = sqlite_file(url)
    if not os.path.exists(path):
        if not create:
            yield None
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as e:
        raise DbError(f"{url}: {_first_line(e)}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        yield conn
    except sqlite3.Error as e:
        raise DbError(f"{url}: {_first_line(e)}") from None
    finally:
        conn.close()


#: A store's tables in an unrecorded (pre-migration) SQLite file, to tell which store it is.
_MARKERS = {"state": "lifecycles", "journal": "runs", "archive": "products", "bus": "messages"}


def sqlite_stores(url: str) -> list[str]:
    """The stores a SQLite file holds: those recorded in it, else those whose
    tables it has (a file made before migrations were recorded)."""
    with sqlite_connection(url, create=False) as conn:
        if conn is None:
            return []
        recorded = sorted({a.store for a in _sqlite_rows(conn)})
        if recorded:
            return recorded
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return [store for store, marker in _MARKERS.items() if marker in names]


# ---- PostgreSQL -----------------------------------------------------------------

_PG_LOCK = "SELECT pg_advisory_xact_lock(hashtext('wsrun_migrations:' || current_schema()))"
_PG_TABLE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    store text NOT NULL,
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store, version)
)"""


def _pg_exists(conn: Any, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    return row is not None and row[0] is not None


def _pg_rows(conn: Any, url: str) -> list[Applied]:
    if _pg_exists(conn, TABLE):
        rows = conn.execute(
            f"SELECT store, version, name, checksum, applied_at FROM {TABLE} ORDER BY store, version"
        ).fetchall()
        return [Applied(s, v, n, c, at.isoformat(timespec="seconds")) for s, v, n, c, at in rows]
    return _pg_legacy_rows(conn, url)


def _pg_legacy_rows(conn: Any, url: str) -> list[Applied]:
    """The ``wsrun_migrations`` rows of a database an earlier wsrun migrated, as
    today's per-store migrations; a name it does not know is refused."""
    if not _pg_exists(conn, "wsrun_migrations"):
        return []
    found = []
    for _, name, checksum, at in conn.execute(
        "SELECT version, name, checksum, applied_at FROM wsrun_migrations ORDER BY version"
    ).fetchall():
        if name not in LEGACY_POSTGRES:
            raise SchemaNewer(
                f"{mask(url)}: wsrun_migrations records {name}, which this wsrun does not"
                " know: use a newer wsrun"
            )
        store, version = LEGACY_POSTGRES[name]
        current = {m.version: m for m in migrations(store, "postgresql")}[version]
        found.append(
            Applied(store, version, current.name, checksum, at.isoformat(timespec="seconds"))
        )
    return found


def _pg_stores(url: str, stores: list[str] | None) -> list[str]:
    """``stores`` (default: every store with PostgreSQL tables), checked."""
    every = [s for s, d in STORES.items() if "postgresql" in d]
    for store in stores or []:
        if store not in every:
            raise DbError(f"{mask(url)}: the {store} store has no PostgreSQL tables")
    return list(stores or every)


def pg_statuses(url: str, stores: list[str] | None = None) -> list[Status]:
    """The schema state of each PostgreSQL store (default: all) in ``url``."""
    from wsrun.core.db import connection

    chosen = _pg_stores(url, stores)

    with connection(url) as conn:
        rows = _pg_rows(conn, url)
    return [store_status(mask(url), s, "postgresql", rows) for s in chosen]


def pg_upgrade(url: str, stores: list[str] | None = None) -> list[str]:
    """Apply the pending migrations of each PostgreSQL store (default: all) to
    ``url``, each in its own transaction under the advisory lock; the names
    applied, as ``store/NNNN_name``."""

    from wsrun.core.db import connection, require_schema

    done: list[str] = []
    chosen = _pg_stores(url, stores)
    with connection(url) as conn:
        require_schema(conn, url)
        for store in chosen:
            for migration in migrations(store, "postgresql"):
                try:
                    with conn.transaction():
                        conn.execute(_PG_LOCK)
                        if not _pg_exists(conn, TABLE):
                            legacy = _pg_legacy_rows(conn, url)
                            conn.execute(_PG_TABLE)
                            for a in legacy:  # adopt an earlier wsrun's record
                                conn.execute(
                                    f"INSERT INTO {TABLE} (store, version, name, checksum,"
                                    " applied_at) VALUES (%s, %s, %s, %s, %s)",
                                    (a.store, a.version, a.name, a.checksum, a.at),
                                )
                        found = store_status(mask(url), store, "postgresql", _pg_rows(conn, url))
                        problem = found.problem()
                        if problem:
                            raise (SchemaNewer if found.unknown else MigrationChanged)(problem)
                        if migration.version not in {m.version for m in found.pending}:
                            continue
                        migration.apply(conn)
                        conn.execute(
                            f"INSERT INTO {TABLE} (store, version, name, checksum)"
                            " VALUES (%s, %s, %s, %s)",
                            (store, migration.version, migration.name, migration.checksum),
                        )
                except DbError:
                    raise
                except Exception as e:  # SQL or a Python migration: rolled back with it
                    raise DbError(
                        f"{mask(url)}: {store} migration {migration.name} failed: {_first_line(e)}"
                    ) from None
                done.append(f"{store}/{migration.name}")
    return done


def pg_require_current(url: str, stores: list[str] | None = None) -> None:
    """Refuse (one line) a PostgreSQL database whose ``stores`` are behind this
    wsrun (naming ``wsrun db upgrade``), ahead of it, or were migrated by an
    edited file."""
    from wsrun.core.db import conninfo

    missing = []
    for found in pg_statuses(url, stores):
        problem = found.problem()
        if problem:
            raise (SchemaNewer if found.unknown else MigrationChanged)(problem)
        missing += [f"{found.store}/{m.name}" for m in found.pending]
    if missing:
        raise SchemaBehind(
            f"{mask(url)}: database schema is behind this wsrun (missing {', '.join(missing)});"
            f" run `wsrun db upgrade --url {mask(conninfo(url))}`"
        )


# ---- what the stores and ``wsrun db`` call --------------------------------------


def upgrade(url: str, stores: list[str] | None = None) -> list[str]:
    """Apply every pending migration of ``stores`` to the database at ``url``
    (PostgreSQL: default every store it holds; SQLite: default the stores the
    file holds); the migrations applied, as ``store/NNNN_name``."""
    if is_postgres(url):
        done = pg_upgrade(url, stores)
        checked_schemas.clear()
        return done
    chosen = stores or sqlite_stores(url)
    if not chosen:
        raise DbError(f"{mask(url)}: which store is this file? (pass --store)")
    done = []
    with sqlite_connection(url, create=True) as conn:
        assert conn is not None
        for store in chosen:
            if "sqlite" not in STORES.get(store, ("sqlite",)):
                raise DbError(f"{mask(url)}: the {store} store has no SQLite tables")
            done += [f"{store}/{n}" for n in migrate_sqlite(conn, store, mask(url))]
    return done


def status(url: str, stores: list[str] | None = None) -> list[Status]:
    """The schema state of each store in the database at ``url`` (nothing is
    changed; a SQLite file that does not exist is reported, not created)."""
    if is_postgres(url):
        return pg_statuses(url, stores)
    chosen = stores or sqlite_stores(url)
    if not chosen:
        raise DbError(f"{mask(url)}: which store is this file? (pass --store)")
    with sqlite_connection(url, create=False) as conn:
        if conn is None:
            return [store_status(mask(url), s, "sqlite", [], exists=False) for s in chosen]
        return [sqlite_status(conn, s, mask(url)) for s in chosen]


def require_current(url: str, store: str | None = None) -> None:
    """Refuse a PostgreSQL database that lacks ``store``'s migrations (default:
    every store's), with one line naming the command that fixes it; also one
    migrated by a newer wsrun or by an edited migration. Checked once per
    process per database and store."""
    key = (conninfo(url), (store,) if store else ())
    if key in checked_schemas:
        return
    pg_require_current(url, [store] if store else None)
    checked_schemas.add(key)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
