"""copy + checksum of a big file: the kernel copies on one thread while another
hashes what was copied. The digest and the bytes must be exact, also when the
kernel copy gives up part-way (the rest goes read -> hash -> write) or the
hashing fails."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from wsrun.core import filecopy as copy_step

MiB = 1 << 20


@pytest.fixture
def big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    monkeypatch.setattr(copy_step, "PIPELINE_MIN", 2 * MiB)  # 20 MiB is "big" here
    data = os.urandom(20 * MiB + 12345)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    return src, data


def copy(src: Path, dest: Path) -> str | None:
    st = src.stat()
    buf = bytearray(copy_step.BUFFER_SIZE)
    return copy_step.copy_file(
        str(src), str(dest), st.st_mode, st.st_mtime_ns, 0o022, "sha256", buf, st.st_size
    )


def test_the_pipelined_copy_is_exact(big: tuple[Path, bytes], tmp_path: Path) -> None:
    src, data = big
    assert copy(src, tmp_path / "out.bin") == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == data


def test_a_kernel_copy_that_gives_up_part_way_is_finished_by_read_and_write(
    big: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, data = big
    calls = []
    real = copy_step._by_copy_file_range

    def flaky(src_fd: int, dst_fd: int, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:  # the second chunk: "not across these filesystems"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src_fd, dst_fd, count)

    monkeypatch.setattr(copy_step, "_by_copy_file_range", flaky)
    assert copy(src, tmp_path / "out.bin") == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out.bin").read_bytes() == data
    assert len(calls) == 2


def test_a_failed_hash_fails_the_copy_and_leaves_nothing(
    big: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = big

    def broken(digest: object, fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(copy_step, "_hash_mapped", broken)
    with pytest.raises(OSError, match="Input/output error"):
        copy(src, tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
