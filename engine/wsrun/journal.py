"""The run journal: every run, its inputs, plan, and each step's outcome.

It is what makes ``wsrun resume`` possible after a crash, and it is the audit
trail of every file a run wrote. By default one SQLite file under
``$WSRUN_HOME`` (default: the XDG state directory), in WAL mode so concurrent
runs can write it; with ``WSRUN_JOURNAL_URL`` (or the ``wsrun.journal.url``
setting) set to ``postgresql://...``, a database every host shares, so
``wsrun runs`` anywhere lists the runs of all of them.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsrun.masking import printable

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    recipe TEXT NOT NULL,
    recipe_path TEXT NOT NULL,
    inputs TEXT NOT NULL,
    settings TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    pid INTEGER,
    host TEXT,
    workdir TEXT,
    outputs TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    uses TEXT NOT NULL,
    status TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    effects TEXT,
    outputs TEXT,
    error TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
"""

FINISHED = ("ok", "changed", "skipped")
#: This host's name, recorded with each run (a shared journal holds runs of many hosts).
HOST = socket.gethostname()


def default_home() -> str:
    if os.environ.get("WSRUN_HOME"):
        return os.environ["WSRUN_HOME"]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "wsrun")


#: The setting that names the journal; the environment variable overrides it.
SETTING = "wsrun.journal.url"
ENV = "WSRUN_JOURNAL_URL"


def journal_url(
    explicit: str | None = None, env: Mapping[str, str] | None = None, default: str | None = None
) -> str:
    """The journal to use: ``explicit``, else $WSRUN_JOURNAL_URL, else the
    ``wsrun.journal.url`` setting, else ``default`` or ``sqlite:///<$WSRUN_HOME>/journal.db``."""
    from wsrun.settings import Settings

    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get(ENV):
        return env[ENV]
    found = Settings(env=env).get(SETTING)
    if found is not None and found.value:
        return found.value
    return default or "sqlite://" + os.path.join(default_home(), "journal.db")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


@dataclass
class RunRecord:
    id: str
    recipe: str
    recipe_path: str
    inputs: dict[str, Any]
    settings: dict[str, Any]
    dry_run: bool
    status: str
    started: float
    ended: float | None
    pid: int | None
    workdir: str | None
    outputs: Any
    error: str | None
    #: The host the run's process ran on (None in journals older than this field).
    host: str | None = None

    @property
    def shown_status(self) -> str:
        """'interrupted' for a run whose process died without finishing. A run on
        another host (a shared journal) stays 'running': its process cannot be seen."""
        if self.host not in (None, HOST):
            return self.status
        if self.status == "running" and self.pid and not _alive(self.pid):
            return "interrupted"
        return self.status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JournalError(ValueError):
    """The configured journal cannot be used (unreachable, schema behind); one line.
    A ValueError, so commands report it as a usage problem rather than a crash."""


class _SqliteTables:
    """The journal in one SQLite file, in WAL mode so concurrent runs can write it."""

    RUNS, STEPS, PARAM = "runs", "steps", "?"

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA busy_timeout = 30000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.executescript(SCHEMA)
            columns = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
            if "host" not in columns:  # journals written before runs recorded their host
                self.db.execute("ALTER TABLE runs ADD COLUMN host TEXT")
        except (sqlite3.Error, OSError) as e:
            raise self.error(e) from None

    def error(self, e: BaseException) -> JournalError:
        """A failure to use the journal as one line naming its file."""
        cause = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return JournalError(f"journal {self.path}: {cause}")

    def query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise self.error(e) from None

    def write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            with self.db:
                self.db.execute("BEGIN")
                for sql, args in statements:
                    self.db.execute(sql, args)
        except sqlite3.Error as e:
            raise self.error(e) from None

    def close(self) -> None:
        self.db.close()


class _PostgresTables:
    """The journal in PostgreSQL (tables ``journal_*``; ``wsrun db upgrade`` creates them)."""

    RUNS, STEPS, PARAM = "journal_runs", "journal_steps", "%s"

    def __init__(self, url: str) -> None:
        from wsrun import db

        self.url = url
        try:
            db.require_current(url)
        except db.DbError as e:
            raise JournalError(f"journal: {e}") from None

    def query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        from wsrun import db

        try:
            with db.connection(self.url) as conn:
                return conn.execute(sql, args).fetchall()
        except psycopg.Error as e:
            raise JournalError(f"journal {db.mask(self.url)}: {e}") from None

    def write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        import psycopg

        from wsrun import db

        try:
            with db.connection(self.url) as conn, conn.transaction():
                for sql, args in statements:
                    conn.execute(sql, args)
        except psycopg.Error as e:
            raise JournalError(f"journal {db.mask(self.url)}: {e}") from None

    def close(self) -> None:
        """The pool is the process's; nothing of this journal's own to release."""


class Journal:
    """The run journal at ``url`` (default: ``journal_url()``; with ``home``, the
    SQLite default is ``<home>/journal.db``). SQLite or ``postgresql://``."""

    def __init__(self, home: str | None = None, url: str | None = None) -> None:
        self.home = home or default_home()
        default = "sqlite://" + os.path.join(self.home, "journal.db")
        self.url = url or journal_url(default=default)
        if urlsplit(self.url).scheme in ("postgresql", "postgres"):
            self.tables: _SqliteTables | _PostgresTables = _PostgresTables(self.url)
        else:
            self.tables = _SqliteTables(_sqlite_path(self.url))
        self._sql: dict[str, str] = {}
        self._last_commit = time.monotonic()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []

    #: Step records are committed at most this often (and at the end of a run),
    #: so a recipe of many short steps does not pay a commit per step. A crash
    #: loses at most this much of the record; resume then re-plans those steps,
    #: which find their work done.
    COMMIT_EVERY = 0.25

    def sql(self, text: str) -> str:
        """``text`` for this backend: ``{runs}``/``{steps}`` named, ``?`` parameters mapped."""
        found = self._sql.get(text)
        if found is None:
            t = self.tables
            found = self._sql[text] = text.format(runs=t.RUNS, steps=t.STEPS).replace("?", t.PARAM)
        return found

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.tables.query(self.sql(sql), args)

    def _write(self, sql: str, args: tuple[Any, ...], commit: bool = False) -> None:
        """Queue a write; queued writes go to the database in one short
        transaction, so no lock is held while a step works."""
        self._pending.append((self.sql(sql), tuple(_text(a) for a in args)))
        if commit or time.monotonic() - self._last_commit > self.COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        """Commit the queued writes. When that fails (disk full, read-only file) they
        are dropped and JournalError names the journal: the run stops, and a later
        smaller write (the run's end) may still get through."""
        pending, self._pending = self._pending, []
        self._last_commit = time.monotonic()
        if pending:
            self.tables.write(pending)

    def close(self) -> None:
        self.flush()
        self.tables.close()

    def start_run(
        self,
        run_id: str,
        recipe: str,
        recipe_path: str,
        inputs: dict[str, Any],
        settings: dict[str, Any],
        dry_run: bool,
        workdir: str,
    ) -> None:
        self._write(
            "INSERT INTO {runs} (id, recipe, recipe_path, inputs, settings, dry_run, status, started, pid, host, workdir)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET status='running', ended=NULL, pid=excluded.pid,"
            " host=excluded.host, error=NULL",
            (
                run_id,
                recipe,
                recipe_path,
                _json(inputs),
                _json(settings),
                int(dry_run),
                time.time(),
                os.getpid(),
                HOST,
                workdir,
            ),
            commit=True,
        )

    def end_run(
        self, run_id: str, status: str, outputs: Any = None, error: str | None = None
    ) -> None:
        self._write(
            "UPDATE {runs} SET status=?, ended=?, outputs=?, error=? WHERE id=?",
            (status, time.time(), _json(outputs), error, run_id),
            commit=True,
        )

    def start_step(
        self,
        run_id: str,
        key: str,
        seq: int,
        uses: str,
        planned: list[dict[str, Any]] | None = None,
    ) -> None:
        """Record a step starting; with its planned effects (just before it
        changes the world) the record is committed at once."""
        self._write(
            "INSERT INTO {steps} (run_id, key, seq, uses, status, started, effects)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?)"
            " ON CONFLICT(run_id, key) DO UPDATE SET seq=excluded.seq, uses=excluded.uses,"
            " status='running', started=excluded.started, ended=NULL,"
            " effects=excluded.effects, outputs=NULL, error=NULL",
            (run_id, key, seq, uses, time.time(), _json(planned)),
            commit=planned is not None,
        )

    def end_step(
        self,
        run_id: str,
        key: str,
        status: str,
        effects: list[dict[str, Any]] | None,
        outputs: Any,
        error: str | None = None,
    ) -> None:
        self._write(
            "UPDATE {steps} SET status=?, ended=?, effects=?, outputs=?, error=? WHERE run_id=? AND key=?",
            (status, time.time(), _json(effects), _json(outputs), error, run_id, key),
        )

    def finished_steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Steps of a run that completed, by key, with their status and outputs."""
        rows = self._query(
            "SELECT key, status, outputs, effects FROM {steps} WHERE run_id=? AND status IN (?, ?, ?)",
            (run_id, *FINISHED),
        )
        return {
            key: {
                "status": status,
                "outputs": json.loads(outputs or "null") or {},
                "effects": json.loads(effects or "null") or [],
            }
            for key, status, outputs, effects in rows
        }

    _RUN_COLUMNS = (
        "id, recipe, recipe_path, inputs, settings, dry_run, status, started, ended, pid,"
        " workdir, outputs, error, host"
    )

    def run(self, run_id: str) -> RunRecord | None:
        row = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM {{runs}} WHERE id=? OR id LIKE ?"
            " ORDER BY started DESC LIMIT 2",
            (run_id, f"%{run_id}%"),
        )
        exact = [r for r in row if r[0] == run_id]
        if exact:
            return _record(exact[0])
        return _record(row[0]) if len(row) == 1 else None

    def runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._query(
            f"SELECT {self._RUN_COLUMNS} FROM {{runs}} ORDER BY started DESC LIMIT ?", (limit,)
        )
        return [_record(r) for r in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            "SELECT key, seq, uses, status, started, ended, effects, outputs, error FROM {steps}"
            " WHERE run_id=? ORDER BY seq, started",
            (run_id,),
        )
        return [
            {
                "key": r[0],
                "seq": r[1],
                "uses": r[2],
                "status": r[3],
                "started": r[4],
                "ended": r[5],
                "effects": json.loads(r[6] or "null") or [],
                "outputs": json.loads(r[7] or "null"),
                "error": r[8],
            }
            for r in rows
        ]


def _sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///path`` URL (or a plain path)."""
    return urlsplit(url).path if "://" in url else url


def _record(r: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        r[0],
        r[1],
        r[2],
        json.loads(r[3]),
        json.loads(r[4]),
        bool(r[5]),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        json.loads(r[11]) if r[11] else None,
        r[12],
        r[13],
    )


def _text(value: Any) -> Any:
    """A text column's value with bytes that are not UTF-8 escaped (sqlite3 and
    psycopg refuse surrogates); JSON columns keep them exactly as ``\\udcNN``."""
    return printable(value) if isinstance(value, str) else value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, separators=(",", ":"))
