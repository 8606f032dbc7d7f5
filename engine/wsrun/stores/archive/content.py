"""The archive's file store (NGAS's role): file content kept by its sha256.

Two kinds, chosen by URL: a local directory (``/data/archive``, ``file:///...``),
and any fsspec file system (``s3://bucket/prefix`` through s3fs, for AWS,
MinIO or Ceph). Both use one layout under their root: ``files/ab/cd/<sha256>``
for the content and ``tmp/`` for copies not yet verified.

A file enters the store in two moves: ``stage`` copies it to ``tmp/`` and
checks it by two independent reads (the source, and the stored copy read back
after the copy); ``place`` then moves it to its content address. Between the
two, the archive notes the content for a later sweep (a batch of files at
once on PostgreSQL, not a round trip per file). What is in
``files/`` is therefore always whole and correct; whether anything refers to
it is the metadata's business (``wsrun.stores.archive.store``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

BUFFER_SIZE = 8 << 20
#: Files from this size on have their source hashed on a second thread during the copy.
OVERLAP_SIZE = 4 << 20
#: The setting naming the S3 endpoint of the archive's file store (MinIO, Ceph, moto).
ENDPOINT_SETTING = "edu.nrao.archive.files.endpoint"


class ArchiveError(Exception):
    """An ingest or retrieval the operator can act on was refused or failed."""


class AlreadyIngested(ArchiveError):
    """A science product is already ingested and the request does not replace
    it; ``what`` says which, the message adds what to do about it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}; set reingest to replace it")
        self.what = what


def file_sha256(path: str, buf: bytearray) -> str:
    """The sha256 of a file on disk (the copy step's reader)."""
    from wsrun.core.filecopy import hash_file

    return hash_file(path, "sha256", buf)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def blob_name(sha256: str) -> str:
    """Where content lives below the store's root."""
    return f"files/{sha256[:2]}/{sha256[2:4]}/{sha256}"


@dataclass(frozen=True)
class Staged:
    """A copy in the store's ``tmp/``, verified, not yet at its address."""

    tmp: str
    sha256: str


class ContentStore(ABC):
    """Content by sha256. ``open_content(url)`` picks the kind by URL."""

    url: str

    @abstractmethod
    def stage(self, source: str, size: int, mtime_ns: int) -> Staged:
        """Copy the file at ``source`` (``size`` bytes) into ``tmp/`` and verify
        the copy. A copy that fails its check raises ArchiveError and leaves
        nothing."""

    @abstractmethod
    def place(self, staged: Staged) -> bool:
        """Make a staged copy visible under its address; whether it added the
        content (False: it was there, and the copy is dropped). A failure
        leaves nothing of the copy."""

    @abstractmethod
    def discard(self, staged: Staged) -> None:
        """Drop a staged copy that will not be placed."""

    @abstractmethod
    def open(self, sha256: str) -> IO[bytes]:
        """The content for reading; FileNotFoundError when it is not stored."""

    @abstractmethod
    def check(self, sha256: str, size: int) -> str | None:
        """None if the content is stored whole, else what is wrong with it."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the content (no error if it is gone)."""

    @abstractmethod
    def blobs(self) -> Iterator[str]:
        """The sha256 of everything stored, listed as it is read."""

    @abstractmethod
    def clear_tmp(self) -> None:
        """Remove unverified copies an interrupted ingest left (only when no ingest runs)."""

    @abstractmethod
    def probe(self) -> str:
        """A word on the store for ``wsrun doctor``; raises when it cannot be used."""

    def close(self) -> None:
        """Release threads and connections."""
        return None


class LocalContent(ContentStore):
    """A directory on a local or shared file system."""

    def __init__(self, root: str, create: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        if create:
            for sub in ("files", "tmp"):
                os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self._pool: ThreadPoolExecutor | None = None
        self._bufs: tuple[bytearray, bytearray] | None = None

    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, blob_name(sha256))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def stage(self, source: str, size: int, mtime_ns: int) -> Staged:
        """Each file is hashed twice, from two independent reads: the source
        (on a second thread while the copy runs, for big files) and the stored
        copy, read back once the copy is complete. The copy itself hashes
        nothing, so a write that lands other bytes than the source's (in any
        way the kernel or the file system copies) is a mismatch, and nothing is
        stored."""
        if self._bufs is None:
            self._bufs = (bytearray(BUFFER_SIZE), bytearray(BUFFER_SIZE))
        buf, check_buf = self._bufs
        if size >= OVERLAP_SIZE:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1)
            check = self._pool.submit(file_sha256, source, check_buf)
            try:
                tmp = self._copy_in(source, size, mtime_ns)
            except BaseException:
                with contextlib.suppress(BaseException):
                    check.result()  # the buffer is free again once it is done
                raise
            try:
                stored = file_sha256(tmp, buf)
                digest = check.result()
            except BaseException:
                with contextlib.suppress(BaseException):
                    check.result()
                _unlink(tmp)
                raise
        else:
            tmp = self._copy_in(source, size, mtime_ns)
            try:
                digest = file_sha256(source, check_buf)
                stored = file_sha256(tmp, buf)
            except BaseException:
                _unlink(tmp)
                raise
        if stored != digest:
            _unlink(tmp)
            raise ArchiveError(f"{source}: checksum mismatch after copying into the archive")
        return Staged(tmp, digest)

    def place(self, staged: Staged) -> bool:
        try:
            final = self.blob_path(staged.sha256)
            if os.path.exists(final):
                os.unlink(staged.tmp)  # same content already stored
                return False
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(staged.tmp, final)
            return True
        except BaseException:
            _unlink(staged.tmp)
            raise

    def discard(self, staged: Staged) -> None:
        _unlink(staged.tmp)

    def _copy_in(self, source: str, size: int, mtime_ns: int) -> str:
        """Copy one file into tmp/ (in the kernel where it can); the temp path."""
        from wsrun.core.filecopy import copy_file, current_umask

        tmp = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        try:
            copy_file(source, tmp, 0o444, mtime_ns, current_umask(), None, None, size + 1)
            landed = os.stat(tmp).st_size
            if landed != size:
                raise ArchiveError(f"{source}: changed while ingesting ({size} -> {landed} bytes)")
            return tmp
        except BaseException:
            _unlink(tmp)
            raise

    def open(self, sha256: str) -> IO[bytes]:
        return open(self.blob_path(sha256), "rb")  # noqa: SIM115 - the caller closes it

    def check(self, sha256: str, size: int) -> str | None:
        path = self.blob_path(sha256)
        try:
            actual = os.stat(path).st_size
        except FileNotFoundError:
            return "missing"
        if actual != size:
            return f"size mismatch ({actual} bytes, recorded {size})"
        if self._bufs is None:
            self._bufs = (bytearray(BUFFER_SIZE), bytearray(BUFFER_SIZE))
        return None if file_sha256(path, self._bufs[0]) == sha256 else "checksum mismatch"

    def delete(self, sha256: str) -> None:
        _unlink(self.blob_path(sha256))

    def blobs(self) -> Iterator[str]:
        for _, _, names in os.walk(os.path.join(self.root, "files")):
            yield from names

    def clear_tmp(self) -> None:
        """Empties tmp/ but keeps the directory: another process opening the
        store meanwhile makes it (``os.makedirs``), and a directory removed
        between its ``mkdir`` and its check of what exists fails that open with
        "File exists"."""
        tmp = os.path.join(self.root, "tmp")
        os.makedirs(tmp, exist_ok=True)
        with os.scandir(tmp) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    _unlink(entry.path)

    def probe(self) -> str:
        if not os.path.exists(self.root):
            parent = os.path.dirname(self.root)
            while not os.path.exists(parent):
                parent = os.path.dirname(parent)
            if not os.access(parent, os.W_OK):
                raise ArchiveError(f"{self.root}: cannot be created ({parent} is not writable)")
            return f"directory {self.root} (created on first use)"
        if not os.path.isdir(self.root) or not os.access(self.root, os.W_OK):
            raise ArchiveError(f"{self.root}: not a writable directory")
        return f"directory {self.root}"


class FsspecContent(ContentStore):
    """Any fsspec file system: S3 (``s3://bucket/prefix``), GCS, Azure, ...

    The copy is streamed from the source and hashed on the way; the check reads
    the stored copy back from the store and hashes it, so what the store holds is
    what was read from the file. Verified copies move from ``tmp/`` to their
    address (a server-side copy on S3).
    """

    def __init__(self, url: str, env: Mapping[str, str] | None = None) -> None:
        import fsspec

        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        self.protocol = "s3" if parts.scheme == "s3a" else parts.scheme
        options: dict[str, Any] = {}
        self.endpoint: str | None = None
        if self.protocol == "s3":
            self.endpoint = endpoint = s3_endpoint(env)
            if endpoint:
                options["endpoint_url"] = endpoint
            options["use_listings_cache"] = False
        try:
            self.fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **options)
        except (ImportError, ValueError) as e:
            raise ArchiveError(f"{url}: no file system for {self.protocol}://: {e}") from None
        self.root = self.fs._strip_protocol(self.url).rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def stage(self, source: str, size: int, mtime_ns: int) -> Staged:
        with open(source, "rb") as src:  # a missing source: FileNotFoundError, as on a directory
            tmp = self._path(f"tmp/{uuid.uuid4().hex}")
            try:
                return Staged(tmp, self._upload(src, source, size, tmp))
            except BaseException as e:
                self.discard(Staged(tmp, ""))
                if isinstance(e, Exception) and not isinstance(e, ArchiveError):
                    raise self._error(e) from None
                raise

    def _upload(self, src: IO[bytes], source: str, size: int, tmp: str) -> str:
        """Copy ``src`` to ``tmp`` and read it back; its sha256."""
        digest = hashlib.sha256()
        sent = 0
        with self.fs.open(tmp, "wb") as out:
            while chunk := src.read(BUFFER_SIZE):
                digest.update(chunk)
                out.write(chunk)
                sent += len(chunk)
        if sent != size:
            raise ArchiveError(f"{source}: changed while ingesting ({size} -> {sent} bytes)")
        sha = digest.hexdigest()
        if stored_sha256(self.fs, tmp) != sha:
            raise ArchiveError(f"{source}: checksum mismatch after copying into the archive")
        return sha

    def place(self, staged: Staged) -> bool:
        try:
            final = self._path(blob_name(staged.sha256))
            if self.fs.exists(final):
                self.fs.rm(staged.tmp)
                return False
            self.fs.mv(staged.tmp, final)
            return True
        except BaseException as e:
            self.discard(staged)
            if isinstance(e, Exception) and not isinstance(e, ArchiveError):
                raise self._error(e) from None
            raise

    def discard(self, staged: Staged) -> None:
        with contextlib.suppress(Exception):
            self.fs.rm(staged.tmp)

    def _error(self, e: Exception) -> ArchiveError:
        """A store failure as one line naming the store (never a credential)."""
        from wsrun.stores.objectstore import describe

        return ArchiveError(f"{self.url}: {describe(e, self.endpoint)}")

    def open(self, sha256: str) -> IO[bytes]:
        return self.fs.open(self._path(blob_name(sha256)), "rb")

    def check(self, sha256: str, size: int) -> str | None:
        path = self._path(blob_name(sha256))
        try:
            actual = int(self.fs.info(path)["size"])
        except FileNotFoundError:
            return "missing"
        if actual != size:
            return f"size mismatch ({actual} bytes, recorded {size})"
        return None if stored_sha256(self.fs, path) == sha256 else "checksum mismatch"

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self._path(blob_name(sha256)))

    def blobs(self) -> Iterator[str]:
        base = self._path("files")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        yield from (p.rsplit("/", 1)[1] for p in found)

    def clear_tmp(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            left = self.fs.find(self._path("tmp"))
            if left:
                self.fs.rm(left)

    def probe(self) -> str:
        try:
            self.fs.ls(self.root.split("/", 1)[0] if self.protocol == "s3" else self.root)
        except Exception as e:
            raise self._error(e) from None
        return f"{self.protocol} store {self.url}"


def stored_sha256(fs: Any, path: str) -> str:
    """The sha256 of an object, read back from its store."""
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=BUFFER_SIZE) as f:
        while chunk := f.read(BUFFER_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def s3_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint of the archive's files: the ``edu.nrao.archive.files.endpoint``
    setting, else $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS."""
    from wsrun.core.settings import Settings

    env = os.environ if env is None else env
    found = Settings(env=env).get(ENDPOINT_SETTING)
    if found is not None and found.value:
        return str(found.value)
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def open_content(url: str, create: bool = True) -> ContentStore:
    """The file store at ``url``: a local directory (plain path or ``file://``)
    or any fsspec URL."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("", "file"):
        return LocalContent(urlsplit(url).path if scheme else url, create)
    from wsrun.core import extras

    try:
        extras.require_url(url, "archive file store")
    except extras.MissingExtra as e:
        raise ArchiveError(str(e)) from None
    return FsspecContent(url)
