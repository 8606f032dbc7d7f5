"""The resume records (wsrun.core.resumes): a recorded digest holds only while the
file is the one hashed, old records go, and a records file that cannot be
used never fails a step."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from wsrun.core import resumes


def test_a_digest_holds_until_the_file_changes_in_any_way(tmp_path: Path) -> None:
    records = resumes.Records(str(tmp_path / "resume.db"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    records.record(str(f), "sha256", "d1")
    records.flush()
    assert records.digest(str(f), "sha256") == "d1"
    assert records.digest(str(f), "md5") is None
    st = f.stat()
    f.write_bytes(b"y" * 100)  # same size, then the mtime put back: the ctime tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert records.digest(str(f), "sha256") is None
    records.record(str(f), "sha256", "d2")
    records.flush()
    assert records.digest(str(f), "sha256") == "d2"
    os.replace(tmp_path / "a.bin", tmp_path / "b.bin")
    (tmp_path / "a.bin").write_bytes(b"y" * 100)  # another inode at the same path
    assert records.digest(str(f), "sha256") is None


def test_a_file_changed_while_it_was_hashed_is_not_recorded(tmp_path: Path) -> None:
    records = resumes.Records(str(tmp_path / "resume.db"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 100)
    before = f.stat()
    f.write_bytes(b"z" * 100)
    records.record(str(f), "sha256", "stale", before=before)
    records.flush()
    assert records.digest(str(f), "sha256") is None


def test_records_not_renewed_for_a_month_are_dropped(tmp_path: Path) -> None:
    path = str(tmp_path / "resume.db")
    records = resumes.Records(path)
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    records.record(str(f), "sha256", "d")
    records.flush()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE hashes SET recorded = ?", (time.time() - resumes.KEEP_SECONDS - 1,))
        db.execute("UPDATE meta SET value = 0 WHERE key = 'pruned'")
    db.close()
    assert resumes.Records(path).digest(str(f), "sha256") is None


@pytest.mark.parametrize("how", ["off", "unusable"])
def test_records_off_or_unusable_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "off":
        monkeypatch.setenv("WSRUN_RESUME", "off")
        path = tmp_path / "resume.db"
    else:
        (tmp_path / "file").write_text("not a directory")
        path = tmp_path / "file" / "resume.db"
    records = resumes.Records(str(path))
    f = tmp_path / "a.bin"
    f.write_bytes(b"x")
    records.record(str(f), "sha256", "d")
    records.flush()
    assert records.digest(str(f), "sha256") is None
    records.start_upload(resumes.UploadRecord("s3://b/k", "id", str(f), 1, 0, 5, None, 1))
    assert records.upload("s3://b/k") is None
    assert not path.exists()


def test_batches_written_by_the_writer_thread_are_all_in_once_flush_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records handed over in batches go to SQLite on a thread of its own;
    flush waits for every batch, so a second reader sees them all."""
    monkeypatch.setattr(resumes, "FLUSH_FILES", 7)
    path = str(tmp_path / "resume.db")
    records = resumes.Records(path)
    files = []
    for i in range(100):
        f = tmp_path / f"f{i}"
        f.write_bytes(b"%d" % i)
        records.record(str(f), "sha256", f"d{i}", st=f.stat())
        files.append(f)
    assert records._writer is not None and records._writer.is_alive()
    records.flush()
    other = resumes.Records(path)
    assert [other.digest(str(f), "sha256") for f in files] == [f"d{i}" for i in range(100)]


def test_a_stat_given_for_a_file_changed_since_records_nothing_usable(tmp_path: Path) -> None:
    """``st`` is the caller's stat of the file in place: a file changed after it
    no longer matches the record, so its digest is read again."""
    records = resumes.Records(str(tmp_path / "resume.db"))
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    st = f.stat()
    f.write_bytes(b"y" * 10)
    records.record(str(f), "sha256", "old", st=st)
    records.flush()
    assert records.digest(str(f), "sha256") is None
