"""The archive: content store + metadata database, all-or-nothing ingest, the CLI,
on every backend (``store_url``: embedded, PostgreSQL + directory, PostgreSQL + S3)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT, run_wsrun
from fixtures import staging
from fixtures.archives import BACKENDS, overwrite, stored, temp_left
from wsrun.core.fs import WorldView
from wsrun.steps.ingest import build_request, read_manifest
from wsrun.stores.archive import content as archive_content
from wsrun.stores.archive.content import LocalContent
from wsrun.stores.archive.metadata import SqlMetadata
from wsrun.stores.archive.records import IngestRequest, ProductRecord
from wsrun.stores.archive.store import (
    Archive,
    ArchiveError,
    ArchiveStore,
    LocalArchive,
    archive_url,
)


def request(manifest: Path, reingest: bool = False) -> IngestRequest:
    req = build_request(read_manifest(str(manifest), WorldView()), str(manifest), WorldView())
    req.reingest = reingest
    return req


def ingest(archive: ArchiveStore, req: IngestRequest) -> list[ProductRecord]:
    """Ingest ``req``; the records of what it recorded, with their files."""
    records = [archive.product(locator) for locator in archive.ingest(req)]
    assert None not in records
    return records  # type: ignore[return-value]


def state(archive: Archive) -> tuple[list[dict], list[str]]:
    """Everything a reader of the archive can see: products and stored blobs."""
    blobs = sorted(archive.content.blobs())
    products = [archive.product(p.locator).to_json() for p in archive.products()]  # type: ignore[union-attr]
    return products, blobs


#: What a database raises when a statement fails, on either metadata backend.
DB_ERRORS = (sqlite3.Error, psycopg.Error)


@pytest.fixture
def archive(store_url: str) -> Archive:
    store = ArchiveStore.open(store_url)
    assert isinstance(store, Archive)
    yield store
    store.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_and_verify(tmp_path: Path, archive: Archive) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    records = ingest(archive, request(manifest))
    assert [r.type for r in records] == ["calibration", "pipeline_weblog", "ingestion_artifacts"]
    cal = records[0]
    assert cal.locator.startswith("uid://evla/calibration/") and cal.science
    assert cal.ingestion_path == str(tmp_path / "cal")
    source = tmp_path / "cal" / cal.filename
    assert [(f.name, f.size, f.sha256) for f in cal.files] == [
        (cal.filename, source.stat().st_size, sha(source))
    ]
    assert stored(archive, sha(source)) == source.read_bytes()
    if isinstance(archive.content, LocalContent):
        blob = Path(archive.content.blob_path(sha(source)))
        assert blob.parent.name == sha(source)[2:4] and blob.parent.parent.name == sha(source)[:2]
    assert not records[1].science and records[1].parent is None
    assert [p.locator for p in archive.products()] == [r.locator for r in records]
    assert archive.verify() == [] and archive.orphans() == []
    assert temp_left(archive) == []
    if isinstance(archive, LocalArchive):
        db = sqlite3.connect(archive.db_path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_get_verifies_checksums(tmp_path: Path, archive: Archive) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    cal = ingest(archive, request(manifest))[0]
    out = tmp_path / "out"
    out.mkdir()
    [written] = archive.get(cal.locator, str(out))
    assert Path(written).read_bytes() == (tmp_path / "cal" / cal.filename).read_bytes()
    renamed = tmp_path / "renamed.tar"
    archive.get(cal.locator, str(renamed))
    assert sha(renamed) == cal.files[0].sha256

    overwrite(archive, cal.files[0].sha256, b"x" * cal.files[0].size)  # bit rot, same size
    with pytest.raises(ArchiveError, match="fails its checksum"):
        archive.get(cal.locator, str(tmp_path / "bad.tar"))
    assert not (tmp_path / "bad.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".wsrun-tmp")]
    [problem] = archive.verify()
    assert (problem.locator, problem.issue) == (cal.locator, "checksum mismatch")
    archive.content.delete(cal.files[0].sha256)
    assert archive.verify()[0].issue == "missing"
    with pytest.raises(ArchiveError, match="missing"):
        archive.get(cal.locator, str(tmp_path / "bad.tar"))
    with pytest.raises(ArchiveError, match="no such product"):
        archive.get("uid://evla/calibration/nope", str(out))


def test_directory_product_round_trip(tmp_path: Path, archive: Archive) -> None:
    manifest = staging.observation(tmp_path / "obs")
    [eb] = ingest(archive, request(manifest))
    sdm = tmp_path / "obs" / eb.filename
    assert sorted(f.name for f in eb.files) == sorted(
        str(p.relative_to(sdm.parent)) for p in sdm.rglob("*") if p.is_file()
    )
    out = tmp_path / "out"
    out.mkdir()
    archive.get(eb.locator, str(out))
    for p in sdm.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(sdm.parent)).read_bytes() == p.read_bytes()
    with pytest.raises(ArchiveError, match="already exists"):
        archive.get(eb.locator, str(out))


def test_provenance_both_ways(tmp_path: Path, archive: Archive) -> None:
    [eb] = ingest(archive, request(staging.observation(tmp_path / "obs")))
    cal = ingest(archive, request(staging.calibration(tmp_path / "cal", inputs=[eb.locator])))[0]
    images = ingest(archive, request(staging.image(tmp_path / "img", cal.locator)))
    science = [r for r in images if r.science]
    assert len(science) == 2 and all(r.inputs == [cal.locator] for r in science)
    assert archive.product(eb.locator).outputs == [cal.locator]  # type: ignore[union-attr]
    assert archive.product(cal.locator).inputs == [eb.locator]  # type: ignore[union-attr]
    assert archive.product(cal.locator).outputs == sorted(r.locator for r in science)  # type: ignore[union-attr]
    thumb = archive.product(science[0].ancillary[0])
    assert (
        thumb is not None and thumb.type == "thumbnail_image" and thumb.parent == science[0].locator
    )
    manifest, products = archive.ingestion(science[0].locator)
    assert manifest["parameters"]["collection_name"] == "VLASS2.1"
    assert [p.locator for p in products] == [r.locator for r in images]
    row = archive.meta.q("SELECT metadata FROM {ingestions} ORDER BY id DESC")[0]
    assert "bands" in row[0]


def test_missing_file_leaves_archive_unchanged(tmp_path: Path, archive: Archive) -> None:
    archive.ingest(request(staging.observation(tmp_path / "obs")))
    before = state(archive)
    req = request(staging.calibration(tmp_path / "cal"))
    (tmp_path / "cal" / "ingestion_artifacts_2026_11_23.tar").unlink()  # vanishes mid-way
    with pytest.raises(FileNotFoundError):
        archive.ingest(req)
    assert state(archive) == before
    assert archive.verify() == []


def test_checksum_mismatch_after_copy(
    tmp_path: Path, archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.ingest(request(staging.observation(tmp_path / "obs")))
    before = state(archive)
    # The second read: the stored copy (or the source) on disk, the object read back from S3.
    name = "file_sha256" if isinstance(archive.content, LocalContent) else "stored_sha256"
    real = getattr(archive_content, name)
    calls = []

    def flaky(path: str, *args: object) -> str:
        calls.append(path)
        return "0" * 64 if len(calls) == 2 else real(path, *args)

    monkeypatch.setattr(archive_content, name, flaky)
    with pytest.raises(ArchiveError, match="checksum mismatch after copying"):
        archive.ingest(request(staging.calibration(tmp_path / "cal")))
    assert len(calls) == 2
    assert state(archive) == before
    assert temp_left(archive) == []


@pytest.mark.parametrize("store_url", ["embedded", "pg-local"], indirect=True)
@pytest.mark.parametrize("size", [200_000, 2 << 20, 6 << 20])
def test_a_corrupted_write_is_caught_by_the_independent_read(
    tmp_path: Path, archive: Archive, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """The check reads the other side of the copy, so bytes that landed wrong are
    caught whichever way (user-space buffer or kernel copy) the file was copied."""
    manifest = staging.calibration(tmp_path / "cal")
    big = tmp_path / "cal" / "19A-001_sb1_eb2.ms.calapply.tar"
    big.write_bytes(os.urandom(size))
    from wsrun.core import filecopy

    real_range, real_write = filecopy._by_copy_file_range, filecopy._write_all

    def corrupt(fd: int) -> None:
        if os.fstat(fd).st_size == size:
            os.pwrite(fd, b"\x00\xff", size // 2)

    def bad_range(src_fd: int, dst_fd: int, count: int) -> int:
        n = real_range(src_fd, dst_fd, count)
        corrupt(dst_fd)
        return n

    def bad_write(fd: int, data: bytes | memoryview) -> None:
        real_write(fd, data)
        corrupt(fd)

    monkeypatch.setattr(filecopy, "_by_copy_file_range", bad_range)
    monkeypatch.setattr(filecopy, "_write_all", bad_write)
    with pytest.raises(ArchiveError, match="checksum mismatch after copying"):
        archive.ingest(request(manifest))
    assert state(archive) == ([], [])
    assert temp_left(archive) == []


def test_source_changed_during_ingest(tmp_path: Path, archive: Archive) -> None:
    req = request(staging.calibration(tmp_path / "cal"))
    with open(tmp_path / "cal" / "weblog.tgz", "ab") as f:
        f.write(b"more")
    with pytest.raises(ArchiveError, match="changed while ingesting"):
        archive.ingest(req)
    assert state(archive) == ([], [])


@pytest.mark.parametrize(
    ("store_url", "fail_at"),
    # The file store only matters for the cleanup: S3 once.
    [(b, n) for b in BACKENDS for n in (1, 3, 6) if b != "pg-s3" or n == 3],
    indirect=["store_url"],
)
def test_database_error_mid_commit(
    tmp_path: Path, archive: Archive, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    archive.ingest(request(manifest))
    before = state(archive)
    (tmp_path / "cal" / "weblog.tgz").write_bytes(b"a new weblog")
    real = SqlMetadata._exec
    calls = []

    def failing(self: SqlMetadata, sql: str, args: tuple = ()) -> list:
        calls.append(sql)
        if len(calls) == fail_at:  # the database refuses this statement
            return real(self, "SELECT no_such_column FROM {files}")
        return real(self, sql, args)

    monkeypatch.setattr(SqlMetadata, "_exec", failing)
    with pytest.raises(DB_ERRORS, match="no_such_column"):
        archive.ingest(request(manifest, reingest=True))  # replaces: deletes, then inserts
    assert state(archive) == before
    monkeypatch.setattr(SqlMetadata, "_exec", real)
    assert archive.verify() == []
    records = ingest(archive, request(manifest, reingest=True))  # and it still works
    assert records[1].files[0].size == len(b"a new weblog")


def test_reingest_refused_then_replaces(tmp_path: Path, archive: Archive) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    first = ingest(archive, request(manifest))
    old_weblog = first[1].files[0].sha256
    with pytest.raises(ArchiveError, match="already ingested as .*set reingest"):
        archive.ingest(request(manifest))
    (tmp_path / "cal" / "weblog.tgz").write_bytes(b"a new weblog")
    second = ingest(archive, request(manifest, reingest=True))
    assert {r.locator for r in second}.isdisjoint(r.locator for r in first)
    assert [p.locator for p in archive.products()] == [r.locator for r in second]
    assert old_weblog not in archive.content.blobs()
    assert first[0].files[0].sha256 in archive.content.blobs()  # unchanged, kept
    assert archive.verify() == [] and archive.orphans() == []


KILL_SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path[:0] = [{engine!r}, {tests!r}]
from wsrun.stores.archive.store import ArchiveStore
from wsrun.stores.archive.metadata import SqlMetadata
from test_archive_store import request

point = sys.argv[3]
real_exec = SqlMetadata._exec
calls = []

def hang():
    Path(sys.argv[2]).touch()
    time.sleep(60)

if point == "before-commit":
    def commit(self, *args):
        hang()
    SqlMetadata.commit = commit
else:
    def _exec(self, sql, args=()):
        calls.append(sql)
        if len(calls) == 4:
            hang()
        return real_exec(self, sql, args)
    SqlMetadata._exec = _exec
archive = ArchiveStore.open(sys.argv[1])
archive.ingest(request(Path(sys.argv[4]), reingest=True))
"""


def script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(
        textwrap.dedent(text).format(engine=str(ROOT / "engine"), tests=str(ROOT / "tests"))
    )
    return path


@pytest.mark.parametrize(
    ("store_url", "point"),
    # The file store only matters for what was stored before the kill: S3 once.
    [
        (b, point)
        for b in BACKENDS
        for point in ("before-commit", "mid-commit")
        if b != "pg-s3" or point == "before-commit"
    ],
    indirect=["store_url"],
)
def test_killed_mid_ingest(tmp_path: Path, store_url: str, archive: Archive, point: str) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    archive.ingest(request(manifest))
    (tmp_path / "cal" / "weblog.tgz").write_bytes(b"a new weblog")
    before = state(archive)
    marker = tmp_path / "hanging"
    proc = subprocess.Popen(
        [sys.executable, str(script(tmp_path, KILL_SCRIPT)), store_url, str(marker), point]
        + [str(manifest)]
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, "the ingest ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    after = ArchiveStore.open(store_url)
    assert isinstance(after, Archive)
    # PostgreSQL ends the killed process's sessions (and frees their advisory locks) only
    # when it notices the closed connection: wait for that, or the sweep below may be
    # skipped because the dead writer still seems to be in flight.
    deadline = time.monotonic() + 30
    while True:
        with after.meta.sweeper() as granted:
            if granted:
                break
        assert time.monotonic() < deadline, "the killed writer's lock was never released"
        time.sleep(0.05)
    products, blobs = state(after)
    assert products == before[0]
    r = run_wsrun("archive", "verify", "--archive", store_url, cwd=tmp_path)
    assert r.code == 0, r.out + r.err
    if after.orphans():
        assert "stored files no product refers to" in r.out
    # The blobs the killed ingest stored are unreferenced; the next writer sweeps them.
    assert set(blobs) - set(before[1]) == set(after.orphans())
    after.ingest(request(manifest, reingest=True))
    assert after.orphans() == [] and after.verify() == []
    assert temp_left(after) == []


def test_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (f"sqlite://{tmp_path}/a", f"file://{tmp_path}/a", str(tmp_path / "a")):
        store = ArchiveStore.open(url)
        assert isinstance(store, LocalArchive) and store.root == str(tmp_path / "a")
        store.close()
    with pytest.raises(ArchiveError, match="unsupported archive URL scheme 's3'"):
        ArchiveStore.open("s3://bucket/archive")
    with pytest.raises(ArchiveError, match="no archive here"):
        ArchiveStore.open(str(tmp_path / "none"), create=False)
    assert not (tmp_path / "none").exists()
    monkeypatch.delenv("WSRUN_ARCHIVE_URL", raising=False)
    assert archive_url(env={}) == os.path.join(os.environ["WSRUN_HOME"], "archive")
    assert archive_url(env={"EDU_NRAO_ARCHIVE_URL": "sqlite:///s"}) == "sqlite:///s"
    env = {"WSRUN_ARCHIVE_URL": "/e", "EDU_NRAO_ARCHIVE_URL": "sqlite:///s"}
    assert archive_url(env=env) == "/e"
    assert archive_url("/x", env=env) == "/x"


def test_postgres_urls(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSRUN_ARCHIVE_FILES", raising=False)
    with pytest.raises(ArchiveError, match="needs a file store: add .files=s3://"):
        ArchiveStore.open(pg_url)
    monkeypatch.setenv("WSRUN_ARCHIVE_FILES", str(tmp_path / "files"))
    store = ArchiveStore.open(pg_url)
    assert isinstance(store.content, LocalContent)  # type: ignore[attr-defined]
    assert store.content.root == str(tmp_path / "files")  # type: ignore[attr-defined]
    # The embedded archive may keep its files elsewhere too.
    split = ArchiveStore.open(f"sqlite://{tmp_path}/meta?files={tmp_path}/content")
    [cal] = ingest(split, request(staging.calibration(tmp_path / "cal")))[:1]
    assert (tmp_path / "meta" / "archive.db").is_file()
    assert (tmp_path / "content" / "files" / cal.files[0].sha256[:2]).is_dir()


def test_a_corrupted_upload_is_caught_by_reading_it_back(
    tmp_path: Path, pg_url: str, s3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    archive = ArchiveStore.open(f"{pg_url}&files=s3://{bucket}/archive")
    assert isinstance(archive, Archive)
    real_open = archive.content.fs.open  # type: ignore[attr-defined]

    class Flipping:
        """Writes every chunk with its first byte changed, as a faulty link might."""

        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.__exit__(*exc)

        def write(self, data: bytes) -> int:
            return self.f.write(bytes([data[0] ^ 1]) + data[1:])

    def faulty_open(path: str, mode: str = "rb", **kw):
        f = real_open(path, mode, **kw)
        return Flipping(f.__enter__()) if "w" in mode else f

    monkeypatch.setattr(archive.content.fs, "open", faulty_open)  # type: ignore[attr-defined]
    with pytest.raises(ArchiveError, match="checksum mismatch after copying"):
        archive.ingest(request(staging.calibration(tmp_path / "cal")))
    assert state(archive) == ([], []) and temp_left(archive) == []


def test_a_store_failure_is_one_line(
    tmp_path: Path, pg_url: str, s3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    archive = ArchiveStore.open(f"{pg_url}&files=s3://no-such-bucket-here/archive")
    with pytest.raises(ArchiveError, match="^s3://no-such-bucket-here/archive: no such bucket$"):
        archive.ingest(request(staging.calibration(tmp_path / "cal")))
    assert archive.products() == []


CONCURRENT_SCRIPT = """
import sys, time
from pathlib import Path
sys.path[:0] = [{engine!r}, {tests!r}]
from wsrun.stores.archive.store import ArchiveError, ArchiveStore
from test_archive_store import request

url, start, manifest, reingest = sys.argv[1:5]
archive = ArchiveStore.open(url)
req = request(Path(manifest), reingest=reingest == "1")
while not Path(start).exists():
    time.sleep(0.005)
try:
    archive.ingest(req)
    print("ingested")
except ArchiveError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("reingest", [False, True])
def test_two_hosts_ingest_the_same_manifest_at_once(
    tmp_path: Path, pg_url: str, reingest: bool
) -> None:
    """Two processes (as on two hosts) ingest one manifest at the same moment:
    exactly one ingestion results; without reingest the other is refused."""
    url = f"{pg_url}&files={tmp_path}/archive"
    manifest = staging.calibration(tmp_path / "cal")
    (tmp_path / "cal" / "big.tar").write_bytes(os.urandom(6 << 20))  # both copying at once
    path = script(tmp_path, CONCURRENT_SCRIPT)
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), url, str(start), str(manifest), str(int(reingest))],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    time.sleep(0.5)
    start.touch()
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    if reingest:
        assert outs == ["ingested", "ingested"]
    else:
        assert outs[0] == "ingested" and outs[1].startswith("refused:")
        assert "already ingested" in outs[1]
    archive = ArchiveStore.open(url)
    products = archive.products()
    assert [p.type for p in products] == ["calibration", "pipeline_weblog", "ingestion_artifacts"]
    assert archive.verify() == []
    archive.sweep()
    assert archive.orphans() == [] and temp_left(archive) == []


def test_different_manifests_from_two_hosts_both_commit(tmp_path: Path, pg_url: str) -> None:
    url = f"{pg_url}&files={tmp_path}/archive"
    manifests = [staging.calibration(tmp_path / "cal"), staging.observation(tmp_path / "obs")]
    path = script(tmp_path, CONCURRENT_SCRIPT)
    start = tmp_path / "start"
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), url, str(start), str(m), "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for m in manifests
    ]
    time.sleep(0.5)
    start.touch()
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["ingested", "ingested"]
    archive = ArchiveStore.open(url)
    assert len([p for p in archive.products() if p.science]) == 2
    assert archive.verify() == [] and archive.orphans() == []


def test_cli_commands(tmp_path: Path, store_url: str, archive: Archive, cli) -> None:
    cal = ingest(archive, request(staging.calibration(tmp_path / "cal")))[0]
    url = store_url
    r = cli("archive", "ls", "--archive", url)
    assert r.code == 0 and cal.locator in r.out and "weblog.tgz  (ancillary)" in r.out
    r = cli("archive", "show", cal.locator, "--archive", url)
    assert (
        r.code == 0
        and cal.files[0].sha256 in r.out
        and "derived from uid://evla/execblock" in r.out
    )
    assert cli("archive", "show", "uid://nope", "--archive", url).code == 2
    r = cli("archive", "get", cal.locator, str(tmp_path / "got.tar"), "--archive", url)
    assert r.code == 0 and sha(tmp_path / "got.tar") == cal.files[0].sha256
    r = cli("archive", "get", cal.locator, str(tmp_path / "again.tar"), "--archive", url, "--json")
    assert r.code == 0 and json.loads(r.out) == [str(tmp_path / "again.tar")]
    r = cli("archive", "verify", "--archive", url)
    assert r.code == 0 and "3 products checked, 0 problems" in r.out
    archive.content.delete(cal.files[0].sha256)
    r = cli("archive", "verify", "--archive", url)
    assert r.code == 1 and f"{cal.locator}: {cal.filename}: missing" in r.out
    assert cli("archive", "get", cal.locator, str(tmp_path / "x"), "--archive", url).code == 1
    assert cli("archive", "ls", "--archive", str(tmp_path / "none")).code == 2
    assert "archive ls|show|get|verify" in cli("--help").out


def test_a_sweep_empties_tmp_but_keeps_it_for_stores_opening_meanwhile(tmp_path: Path) -> None:
    """The sweep of one worker ran while another opened the same archive: the
    directory was gone between the opener's ``mkdir`` and its check, and its
    ingest failed with "tmp: File exists" (the ALMA 100-OUS bench, in CI)."""
    import threading

    content = LocalContent(str(tmp_path / "a"))
    tmp = tmp_path / "a" / "tmp"
    inode = tmp.stat().st_ino
    (tmp / "left-by-a-kill").write_bytes(b"x")
    (tmp / "a-dir").mkdir()
    (tmp / "a-dir" / "f").write_bytes(b"y")
    content.clear_tmp()
    assert list(tmp.iterdir()) == [] and tmp.stat().st_ino == inode

    failures: list[BaseException] = []
    done = threading.Event()

    def sweep() -> None:
        while not done.is_set():
            (tmp / "x").write_bytes(b"x")
            content.clear_tmp()

    sweeper = threading.Thread(target=sweep)
    sweeper.start()
    try:
        for _ in range(2000):
            try:
                LocalContent(str(tmp_path / "a"))
            except OSError as e:
                failures.append(e)
    finally:
        done.set()
        sweeper.join()
    assert failures == [] and tmp.stat().st_ino == inode
