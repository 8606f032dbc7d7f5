"""The run journal: every run, its inputs, plan, and each step's outcome.

It is what makes ``wsrun resume`` possible after a crash, and it is the audit
trail of every file a run wrote. One SQLite file under ``$WSRUN_HOME`` (default:
the XDG state directory), in WAL mode so concurrent runs can write it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

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


def default_home() -> str:
    if os.environ.get("WSRUN_HOME"):
        return os.environ["WSRUN_HOME"]
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "wsrun")


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

    @property
    def shown_status(self) -> str:
        """'interrupted' for a run whose process died without finishing."""
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


class Journal:
    def __init__(self, home: str | None = None) -> None:
        self.home = home or default_home()
        os.makedirs(self.home, exist_ok=True)
        self.path = os.path.join(self.home, "journal.db")
        self.db = sqlite3.connect(
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(SCHEMA)
        self._last_commit = time.monotonic()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []

    #: Step records are committed at most this often (and at the end of a run),
    #: so a recipe of many short steps does not pay a commit per step. A crash
    #: loses at most this much of the record; resume then re-plans those steps,
    #: which find their work done.
    COMMIT_EVERY = 0.25

    def _write(self, sql: str, args: tuple[Any, ...], commit: bool = False) -> None:
        """Queue a write; queued writes go to the database in one short
        transaction, so no lock is held while a step works."""
        self._pending.append((sql, args))
        if commit or time.monotonic() - self._last_commit > self.COMMIT_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            with self.db:
                self.db.execute("BEGIN")
                for sql, args in self._pending:
                    self.db.execute(sql, args)
            self._pending.clear()
        self._last_commit = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.db.close()

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
            "INSERT INTO runs (id, recipe, recipe_path, inputs, settings, dry_run, status, started, pid, workdir)"
            " VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET status='running', ended=NULL, pid=excluded.pid, error=NULL",
            (
                run_id,
                recipe,
                recipe_path,
                _json(inputs),
                _json(settings),
                int(dry_run),
                time.time(),
                os.getpid(),
                workdir,
            ),
            commit=True,
        )

    def end_run(
        self, run_id: str, status: str, outputs: Any = None, error: str | None = None
    ) -> None:
        self._write(
            "UPDATE runs SET status=?, ended=?, outputs=?, error=? WHERE id=?",
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
            "INSERT OR REPLACE INTO steps (run_id, key, seq, uses, status, started, effects) VALUES (?, ?, ?, ?, 'running', ?, ?)",
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
            "UPDATE steps SET status=?, ended=?, effects=?, outputs=?, error=? WHERE run_id=? AND key=?",
            (status, time.time(), _json(effects), _json(outputs), error, run_id, key),
        )

    def finished_steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Steps of a run that completed, by key, with their status and outputs."""
        rows = self.db.execute(
            "SELECT key, status, outputs, effects FROM steps WHERE run_id=? AND status IN (?, ?, ?)",
            (run_id, *FINISHED),
        ).fetchall()
        return {
            key: {
                "status": status,
                "outputs": json.loads(outputs or "null") or {},
                "effects": json.loads(effects or "null") or [],
            }
            for key, status, outputs, effects in rows
        }

    def run(self, run_id: str) -> RunRecord | None:
        row = self.db.execute(
            "SELECT id, recipe, recipe_path, inputs, settings, dry_run, status, started, ended, pid, workdir, outputs, error"
            " FROM runs WHERE id=? OR id LIKE ? ORDER BY started DESC LIMIT 2",
            (run_id, f"%{run_id}%"),
        ).fetchall()
        exact = [r for r in row if r[0] == run_id]
        if exact:
            return _record(exact[0])
        return _record(row[0]) if len(row) == 1 else None

    def runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self.db.execute(
            "SELECT id, recipe, recipe_path, inputs, settings, dry_run, status, started, ended, pid, workdir, outputs, error"
            " FROM runs ORDER BY started DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [_record(r) for r in rows]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT key, seq, uses, status, started, ended, effects, outputs, error FROM steps WHERE run_id=? ORDER BY seq, started",
            (run_id,),
        ).fetchall()
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
    )


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, separators=(",", ":"))
