"""The run journal: every run, its inputs, plan, and each step's outcome.

It is what makes ``wsrun resume`` possible after a crash, and it is the audit
trail of every file a run wrote. By default one SQLite file under
``$WSRUN_HOME`` (default: the XDG state directory), in WAL mode so concurrent
runs can write it; with ``WSRUN_JOURNAL_URL`` (or the ``wsrun.journal.url``
setting) set to ``postgresql://...``, a database every host shares, so
``wsrun runs`` anywhere lists the runs of all of them.

One piece: the SQLite and PostgreSQL journals share every query through one class
that only swaps table names and placeholders, and the batching, blobs, progress and
retention all work on the same connection and lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsrun.core import zstd
from wsrun.core.db import DbError
from wsrun.core.masking import printable
from wsrun.core.migrate import enable_wal, migrate_sqlite
from wsrun.core.spool import Mapped, Spool, holds_lazy, is_lazy, lazy_mapping

#: A step's effects or outputs whose JSON is longer than this go into the blobs
#: table, zstd-compressed (effects one JSON object a line, so a page of them is
#: read without decoding the rest); shorter ones stay in the row as JSON text.
INLINE_MAX = 512
#: zstd's level for journal blobs: fast, and JSON of paths shrinks 10-20 times.
ZSTD_LEVEL = 3
#: A streamed blob's text is held in memory up to this size, then goes
#: through a temporary file before it is compressed.
BLOB_HELD = 8 << 20
#: Items of a long list or mapping serialised at a time into a blob.
PART_ITEMS = 4096

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
    from wsrun.core.settings import configured_url

    found = configured_url(explicit, ENV, SETTING, env)
    return found or default or "sqlite://" + os.path.join(default_home(), "journal.db")


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

    RUNS, STEPS, BLOBS, META, PARAM = "runs", "steps", "blobs", "meta", "?"

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self.db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA busy_timeout = 30000")
            # a new file frees the pages a prune empties (an old one: see give_back)
            self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            enable_wal(self.db)
            self.db.execute("PRAGMA synchronous = NORMAL")
            # The tables come from the journal's migrations (wsrun/core/migrations/journal/).
            migrate_sqlite(self.db, "journal", path)
        except (sqlite3.Error, OSError) as e:
            raise self.error(e) from None
        except DbError as e:
            raise JournalError(f"journal {e}") from None

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

    def give_back(self) -> None:
        """Return the pages a prune emptied to the file system. A journal made
        before auto_vacuum was set is rewritten once (VACUUM), which turns it on;
        after that an incremental vacuum is enough. The WAL is truncated too."""
        try:
            if self.db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.db.execute("VACUUM")
            else:
                self.db.execute("PRAGMA incremental_vacuum").fetchall()
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as e:
            raise self.error(e) from None

    def close(self) -> None:
        self.db.close()


class _PostgresTables:
    """The journal in PostgreSQL (tables ``journal_*``; ``wsrun db upgrade`` creates them)."""

    RUNS, STEPS, BLOBS, META, PARAM = (
        "journal_runs",
        "journal_steps",
        "journal_blobs",
        "journal_meta",
        "%s",
    )
    #: Taken shared by every write that refers to blobs and exclusively by a
    #: prune's sweep of unreferenced blobs, so the sweep never removes a blob
    #: that a transaction not yet committed has just referred to again.
    BLOB_LOCK = (
        "SELECT pg_advisory_xact_lock{}(hashtext('wsrun_journal_blobs:' || current_schema()))"
    )

    def __init__(self, url: str) -> None:
        from wsrun.core import db, migrate

        self.url = url
        try:
            migrate.require_current(url, "journal")
        except db.DbError as e:
            raise JournalError(f"journal: {e}") from None

    def query(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        import psycopg

        from wsrun.core import db

        try:
            with db.connection(self.url) as conn:
                return conn.execute(sql, args).fetchall()
        except psycopg.Error as e:
            raise JournalError(f"journal {db.mask(self.url)}: {e}") from None

    def write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        import psycopg

        from wsrun.core import db

        try:
            with db.connection(self.url) as conn, conn.transaction():
                if any(self.BLOBS in sql for sql, _ in statements):
                    conn.execute(self.BLOB_LOCK.format("_shared"))
                for sql, args in statements:
                    conn.execute(sql, args)
        except psycopg.Error as e:
            raise JournalError(f"journal {db.mask(self.url)}: {e}") from None

    def give_back(self) -> None:
        """Nothing to do: rows a DELETE removed leave space that autovacuum makes
        reusable for new rows; the files do not shrink (VACUUM FULL would, under
        an exclusive lock, which is the operator's call)."""

    def close(self) -> None:
        """The pool is the process's; nothing of this journal's own to release."""


class Journal:
    """The run journal at ``url`` (default: ``journal_url()``; with ``home``, the
    SQLite default is ``<home>/journal.db``). SQLite or ``postgresql://``."""

    def __init__(self, home: str | None = None, url: str | None = None) -> None:
        self.home = home or default_home()
        default = "sqlite://" + os.path.join(self.home, "journal.db")
        self.url = url or journal_url(default=default)
        from wsrun.core import extras

        try:
            extras.require_url(self.url, "journal")
        except extras.MissingExtra as e:
            raise JournalError(str(e)) from None
        if urlsplit(self.url).scheme in ("postgresql", "postgres"):
            self.tables: _SqliteTables | _PostgresTables = _PostgresTables(self.url)
        else:
            self.tables = _SqliteTables(_sqlite_path(self.url))
        self._sql: dict[str, str] = {}
        self._last_commit = time.monotonic()
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        #: The blob of each step's planned effects this process wrote, by (run, key):
        #: the performed effects are usually the same and need not be compressed again.
        #: (run, step) -> the blob of its planned effects, and what they were read
        #: from (see _stream_of), so the same stream at the step's end is not
        #: serialised again.
        self._planned: dict[tuple[str, str], tuple[str, Any]] = {}
        #: Progress (wsrun.core.progress) is written from the threads steps report from.
        self._lock = threading.RLock()

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
            found = self._sql[text] = text.format(
                runs=t.RUNS, steps=t.STEPS, blobs=t.BLOBS, meta=t.META
            ).replace("?", t.PARAM)
        return found

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.tables.query(self.sql(sql), args)

    def _write(self, sql: str, args: tuple[Any, ...], commit: bool = False) -> None:
        """Queue a write; queued writes go to the database in one short
        transaction, so no lock is held while a step works."""
        with self._lock:
            self._pending.append((self.sql(sql), tuple(_text(a) for a in args)))
            if commit or time.monotonic() - self._last_commit > self.COMMIT_EVERY:
                self.flush()

    def flush(self) -> None:
        """Commit the queued writes. When that fails (disk full, read-only file) they
        are dropped and JournalError names the journal: the run stops, and a later
        smaller write (the run's end) may still get through."""
        with self._lock:
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
        planned: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        """Record a step starting; with its planned effects (just before it
        changes the world) the record is committed at once."""
        effects, ref = self._effects_columns(planned)
        if ref is not None:
            self._planned[(run_id, key)] = (ref, _stream_of(planned))
        self._write(
            "INSERT INTO {steps} (run_id, key, seq, uses, status, started, effects,"
            " effect_count, effects_ref)"
            " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)"
            " ON CONFLICT(run_id, key) DO UPDATE SET seq=excluded.seq, uses=excluded.uses,"
            " status='running', started=excluded.started, ended=NULL,"
            " effects=excluded.effects, effect_count=excluded.effect_count,"
            " effects_ref=excluded.effects_ref, outputs=NULL, outputs_ref=NULL, error=NULL,"
            " progress=NULL",
            (run_id, key, seq, uses, time.time(), effects, _count(planned), ref),
            commit=planned is not None,
        )

    def end_step(
        self,
        run_id: str,
        key: str,
        status: str,
        effects: Sequence[dict[str, Any]] | None,
        outputs: Any,
        error: str | None = None,
    ) -> None:
        """Record a step's end. Its effects and outputs must be masked already:
        they are compressed here, where no later pass could find a secret."""
        stored, stream = self._planned.pop((run_id, key), (None, None))
        if stream is not None and _stream_of(effects) == stream:
            inline, ref = None, stored  # the planned effects, done: the blob written at start
        else:
            inline, ref = self._effects_columns(effects, stored)
        out_inline, out_ref = self._outputs_columns(outputs)
        self._write(
            "UPDATE {steps} SET status=?, ended=?, effects=?, effect_count=?, effects_ref=?,"
            " outputs=?, outputs_ref=?, error=? WHERE run_id=? AND key=?",
            (
                status,
                time.time(),
                inline,
                _count(effects),
                ref,
                out_inline,
                out_ref,
                error,
                run_id,
                key,
            ),
        )

    def set_progress(self, run_id: str, key: str, progress: dict[str, Any]) -> None:
        """Put a step's newest progress figures (wsrun.core.progress.Snapshot) in its
        row, in place, and commit: a running run's page shows them. Callers
        throttle (JournalProgress: at most once a second a run)."""
        update = (
            self.sql("UPDATE {steps} SET progress=? WHERE run_id=? AND key=?"),
            (_json(progress), run_id, key),
        )
        with self._lock:
            # the queued records first (the step's row may be among them); when the
            # write fails they stay queued, so the run's own next write reports it
            self.tables.write([*self._pending, update])
            self._pending = []
            self._last_commit = time.monotonic()

    def _effects_columns(
        self, effects: Sequence[dict[str, Any]] | None, stored: str | None = None
    ) -> tuple[str | None, str | None]:
        """(JSON text, blob hash) for a list of effects: a short list stays in the
        row, a long one is stored as JSON lines in a blob (``stored``: a blob this
        process has already written, reused when the content is the same). The
        effects are read once, as a stream: a spooled plan of a million is
        serialised and compressed a chunk at a time, never held whole."""
        if effects is None:
            return None, None
        it = iter(effects)
        lines: list[str] = []
        size = 0
        for e in it:
            line = _json(e) or "null"  # each effect serialised once
            lines.append(line)
            size += len(line) + 1
            if size > INLINE_MAX:
                break
        else:
            return "[" + ",".join(lines) + "]", None

        def rest() -> Iterator[str]:
            yield "\n".join(lines)
            batch: list[str] = []
            for e in it:
                batch.append(_json(e) or "null")
                if len(batch) >= PART_ITEMS:
                    yield "\n" + "\n".join(batch)
                    batch = []
            if batch:
                yield "\n" + "\n".join(batch)

        return None, self._blob(rest(), stored)

    def _outputs_columns(self, outputs: Any) -> tuple[str | None, str | None]:
        """(JSON text, blob hash) for a step's outputs. Long outputs of a mapping
        keep their short values in the row and put the long ones (lists of files,
        checksums) in a blob of their own, which a re-run that changed nothing
        shares with the run before (only counts such as ``copied`` differ).
        Spooled outputs (wsrun.core.spool) always go to the blob, streamed."""
        if holds_lazy(outputs) and not isinstance(outputs, dict):
            return None, self._blob(_json_parts(outputs))
        lazy = (
            {k for k, v in outputs.items() if holds_lazy(v)} if isinstance(outputs, dict) else set()
        )
        text = None if lazy else _json(outputs)
        if not lazy and (text is None or len(text) <= INLINE_MAX):
            return text, None
        if not isinstance(outputs, dict):
            return None, self._blob(text or "null")
        texts = {k: _json(v) or "null" for k, v in outputs.items() if k not in lazy}
        long = lazy | {k for k, t in texts.items() if len(t) > INLINE_MAX // 4}
        short = "{" + ",".join(f"{_json(k)}:{t}" for k, t in texts.items() if k not in long) + "}"

        def rest() -> Iterator[str]:
            yield "{"
            for n, k in enumerate(k for k in outputs if k in long):
                yield ("," if n else "") + f"{_json(k)}:"
                if k in lazy:
                    yield from _json_parts(outputs[k])
                else:
                    yield texts[k]
            yield "}"

        return short, self._blob(rest())

    def _blob(self, text: str | Iterable[str], stored: str | None = None) -> str:
        """Queue ``text`` (or its parts, streamed) compressed into the blobs
        table (once per distinct content: a dry run and its real run, or an
        unchanged re-run, share it); its hash. The text is JSON with every
        non-ASCII character escaped."""
        hasher = hashlib.sha256()
        if isinstance(text, str):
            raw = text.encode()
            hasher.update(raw)
            data: bytes | memoryview = zstd.compress(raw, level=ZSTD_LEVEL)
        else:
            # Parts go through a temporary file (in memory while small), so the
            # compressed frame still states its size, as a one-shot one does.
            with tempfile.SpooledTemporaryFile(max_size=BLOB_HELD) as spooled:
                size = 0
                for part in text:
                    raw = part.encode()
                    hasher.update(raw)
                    size += spooled.write(raw)
                spooled.seek(0)
                out = io.BytesIO()
                compressor = zstd.ZstdCompressor(level=ZSTD_LEVEL)
                compressor.set_pledged_input_size(size)
                while chunk := spooled.read(1 << 20):
                    out.write(compressor.compress(chunk))
                out.write(compressor.flush())
                data = out.getbuffer()  # not copied: a million digests compress to 40 MB
        ref = hasher.hexdigest()
        if ref != stored:  # queued without a flush: it commits with the row that refers to it
            self._pending.append(
                (
                    self.sql(
                        "INSERT INTO {blobs} (hash, data) VALUES (?, ?) ON CONFLICT(hash) DO NOTHING"
                    ),
                    (ref, data),
                )
            )
        return ref

    def _blob_text(self, ref: str) -> io.TextIOBase:
        """The text of blob ``ref``, decompressed as it is read."""
        rows = self._query("SELECT data FROM {blobs} WHERE hash=?", (ref,))
        if not rows:
            raise JournalError(f"journal {self._where()}: blob {ref[:12]} is missing")
        reader = zstd.ZstdFile(io.BytesIO(bytes(rows[0][0])))
        return io.TextIOWrapper(reader, encoding="utf-8")

    def _where(self) -> str:
        from wsrun.core import db

        return db.mask(self.url)

    def _effects(
        self, inline: str | None, ref: str | None, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A step's effects ``offset`` to ``offset + limit`` from its row's columns;
        a blob is read only as far as the page needs."""
        if ref is None:
            found = json.loads(inline or "null") or []
            return found[offset:] if limit is None else found[offset : offset + limit]
        if limit == 0:  # a count is all that is wanted: the blob is not fetched
            return []
        page = []
        with self._blob_text(ref) as lines:
            for i, line in enumerate(lines):
                if i < offset:
                    continue
                if limit is not None and len(page) >= limit:
                    break
                page.append(json.loads(line))
        return page

    def _outputs(self, inline: str | None, ref: str | None) -> Any:
        """Outputs from their row's columns: the row's JSON, the blob's, or a
        mapping split between the two (see _outputs_columns)."""
        if ref is None:
            return json.loads(inline or "null")
        with self._blob_text(ref) as text:
            stored = json.loads(text.read())
        return stored if inline is None else {**json.loads(inline), **stored}

    def effects(
        self, run_id: str, key: str, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """A page of one step's effects (all from ``offset`` when ``limit`` is None)."""
        rows = self._query(
            "SELECT effects, effects_ref FROM {steps} WHERE run_id=? AND key=?", (run_id, key)
        )
        return self._effects(rows[0][0], rows[0][1], offset, limit) if rows else []

    def finished_steps(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Steps of a run that completed, by key, with their status and outputs."""
        rows = self._query(
            "SELECT key, status, outputs, outputs_ref, effects, effects_ref FROM {steps}"
            " WHERE run_id=? AND status IN (?, ?, ?)",
            (run_id, *FINISHED),
        )
        return {
            key: {
                "status": status,
                "outputs": self._outputs(outputs, outputs_ref) or {},
                "effects": self._effects(effects, effects_ref),
            }
            for key, status, outputs, outputs_ref, effects, effects_ref in rows
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

    def steps(self, run_id: str, effects_limit: int | None = None) -> list[dict[str, Any]]:
        """A run's steps in order, each with its first ``effects_limit`` effects
        (all when None) and ``effect_count``, how many it has in all."""
        rows = self._query(
            "SELECT key, seq, uses, status, started, ended, effects, outputs, error,"
            " effect_count, effects_ref, outputs_ref, progress FROM {steps}"
            " WHERE run_id=? ORDER BY seq, started",
            (run_id,),
        )
        steps = []
        for r in rows:
            count = r[9]
            if count is None:  # a row older than the count: its effects are all inline
                effects = self._effects(r[6], r[10])
                count, effects = len(effects), effects[:effects_limit]
            else:
                effects = self._effects(r[6], r[10], 0, effects_limit)
            steps.append(
                {
                    "key": r[0],
                    "seq": r[1],
                    "uses": r[2],
                    "status": r[3],
                    "started": r[4],
                    "ended": r[5],
                    "effects": effects,
                    "effect_count": count,
                    "outputs": self._outputs(r[7], r[11]),
                    "error": r[8],
                    "progress": json.loads(r[12]) if r[12] else None,
                }
            )
        return steps

    def prune(
        self,
        older_than: float | None = None,
        keep: int | None = None,
        resumable: bool = False,
        dry_run: bool = False,
    ) -> Pruned:
        """Delete the runs older than ``older_than`` seconds that are not among the
        ``keep`` newest (either limit alone, or both), with their steps and the
        blobs no run refers to any more; then give the space back. A run still
        running is never pruned; a failed or interrupted one (``wsrun resume``
        continues it) only with ``resumable``. ``dry_run`` deletes nothing."""
        if older_than is None and keep is None:
            raise ValueError("prune needs an age (--older-than) or a count (--keep)")
        records = [
            _record(r)
            for r in self._query(f"SELECT {self._RUN_COLUMNS} FROM {{runs}} ORDER BY started DESC")
        ]
        cutoff = None if older_than is None else time.time() - older_than
        pruned, held = [], []
        for i, r in enumerate(records):
            if (keep is not None and i < keep) or (cutoff is not None and r.started >= cutoff):
                continue
            status = r.shown_status
            if status == "running" or (
                not resumable and not r.dry_run and status in ("failed", "interrupted")
            ):
                held.append(r.id)
            else:
                pruned.append(r.id)
        result = Pruned(pruned, held, len(records) - len(pruned))
        if dry_run or not pruned:
            return result
        for start in range(0, len(pruned), 500):
            ids = tuple(pruned[start : start + 500])
            marks = ", ".join("?" * len(ids))
            self._write(f"DELETE FROM {{steps}} WHERE run_id IN ({marks})", ids)
            self._write(f"DELETE FROM {{runs}} WHERE id IN ({marks})", ids)
        self.flush()
        self.sweep_blobs()
        self.tables.give_back()
        return result

    def sweep_blobs(self) -> None:
        """Delete the blobs no step refers to (on PostgreSQL under the lock every
        write that refers to a blob shares, so a blob just referred to again by a
        transaction not yet committed stays)."""
        statements = [
            (
                self.sql(
                    "DELETE FROM {blobs} WHERE NOT EXISTS"
                    " (SELECT 1 FROM {steps} s WHERE s.effects_ref = {blobs}.hash)"
                    " AND NOT EXISTS (SELECT 1 FROM {steps} s WHERE s.outputs_ref = {blobs}.hash)"
                ),
                (),
            )
        ]
        if isinstance(self.tables, _PostgresTables):
            statements.insert(0, (self.tables.BLOB_LOCK.format(""), ()))
        self.tables.write(statements)

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM {meta} WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO {meta} (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
            commit=True,
        )


@dataclass
class Pruned:
    """What a prune deleted (or would delete) and what it kept."""

    #: the runs deleted (with --dry-run: that would be)
    runs: list[str]
    #: old enough to go, kept: still running, or resumable (failed, interrupted)
    held: list[str]
    #: how many runs the journal keeps
    kept: int


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


def _count(effects: Sequence[Any] | None) -> int | None:
    return None if effects is None else len(effects)


def json_encoder(
    default: Callable[[Any], Any], ensure_ascii: bool = True, item_separator: str = ","
) -> Callable[[Any], str]:
    """One JSON encoder for many values: ``json.dumps`` builds an encoder per
    call, and even ``JSONEncoder.encode`` builds its C encoder per call, which
    was most of the cost of serialising a million small effects. Values must
    not refer to themselves (nothing checks for cycles)."""
    key_separator = ":" if item_separator == "," else ": "
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain encoder
        return json.JSONEncoder(
            default=default,
            ensure_ascii=ensure_ascii,
            separators=(item_separator, key_separator),
        ).encode
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    encode = make(None, default, strings, None, key_separator, item_separator, False, False, True)
    join = "".join

    def encode_one(value: Any) -> str:
        if isinstance(value, str):
            return strings(value)  # type: ignore[no-any-return]
        return join(encode(value, 0))

    return encode_one


#: One encoder for every value (see json_encoder).
_ENCODE = json_encoder(str)


def _json(value: Any) -> str | None:
    return None if value is None else _ENCODE(value)


def _stream_of(effects: Any) -> tuple[Any, ...] | None:
    """What a spooled sequence of effects is read from: the spool, its length
    (it only grows) and the functions it is shown through, by name. Two
    sequences with the same are the same effects (a copy's apply returns its
    plan's), so a million of them are serialised and hashed once, not twice."""
    layers = []
    while isinstance(effects, Mapped):
        layers.append(getattr(effects.fn, "__qualname__", None) or repr(effects.fn))
        effects = effects.base
    if not isinstance(effects, Spool):
        return None
    return (id(effects), len(effects), tuple(layers), effects)


def _json_parts(value: Any) -> Iterator[str]:
    """A lazy sequence as a JSON array (a lazy mapping as an object), in parts
    of a few thousand items; a plain dict or list holding lazy ones (a
    delivery.json document) streamed around them."""
    if not is_lazy(value):
        if not holds_lazy(value):
            yield _json(value) or "null"
        elif isinstance(value, dict):
            for n, (k, v) in enumerate(value.items()):
                yield ("{" if not n else ",") + _ENCODE(k if isinstance(k, str) else str(k)) + ":"
                yield from _json_parts(v)
            yield "}"
        else:
            for n, v in enumerate(value):
                yield "[" if not n else ","
                yield from _json_parts(v)
            yield "]"
        return
    if lazy_mapping(value):
        yield "{"
        pairs: dict[Any, Any] = {}
        first = True
        for k, v in value.items():  # type: ignore[attr-defined]
            pairs[k] = v
            if len(pairs) >= PART_ITEMS:
                yield ("" if first else ",") + (_json(pairs) or "{}")[1:-1]
                pairs, first = {}, False
        if pairs:
            yield ("" if first else ",") + (_json(pairs) or "{}")[1:-1]
        yield "}"
        return
    yield "["
    batch: list[Any] = []
    first = True
    for item in value:
        batch.append(item)
        if len(batch) >= PART_ITEMS:
            yield ("" if first else ",") + _ENCODE(batch)[1:-1]
            batch, first = [], False
    if batch:
        yield ("" if first else ",") + _ENCODE(batch)[1:-1]
    yield "]"
