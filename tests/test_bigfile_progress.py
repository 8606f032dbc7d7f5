"""Progress inside one big file (issue 15): a copy, tar or upload of a single
file reports its bytes as they go, so the heartbeat of a log shows bytes that
grow (and a rate and an ETA) before the file is done, not a jump at its end.

Nothing here measures time: the heartbeat interval is set so small that every
report prints a line, and the lines are read for what they count.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

import pytest

from fixtures.s3server import S3Server
from wsrun.core import filecopy

MiB = 1 << 20
#: Big enough for several reports on every path (kernel copy slices are 64 MiB).
SIZE = 200 * MiB + 12345

_LINE = re.compile(r"^(?P<label>.+?): (?P<files>\d+)/(?P<total>\d+) files, (?P<done>[\d.]+)/")


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A directory holding one file of SIZE random bytes, and its sha256."""
    root = tmp_path_factory.mktemp("bigtree")
    data = os.urandom(SIZE)
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(data)
    return root / "data", hashlib.sha256(data).hexdigest()


def mid_file_bytes(err: str, label: str) -> list[float]:
    """The done-bytes figures of ``label``'s heartbeat lines that still say
    0 of 1 files: the bytes counted while the one file was under way."""
    found = []
    for line in err.splitlines():
        m = _LINE.match(line)
        if m and m["label"] == label and (m["files"], m["total"]) == ("0", "1"):
            found.append(float(m["done"]))
    return found


def assert_bytes_grow_inside_the_file(err: str, label: str) -> None:
    done = mid_file_bytes(err, label)
    assert done == sorted(done), err  # never backwards
    moving = sorted(set(done) - {0.0})
    assert len(moving) >= 2, f"no bytes moved before the file was done:\n{err}"
    assert moving[-1] < SIZE / 1e6, err  # still short of the whole file


def assert_counted_chunk_by_chunk(err: str, label: str, size: int) -> None:
    """A transfer's bytes grow a chunk (or part) at a time while its one file
    is under way, the first well before half of it: not a jump at its end."""
    done = mid_file_bytes(err, label)
    assert done == sorted(done), err
    moving = set(done) - {0.0}
    assert len(moving) >= 2, err
    assert min(moving) < size / 2e6, err


def write_recipe(path: Path, step: str) -> Path:
    path.write_text(f"recipe: big\nsteps:\n  - id: work\n{step}")
    return path


def run_beating(cli, monkeypatch: pytest.MonkeyPatch, recipe: Path, step: str) -> str:
    """Run the one-step recipe ``step`` (written to ``recipe``) with a
    heartbeat line for every report; its stderr."""
    monkeypatch.setenv("WSRUN_HEARTBEAT", "1e-12")
    done = cli(write_recipe(recipe, step))
    assert done.code == 0, done.err
    return done.err


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


# ---- copy_file reports as it goes, and its reports add up ---------------------------


def _copy(src: Path, dest: Path, algorithm: str | None) -> tuple[str | None, list[int]]:
    """Copy with ``on_bytes``; each report is taken while the file is not yet in place."""
    reports: list[int] = []

    def on_bytes(n: int) -> None:
        assert not dest.exists(), "a report came after the file was in place"
        reports.append(n)

    st = src.stat()
    buf = bytearray(filecopy.BUFFER_SIZE)
    digest = filecopy.copy_file(
        str(src), str(dest), 0o644, st.st_mtime_ns, 0o022, algorithm, buf, None, None, on_bytes
    )
    return digest, reports


@pytest.mark.parametrize("algorithm", [None, "sha256"])
@pytest.mark.parametrize("size", [1000, 3 * MiB + 7, 20 * MiB + 12345])
def test_copy_file_reports_add_up_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str | None, size: int
) -> None:
    # small, mid-size (chunks hashed in turn) and pipelined (20 MiB is big here);
    # kernel copy slices of 4 MiB, so the plain copy reports several times too
    monkeypatch.setattr(filecopy, "PIPELINE_MIN", 16 * MiB)
    monkeypatch.setattr(filecopy, "PROGRESS_CHUNK", 4 * MiB)
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest, reports = _copy(src, tmp_path / "out.bin", algorithm)
    assert sum(reports) == size
    assert max(reports) <= 8 * MiB  # a few reports per 8 MiB, no jump at the end
    if size > 8 * MiB:
        assert len(reports) >= 3
    assert (tmp_path / "out.bin").read_bytes() == data
    assert digest == (hashlib.sha256(data).hexdigest() if algorithm else None)


@pytest.mark.parametrize("algorithm", [None, "sha256"])
def test_reports_add_up_when_the_kernel_copy_gives_up_part_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str | None
) -> None:
    monkeypatch.setattr(filecopy, "PIPELINE_MIN", 8 * MiB)
    monkeypatch.setattr(filecopy, "PROGRESS_CHUNK", 4 * MiB)
    real = filecopy._by_copy_file_range
    calls: list[int] = []

    def flaky(src_fd: int, dst_fd: int, count: int) -> int:
        calls.append(count)
        if len(calls) > 2:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src_fd, dst_fd, count)

    monkeypatch.setattr(filecopy, "_by_copy_file_range", flaky)
    monkeypatch.setattr(filecopy, "_by_sendfile", flaky)  # no second kernel way either
    data = os.urandom(30 * MiB + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    digest, reports = _copy(src, tmp_path / "out.bin", algorithm)
    assert sum(reports) == len(data) and len(calls) >= 3  # gave up after two chunks
    assert (tmp_path / "out.bin").read_bytes() == data
    assert digest == (hashlib.sha256(data).hexdigest() if algorithm else None)


def test_a_failing_report_leaves_nothing_at_the_destination(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(100 * MiB))

    def on_bytes(n: int) -> None:
        raise KeyboardInterrupt  # as Ctrl-C arriving in the progress code

    with pytest.raises(KeyboardInterrupt):
        filecopy.copy_file(
            str(src), str(tmp_path / "out.bin"), 0o644, 0, 0o022, "sha256",
            bytearray(filecopy.BUFFER_SIZE), None, None, on_bytes,
        )  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["src.bin"]


# ---- runs: the heartbeat of a log shows the bytes of the one file moving ---------------


@pytest.mark.parametrize("checksum", ["none", "sha256"])
def test_a_copy_of_one_big_file_beats_with_growing_bytes(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big_tree: tuple[Path, str], checksum: str
) -> None:
    source, sha = big_tree
    monkeypatch.setenv("WSRUN_HEARTBEAT", "1e-12")
    recipe = write_recipe(
        tmp_path / "copy.yaml",
        f"    uses: copy\n    with: {{sources: {json.dumps(str(source))}, to: out, "
        f"checksum: {checksum}}}\n",
    )
    done = cli(recipe)
    assert done.code == 0, done.err
    assert_bytes_grow_inside_the_file(done.err, "work (copy)")
    assert sha256_of(tmp_path / "out" / "data" / "big.bin") == sha


def test_the_copy_checksum_of_one_big_file_is_exact(
    cli, tmp_path: Path, big_tree: tuple[Path, str]
) -> None:
    source, sha = big_tree
    recipe = tmp_path / "copy.yaml"
    recipe.write_text(
        "recipe: big\noutputs: {sums: '{{ steps.work.outputs.checksums }}'}\nsteps:\n"
        f"  - id: work\n    uses: copy\n    with: {{sources: {json.dumps(str(source))}, "
        "to: out, checksum: sha256}\n"
    )
    done = cli(recipe, "--json")
    assert done.code == 0, done.err
    sums = json.loads(done.out)["outputs"]["sums"]
    assert sums == {str(tmp_path / "out" / "data" / "big.bin"): sha}


@pytest.mark.parametrize("compression", ["none", "gz"])
def test_a_tar_of_one_big_file_beats_with_growing_bytes(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    big_tree: tuple[Path, str],
    compression: str,
) -> None:
    source, sha = big_tree
    monkeypatch.setenv("WSRUN_HEARTBEAT", "1e-12")
    archive = tmp_path / ("big.tar" if compression == "none" else "big.tar.gz")
    recipe = write_recipe(
        tmp_path / "tar.yaml",
        f"    uses: tar\n    with: {{source: {json.dumps(str(source))}, "
        f"base: {json.dumps(str(source.parent))}, to: {json.dumps(str(archive))}, "
        f"compression: {compression}}}\n",
    )
    done = cli(recipe)
    assert done.code == 0, done.err
    assert_bytes_grow_inside_the_file(done.err, "work (tar)")
    with tarfile.open(archive) as tar:
        member = tar.extractfile("data/big.bin")
        assert member is not None
        h = hashlib.sha256()
        while chunk := member.read(8 * MiB):
            h.update(chunk)
    assert h.hexdigest() == sha


def test_an_upload_of_one_big_file_beats_with_growing_bytes(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Server,
    bucket: str,
) -> None:
    data = os.urandom(30 * MiB + 99)
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "big.bin").write_bytes(data)
    err = run_beating(
        cli,
        monkeypatch,
        tmp_path / "up.yaml",
        f"    uses: s3-upload\n    with: {{sources: up, base: ., to: 's3://{bucket}/x', "
        f"endpoint_url: {json.dumps(s3.endpoint)}, part_size: 5MiB, workers: 2}}\n",
    )
    # bytes counted part by part, well before the last part (and the completion)
    assert_counted_chunk_by_chunk(err, "work (upload)", len(data))
    body = s3.client().get_object(Bucket=bucket, Key="x/up/big.bin")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


# ---- move and s3-download ---------------------------------------------------------------


@pytest.fixture
def across(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Renames of the ``src`` directory or a path below it fail as across filesystems
    (EXDEV), so a move of it has to copy; the paths refused, in order."""
    real = os.rename
    refused: list[str] = []

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if "src" in Path(src).parts:
            refused.append(os.fspath(src))
            raise OSError(errno.EXDEV, "Invalid cross-device link", os.fspath(src))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return refused


def test_a_move_of_one_big_file_across_filesystems_beats_with_growing_bytes(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    big_tree: tuple[Path, str],
    across: list[str],
) -> None:
    """Copied, then checked: both show the one file's bytes moving."""
    source, sha = big_tree
    (tmp_path / "src").mkdir()
    os.link(source / "big.bin", tmp_path / "src" / "big.bin")  # the move removes this name only
    err = run_beating(
        cli,
        monkeypatch,
        tmp_path / "move.yaml",
        "    uses: move\n    with: {source: src/big.bin, to: out/big.bin}\n",
    )
    assert across == [str(tmp_path / "src" / "big.bin")]  # it did go across
    assert_bytes_grow_inside_the_file(err, "work (move)")
    assert_bytes_grow_inside_the_file(err, "work (verify)")
    assert not (tmp_path / "src" / "big.bin").exists()
    assert sha256_of(tmp_path / "out" / "big.bin") == sha


@pytest.mark.parametrize("how", ["rename", "across"])
def test_a_move_of_a_tree_counts_every_file_it_moved(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, how: str
) -> None:
    """One rename moves the whole tree: the line says how many files (and
    bytes) that was, so a million-file move shows its files/s. Across
    filesystems, the small files' counts (told in batches) add up too."""
    if how == "across":
        request.getfixturevalue("across")
    tree = tmp_path / "src"
    for i in range(5):
        (tree / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 2}" / f"f{i}.bin").write_bytes(b"x" * (1000 + i))
    (tree / "link").symlink_to("d0/f0.bin")  # not a file: not counted
    err = run_beating(
        cli,
        monkeypatch,
        tmp_path / "move.yaml",
        "    uses: move\n    with: {source: src, to: moved}\n",
    )
    labels = ["work (move)"] + (["work (verify)"] if how == "across" else [])
    for label in labels:
        lines = [line for line in err.splitlines() if line.startswith(f"{label}: ")]
        assert lines and lines[-1].startswith(f"{label}: 5/5 files, 5.0/5.0 kB, "), err
    assert (tmp_path / "moved" / "d1" / "f3.bin").stat().st_size == 1003
    assert not tree.exists()


def test_a_download_of_one_big_object_beats_with_growing_bytes(
    cli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Server,
    bucket: str,
) -> None:
    data = os.urandom(40 * MiB + 99)
    s3.client().put_object(Bucket=bucket, Key="x/big.bin", Body=data)
    err = run_beating(
        cli,
        monkeypatch,
        tmp_path / "down.yaml",
        f"    uses: s3-download\n    with: {{sources: 's3://{bucket}/x/big.bin', to: restore, "
        f"endpoint_url: {json.dumps(s3.endpoint)}}}\n",
    )
    assert_counted_chunk_by_chunk(err, "work (download)", len(data))
    assert_counted_chunk_by_chunk(err, "work (verify)", len(data))  # then read back for its ETag
    assert (tmp_path / "restore" / "big.bin").read_bytes() == data
