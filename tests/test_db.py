"""The PostgreSQL schema: ``wsrun db upgrade`` / ``status`` and the check backends make
(the migration mechanism itself, on both dialects: tests/test_migrations.py)."""

from __future__ import annotations

import json
import threading

import psycopg
import pytest

from wsrun.core import db, migrate
from wsrun.stores.archive.store import ArchiveError, ArchiveStore

PG_STORES = ("state", "journal", "archive")


def all_names() -> list[str]:
    """Every PostgreSQL migration as ``store/NNNN_name``, in the order upgrade applies them."""
    return [f"{s}/{m.name}" for s in PG_STORES for m in migrate.migrations(s, "postgresql")]


def tables(url: str) -> set[str]:
    with psycopg.connect(db.conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {r[0] for r in rows}


def test_upgrade_applies_every_migration_once(cli, pg_empty_url: str) -> None:
    names = all_names()
    assert names[:2] == ["state/0001_state", "journal/0001_journal"]

    behind = cli("db", "status", "--url", pg_empty_url)
    assert behind.code == 1
    assert "[archive]: schema version 0 of 1" in behind.out
    assert "[journal]: schema version 0 of 4" in behind.out
    assert "pending  0001_archive" in behind.out

    first = cli("db", "upgrade", "--url", pg_empty_url)
    assert first.code == 0, first.err
    assert [line.rsplit(" ", 1)[1] for line in first.out.splitlines()] == names
    assert {"wsrun_schema", "archive_products", "journal_runs"} <= tables(pg_empty_url)

    again = cli("db", "upgrade", "--url", pg_empty_url)
    assert again.code == 0 and again.out.strip().endswith(": up to date")

    current = cli("db", "status", "--url", pg_empty_url)
    assert current.code == 0
    assert "pending" not in current.out
    assert "applied  0001_archive" in current.out
    assert "[journal]: schema version 4 of 4" in current.out


def test_concurrent_upgrades_apply_each_migration_once(pg_empty_url: str) -> None:
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            applied.append(migrate.upgrade(pg_empty_url))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(n for names in applied for n in names) == sorted(all_names())
    with psycopg.connect(db.conninfo(pg_empty_url)) as conn:
        count = conn.execute("SELECT count(*) FROM wsrun_schema").fetchone()
    assert count == (len(all_names()),)


def test_a_backend_refuses_a_database_behind_with_one_line(pg_empty_url: str) -> None:
    with pytest.raises(db.SchemaBehind) as e:
        migrate.require_current(pg_empty_url + "&files=/tmp/x")
    message = str(e.value)
    assert "\n" not in message
    assert "missing state/0001_state, journal/0001_journal" in message
    assert "archive/0001_archive" in message
    assert "run `wsrun db upgrade --url postgresql://" in message
    assert "files=" not in message.split("--url", 1)[1]
    with pytest.raises(ArchiveError, match=r"schema is behind .* run `wsrun db upgrade --url"):
        ArchiveStore.open(pg_empty_url + "&files=/tmp/x")
    migrate.upgrade(pg_empty_url)
    migrate.require_current(pg_empty_url)


def test_unreachable_database_is_one_line_with_the_password_masked(cli) -> None:
    url = "postgresql://wsrun:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(db.DbError) as e:
        migrate.status(url)
    assert "hunter2" not in str(e.value) and "wsrun:****@127.0.0.1:1" in str(e.value)
    result = cli("db", "upgrade", "--url", url)
    assert result.code == 1
    assert "cannot connect" in result.err and "hunter2" not in result.err


def test_upgrade_without_url_uses_the_configured_backends(cli, pg_empty_url, monkeypatch) -> None:
    fresh = cli("db", "upgrade")  # the embedded defaults: nothing made yet, nothing made now
    assert fresh.code == 0, fresh.err
    assert "journal.db: not created yet" in fresh.out
    monkeypatch.setenv("WSRUN_JOURNAL_URL", pg_empty_url)
    result = cli("db", "upgrade")
    assert result.code == 0, result.err
    assert "applied journal/0002_journal_compact" in result.out


def test_a_missing_schema_is_named(pg_server: str) -> None:
    url = pg_server + "?options=-csearch_path%3Dno_such_schema_here"
    with pytest.raises(db.DbError, match="no schema on the search_path"):
        migrate.upgrade(url)


def test_mask_hides_only_the_password() -> None:
    assert db.mask("postgresql://u:secret@h:5/d?x=1") == "postgresql://u:****@h:5/d?x=1"
    assert db.mask("postgresql://u@h/d") == "postgresql://u@h/d"
    assert db.split_url("postgresql://h/d?sslmode=disable&files=s3://b/p") == (
        "postgresql://h/d?sslmode=disable",
        {"files": "s3://b/p"},
    )


def test_an_unusable_journal_is_one_line(cli, pg_empty_url: str, monkeypatch) -> None:
    monkeypatch.setenv("WSRUN_JOURNAL_URL", "postgresql://wsrun:s3cret@127.0.0.1:1/db")
    r = cli("runs")
    assert r.code == 2 and "cannot connect" in r.err and "s3cret" not in r.err
    assert len(r.err.strip().splitlines()) == 1
    monkeypatch.setenv("WSRUN_JOURNAL_URL", pg_empty_url)
    r = cli("runs")
    assert r.code == 2 and "run `wsrun db upgrade --url" in r.err


def test_status_and_backends_refuse_edited_and_unknown_migrations(cli, pg_url: str) -> None:
    with psycopg.connect(db.conninfo(pg_url), autocommit=True) as conn:
        conn.execute("UPDATE wsrun_schema SET checksum='x' WHERE store='archive' AND version=1")
    (found,) = migrate.status(pg_url, ["archive"])
    assert found.changed == ["0001_archive"] and not found.up_to_date
    r = cli("db", "status", "--url", pg_url)
    assert r.code == 1
    assert "error: 0001_archive was edited after it was applied" in r.out
    with pytest.raises(migrate.MigrationChanged, match="0001_archive was edited"):
        migrate.require_current(pg_url, "archive")
    migrate.require_current(pg_url, "journal")  # another store's edited file is not its business
    with pytest.raises(migrate.MigrationChanged):
        migrate.upgrade(pg_url)

    with psycopg.connect(db.conninfo(pg_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wsrun_schema (store, version, name, checksum)"
            " VALUES ('journal', 9999, '9999_later', 'y')"
        )
    r = cli("db", "status", "--url", pg_url, "--store", "journal")
    assert r.code == 1 and "error: 9999_later is not known to this wsrun" in r.out
    db.close_pools()  # a process checks a database once: forget the check above
    with pytest.raises(migrate.SchemaNewer) as e:
        migrate.require_current(pg_url, "journal")
    assert "journal schema is at version 9999, newer than this wsrun" in str(e.value)
    assert "\n" not in str(e.value)


def test_status_and_upgrade_as_json(cli, pg_empty_url: str) -> None:
    behind = cli("db", "status", "--url", pg_empty_url, "--json")
    assert behind.code == 1
    report = json.loads(behind.out)
    assert [r["store"] for r in report] == list(PG_STORES)
    journal = report[1]
    assert journal["version"] == 0 and journal["latest"] == 4 and journal["applied"] == []
    assert journal["pending"] == [
        "0001_journal",
        "0002_journal_compact",
        "0003_journal_progress",
        "0004_journal_blob_parts",
    ]
    up = cli("db", "upgrade", "--url", pg_empty_url, "--json")
    assert up.code == 0 and json.loads(up.out)[0]["applied"] == all_names()
    now = cli("db", "status", "--url", pg_empty_url, "--json", "-q")
    assert now.code == 0 and now.out == ""
