"""What interrupted work leaves behind that a re-run may reuse, kept per host.

A killed run must not redo what it finished, and must not trust what changed
since. Two records make that possible where the journal (one row per step)
cannot:

* **Recorded hashes**: the digest of a file, keyed by the file's identity
  (device, inode, size, mtime and ctime in ns). A step that hashes a file
  records it; a later step or re-run that meets the same identity reuses the
  digest instead of reading the file again. Any write to the file changes its
  ctime (even one that puts the mtime back), so a changed file is always read
  again.
* **Multipart uploads in progress**: the upload id of an object being sent in
  parts, with the local file's identity and the part size. A re-run after a
  kill lists the parts already on the store and sends only the others
  (wsrun.steps.s3_upload).

Both live in one SQLite file, ``$WSRUN_HOME/resume.db`` (WAL, no fsync per
commit: losing the last records in a power cut only means reading or sending
again); hash records not renewed for 30 days are dropped. Hash records are
written in batches by a thread of their own, so a step copying a million
files never waits on SQLite (a WAL checkpoint's fsync stalls for seconds
behind gigabytes of dirty pages); ``flush`` waits until all are written. ``$WSRUN_RESUME=off``
turns the records off. Records are a cache:
an unreadable or unwritable file is ignored, never a failure of the step.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass

from wsrun.core.db import DbError
from wsrun.core.journal import default_home
from wsrun.core.migrate import enable_wal, migrate_sqlite

#: Pending hash records are written at least this often (seconds), and at
#: once after this many bytes hashed or files recorded: a kill loses at most
#: that much work, and 20,000 small files do not cost 20,000 commits.
FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 << 20
FLUSH_FILES = 512
#: Batches are written by a thread of their own (see the module doc); off, each
#: is written on the thread that recorded it, before ``record`` returns.
WRITER_THREAD = True
#: Batches handed over and not yet written before a recorder waits.
WRITER_BEHIND = 16
#: Hash records not written again for this long are dropped (checked once a
#: day), so the file does not grow with every file ever hashed.
KEEP_SECONDS = 30 * 86400


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What must be unchanged for a recorded digest of a file to still hold."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class UploadRecord:
    """A multipart upload a run started and did not finish."""

    url: str
    upload_id: str
    source: str
    size: int
    mtime_ns: int
    part_size: int
    sha256: str | None
    pid: int


class Records:
    """The resume records of this host (see the module doc); thread-safe."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.path.join(default_home(), "resume.db")
        #: Guards the pending records; ``_db_lock`` guards the connection.
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = -1
        self._pending: list[tuple[object, ...]] = []
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        #: Batches of records handed to the writer thread (started on first use);
        #: a recorder waits while it is this far behind, so memory stays bounded.
        self._batches: queue.Queue[list[tuple[object, ...]]] = queue.Queue(WRITER_BEHIND)
        self._writer: threading.Thread | None = None
        self._writer_pid = -1
        self.enabled = os.environ.get("WSRUN_RESUME", "on").lower() not in ("off", "0", "no")

    def _conn(self) -> sqlite3.Connection | None:
        if not self.enabled:
            return None
        if self._db is not None and self._pid == os.getpid():
            return self._db
        if self._pid not in (-1, os.getpid()):
            with self._lock:  # a forked child must not write its parent's records
                self._pending.clear()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            enable_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
            tables = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            try:  # the tables come from the store's migrations (core/migrations/resumes/)
                migrate_sqlite(tables, "resumes", self.path)
            finally:
                tables.close()
        except (sqlite3.Error, OSError, DbError):
            self.enabled = False
            return None
        self._db, self._pid = db, os.getpid()
        with contextlib.suppress(sqlite3.Error):
            _prune(db)
        return db

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._db_lock:
            db = self._conn()
            if db is None:
                return []
            try:
                with db:
                    return db.execute(sql, args).fetchall()
            except sqlite3.Error:
                return []

    # ---- recorded hashes -------------------------------------------------------

    def digest(self, path: str, algorithm: str, st: os.stat_result | None = None) -> str | None:
        """The recorded digest of ``path`` if the file is still the one hashed."""
        if not self.enabled:
            return None
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                return None
        rows = self._run(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM hashes"
            " WHERE path = ? AND algorithm = ?",
            (os.fsencode(path).decode("utf-8", "surrogateescape"), algorithm),
        )
        if rows and tuple(rows[0][:5]) == identity(st):
            return str(rows[0][5])
        return None

    def record(
        self,
        path: str,
        algorithm: str,
        digest: str,
        before: os.stat_result | None = None,
        st: os.stat_result | None = None,
    ) -> None:
        """Record ``digest`` as ``path``'s, if the file did not change while it was
        hashed (``before``: its stat when hashing started; None: just written).
        ``st`` is the file's stat taken by the caller once it was in place (an
        fstat of the file just written and renamed), which saves a look-up."""
        if not self.enabled:
            return
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                return
        if before is not None and identity(before) != identity(st):
            return
        name = os.fsencode(path).decode("utf-8", "surrogateescape")
        row = (name, algorithm, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        row += (st.st_ctime_ns, digest, time.time())
        with self._lock:
            self._pending.append(row)
            self._pending_bytes += st.st_size
            if not (
                self._pending_bytes >= FLUSH_BYTES
                or len(self._pending) >= FLUSH_FILES
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS
            ):
                return
            rows = self._take()
        self._send(rows)

    def _take(self) -> list[tuple[object, ...]]:
        """The pending records, taken (the caller holds ``_lock``)."""
        rows, self._pending, self._pending_bytes = self._pending, [], 0
        self._last_flush = time.monotonic()
        return rows

    def _send(self, rows: list[tuple[object, ...]]) -> None:
        """Give ``rows`` to the writer thread (waiting while it is WRITER_BEHIND
        batches behind), or write them now without one."""
        if not rows:
            return
        if not WRITER_THREAD:
            self._write(rows)
            return
        with self._lock:
            if self._writer is None or self._writer_pid != os.getpid():
                # a forked child has no writer thread and must not write its parent's batches
                self._batches = queue.Queue(WRITER_BEHIND)
                self._writer = threading.Thread(
                    target=self._write_batches,
                    args=(self._batches,),
                    name="wsrun-resume-records",
                    daemon=True,
                )
                self._writer_pid = os.getpid()
                self._writer.start()
            batches = self._batches
        batches.put(rows)

    def _write_batches(self, batches: queue.Queue[list[tuple[object, ...]]]) -> None:
        while True:
            rows = batches.get()
            try:
                self._write(rows)
            except Exception:  # noqa: BLE001 - a cache: never a failure, nor a hung flush
                self.enabled = False
            finally:
                batches.task_done()

    def _write(self, rows: list[tuple[object, ...]]) -> None:
        with self._db_lock:
            db = self._conn()
            if db is None:
                return
            with contextlib.suppress(sqlite3.Error), db:
                db.executemany(
                    "INSERT OR REPLACE INTO hashes"
                    " (path, algorithm, dev, ino, size, mtime_ns, ctime_ns, digest, recorded)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def flush(self) -> None:
        """Write the pending hash records, and wait until every record handed to
        the writer thread is written."""
        with self._lock:
            rows = self._take()
        self._send(rows)
        with self._lock:
            writing = self._writer is not None and self._writer_pid == os.getpid()
            batches = self._batches
        if writing:
            batches.join()

    # ---- multipart uploads ---------------------------------------------------------

    def upload(self, url: str) -> UploadRecord | None:
        """The unfinished multipart upload recorded for ``url``, if any."""
        rows = self._run(
            "SELECT url, upload_id, source, size, mtime_ns, part_size, sha256, pid"
            " FROM uploads WHERE url = ?",
            (url,),
        )
        return UploadRecord(*rows[0]) if rows else None  # type: ignore[arg-type]

    def start_upload(self, record: UploadRecord) -> None:
        """Remember an upload before its first part is sent."""
        self._run(
            "INSERT OR REPLACE INTO uploads"
            " (url, upload_id, source, size, mtime_ns, part_size, sha256, pid, started)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.url,
                record.upload_id,
                record.source,
                record.size,
                record.mtime_ns,
                record.part_size,
                record.sha256,
                record.pid,
                time.time(),
            ),
        )

    def end_upload(self, url: str, upload_id: str) -> None:
        """Forget an upload that completed or was aborted."""
        self._run("DELETE FROM uploads WHERE url = ? AND upload_id = ?", (url, upload_id))


def _prune(db: sqlite3.Connection) -> None:
    """Drop hash records older than KEEP_SECONDS, at most once a day."""
    now = time.time()
    row = db.execute("SELECT value FROM meta WHERE key = 'pruned'").fetchone()
    if row is not None and now - float(row[0]) < 86400:
        return
    with db:
        db.execute("DELETE FROM hashes WHERE recorded < ?", (now - KEEP_SECONDS,))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned', ?)", (now,))


_records: Records | None = None
_records_lock = threading.Lock()


def records() -> Records:
    """This process's records, for the current ``$WSRUN_HOME``."""
    global _records
    home = os.path.join(default_home(), "resume.db")
    with _records_lock:
        if _records is None or _records.path != home or _records._pid not in (-1, os.getpid()):
            _records = Records(home)
            atexit.register(_records.flush)
        return _records


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (the owner of an upload record)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
