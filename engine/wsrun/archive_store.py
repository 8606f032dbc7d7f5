"""The archive: products stored by content, and a database of what they are.

It plays the part of NRAO's NGAS (the file store) and the archive metadata
database: every ingested product gets a locator (``uid://evla/image/<uuid>``),
its type, its files (name, size, sha256), the products it derives from, its
ancillary products and when it was ingested.

Ingest is all or nothing. Files are copied into the content store and verified
first; then the metadata is committed in one transaction. A failure before the
commit removes the blobs this ingest stored that nothing committed refers to,
so the archive is as it was. A process killed mid-ingest may leave such blobs
behind; they are invisible (no product refers to them) and the next writer
sweeps them away.

The embedded backend (the default) is a directory: ``files/ab/cd/<sha256>``
holds the content, ``archive.db`` (SQLite, WAL) the metadata. Other backends
(PostgreSQL + S3) register in ``BACKENDS`` under their URL scheme.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from wsrun.fileio import atomic_write, temp_path

#: The setting that names the archive; the environment variable overrides it.
SETTING = "edu.nrao.archive.url"
ENV = "WSRUN_ARCHIVE_URL"
BUFFER_SIZE = 8 << 20
#: Files from this size on have their source hashed on a second thread during the copy.
OVERLAP_SIZE = 4 << 20


class ArchiveError(Exception):
    """An ingest or retrieval the operator can act on was refused or failed."""


def archive_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The archive to use: ``explicit``, else $WSRUN_ARCHIVE_URL, else the
    ``edu.nrao.archive.url`` setting, else ``$WSRUN_HOME/archive``."""
    from wsrun.journal import default_home
    from wsrun.settings import Settings

    env = os.environ if env is None else env
    if explicit:
        return explicit
    if env.get(ENV):
        return env[ENV]
    found = Settings(env=env).get(SETTING)
    if found is not None and found.value:
        return found.value
    return os.path.join(default_home(), "archive")


# ---- what goes in -----------------------------------------------------------


@dataclass
class FileSpec:
    """One file of a product: its name in the archive, where it is, its size."""

    name: str
    source: str
    size: int
    mtime_ns: int = 0


@dataclass
class ProductSpec:
    """A product to ingest; its locator is chosen before the ingest starts."""

    locator: str
    type: str
    filename: str
    files: list[FileSpec]
    ancillary: list[ProductSpec] = field(default_factory=list)


@dataclass
class IngestRequest:
    telescope: str
    ingestion_path: str
    #: Science products, each with its own ancillary products.
    products: list[ProductSpec]
    #: Ancillary products of the whole output group.
    ancillary: list[ProductSpec] = field(default_factory=list)
    #: Locators of the products the science products derive from.
    inputs: list[str] = field(default_factory=list)
    reingest: bool = False
    manifest: Any = None
    metadata: Any = None

    def all_products(self) -> Iterator[tuple[ProductSpec, str | None, bool]]:
        """Every product, with the locator of the science product it belongs to
        (None for science products and group ancillaries) and whether it is a
        science product."""
        for p in self.products:
            yield p, None, True
            for a in p.ancillary:
                yield a, p.locator, False
        for a in self.ancillary:
            yield a, None, False


def new_locator(telescope: str, type_: str) -> str:
    return f"uid://{telescope.lower()}/{type_}/{uuid.uuid4()}"


# ---- what comes out ---------------------------------------------------------


@dataclass
class StoredFile:
    name: str
    size: int
    sha256: str


@dataclass
class ProductRecord:
    locator: str
    type: str
    telescope: str
    filename: str
    ingestion_path: str
    ingested: float
    science: bool
    #: The science product this is an ancillary of, if any.
    parent: str | None = None
    files: list[StoredFile] = field(default_factory=list)
    #: Locators this product derives from, and those derived from it.
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ancillary: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "locator": self.locator,
            "type": self.type,
            "telescope": self.telescope,
            "filename": self.filename,
            "ingestion_path": self.ingestion_path,
            "ingested": self.ingested,
            "science": self.science,
            "parent": self.parent,
            "files": [f.__dict__ for f in self.files],
            "inputs": self.inputs,
            "outputs": self.outputs,
            "ancillary": self.ancillary,
        }


@dataclass
class Problem:
    """A stored file that is missing or whose content changed."""

    locator: str
    name: str
    sha256: str
    issue: str  # "missing" or "checksum mismatch" or "size mismatch"


# ---- the interface ----------------------------------------------------------


class ArchiveStore(ABC):
    """An archive backend. ``ArchiveStore.open(url)`` picks one by URL scheme."""

    url: str

    @staticmethod
    def open(url: str, create: bool = True) -> ArchiveStore:
        """The archive at ``url``: ``sqlite:///root``, ``file:///root`` or a plain path.
        Without ``create``, a missing archive is an ArchiveError."""
        scheme = urlsplit(url).scheme if "://" in url else ""
        backend = BACKENDS.get(scheme)
        if backend is None:
            raise ArchiveError(f"{url}: unsupported archive URL scheme '{scheme}'")
        return backend(url, create)

    @abstractmethod
    def ingest(
        self, request: IngestRequest, on_file: Callable[[int], None] | None = None
    ) -> list[ProductRecord]:
        """Store and record every product of ``request``, all or nothing.
        ``on_file(size)`` is called after each file is stored; an exception it
        raises (a timeout) aborts the ingest like any other failure."""

    @abstractmethod
    def existing(self, ingestion_path: str, filenames: list[str]) -> list[ProductRecord]:
        """Science products already ingested from ``ingestion_path`` under these names."""

    @abstractmethod
    def ingestion(self, locator: str) -> tuple[Any, list[ProductRecord]]:
        """The manifest ``locator`` was ingested with, and every product of that ingestion."""

    @abstractmethod
    def products(self) -> list[ProductRecord]:
        """Every product, oldest first (files and links not filled in)."""

    @abstractmethod
    def product(self, locator: str) -> ProductRecord | None:
        """One product with its files, provenance and ancillary products."""

    @abstractmethod
    def get(self, locator: str, dest: str) -> list[str]:
        """Write a product's files under ``dest``, checksums verified; the paths written."""

    @abstractmethod
    def verify(self) -> list[Problem]:
        """Re-hash every stored file; what is missing or changed."""

    @abstractmethod
    def orphans(self) -> list[str]:
        """Stored content no product refers to (left by a killed ingest)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


# ---- the embedded backend ---------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS ingestions (
    id INTEGER PRIMARY KEY,
    telescope TEXT NOT NULL,
    ingestion_path TEXT NOT NULL,
    ingested REAL NOT NULL,
    manifest TEXT,
    metadata TEXT
);
CREATE TABLE IF NOT EXISTS products (
    locator TEXT PRIMARY KEY,
    ingestion INTEGER NOT NULL REFERENCES ingestions(id),
    telescope TEXT NOT NULL,
    type TEXT NOT NULL,
    filename TEXT NOT NULL,
    ingestion_path TEXT NOT NULL,
    science INTEGER NOT NULL,
    parent TEXT,
    ingested REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    locator TEXT NOT NULL REFERENCES products(locator),
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (locator, name)
);
CREATE TABLE IF NOT EXISTS provenance (
    product TEXT NOT NULL REFERENCES products(locator),
    input TEXT NOT NULL,
    PRIMARY KEY (product, input)
);
CREATE INDEX IF NOT EXISTS products_key ON products(ingestion_path, filename);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha256);
CREATE INDEX IF NOT EXISTS provenance_input ON provenance(input);
"""


def root_of(url: str) -> str:
    """The directory of an embedded archive URL."""
    if "://" not in url:
        return os.path.abspath(url)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ArchiveError(f"{url}: an embedded archive must be a local path")
    return os.path.abspath(parts.path)


class LocalArchive(ArchiveStore):
    """Content directory + SQLite: the default, for one host or a shared filesystem."""

    def __init__(self, url: str, create: bool = True) -> None:
        self.url = url
        self.root = root_of(url)
        self.db_path = os.path.join(self.root, "archive.db")
        if not create:
            # Read only: nothing is created, not even the database.
            if not os.path.exists(self.db_path):
                raise ArchiveError(f"{self.root}: no archive here")
            self.db = sqlite3.connect(
                f"file:{self.db_path}?mode=ro", uri=True, timeout=30, isolation_level=None
            )
            self.db.execute("PRAGMA busy_timeout = 30000")
            return
        for sub in ("files", "tmp"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "files", sha256[:2], sha256[2:4], sha256)

    # ---- writing ----------------------------------------------------------

    @contextlib.contextmanager
    def _writer(self) -> Iterator[None]:
        """One writer at a time: ingests and sweeps exclude each other."""
        fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ingest(
        self, request: IngestRequest, on_file: Callable[[int], None] | None = None
    ) -> list[ProductRecord]:
        with self._writer():
            self._sweep()
            names = [p.filename for p in request.products]
            replaced = self.existing(request.ingestion_path, names)
            if replaced and not request.reingest:
                first = replaced[0]
                raise ArchiveError(
                    f"{first.filename} from {request.ingestion_path} is already ingested as "
                    f"{first.locator}; set reingest to replace it"
                )
            stored: list[str] = []  # blobs this ingest added
            try:
                digests = self._store_all(request, stored, on_file)
                old_blobs = self._commit(request, digests, [r.locator for r in replaced])
            except BaseException:
                self._remove_unreferenced(stored)
                raise
            self._remove_unreferenced(old_blobs)
        return [self.product(p.locator) for p, _, _ in request.all_products()]  # type: ignore[misc]

    def _store_all(
        self,
        request: IngestRequest,
        stored: list[str],
        on_file: Callable[[int], None] | None,
    ) -> dict[str, str]:
        """Store every file; source path -> sha256.

        Each file is hashed twice, from two independent reads: the copy hashes what
        it wrote (big files through the destination's pages), and the check hashes
        the other side (the source for big files, read on a second thread while the
        copy runs; the stored copy for small ones). A mismatch means the bytes that
        landed are not the bytes of the file, and nothing is stored.
        """
        from wsrun.steps.copy import MMAP_MIN, current_umask

        umask = current_umask()
        buf, check_buf = bytearray(BUFFER_SIZE), bytearray(BUFFER_SIZE)
        digests: dict[str, str] = {}
        with ThreadPoolExecutor(max_workers=1) as pool:
            for product, _, _ in request.all_products():
                for f in product.files:
                    if f.source in digests:
                        continue
                    if f.size >= OVERLAP_SIZE:
                        check = pool.submit(file_sha256, f.source, check_buf)
                        tmp, digest = self._copy_in(f, umask, buf)
                        try:
                            other = check.result()
                        except BaseException:
                            _unlink(tmp)
                            raise
                    else:
                        tmp, digest = self._copy_in(f, umask, buf)
                        # The copy hashed the source's bytes below MMAP_MIN, the
                        # destination's pages above: read the other side.
                        other_side = tmp if f.size < MMAP_MIN else f.source
                        try:
                            other = file_sha256(other_side, check_buf)
                        except BaseException:
                            _unlink(tmp)
                            raise
                    self._place(f, tmp, digest, other, stored)
                    digests[f.source] = digest
                    if on_file is not None:
                        on_file(f.size)
        return digests

    def _copy_in(self, f: FileSpec, umask: int, buf: bytearray) -> tuple[str, str]:
        """Copy one file into tmp/, hashing it on the way: (temp path, sha256)."""
        from wsrun.steps.copy import copy_file

        tmp = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        try:
            digest = copy_file(f.source, tmp, 0o444, f.mtime_ns, umask, "sha256", buf, f.size + 1)
            assert digest is not None
            size = os.stat(tmp).st_size
            if size != f.size:
                raise ArchiveError(
                    f"{f.source}: changed while ingesting ({f.size} -> {size} bytes)"
                )
            return tmp, digest
        except BaseException:
            _unlink(tmp)
            raise

    def _place(self, f: FileSpec, tmp: str, digest: str, other: str, stored: list[str]) -> None:
        """Move a copy whose two digests agree to its blob path."""
        try:
            if other != digest:
                raise ArchiveError(f"{f.source}: checksum mismatch after copying into the archive")
            final = self.blob_path(digest)
            if os.path.exists(final):
                os.unlink(tmp)  # same content already stored
            else:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(tmp, final)
                stored.append(digest)
        except BaseException:
            _unlink(tmp)
            raise

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        """Every write of an ingest goes through here (tests inject failures)."""
        return self.db.execute(sql, args)

    def _commit(
        self, request: IngestRequest, digests: dict[str, str], replaced: list[str]
    ) -> list[str]:
        """Record the ingest in one transaction, dropping what it replaces;
        the blobs the replaced products used."""
        now = time.time()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            old_blobs: list[str] = []
            for ingestion in self._ingestions_of(replaced):
                old_blobs += self._drop_ingestion(ingestion)
            ingestion_id = self._exec(
                "INSERT INTO ingestions (telescope, ingestion_path, ingested, manifest, metadata)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    request.telescope,
                    request.ingestion_path,
                    now,
                    json.dumps(request.manifest),
                    json.dumps(request.metadata),
                ),
            ).lastrowid
            for product, parent, science in request.all_products():
                self._exec(
                    "INSERT INTO products (locator, ingestion, telescope, type, filename,"
                    " ingestion_path, science, parent, ingested) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        product.locator,
                        ingestion_id,
                        request.telescope,
                        product.type,
                        product.filename,
                        request.ingestion_path,
                        int(science),
                        parent,
                        now,
                    ),
                )
                for f in product.files:
                    self._exec(
                        "INSERT INTO files (locator, name, size, sha256) VALUES (?, ?, ?, ?)",
                        (product.locator, f.name, f.size, digests[f.source]),
                    )
            for product in request.products:
                for input_ in dict.fromkeys(request.inputs):
                    self._exec(
                        "INSERT INTO provenance (product, input) VALUES (?, ?)",
                        (product.locator, input_),
                    )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return old_blobs

    def _ingestions_of(self, locators: list[str]) -> list[int]:
        ids = {
            row[0]
            for loc in locators
            for row in self.db.execute("SELECT ingestion FROM products WHERE locator=?", (loc,))
        }
        return sorted(ids)

    def _drop_ingestion(self, ingestion: int) -> list[str]:
        locs = [
            r[0]
            for r in self.db.execute("SELECT locator FROM products WHERE ingestion=?", (ingestion,))
        ]
        blobs: list[str] = []
        for loc in locs:
            blobs += [
                r[0] for r in self.db.execute("SELECT sha256 FROM files WHERE locator=?", (loc,))
            ]
            self._exec("DELETE FROM files WHERE locator=?", (loc,))
            self._exec("DELETE FROM provenance WHERE product=?", (loc,))
        self._exec("DELETE FROM products WHERE ingestion=?", (ingestion,))
        self._exec("DELETE FROM ingestions WHERE id=?", (ingestion,))
        return blobs

    def _referenced(self, sha256: str) -> bool:
        row = self.db.execute("SELECT 1 FROM files WHERE sha256=? LIMIT 1", (sha256,)).fetchone()
        return row is not None

    def _remove_unreferenced(self, blobs: list[str]) -> None:
        for sha in dict.fromkeys(blobs):
            if not self._referenced(sha):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.blob_path(sha))

    def orphans(self) -> list[str]:
        referenced = {r[0] for r in self.db.execute("SELECT DISTINCT sha256 FROM files")}
        found = []
        for _, _, names in os.walk(os.path.join(self.root, "files")):
            found += [n for n in names if n not in referenced]
        return sorted(found)

    def _sweep(self) -> None:
        """Remove what a killed ingest left: temp files and unreferenced blobs.
        Called with the writer lock held."""
        shutil.rmtree(os.path.join(self.root, "tmp"), ignore_errors=True)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        self._remove_unreferenced(self.orphans())

    # ---- reading ----------------------------------------------------------

    def existing(self, ingestion_path: str, filenames: list[str]) -> list[ProductRecord]:
        found = []
        for name in dict.fromkeys(filenames):
            for row in self.db.execute(
                "SELECT locator FROM products WHERE ingestion_path=? AND filename=? AND science=1",
                (ingestion_path, name),
            ):
                record = self.product(row[0])
                assert record is not None
                found.append(record)
        return found

    def ingestion(self, locator: str) -> tuple[Any, list[ProductRecord]]:
        row = self.db.execute(
            "SELECT i.id, i.manifest FROM ingestions i JOIN products p ON p.ingestion=i.id"
            " WHERE p.locator=?",
            (locator,),
        ).fetchone()
        if row is None:
            return None, []
        locs = self.db.execute(
            "SELECT locator FROM products WHERE ingestion=? ORDER BY rowid", (row[0],)
        )
        return json.loads(row[1]), [self.product(r[0]) for r in locs.fetchall()]  # type: ignore[misc]

    _COLUMNS = "locator, type, telescope, filename, ingestion_path, ingested, science, parent"

    def _record(self, row: tuple[Any, ...]) -> ProductRecord:
        loc, type_, tel, filename, path, ingested, science, parent = row
        return ProductRecord(loc, type_, tel, filename, path, ingested, bool(science), parent)

    def products(self) -> list[ProductRecord]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM products ORDER BY ingested, rowid")
        return [self._record(r) for r in rows]

    def product(self, locator: str) -> ProductRecord | None:
        row = self.db.execute(
            f"SELECT {self._COLUMNS} FROM products WHERE locator=?", (locator,)
        ).fetchone()
        if row is None:
            return None
        record = self._record(row)
        record.files = [
            StoredFile(*r)
            for r in self.db.execute(
                "SELECT name, size, sha256 FROM files WHERE locator=? ORDER BY name", (locator,)
            )
        ]
        record.inputs = [
            r[0]
            for r in self.db.execute(
                "SELECT input FROM provenance WHERE product=? ORDER BY input", (locator,)
            )
        ]
        record.outputs = [
            r[0]
            for r in self.db.execute(
                "SELECT product FROM provenance WHERE input=? ORDER BY product", (locator,)
            )
        ]
        record.ancillary = [
            r[0]
            for r in self.db.execute(
                "SELECT locator FROM products WHERE parent=? ORDER BY filename", (locator,)
            )
        ]
        return record

    def get(self, locator: str, dest: str) -> list[str]:
        record = self.product(locator)
        if record is None:
            raise ArchiveError(f"{locator}: no such product")
        if os.path.isdir(dest):
            dest = os.path.join(dest, record.filename)
        single = len(record.files) == 1 and record.files[0].name == record.filename
        if single:
            self._fetch(record.files[0], dest)
            return [dest]
        # A directory product: assembled beside dest, renamed into place.
        if os.path.lexists(dest):
            raise ArchiveError(f"{dest}: already exists")
        staging = temp_path(dest)
        shutil.rmtree(staging, ignore_errors=True)
        written = []
        try:
            for f in record.files:
                rel = os.path.relpath(f.name, record.filename)
                target = os.path.join(staging, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                self._fetch(f, target)
                written.append(os.path.join(dest, rel))
            os.rename(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return written

    def _fetch(self, f: StoredFile, target: str) -> None:
        """Copy one blob to ``target`` atomically, refusing content that does
        not match its recorded checksum."""
        blob = self.blob_path(f.sha256)
        try:
            src = open(blob, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise ArchiveError(f"{f.name}: stored file {f.sha256} is missing") from None
        with src, atomic_write(target, 0o644) as out:
            digest = hashlib.sha256()
            while chunk := src.read(BUFFER_SIZE):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != f.sha256:
                raise ArchiveError(f"{f.name}: stored file {f.sha256} fails its checksum")

    def verify(self) -> list[Problem]:
        problems = []
        buf = bytearray(BUFFER_SIZE)
        checked: dict[str, str | None] = {}
        rows = self.db.execute("SELECT locator, name, size, sha256 FROM files ORDER BY locator")
        for loc, name, size, sha in rows.fetchall():
            if sha not in checked:
                checked[sha] = self._check_blob(sha, size, buf)
            if checked[sha]:
                problems.append(Problem(loc, name, sha, checked[sha]))  # type: ignore[arg-type]
        return problems

    def _check_blob(self, sha: str, size: int, buf: bytearray) -> str | None:
        path = self.blob_path(sha)
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            return "missing"
        if actual != size:
            return f"size mismatch ({actual} bytes, recorded {size})"
        return None if file_sha256(path, buf) == sha else "checksum mismatch"


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def file_sha256(path: str, buf: bytearray) -> str:
    """The sha256 of a file on disk (the copy step's reader)."""
    from wsrun.steps.copy import hash_file

    return hash_file(path, "sha256", buf)


BACKENDS: dict[str, type[ArchiveStore]] = {
    "": LocalArchive,
    "sqlite": LocalArchive,
    "file": LocalArchive,
}
