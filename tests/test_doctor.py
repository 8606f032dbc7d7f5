"""``wsrun doctor``: the backends in use, each reachable or not, and the exit status."""

from __future__ import annotations

import json

import pytest

BACKENDS = ["state", "bus", "archive", "journal"]


def checks(cli) -> tuple[int, dict[str, dict]]:
    r = cli("doctor", "--json")
    return r.code, {c["backend"]: c for c in json.loads(r.out)}


def test_embedded_defaults_are_reachable(cli, wsrun_home, monkeypatch) -> None:
    for name in ("WSRUN_STATE_URL", "WSRUN_BUS_URL", "WSRUN_ARCHIVE_URL", "WSRUN_JOURNAL_URL"):
        monkeypatch.delenv(name, raising=False)
    r = cli("doctor")
    assert r.code == 0, r.out + r.err
    lines = [line for line in r.out.splitlines() if not line.startswith("extra ")]
    assert [line.split()[0] for line in lines] == BACKENDS
    assert all(" ok " in line and "embedded (SQLite)" in line for line in lines)
    assert str(wsrun_home / "journal.db") in r.out


def test_postgresql_backends_reachable(cli, tmp_path, pg_url, s3, bucket, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("WSRUN_JOURNAL_URL", pg_url)
    monkeypatch.setenv("WSRUN_ARCHIVE_URL", f"{pg_url}&files=s3://{bucket}/archive")
    code, found = checks(cli)
    assert code == 0, found
    assert found["journal"]["ok"] and found["journal"]["url"] == pg_url
    assert found["journal"]["detail"].startswith("PostgreSQL, journal schema version ")
    assert (
        found["archive"]["ok"]
        and f"files s3 store s3://{bucket}/archive" in (found["archive"]["detail"])
    )


@pytest.mark.parametrize(
    ("variable", "url", "finding"),
    [
        ("WSRUN_STATE_URL", "postgresql://wsrun:s3cret@127.0.0.1:1/db", "cannot connect"),
        ("WSRUN_BUS_URL", "amqp://guest:s3cret@127.0.0.1:1/", "refused"),
        ("WSRUN_ARCHIVE_URL", "ftp://example.org/archive", "unsupported URL scheme 'ftp'"),
    ],
)
def test_an_unreachable_backend_fails(cli, monkeypatch, variable, url, finding) -> None:
    monkeypatch.setenv(variable, url)
    r = cli("doctor")
    assert r.code == 1
    assert "s3cret" not in r.out + r.err
    [line] = [line for line in r.out.splitlines() if " FAIL " in line]
    assert finding in line.lower() or finding in line
    if "s3cret" in url:
        assert ":****@127.0.0.1:1" in line


def test_a_schema_behind_names_the_fix(cli, pg_empty_url, monkeypatch) -> None:
    monkeypatch.setenv("WSRUN_JOURNAL_URL", pg_empty_url)
    code, found = checks(cli)
    assert code == 1
    assert not found["journal"]["ok"]
    assert "schema version 0 of" in found["journal"]["detail"]
    assert "run `wsrun db upgrade --url postgresql://" in found["journal"]["detail"]
    assert all(found[b]["ok"] for b in ("state", "bus", "archive"))


def test_the_archive_file_store_is_checked_too(cli, tmp_path, pg_url, s3, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.delenv("WSRUN_ARCHIVE_FILES", raising=False)
    monkeypatch.setenv("WSRUN_ARCHIVE_URL", pg_url)
    code, found = checks(cli)
    assert code == 1 and "no file store" in found["archive"]["detail"]
    monkeypatch.setenv("WSRUN_ARCHIVE_FILES", "s3://no-such-bucket-here/archive")
    code, found = checks(cli)
    assert code == 1 and found["archive"]["detail"].endswith("no such bucket")
    monkeypatch.setenv("WSRUN_ARCHIVE_FILES", str(tmp_path / "files"))
    code, found = checks(cli)
    assert code == 0 and "(created on first use)" in found["archive"]["detail"]


@pytest.mark.parametrize(
    ("url", "finding"),
    [
        ("amqp://guest:s3cret@127.0.0.1:5672/%2F", "login refused for user 'guest'"),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            "user 'guest' may not use vhost 'no-such-vhost'",
        ),
    ],
)
def test_the_bus_check_logs_in_to_rabbitmq(cli, monkeypatch, rabbitmq, url, finding) -> None:
    """An open port is not enough: a wrong password or vhost fails the check."""
    monkeypatch.setenv("WSRUN_BUS_URL", url)
    code, found = checks(cli)
    assert code == 1 and not found["bus"]["ok"]
    assert found["bus"]["detail"] == finding and "s3cret" not in json.dumps(found)
    monkeypatch.setenv("WSRUN_BUS_URL", rabbitmq)
    code, found = checks(cli)
    assert found["bus"]["ok"] and "logged in as guest (vhost /)" in found["bus"]["detail"]


def _open_embedded_stores(home) -> None:
    """Create every embedded store's file the way a run does."""
    from wsrun.core.journal import Journal
    from wsrun.stores.archive.store import ArchiveStore
    from wsrun.stores.bus import open_bus
    from wsrun.stores.state import open_state_store

    open_state_store("sqlite:///" + str(home / "state.db").lstrip("/"))._connect(write=True)
    open_bus("sqlite:///" + str(home / "bus.db").lstrip("/"))
    ArchiveStore.open(str(home / "archive"))
    Journal(home=str(home))


@pytest.fixture
def embedded(cli, wsrun_home, monkeypatch):
    for name in ("WSRUN_STATE_URL", "WSRUN_BUS_URL", "WSRUN_ARCHIVE_URL", "WSRUN_JOURNAL_URL"):
        monkeypatch.delenv(name, raising=False)
    _open_embedded_stores(wsrun_home)
    return wsrun_home


def test_embedded_files_report_their_schema_version(cli, embedded) -> None:
    code, found = checks(cli)
    assert code == 0, found
    for backend in BACKENDS:
        assert found[backend]["ok"], found[backend]
        assert f"{backend} schema version " in found[backend]["detail"], found[backend]
        assert "upgraded on next use" not in found[backend]["detail"]


def test_a_sqlite_file_migrated_by_a_newer_wsrun_fails(cli, embedded) -> None:
    import sqlite3

    with sqlite3.connect(embedded / "state.db") as db:
        db.execute(
            "INSERT INTO wsrun_schema (store, version, name, checksum, applied_at)"
            " VALUES ('state', 999, '0999_future', 'x', '2030-01-01')"
        )
    code, found = checks(cli)
    assert code != 0
    assert not found["state"]["ok"]
    assert "newer than this wsrun" in found["state"]["detail"]
    assert all(found[b]["ok"] for b in BACKENDS if b != "state")


def test_an_edited_migration_in_a_sqlite_file_fails(cli, embedded) -> None:
    import sqlite3

    with sqlite3.connect(embedded / "archive" / "archive.db") as db:
        db.execute("UPDATE wsrun_schema SET checksum = 'edited' WHERE store = 'archive'")
    code, found = checks(cli)
    assert code != 0
    assert "was edited after it was applied" in found["archive"]["detail"]


def test_a_sqlite_file_behind_is_upgraded_on_next_use(cli, embedded) -> None:
    import sqlite3

    with sqlite3.connect(embedded / "journal.db") as db:
        latest = db.execute(
            "SELECT max(version) FROM wsrun_schema WHERE store = 'journal'"
        ).fetchone()[0]
        db.execute("DELETE FROM wsrun_schema WHERE store = 'journal' AND version = ?", (latest,))
    code, found = checks(cli)
    assert code == 0
    detail = found["journal"]["detail"]
    assert f"journal schema version {latest - 1} of {latest} (upgraded on next use)" in detail
