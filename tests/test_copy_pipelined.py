"""copy + checksum of a big file: the kernel copies on one thread while another
hashes what was copied, read back from the destination. The digest and the
bytes must be exact for any size and any way the kernel splits the copy, also
when the kernel copy or a mapping gives up part-way (the rest goes read ->
hash -> write from the last byte hashed), when the hashing fails, when the disk
fills up (one line naming the file, nothing left, no thread behind) and when
the source changes under the copy (the digest is the copy's, which a re-run
replaces)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.tmpfs import mounted
from wsrun.core import filecopy as copy_step
from wsrun.testing import run_step

MiB = 1 << 20
HARNESS = Path(__file__).parent / "fixtures" / "interrupt.py"


@pytest.fixture(autouse=True)
def small_is_big(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(copy_step, "PIPELINE_MIN", 2 * MiB)  # a few MiB are "big" here


def write_source(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def copy(src: Path, dest: Path, reports: list[int] | None = None) -> str | None:
    """copy_file with sha256; each report of in-file progress goes to ``reports``."""
    st = src.stat()
    buf = bytearray(copy_step.BUFFER_SIZE)
    return copy_step.copy_file(
        str(src), str(dest), st.st_mode, st.st_mtime_ns, 0o022, "sha256", buf, st.st_size,
        None, (reports if reports is not None else []).append,
    )  # fmt: skip


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "wsrun-copy-hash"]


def kernel_copy_in(
    monkeypatch: pytest.MonkeyPatch, step: Callable[[int, int, int, int], int]
) -> list[int]:
    """Route the kernel copy through ``step(call number, src, dst, count)``; the
    counts asked, one per call."""
    calls: list[int] = []

    def wrapped(src_fd: int, dst_fd: int, count: int) -> int:
        calls.append(count)
        return step(len(calls), src_fd, dst_fd, count)

    monkeypatch.setattr(copy_step, "_by_copy_file_range", wrapped)
    return calls


REAL_KERNEL_COPY = copy_step._by_copy_file_range


@pytest.mark.parametrize("slice_size", [None, MiB + 4097])
@pytest.mark.parametrize("size", [3 * copy_step.BUFFER_SIZE + 12345, 5 * MiB + 1])
def test_the_pipelined_copy_is_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, slice_size: int | None
) -> None:
    # several windows, sizes that are no multiple of one, and a kernel that
    # copies odd slices (windows at offsets that are no multiple of a page)
    if slice_size is not None:
        kernel_copy_in(monkeypatch, lambda i, s, d, n: REAL_KERNEL_COPY(s, d, min(n, slice_size)))
    data = write_source(tmp_path / "big.bin", size)
    reports: list[int] = []
    digest = copy(tmp_path / "big.bin", tmp_path / "out.bin", reports)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert sum(reports) == size and max(reports) <= copy_step.BUFFER_SIZE
    assert hash_threads() == []


def test_a_kernel_copy_that_gives_up_part_way_is_finished_by_read_and_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(i: int, src_fd: int, dst_fd: int, count: int) -> int:
        if i > 2:  # from the third chunk on: "not across these filesystems"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return REAL_KERNEL_COPY(src_fd, dst_fd, count)

    calls = kernel_copy_in(monkeypatch, flaky)
    data = write_source(tmp_path / "big.bin", 20 * MiB + 12345)
    reports: list[int] = []
    digest = copy(tmp_path / "big.bin", tmp_path / "out.bin", reports)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(calls) == 3 and sum(reports) == len(data)


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_chunk_copied_but_not_mapped_is_hashed_by_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipelined: bool
) -> None:
    """The kernel copied a chunk whose mapping then fails (EINVAL: "no mmap
    here"): read -> hash -> write carries on from the last byte hashed, not
    from where the kernel stopped, or the digest would miss the chunk."""
    if not pipelined:
        monkeypatch.setattr(copy_step, "PIPELINE_MIN", 1 << 40)  # chunks hashed in turn
    target = "_window" if pipelined else "_hash_mapped"
    real = getattr(copy_step, target)
    calls: list[int] = []

    def failing_second(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(*args)

    monkeypatch.setattr(copy_step, target, failing_second)
    data = write_source(tmp_path / "big.bin", 3 * copy_step.BUFFER_SIZE + 777)
    reports: list[int] = []
    digest = copy(tmp_path / "big.bin", tmp_path / "out.bin", reports)
    assert digest == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(calls) == 2 and sum(reports) == len(data)


class BrokenHash:
    """sha256 whose ``update`` fails once it was given ``good`` bytes (a read
    error of the mapped destination, as the hashing thread would see it)."""

    def __init__(self, good: int) -> None:
        self.left = good
        self.real = hashlib.sha256()

    def update(self, data: Any) -> None:
        self.left -= len(data)
        if self.left < 0:
            raise OSError(errno.EIO, "Input/output error")
        self.real.update(data)

    def hexdigest(self) -> str:
        return self.real.hexdigest()


def test_a_failed_hash_fails_the_copy_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(copy_step, "new_hash", lambda algorithm: BrokenHash(copy_step.BUFFER_SIZE))
    write_source(tmp_path / "big.bin", 5 * copy_step.BUFFER_SIZE)
    with pytest.raises(OSError, match="Input/output error"):
        copy(tmp_path / "big.bin", tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
    assert hash_threads() == []


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A filesystem of 24 MiB holding a source of 14 MiB: its copy beside it
    (the kernel copies within one filesystem) runs out of space mid-stream."""
    yield from mounted(tmp_path / "disk", "24m")


def test_a_full_disk_mid_stream_fails_naming_the_file_and_leaves_nothing(disk: Path) -> None:
    data = write_source(disk / "big.bin", 14 * MiB)
    with pytest.raises(OSError) as raised:
        copy(disk / "big.bin", disk / "out.bin")
    assert str(raised.value) == f"[Errno 28] No space left on device: '{disk / 'out.bin'}'"
    assert sorted(p.name for p in disk.iterdir()) == ["big.bin"]
    assert (disk / "big.bin").read_bytes() == data
    assert hash_threads() == []


def test_a_full_disk_under_a_run_is_one_line_naming_the_file(tmp_path: Path, disk: Path) -> None:
    write_source(disk / "src.bin", 14 * MiB)
    (tmp_path / "r.yaml").write_text(
        "recipe: r\nsteps:\n  - id: w\n    uses: copy\n"
        f"    with: {{sources: {disk / 'src.bin'}, to: {disk / 'out'}, checksum: sha256}}\n"
    )
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "log": str(tmp_path / "calls.log"),
                "set": {"wsrun.core.filecopy:PIPELINE_MIN": 2 * MiB},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, str(HARNESS), str(spec), str(tmp_path / "r.yaml")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(HARNESS.parent.parent)},
    )
    assert done.returncode == 1, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("error: step 'w' "), line
    assert line.endswith(f"failed: {disk / 'out' / 'src.bin'}: No space left on device"), line
    assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["src.bin"]


def test_a_source_changed_under_the_copy_gets_the_digest_of_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a digest describes is the file at the destination: a source written
    to while it is copied yields a copy of some of its old and some of its new
    bytes, and the digest of exactly that copy (never of bytes it does not
    hold). The copy keeps the source's planned mtime, so a re-run sees the
    source changed since and copies it again."""
    src = tmp_path / "src" / "big.bin"
    src.parent.mkdir()
    data = write_source(src, 3 * copy_step.BUFFER_SIZE + 99)
    old = src.stat().st_mtime_ns - 3600 * 10**9
    os.utime(src, ns=(old, old))

    def rewrite_the_copied_start(i: int, src_fd: int, dst_fd: int, count: int) -> int:
        n = REAL_KERNEL_COPY(src_fd, dst_fd, count)
        if i == 1:  # copied, not yet hashed: the hashing thread gets it after this returns
            with src.open("r+b") as f:
                f.write(b"\xff" * 4096)
        return n

    kernel_copy_in(monkeypatch, rewrite_the_copied_start)
    _, first = run_step(
        "copy", {"sources": "src", "to": "out", "checksum": "sha256"}, str(tmp_path)
    )
    copied = tmp_path / "out" / "src" / "big.bin"
    assert copied.read_bytes() == data  # the old start was copied before it changed
    assert first.outputs["checksums"] == {str(copied): hashlib.sha256(data).hexdigest()}
    monkeypatch.setattr(copy_step, "_by_copy_file_range", REAL_KERNEL_COPY)
    _, again = run_step(
        "copy", {"sources": "src", "to": "out", "checksum": "sha256"}, str(tmp_path)
    )
    now = src.read_bytes()
    assert now != data and again.outputs["copied"] == 1
    assert copied.read_bytes() == now
    assert again.outputs["checksums"] == {str(copied): hashlib.sha256(now).hexdigest()}
