"""A compact run journal: a step's effects and large outputs go into ``blobs``
as zstd-compressed JSON, stored once per distinct content; the step row keeps
how many effects there are and the blobs' hashes. ``meta`` holds small facts
such as when retention last pruned.

Python rather than SQL because journal files made before migrations were
recorded may already have some of these columns.
"""

import sqlite3

from wsrun.core.migrate import add_missing_columns, run_script

TABLES = """
CREATE TABLE IF NOT EXISTS blobs (
    hash TEXT PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS steps_effects_ref ON steps(effects_ref);
CREATE INDEX IF NOT EXISTS steps_outputs_ref ON steps(outputs_ref);
"""


def upgrade(conn: sqlite3.Connection) -> None:
    """Add the summary columns (where missing), the blobs and meta tables, the indexes."""
    add_missing_columns(
        conn, "steps", {"effect_count": "INTEGER", "effects_ref": "TEXT", "outputs_ref": "TEXT"}
    )
    run_script(conn, TABLES)
