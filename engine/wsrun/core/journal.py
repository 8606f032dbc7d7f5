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

import io
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from wsrun.core import journal_blobs as blobs
from wsrun.core import spool, zstd
from wsrun.core.db import DbError
from wsrun.core.masking import printable
from wsrun.core.migrate import enable_wal, migrate_sqlite
from wsrun.core.spool import (
    Mapped,
    PairsDict,
    Spool,
    SpooledDict,
    holds_lazy,
    is_lazy,
    lazy_mapping,
)

#: A step's effects or outputs whose JSON is longer than this go into the blobs
#: table in compressed chunks (wsrun.core.journal_blobs; a page of effects is
#: read without decoding the chunks before it); shorter ones stay in the row as
#: JSON text.
INLINE_MAX = 512

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


class _Unsorted(Exception):
    """A mapping read back is not in key order (see Journal._spooled_map)."""


class JournalError(ValueError):
    """The configured journal cannot be used (unreachable, schema behind); one line.
    A ValueError, so commands report it as a usage problem rather than a crash."""


class _SqliteTables:
    """The journal in one SQLite file, in WAL mode so concurrent runs can write it."""

    RUNS, STEPS, BLOBS, PARTS, META, PARAM = "runs", "steps", "blobs", "blob_parts", "meta", "?"

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

    RUNS, STEPS, BLOBS, PARTS, META, PARAM = (
        "journal_runs",
        "journal_steps",
        "journal_blobs",
        "journal_blob_parts",
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
                runs=t.RUNS, steps=t.STEPS, blobs=t.BLOBS, parts=t.PARTS, meta=t.META
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
        row, a long one is stored in chunks (wsrun.core.journal_blobs), ``stored``
        being a blob this process has already written. The effects are read
        once, as a stream: a spooled plan of a million is stored a chunk at a
        time, never held whole."""
        if effects is None:
            return None, None
        it = iter(effects)
        head: list[Any] = []
        lines: list[str] = []
        size = 0
        for e in it:
            head.append(e)
            lines.append(_json(e) or "null")
            size += len(lines[-1]) + 1
            if size > INLINE_MAX:
                break
        else:
            return "[" + ",".join(lines) + "]", None
        return None, self._manifest(["E", self._chunks(itertools.chain(head, it))], stored)

    def _outputs_columns(self, outputs: Any) -> tuple[str | None, str | None]:
        """(JSON text, blob hash) for a step's outputs. Long outputs of a mapping
        keep their short values in the row and put the long ones (lists of files,
        checksums) in a blob, whose chunks a re-run that changed nothing shares
        with the run before (only counts such as ``copied`` differ), and a step
        that lists the same files as another (a checksum list of what a copy
        hashed) with that step's. Spooled outputs (wsrun.core.spool) always go
        to the blob, streamed."""
        if holds_lazy(outputs) and not isinstance(outputs, dict):
            return None, self._manifest(self._node(outputs))
        lazy = (
            {k for k, v in outputs.items() if holds_lazy(v)} if isinstance(outputs, dict) else set()
        )
        text = None if lazy else _json(outputs)
        if not lazy and (text is None or len(text) <= INLINE_MAX):
            return text, None
        if not isinstance(outputs, dict):
            return None, self._manifest(self._node(outputs))
        texts = {k: _json(v) or "null" for k, v in outputs.items() if k not in lazy}
        long = lazy | {k for k, t in texts.items() if len(t) > INLINE_MAX // 4}
        short = "{" + ",".join(f"{_json(k)}:{t}" for k, t in texts.items() if k not in long) + "}"
        tree = ["d", {k: self._node(v) for k, v in outputs.items() if k in long}]
        return short, self._manifest(tree)

    def _node(self, value: Any) -> list[Any]:
        """Where ``value`` goes in a manifest (see wsrun.core.journal_blobs): long
        lists and mappings, spooled or not, in chunks, wherever they are in it
        (a delivery's few products, each with a list of a million files); the
        rest as JSON."""
        if lazy_mapping(value):
            return ["M", self._chunks(value.items(), pairs=True)]
        if is_lazy(value):
            return ["L", self._chunks(value)]
        if not isinstance(value, (dict, list)):
            return ["j", value]
        held = holds_lazy(value)
        if not held and len(value) >= blobs.SECTION_MIN:  # long: chunked, not encoded to see
            if isinstance(value, dict):
                return ["M", self._chunks(value.items(), pairs=True)]
            return ["L", self._chunks(value)]
        if not held and len(_ENCODE(value)) <= blobs.SECTION_TEXT:
            return ["j", value]
        if isinstance(value, dict):
            return [
                "d",
                {k if isinstance(k, str) else str(k): self._node(v) for k, v in value.items()},
            ]
        return ["l", [self._node(v) for v in value]]

    def _chunks(self, items: Iterable[Any], pairs: bool = False) -> list[list[Any]]:
        """Queue ``items`` in chunks (each stored once, whichever blob holds it
        too); [[hash, item count], ...]."""
        insert = self.sql(
            "INSERT INTO {blobs} (hash, data) VALUES (?, ?) ON CONFLICT(hash) DO NOTHING"
        )
        listed = []
        for chunk in blobs.chunked(items):
            digest, data = blobs.encode_chunk(chunk, pairs, _ENCODE)
            self._pending.append((insert, (digest, data)))
            listed.append([digest, len(chunk)])
        return listed

    def _manifest(self, tree: list[Any], stored: str | None = None) -> str:
        """Queue a manifest of chunks already queued (committed with the row that
        refers to it); its hash. ``stored``: one this process wrote before."""
        digest, data = blobs.encode_manifest(tree, _ENCODE)
        if digest != stored:
            self._pending.append(
                (
                    self.sql(
                        "INSERT INTO {blobs} (hash, data) VALUES (?, ?) ON CONFLICT(hash) DO NOTHING"
                    ),
                    (digest, data),
                )
            )
            part = self.sql(
                "INSERT INTO {parts} (blob, part) VALUES (?, ?) ON CONFLICT(blob, part) DO NOTHING"
            )
            self._pending.extend((part, (digest, p)) for p in dict.fromkeys(blobs.parts(tree)))
        return digest

    def _stored(self, ref: str) -> bytes:
        rows = self._query("SELECT data FROM {blobs} WHERE hash=?", (ref,))
        if not rows:
            raise JournalError(f"journal {self._where()}: blob {ref[:12]} is missing")
        return bytes(rows[0][0])

    def _decoded(
        self, ref: str, decode: Callable[[bytes, str], Any], data: bytes | None = None
    ) -> Any:
        """``decode`` of blob ``ref`` (its ``data`` when already read); a blob
        that does not decode (a damaged file, a row changed by hand) is a
        JournalError naming it."""
        try:
            return decode(self._stored(ref) if data is None else data, ref)
        except (zstd.ZstdError, ValueError, TypeError, KeyError, IndexError, StopIteration) as e:
            if isinstance(e, JournalError):
                raise
            raise JournalError(
                f"journal {self._where()}: blob {ref[:12]} is damaged ({e})"
            ) from None

    def _items(self, listed: list[list[Any]], skip: int = 0) -> Iterator[Any]:
        """The items of chunks [[hash, count], ...] from the ``skip``-th on: the
        chunks before it are not read."""
        for digest, count in listed:
            if skip >= count:
                skip -= count
                continue
            items = self._decoded(digest, blobs.decode_chunk)
            yield from items[skip:] if skip else items
            skip = 0

    def _value(self, node: list[Any], spooled: bool = False) -> Any:
        """A manifest node's value (see _node); with ``spooled``, lists and
        mappings of more than a spool's worth stay on disk (wsrun.core.spool),
        as they were in the run that made them: a resumed run of a million
        files does not hold them."""
        kind, body = node
        if kind in ("M", "L", "E"):
            if spooled and sum(count for _, count in body) > spool.SPILL_AT:
                return self._spooled_map(body) if kind == "M" else Spool(self._items(body))
            return dict(self._items(body)) if kind == "M" else list(self._items(body))
        if kind == "d":
            return {k: self._value(v, spooled) for k, v in body.items()}
        if kind == "l":
            return [self._value(v, spooled) for v in body]
        return body

    def _spooled_map(self, listed: list[list[Any]]) -> Mapping[str, Any]:
        """A long mapping read back on disk: looked up a chunk at a time when
        its keys are sorted (checksums), else kept in order for reading through
        (a placement)."""

        def in_order() -> Iterator[tuple[str, Any]]:
            last = None
            for key, value in self._items(listed):
                if last is not None and not key > last:
                    raise _Unsorted
                last = key
                yield key, value

        try:
            return SpooledDict(in_order())
        except _Unsorted:
            return PairsDict(Spool(self._items(listed)))

    @staticmethod
    def _text(data: bytes) -> io.TextIOBase:
        """The text of a blob written before chunks (a zstd frame of JSON),
        decompressed as it is read."""
        return io.TextIOWrapper(zstd.ZstdFile(io.BytesIO(data)), encoding="utf-8")

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
        data = self._stored(ref)
        if data.startswith(blobs.MAGIC_MANIFEST):
            items = self._items(self._decoded(ref, blobs.decode_manifest, data)[1], offset)
            return list(items if limit is None else itertools.islice(items, limit))
        page = []
        with self._text(data) as lines:
            for i, line in enumerate(lines):
                if i < offset:
                    continue
                if limit is not None and len(page) >= limit:
                    break
                page.append(json.loads(line))
        return page

    def _outputs(self, inline: str | None, ref: str | None, spooled: bool = False) -> Any:
        """Outputs from their row's columns: the row's JSON, the blob's, or a
        mapping split between the two (see _outputs_columns)."""
        if ref is None:
            return json.loads(inline or "null")
        data = self._stored(ref)
        if data.startswith(blobs.MAGIC_MANIFEST):
            tree = self._decoded(ref, blobs.decode_manifest, data)
            stored = self._value(tree, spooled)
        else:
            with self._text(data) as text:
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
                "outputs": self._outputs(outputs, outputs_ref, spooled=True) or {},
                "effects": self._spooled_effects(effects, effects_ref),
            }
            for key, status, outputs, outputs_ref, effects, effects_ref in rows
        }

    def _spooled_effects(self, inline: str | None, ref: str | None) -> Sequence[dict[str, Any]]:
        """All of a step's effects, on disk past a spool's worth (see _value)."""
        if ref is not None:
            data = self._stored(ref)
            if data.startswith(blobs.MAGIC_MANIFEST):
                return self._value(self._decoded(ref, blobs.decode_manifest, data), spooled=True)  # type: ignore[no-any-return]
        return self._effects(inline, ref)

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
        """Delete the blobs no step refers to, directly or as a chunk of a blob
        one does (on PostgreSQL under the lock every write that refers to a blob
        shares, so a blob just referred to again by a transaction not yet
        committed stays), then the chunk lists of deleted blobs."""
        referred = (
            "EXISTS (SELECT 1 FROM {steps} s WHERE s.effects_ref = {x})"
            " OR EXISTS (SELECT 1 FROM {steps} s WHERE s.outputs_ref = {x})"
        )
        statements = [
            (
                self.sql(
                    "DELETE FROM {blobs} WHERE NOT ("
                    + referred.replace("{x}", "{blobs}.hash")
                    + " OR EXISTS (SELECT 1 FROM {parts} p WHERE p.part = {blobs}.hash AND ("
                    + referred.replace("{x}", "p.blob")
                    + ")))"
                ),
                (),
            ),
            (
                self.sql(
                    "DELETE FROM {parts} WHERE NOT EXISTS"
                    " (SELECT 1 FROM {blobs} b WHERE b.hash = {parts}.blob)"
                ),
                (),
            ),
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
