"""The archive: products stored by content, and a database of what they are.

It plays the part of NRAO's NGAS (the file store) and the archive metadata
database: every ingested product gets a locator (``uid://evla/image/<uuid>``),
its type, its files (name, size, sha256), the products it derives from, its
ancillary products and when it was ingested.

An archive is two separable parts, each chosen by URL: the metadata database
(``wsrun.stores.archive.metadata``: SQLite, or PostgreSQL shared by many hosts) and the
file store (``wsrun.stores.archive.content``: a local directory, or any fsspec URL such
as ``s3://bucket/prefix``). URLs:

- ``/data/archive``, ``sqlite:///data/archive``: the embedded default, SQLite
  (``archive.db``) and the content (``files/ab/cd/<sha256>``) in one directory;
- ``postgresql://user@host/db?files=s3://bucket/prefix``: PostgreSQL (tables
  ``archive_*``, created by ``wsrun db upgrade``) and the files in S3 (endpoint:
  the ``edu.nrao.archive.files.endpoint`` setting or $AWS_ENDPOINT_URL). Instead
  of ``files=``, $WSRUN_ARCHIVE_FILES or the ``edu.nrao.archive.files`` setting.

Ingest is all or nothing. Files are copied into the file store and verified by
two independent reads first; then the metadata is committed in one transaction.
Nothing in between is a Python object per file: an execution block of a
million files is read from a spool (wsrun.core.spool), its file rows spooled
as they are stored and inserted in batches, and what to clean up spooled too.
Content a failed ingest stored (or a reingest replaced) that nothing refers to
is removed once no other ingest is in flight, so the archive is as it was. A
process killed mid-ingest may leave such content behind; it is invisible (no
product refers to it) and a later writer sweeps it away.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from wsrun.core.fileio import atomic_write, temp_path
from wsrun.core.spool import Spool
from wsrun.stores.archive.content import (
    BUFFER_SIZE,
    AlreadyIngested,
    ArchiveError,
    ContentStore,
    LocalContent,
    Staged,
    open_content,
)
from wsrun.stores.archive.metadata import (
    ArchiveMetadata,
    FileRow,
    PostgresMetadata,
    SqliteMetadata,
    batches,
)
from wsrun.stores.archive.records import IngestRequest, Problem, ProductRecord, StoredFile

#: The setting that names the archive; the environment variable overrides it.
SETTING = "edu.nrao.archive.url"
ENV = "WSRUN_ARCHIVE_URL"
#: Where the files of an archive whose URL has no ``files=`` parameter are.
FILES_SETTING = "edu.nrao.archive.files"
FILES_ENV = "WSRUN_ARCHIVE_FILES"


def archive_url(explicit: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The archive to use: ``explicit``, else $WSRUN_ARCHIVE_URL, else the
    ``edu.nrao.archive.url`` setting, else ``$WSRUN_HOME/archive``."""
    from wsrun.core.journal import default_home
    from wsrun.core.settings import configured_url

    return configured_url(explicit, ENV, SETTING, env) or os.path.join(default_home(), "archive")


# ---- the interface ----------------------------------------------------------


class ArchiveStore(ABC):
    """An archive backend. ``ArchiveStore.open(url)`` picks one by URL scheme."""

    url: str

    @staticmethod
    def open(url: str, create: bool = True) -> ArchiveStore:
        """The archive at ``url``: ``sqlite:///root``, ``file:///root``, a plain path
        or ``postgresql://...?files=...``. Without ``create``, a missing archive is
        an ArchiveError."""
        scheme = urlsplit(url).scheme if "://" in url else ""
        backend = BACKENDS.get(scheme)
        if backend is None:
            raise ArchiveError(f"{url}: unsupported archive URL scheme '{scheme}'")
        from wsrun.core import extras

        try:
            extras.require_url(url, "archive")
        except extras.MissingExtra as e:
            raise ArchiveError(str(e)) from None
        return backend(url, create)

    @abstractmethod
    def ingest(
        self, request: IngestRequest, on_file: Callable[[int], None] | None = None
    ) -> list[str]:
        """Store and record every product of ``request``, all or nothing; the
        locators recorded (every product's, in the request's order).
        ``on_file(size)`` is called after each file is stored; an exception it
        raises (a timeout) aborts the ingest like any other failure."""

    @abstractmethod
    def existing(
        self, ingestion_path: str, filenames: list[str], files: bool = True
    ) -> list[ProductRecord]:
        """Science products already ingested from ``ingestion_path`` under these
        names (without their files unless ``files``)."""

    @abstractmethod
    def ingestion(self, locator: str, files: bool = True) -> tuple[Any, list[ProductRecord]]:
        """The manifest ``locator`` was ingested with, and every product of that
        ingestion (without their files unless ``files``)."""

    @abstractmethod
    def stored_files(self, locator: str) -> Iterator[StoredFile]:
        """A product's files as they are read, sorted by name (code point order)."""

    @abstractmethod
    def file_counts(self, locators: list[str]) -> dict[str, int]:
        """How many files each of these products has."""

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


# ---- the archive: metadata + content ----------------------------------------


class Archive(ArchiveStore):
    """An archive made of a metadata database and a file store, any of each."""

    def __init__(self, url: str, meta: ArchiveMetadata, content: ContentStore) -> None:
        self.url = url
        self.meta = meta
        self.content = content

    def close(self) -> None:
        self.meta.close()
        self.content.close()

    # ---- writing ----------------------------------------------------------

    def ingest(
        self, request: IngestRequest, on_file: Callable[[int], None] | None = None
    ) -> list[str]:
        exclusive = True
        try:
            with self.meta.writer() as exclusive:
                if exclusive:
                    self._sweep()
                names = [p.filename for p in request.products]
                replaced = self.meta.existing(request.ingestion_path, names)
                if replaced and not request.reingest:  # refused before copying anything
                    first = replaced[0]
                    raise AlreadyIngested(
                        f"{first.filename} from {request.ingestion_path} is already ingested as "
                        f"{first.locator}"
                    )
                placed: Spool[str] = Spool()  # content this ingest added
                rows: Spool[FileRow] = Spool()  # what the commit records
                old_blobs: Spool[str] = Spool()
                try:
                    self._store_all(request, placed, rows, on_file, track=not exclusive)
                    old_blobs = self.meta.commit(request, rows)
                    if exclusive:
                        self._remove_unreferenced(old_blobs)
                except BaseException:
                    if exclusive:
                        self._remove_unreferenced(placed)
                    raise
                finally:
                    for spool in (placed, rows, old_blobs):
                        spool.close()
        finally:
            if not exclusive:
                # Housekeeping: a failure here must not fail a committed ingest,
                # and a later ingest sweeps again.
                with contextlib.suppress(Exception):
                    self.sweep()
        return [p.locator for p, _, _ in request.all_products()]

    def _store_all(
        self,
        request: IngestRequest,
        placed: Spool[str],
        rows: Spool[FileRow],
        on_file: Callable[[int], None] | None,
        track: bool,
    ) -> None:
        """Store every file, each verified by two independent reads; its row
        (locator, name, size, sha256) goes to ``rows``, and content this call
        added to ``placed``. A file two products name is stored twice (the
        second finds its content there). With ``track``, content is noted
        (for a sweep, should nothing refer to it) before it is placed, a
        batch of ``NOTE_BATCH`` staged files at a time."""
        staged: list[tuple[FileRow, Staged]] = []
        try:
            for product, _, _ in request.all_products():
                for f in product.files:
                    copy = self.content.stage(f.source, f.size, f.mtime_ns)
                    staged.append(((product.locator, f.name, f.size, copy.sha256), copy))
                    if on_file is not None:
                        on_file(f.size)
                    if len(staged) >= (self.NOTE_BATCH if track else 1):
                        self._place(staged, placed, rows, track)
            self._place(staged, placed, rows, track)
        except BaseException:
            for _, copy in staged:
                self.content.discard(copy)
            raise

    #: Staged files whose content is noted in one go before they are placed.
    NOTE_BATCH = 256

    def _place(
        self,
        staged: list[tuple[FileRow, Staged]],
        placed: Spool[str],
        rows: Spool[FileRow],
        track: bool,
    ) -> None:
        """Note the content of ``staged`` (with ``track``), then place each,
        emptying the list as it goes (what is left was not placed)."""
        if track and staged:
            self.meta.track([copy.sha256 for _, copy in staged])
        while staged:
            row, copy = staged[0]
            del staged[0]
            if self.content.place(copy):
                placed.append(copy.sha256)
            rows.append(row)

    def _remove_unreferenced(self, blobs: Iterable[str]) -> None:
        """Remove content no product refers to; only with every other writer
        excluded. ``blobs`` may be a spool of millions: checked a batch at a time."""
        for batch in batches(blobs, self.meta_batch):
            used = self.meta.referenced(batch)
            for sha in dict.fromkeys(batch):
                if sha not in used:
                    self.content.delete(sha)

    #: Content looked up in the metadata at a time when removing or listing it.
    meta_batch = 500

    def sweep(self) -> bool:
        """Remove what failed or killed ingests left, if no ingest is in flight
        (otherwise a later ingest does it); whether it ran."""
        with self.meta.sweeper() as granted:
            if granted:
                self._sweep()
            return granted

    #: Noted content swept at a time.
    SWEEP_PAGE = 10_000

    def _sweep(self) -> None:
        self.content.clear_tmp()
        while True:
            noted = self.meta.candidates(self.SWEEP_PAGE)
            if noted is None:
                self._remove_unreferenced(self._unreferenced())
                return
            if not noted:
                return
            self._remove_unreferenced(noted)
            self.meta.forget(noted)

    def orphans(self) -> list[str]:
        return sorted(self._unreferenced())

    def _unreferenced(self) -> Iterator[str]:
        """Stored content no product refers to, found a batch of the store's
        listing at a time (not a set of every sha256 the metadata knows)."""
        for batch in batches(self.content.blobs(), self.meta_batch):
            used = self.meta.referenced(batch)
            yield from (sha for sha in batch if sha not in used)

    # ---- reading ----------------------------------------------------------

    def existing(
        self, ingestion_path: str, filenames: list[str], files: bool = True
    ) -> list[ProductRecord]:
        return self.meta.existing(ingestion_path, filenames, files)

    def ingestion(self, locator: str, files: bool = True) -> tuple[Any, list[ProductRecord]]:
        return self.meta.ingestion(locator, files)

    def stored_files(self, locator: str) -> Iterator[StoredFile]:
        return self.meta.stored_files(locator)

    def file_counts(self, locators: list[str]) -> dict[str, int]:
        return self.meta.file_counts(locators)

    def products(self) -> list[ProductRecord]:
        return self.meta.products()

    def product(self, locator: str) -> ProductRecord | None:
        return self.meta.product(locator)

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
        """Copy one stored file to ``target`` atomically, refusing content that
        does not match its recorded checksum."""
        try:
            src = self.content.open(f.sha256)
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
        checked: dict[str, str | None] = {}
        for loc, name, size, sha in self.meta.files():
            if sha not in checked:
                checked[sha] = self.content.check(sha, size)
            if checked[sha]:
                problems.append(Problem(loc, name, sha, checked[sha]))  # type: ignore[arg-type]
        return problems


def root_of(url: str) -> str:
    """The directory of an embedded archive URL."""
    if "://" not in url:
        return os.path.abspath(url)
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ArchiveError(f"{url}: an embedded archive must be a local path")
    return os.path.abspath(parts.path)


def files_url(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """Where an archive's files are: the URL's ``files=`` parameter, else
    $WSRUN_ARCHIVE_FILES, else the ``edu.nrao.archive.files`` setting."""
    from wsrun.core.settings import Settings

    found = dict(parse_qsl(urlsplit(url).query)).get("files") if "://" in url else None
    if found:
        return found
    env = os.environ if env is None else env
    if env.get(FILES_ENV):
        return env[FILES_ENV]
    setting = Settings(env=env).get(FILES_SETTING)
    return str(setting.value) if setting is not None and setting.value else None


class LocalArchive(Archive):
    """SQLite in a directory, with the content beside it (``files/``) or in the
    file store a ``files=`` parameter names: the default, for one host or a
    shared file system."""

    def __init__(self, url: str, create: bool = True) -> None:
        base = url.split("?", 1)[0]
        self.root = root_of(base)
        meta = SqliteMetadata(self.root, create)
        files = dict(parse_qsl(urlsplit(url).query)).get("files") if "://" in url else None
        content = open_content(files, create) if files else LocalContent(self.root, create)
        super().__init__(url, meta, content)
        self.db_path = meta.db_path


class PostgresArchive(Archive):
    """Metadata in PostgreSQL (tables ``archive_*``), files in any store:
    ``postgresql://host/db?files=s3://bucket/prefix``. Many hosts may ingest at once."""

    def __init__(self, url: str, create: bool = True) -> None:
        from wsrun.core import db

        files = files_url(url)
        if not files:
            raise ArchiveError(
                f"{db.mask(url)}: a PostgreSQL archive needs a file store: add"
                f" ?files=s3://bucket/prefix (or a directory) to the URL, or set"
                f" ${FILES_ENV} or the {FILES_SETTING} setting"
            )
        super().__init__(url, PostgresMetadata(url), open_content(files, create))


BACKENDS: dict[str, type[ArchiveStore]] = {
    "": LocalArchive,
    "sqlite": LocalArchive,
    "file": LocalArchive,
    "postgresql": PostgresArchive,
    "postgres": PostgresArchive,
}
