"""One migration mechanism for every SQL store (wsrun.core.migrate), attacked on
SQLite and PostgreSQL: databases the old code made upgrade in place without
losing rows, several processes opening a new file at once apply each migration
once, and a database newer than the code, an edited applied migration or a
failing migration are refused in one line with nothing half-applied."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fixtures import legacy_schemas
from wsrun.core import db, migrate
from wsrun.core.journal import Journal, JournalError
from wsrun.stores.archive.content import ArchiveError
from wsrun.stores.archive.store import ArchiveStore
from wsrun.stores.bus.base import BusError
from wsrun.stores.bus.sqlite import SqliteBus
from wsrun.stores.state import StateError, open_state_store

#: sha256 of the migration files an earlier wsrun recorded in ``wsrun_migrations``
#: (taken from that wsrun's files): today's files must still be those bytes.
LEGACY_CHECKSUMS = {
    "0001_archive": "189f45850e858f4d8e19041e1e3ea9953b6ee81ded9344d0058ebfd1db4b786e",
    "0002_journal": "6f42403065be3f8c84c847e31b0c8bfc31a02a36e21019c5c79d5a1644b55673",
    "0003_state": "bdb1fa81b47058cbe0c4d1c1a42dbc185ef587760a349248f074695bf1c4a685",
    "0004_journal_compact": "e4ac107a68bc9b6eec7d1fbb40a0dc2b7492e206220852bcda17052c6649776c",
}


def recorded(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT store, version, name FROM wsrun_schema ORDER BY 1, 2")
        return [tuple(r) for r in rows]  # type: ignore[misc]


def old_file(path: Path, schema: str, data: str = "") -> Path:
    """A SQLite file as the code before recorded migrations made it, with rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(schema + data)
    conn.commit()
    conn.close()
    return path


# ---- the migration files ----------------------------------------------------------


def test_each_store_has_the_same_numbered_migrations_in_every_dialect() -> None:
    for store, dialects in migrate.STORES.items():
        found = {d: [m.name for m in migrate.migrations(store, d)] for d in dialects}
        first = found[dialects[0]]
        assert first, f"{store} has no migrations"
        assert all(names == first for names in found.values()), found
        versions = [m.version for m in migrate.migrations(store, dialects[0])]
        assert versions == list(range(1, len(versions) + 1)), f"{store}: a gap in {versions}"


def test_the_migrations_an_earlier_wsrun_applied_are_shipped_unchanged() -> None:
    for old, (store, version) in migrate.LEGACY_POSTGRES.items():
        (shipped,) = [m for m in migrate.migrations(store, "postgresql") if m.version == version]
        assert shipped.checksum == LEGACY_CHECKSUMS[old], f"{store}/{shipped.name} was edited"


# ---- SQLite files the old code made -------------------------------------------------


def test_an_old_state_file_upgrades_in_place(tmp_path: Path) -> None:
    path = old_file(
        tmp_path / "state.db",
        legacy_schemas.STATE,
        """
        INSERT INTO entities VALUES ('ous', 'X1', 'Processing', 'qa', '{"a": 1}', 10, 11, 2);
        INSERT INTO history (kind, id, from_state, state, from_substate, substate,
            attributes, at, actor) VALUES
            ('ous', 'X1', NULL, 'Ready', NULL, NULL, '{"a": 1}', 10, 'old'),
            ('ous', 'X1', 'Ready', 'Processing', NULL, 'qa', '{}', 11, 'old');
        """,
    )
    store = open_state_store(f"sqlite://{path}")
    entity = store.get("ous", "X1")
    assert entity is not None
    assert (entity.state, entity.substate, entity.attributes, entity.version) == (
        "Processing",
        "qa",
        {"a": 1},
        2,
    )
    assert [c.state for c in store.history("ous", "X1")] == ["Ready", "Processing"]
    store.transition("ous", "X1", state="Done", expect_version=2)
    assert [c.seq for c in store.history("ous", "X1")] == [1, 2, 3]
    store.close()
    assert recorded(path) == [("state", 1, "0001_state")]


def test_an_old_journal_file_upgrades_in_place(tmp_path: Path) -> None:
    path = old_file(
        tmp_path / "journal.db",
        legacy_schemas.JOURNAL,
        """
        INSERT INTO runs VALUES ('r-old', 'old', '/old.yaml', '{"a": 1}', '{}', 0, 'changed',
            1000, 1001, 1, 'h', '/', '{"n": 2}', NULL);
        INSERT INTO steps VALUES ('r-old', 'copy', 1, 'copy', 'changed', 1000, 1001,
            NULL, NULL, NULL, 0, NULL, NULL);
        INSERT INTO meta VALUES ('pruned', '999');
        """,
    )
    journal = Journal(url=f"sqlite://{path}")
    (run,) = journal.runs()
    assert (run.id, run.inputs, run.outputs, run.host) == ("r-old", {"a": 1}, {"n": 2}, "h")
    assert [s["key"] for s in journal.steps("r-old")] == ["copy"]
    journal.close()
    assert recorded(path) == [
        ("journal", 1, "0001_journal"),
        ("journal", 2, "0002_journal_compact"),
        ("journal", 3, "0003_journal_progress"),
        ("journal", 4, "0004_journal_blob_parts"),
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta").fetchall() == [("999",)]


def test_an_old_archive_upgrades_in_place(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    old_file(
        root / "archive.db",
        legacy_schemas.ARCHIVE,
        """
        INSERT INTO ingestions VALUES (1, 'EVLA', '/stage/a', 100, NULL, NULL);
        INSERT INTO products VALUES ('uid://evla/x1', 1, 'EVLA', 'execution_block', 'x1.ms',
            '/stage/a', 1, NULL, 100);
        """,
    )
    (root / "files").mkdir()
    reader = ArchiveStore.open(str(root), create=False)  # a reader does not migrate
    assert [p.locator for p in reader.products()] == ["uid://evla/x1"]
    reader.close()
    with pytest.raises(sqlite3.OperationalError):
        recorded(root / "archive.db")
    archive = ArchiveStore.open(str(root))
    assert [p.locator for p in archive.products()] == ["uid://evla/x1"]
    archive.close()
    assert recorded(root / "archive.db") == [("archive", 1, "0001_archive")]


def test_an_old_bus_file_upgrades_in_place(tmp_path: Path) -> None:
    path = old_file(
        tmp_path / "bus.db",
        legacy_schemas.BUS,
        """
        INSERT INTO queues VALUES ('work', '["a.#"]', 1);
        INSERT INTO messages (id, origin, selector, body, queue, status, created, available)
            VALUES ('m1', 'm1', 'a.b', '{"x": 1}', 'work', 'ready', 1, 1);
        """,
    )
    bus = SqliteBus(str(path))
    assert bus.queues() == {"work": ["a.#"]}
    message = bus.claim("work", "me")
    assert message is not None and message.id == "m1" and message.body == {"x": 1}
    bus.ack(message)
    bus.close()
    assert recorded(path) == [("bus", 1, "0001_bus")]


# ---- several processes opening a new file at once -------------------------------------


def _open_and_write(kind: str, path: str, start: float, n: int) -> int:
    """Open a store at ``path`` at ``start`` (all processes at once) and write once."""
    time.sleep(max(0.0, start - time.time()))
    if kind == "state":
        store = open_state_store(f"sqlite://{path}")
        change = store.transition("ous", f"X{n}", state="Ready", create=True)
        store.close()
        return change.seq
    if kind == "journal":
        journal = Journal(url=f"sqlite://{path}")
        journal.start_run(f"r{n}", "x", "/r.yaml", {}, {}, False, "/")
        journal.flush()
        journal.close()
        return n
    bus = SqliteBus(path)
    bus.declare_queue(f"q{n}", ["a.#"])
    bus.close()
    return n


@pytest.mark.parametrize("kind", ["state", "journal", "bus"])
def test_processes_opening_a_new_file_at_once_migrate_it_once(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.db"
    start = time.time() + 1.5  # past every process's start-up
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        done = pool.starmap(_open_and_write, [(kind, str(path), start, n) for n in range(4)])
    assert len(set(done)) == 4
    expected = [(kind, m.version, m.name) for m in migrate.migrations(kind, "sqlite")]
    assert recorded(path) == expected  # each applied once: (store, version) is the key


def test_a_file_migrated_by_another_process_while_this_one_waited_is_not_migrated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race, made certain: this opener has seen the journal's migrations
    pending; before it gets the write lock another process applies them all.
    Under the lock it must read again and apply nothing twice."""
    path = tmp_path / "journal.db"
    mine, other = (
        sqlite3.connect(path, isolation_level=None),
        sqlite3.connect(path, isolation_level=None),
    )
    real = migrate._immediate
    raced: list[list[str]] = []

    def other_goes_first(conn: sqlite3.Connection) -> Any:
        if conn is mine and not raced:
            raced.append([])
            raced[0] = migrate.migrate_sqlite(other, "journal", str(path))
        return real(conn)

    monkeypatch.setattr(migrate, "_immediate", other_goes_first)
    assert migrate.migrate_sqlite(mine, "journal", str(path)) == []
    assert raced == [
        ["0001_journal", "0002_journal_compact", "0003_journal_progress", "0004_journal_blob_parts"]
    ]
    assert recorded(path) == [
        ("journal", 1, "0001_journal"),
        ("journal", 2, "0002_journal_compact"),
        ("journal", 3, "0003_journal_progress"),
        ("journal", 4, "0004_journal_blob_parts"),
    ]


def test_processes_upgrading_a_new_postgres_database_at_once_migrate_it_once(
    pg_empty_url: str,
) -> None:
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        done = pool.map(migrate.upgrade, [pg_empty_url] * 3)
    every = [
        f"{s}/{m.name}"
        for s in ("state", "journal", "archive")
        for m in migrate.migrations(s, "postgresql")
    ]
    assert sorted(n for names in done for n in names) == sorted(every)
    with psycopg.connect(db.conninfo(pg_empty_url)) as conn:
        assert conn.execute("SELECT count(*) FROM wsrun_schema").fetchone() == (len(every),)


# ---- refusals --------------------------------------------------------------------------


def _state(path: Path) -> Any:
    store = open_state_store(f"sqlite://{path}")
    store.transition("ous", "X1", state="Ready", create=True)
    return store


def _journal(path: Path) -> Any:
    journal = Journal(url=f"sqlite://{path}")
    journal.runs()
    return journal


def _archive(path: Path) -> Any:
    return ArchiveStore.open(str(path.parent))


def _bus(path: Path) -> Any:
    return SqliteBus(str(path))


OPENERS: dict[str, tuple[Callable[[Path], Any], str, type[Exception]]] = {
    "state": (_state, "state.db", StateError),
    "journal": (_journal, "journal.db", JournalError),
    "archive": (_archive, "archive.db", ArchiveError),
    "bus": (_bus, "bus.db", BusError),
}


@pytest.mark.parametrize("store", list(OPENERS))
def test_a_file_a_newer_wsrun_migrated_is_refused_in_one_line(tmp_path: Path, store: str) -> None:
    opener, name, error = OPENERS[store]
    path = tmp_path / store / name
    path.parent.mkdir()
    opener(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO wsrun_schema VALUES (?, 99, '0099_future', 'x', '2030-01-01')", (store,)
        )
    with pytest.raises(error) as e:
        opener(path)
    message = str(e.value)
    assert "\n" not in message
    assert f"{store} schema is at version 99, newer than this wsrun knows" in message
    assert "use a newer wsrun" in message
    assert str(path) in message


@pytest.mark.parametrize("store", list(OPENERS))
def test_an_edited_applied_migration_is_refused(
    tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener, name, error = OPENERS[store]
    path = tmp_path / store / name
    path.parent.mkdir()
    opener(path).close()
    opener(path).close()  # unchanged files: opens again

    def edited(s: str, dialect: str) -> list[migrate.Migration]:
        found = migrate._bundled(s, dialect)
        if s != store:
            return found
        (first,) = [m for m in found if m.version == 1]
        text = first.source + "\n-- edited\n"
        changed = migrate.Migration(s, dialect, 1, first.name, text, first.python)
        return [changed if m.version == 1 else m for m in found]

    monkeypatch.setattr(migrate, "source", edited)
    with pytest.raises(error) as e:
        opener(path)
    message = str(e.value)
    assert "\n" not in message
    assert f"migration 0001_{store} was edited after it was applied" in message


def _broken(
    store: str, statements: str, python: bool = False
) -> Callable[[str, str], list[migrate.Migration]]:
    """The shipped migrations, plus a next one of ``store`` that fails half-way."""

    def source(s: str, dialect: str) -> list[migrate.Migration]:
        found = migrate._bundled(s, dialect)
        if s == store:
            nxt = max(m.version for m in found) + 1
            name = f"{nxt:04d}_broken"
            found.append(migrate.Migration(s, dialect, nxt, name, statements, python))
        return found

    return source


BROKEN = "CREATE TABLE half_done (x integer); INSERT INTO no_such_table VALUES (1);"


def test_a_failing_sqlite_migration_rolls_back_and_leaves_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    _state(path).close()
    monkeypatch.setattr(migrate, "source", _broken("state", BROKEN))
    with pytest.raises(StateError) as e:
        _state(path)
    assert "state migration 0002_broken failed: no such table: no_such_table" in str(e.value)
    assert "\n" not in str(e.value)
    assert recorded(path) == [("state", 1, "0001_state")]
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in names and "entities" in names
    monkeypatch.setattr(migrate, "source", migrate._bundled)
    assert _state(path).get("ous", "X1") is not None  # the data and the store are intact


def test_a_failing_python_migration_rolls_back_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal.db"
    _journal(path).close()
    script = (
        "def upgrade(conn):\n"
        "    conn.execute('CREATE TABLE half_done (x)')\n"
        "    conn.execute('UPDATE runs SET recipe = 1')\n"
        "    raise ValueError('cannot convert row 3')\n"
    )
    monkeypatch.setattr(migrate, "source", _broken("journal", script, python=True))
    with pytest.raises(JournalError) as e:
        _journal(path)
    assert "journal migration 0005_broken failed: cannot convert row 3" in str(e.value)
    assert recorded(path) == [
        ("journal", 1, "0001_journal"),
        ("journal", 2, "0002_journal_compact"),
        ("journal", 3, "0003_journal_progress"),
        ("journal", 4, "0004_journal_blob_parts"),
    ]
    with sqlite3.connect(path) as conn:
        assert (
            conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
        )


def test_a_failing_postgres_migration_rolls_back_and_leaves_the_version(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "source", _broken("journal", BROKEN))
    with pytest.raises(db.DbError) as e:
        migrate.upgrade(pg_url)
    assert "journal migration 0005_broken failed" in str(e.value) and "no_such_table" in str(
        e.value
    )
    (found,) = migrate.status(pg_url, ["journal"])
    assert found.current == 4 and [m.name for m in found.pending] == ["0005_broken"]
    with psycopg.connect(db.conninfo(pg_url)) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    with pytest.raises(db.SchemaBehind, match="missing journal/0005_broken"):
        migrate.require_current(pg_url, "journal")


# ---- PostgreSQL databases the old code migrated ----------------------------------------

OLD_TABLE = """
CREATE TABLE IF NOT EXISTS wsrun_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def _old_postgres(url: str, names: list[str]) -> None:
    """Apply ``names`` as the code before per-store migrations did (one sequence,
    recorded in wsrun_migrations), then write a row into each store."""
    with psycopg.connect(db.conninfo(url), autocommit=True) as conn:
        conn.execute(OLD_TABLE)
        for old in names:
            store, version = migrate.LEGACY_POSTGRES[old]
            (m,) = [m for m in migrate.migrations(store, "postgresql") if m.version == version]
            with conn.transaction():
                conn.execute(m.source)
                conn.execute(
                    "INSERT INTO wsrun_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (int(old[:4]), old, LEGACY_CHECKSUMS[old]),
                )


def test_a_postgres_database_the_old_code_migrated_upgrades_in_place(
    cli, pg_empty_url: str
) -> None:
    _old_postgres(pg_empty_url, list(migrate.LEGACY_POSTGRES))
    with psycopg.connect(db.conninfo(pg_empty_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO state_entities VALUES ('ous', 'X1', 'Ready', NULL, '{}', 1, 1, 1)"
        )
        conn.execute(
            "INSERT INTO journal_runs (id, recipe, recipe_path, inputs, settings, dry_run,"
            " status, started) VALUES ('r-old', 'old', '/r.yaml', '{}', '{}', 0, 'changed', 5)"
        )
    # Read as today's migrations without writing: the stores the old code made whole
    # open as they are; the journal lacks only what was added since (its progress column).
    behind = [(s.store, [m.name for m in s.pending]) for s in migrate.status(pg_empty_url)]
    assert [b for b in behind if b[1]] == [
        ("journal", ["0003_journal_progress", "0004_journal_blob_parts"])
    ]
    store = open_state_store(pg_empty_url)
    assert store.transition("ous", "X1", state="Done").from_state == "Ready"
    shown = cli("db", "status", "--url", pg_empty_url)
    assert shown.code == 1 and "[journal]: schema version 2 of 4" in shown.out
    # The upgrade applies it and copies the old records into wsrun_schema, checksums and all.
    up = cli("db", "upgrade", "--url", pg_empty_url)
    assert up.code == 0 and "journal/0003_journal_progress" in up.out, up.out
    assert [r.id for r in Journal(url=pg_empty_url).runs()] == ["r-old"]
    with psycopg.connect(db.conninfo(pg_empty_url)) as conn:
        rows = conn.execute(
            "SELECT store, version, name, checksum FROM wsrun_schema"
            " WHERE name NOT IN ('0003_journal_progress', '0004_journal_blob_parts')"
        ).fetchall()
        old = conn.execute("SELECT count(*) FROM wsrun_migrations").fetchone()
    assert sorted(rows) == sorted(
        (s, v, migrate.migrations(s, "postgresql")[v - 1].name, LEGACY_CHECKSUMS[o])
        for o, (s, v) in migrate.LEGACY_POSTGRES.items()
    )
    assert old == (4,)  # left as it was


def test_a_postgres_database_the_old_code_half_migrated_gets_the_rest(pg_empty_url: str) -> None:
    _old_postgres(pg_empty_url, ["0001_archive", "0002_journal", "0003_state"])
    with pytest.raises(db.SchemaBehind, match="missing journal/0002_journal_compact"):
        migrate.require_current(pg_empty_url, "journal")
    migrate.require_current(pg_empty_url, "state")
    assert migrate.upgrade(pg_empty_url) == [
        "journal/0002_journal_compact",
        "journal/0003_journal_progress",
        "journal/0004_journal_blob_parts",
    ]
    db.close_pools()
    migrate.require_current(pg_empty_url, "journal")


def test_an_old_record_this_wsrun_does_not_know_is_refused(pg_empty_url: str) -> None:
    _old_postgres(pg_empty_url, ["0001_archive"])
    with psycopg.connect(db.conninfo(pg_empty_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wsrun_migrations (version, name, checksum) VALUES (5, '0005_x', 'y')"
        )
    with pytest.raises(migrate.SchemaNewer, match="records 0005_x, which this wsrun does not know"):
        migrate.upgrade(pg_empty_url)


# ---- wsrun db status / upgrade on SQLite --------------------------------------------------


def test_db_commands_cover_sqlite_files(cli, tmp_path: Path, wsrun_home: Path) -> None:
    state = old_file(wsrun_home / "state.db", legacy_schemas.STATE)
    url = f"sqlite://{state}"
    behind = cli("db", "status", "--url", url)
    assert behind.code == 1
    assert f"sqlite://{state} [state]: schema version 0 of 1" in behind.out
    assert "pending  0001_state" in behind.out
    up = cli("db", "upgrade", "--url", url)
    assert up.code == 0 and up.out.strip() == f"sqlite://{state}: applied state/0001_state"
    now = cli("db", "status", "--url", str(state))
    assert now.code == 0 and "applied  0001_state" in now.out and "pending" not in now.out

    fresh = tmp_path / "new.db"
    unknown = cli("db", "upgrade", "--url", str(fresh))
    assert unknown.code == 1 and "which store is this file? (pass --store)" in unknown.err
    assert not fresh.exists()
    made = cli("db", "upgrade", "--url", str(fresh), "--store", "journal")
    assert made.code == 0
    assert made.out.split() == [
        f"sqlite://{fresh}:",
        "applied",
        "journal/0001_journal",
        f"sqlite://{fresh}:",
        "applied",
        "journal/0002_journal_compact",
        f"sqlite://{fresh}:",
        "applied",
        "journal/0003_journal_progress",
        f"sqlite://{fresh}:",
        "applied",
        "journal/0004_journal_blob_parts",
    ]

    # Without --url: the configured stores; files not made yet are left alone.
    every = cli("db", "status", "--json")
    assert every.code == 0, every.out
    report = {r["store"]: r for r in json.loads(every.out)}
    assert report["state"]["version"] == 1 and report["state"]["exists"]
    assert not report["journal"]["exists"] and report["journal"]["pending"] == []
    assert not (wsrun_home / "journal.db").exists()

    archive = cli("db", "status", "--url", str(tmp_path / "no-such-dir" / "x.db"))
    assert archive.code == 1 and "pass --store" in archive.err
    bad = cli("db", "status", "--store", "nope")
    assert bad.code == 2 and "no store 'nope'" in bad.err
