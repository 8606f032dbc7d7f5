"""The run journal (wsrun.core.journal): each run and each of its steps, with the
planned and performed effects and outputs as JSON text.

Python rather than SQL because journal files made before migrations were
recorded may lack the ``host`` column, which SQLite cannot add "if missing"
in SQL.
"""

import sqlite3

from wsrun.core.migrate import add_missing_columns, run_script

TABLES = """
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


def upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables; give an old journal's runs their host column."""
    run_script(conn, TABLES)
    add_missing_columns(conn, "runs", {"host": "TEXT"})
