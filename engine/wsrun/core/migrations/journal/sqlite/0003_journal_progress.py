"""A running step's newest progress (files and bytes done against the plan's
totals, rates, ETA) as JSON, updated in place at most once a second a run, so
the web run page and ``wsrun runs show`` show it live.

Python rather than SQL: a journal file from a development build may have the
column already.
"""

import sqlite3

from wsrun.core.migrate import add_missing_columns


def upgrade(conn: sqlite3.Connection) -> None:
    """Add the ``progress`` column where it is missing."""
    add_missing_columns(conn, "steps", {"progress": "TEXT"})
