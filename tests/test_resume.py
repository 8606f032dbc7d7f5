"""File-granular resume (issue 15): a run SIGKILLed at a known point, then a
re-run (or ``wsrun resume``) that does only the remaining work and ends right.

Work is counted, never timed: the calls that write a file, hash a file, send a
part or fetch bytes are logged by tests/fixtures/interrupt.py, which also
kills the run just before a given call. Each step runs with one worker so
"done before the kill" is exact. A source changed between the kill and the
re-run is read again instead of trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fixtures.s3server import S3Server
from fixtures.tmpfs import mounted
from fixtures.writers import leftovers

HARNESS = Path(__file__).parent / "fixtures" / "interrupt.py"
MiB = 1 << 20
#: Every resume record written at once, so a kill loses none of them.
FLUSH_NOW = {
    "wsrun.core.resumes:FLUSH_BYTES": 0,
    "wsrun.core.resumes:FLUSH_FILES": 0,
    "wsrun.core.resumes:WRITER_THREAD": False,
    "wsrun.core.hashing:WORKERS": 1,
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(tmp_path: Path, spec: dict[str, Any], *args: str | Path) -> tuple[int, list[str], str]:
    """``wsrun ARGS`` under the harness: exit status, the logged calls (as
    ``target\\tlabel`` lines), stderr."""
    log = tmp_path / f"calls-{len(list(tmp_path.glob('calls-*')))}.log"
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**spec, "log": str(log)}))
    done = subprocess.run(
        [sys.executable, str(HARNESS), str(spec_file), *map(str, args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(HARNESS.parent.parent)},
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return done.returncode, calls, done.stderr


def count(calls: list[str], target: str) -> list[str]:
    """The labels of the logged calls of ``target``."""
    return [c.split("\t", 1)[1] for c in calls if c.split("\t", 1)[0] == target]


def make_tree(root: Path, n: int = 12, size: int = 256 << 10) -> dict[str, bytes]:
    rng = random.Random(f"tree-{n}-{size}")
    files = {f"d{i % 3}/f{i:02d}.bin": rng.randbytes(size + i) for i in range(n)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def recipe(tmp_path: Path, steps: str, outputs: str = "{}") -> Path:
    path = tmp_path / "recipe.yaml"
    body = "\n".join("  " + line for line in steps.strip().splitlines())
    path.write_text(f"recipe: r\noutputs: {outputs}\nsteps:\n{body}\n")
    return path


def rewrite_same_size(path: Path, keep_mtime: bool) -> bytes:
    """Change ``path``'s content, keeping its size; keep its mtime too, or move
    it one second on."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    mtime = st.st_mtime_ns if keep_mtime else st.st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(mtime, mtime))
    return bytes(data)


COPY = "wsrun.steps.copy:copy_file_placed"
#: The move step copies across filesystems through the same function, imported there.
MOVE_COPY = "wsrun.steps.move:copy_file"
HASH_DEST = "wsrun.steps.copy:hash_file"


def copy_recipe(tmp_path: Path) -> Path:
    return recipe(
        tmp_path,
        """
- id: copy
  uses: copy
  with: {sources: src, to: out, checksum: sha256, workers: 1}
""",
        outputs="{sums: '{{ steps.copy.outputs.checksums }}'}",
    )


def assert_copied(tmp_path: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (tmp_path / "out" / "src" / rel).read_bytes() == data, rel
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_a_killed_copy_writes_and_hashes_only_the_missing_files(tmp_path: Path, how: str) -> None:
    files = make_tree(tmp_path / "src")
    path = copy_recipe(tmp_path)
    kill = {"target": COPY, "after": 5}
    code, calls, err = run(tmp_path, {"kill": kill, "set": FLUSH_NOW}, path, "-q")
    assert code == -9, err
    written = count(calls, COPY)
    assert len(written) == 5
    present = {r for r, d in files.items() if (tmp_path / "out/src" / r).exists()}
    assert {f"{tmp_path}/src/{r}" for r in present} == set(written)

    watch = [[COPY, 0], [HASH_DEST, 0]]
    if how == "rerun":
        code, calls, err = run(tmp_path, {"watch": watch}, path, "--json")
    else:
        runs = subprocess.run(
            [sys.executable, "-m", "wsrun", "runs", "--json"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
        )
        [killed] = json.loads(runs.stdout)
        code, calls, err = run(tmp_path, {"watch": watch}, "resume", killed["id"], "--json")
    assert code == 0, err
    recopied = count(calls, COPY)
    assert sorted(recopied) == sorted(f"{tmp_path}/src/{r}" for r in set(files) - present)
    assert count(calls, HASH_DEST) == []  # the five copied before the kill: hashes recorded
    assert_copied(tmp_path, files)


def test_a_copy_resumed_after_its_source_changed_copies_the_changed_file(tmp_path: Path) -> None:
    """Changed content, same size, mtime one second later: re-copied, and the
    output checksum is the new content's."""
    files = make_tree(tmp_path / "src")
    path = copy_recipe(tmp_path)
    code, calls, err = run(
        tmp_path, {"kill": {"target": COPY, "after": 5}, "set": FLUSH_NOW}, path, "-q"
    )
    assert code == -9, err
    first = Path(count(calls, COPY)[0])
    files[str(first.relative_to(tmp_path / "src"))] = rewrite_same_size(first, keep_mtime=False)
    code, calls, err = run(tmp_path, {"watch": [[COPY, 0], [HASH_DEST, 0]]}, path, "--json")
    assert code == 0, err
    assert str(first) in count(calls, COPY)
    assert len(count(calls, COPY)) == len(files) - 5 + 1
    assert_copied(tmp_path, files)
    out = json.loads(subprocess_json(tmp_path, path))
    sums = out["outputs"]["sums"]
    for rel, data in files.items():
        assert sums[f"{tmp_path}/out/src/{rel}"] == sha(data)


def subprocess_json(tmp_path: Path, path: Path) -> str:
    """A third run's --json output: nothing to copy, every checksum reported."""
    done = subprocess.run(
        [sys.executable, "-m", "wsrun", str(path), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_a_recorded_hash_is_not_trusted_for_a_destination_changed_behind_its_back(
    tmp_path: Path,
) -> None:
    """A copied file rewritten in place with its mtime put back (only the ctime
    tells): the next run reads it again rather than report the old digest."""
    files = make_tree(tmp_path / "src", n=3)
    path = copy_recipe(tmp_path)
    code, _, err = run(tmp_path, {"set": FLUSH_NOW}, path, "-q")
    assert code == 0, err
    victim = tmp_path / "out/src/d0/f00.bin"
    changed = rewrite_same_size(victim, keep_mtime=True)
    code, calls, err = run(tmp_path, {"watch": [[COPY, 0], [HASH_DEST, 0]]}, path, "-q")
    assert code == 0, err
    assert count(calls, COPY) == []  # size and mtime match the source: left alone
    assert count(calls, HASH_DEST) == [str(victim)]
    sums = json.loads(subprocess_json(tmp_path, path))["outputs"]["sums"]
    assert sums[str(victim)] == sha(changed) != sha(files["d0/f00.bin"])


HASH = "wsrun.core.hashing:_hash_counted"  # every file a hash step reads


def test_a_killed_checksum_hashes_only_what_it_had_not_and_what_changed(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "data")
    path = recipe(
        tmp_path,
        """
- id: sums
  uses: checksum
  with: {paths: data, to: SHA256SUMS}
""",
    )
    code, calls, err = run(tmp_path, {"kill": {"target": HASH, "after": 5}, "set": FLUSH_NOW}, path)
    assert code == -9, err
    assert len(count(calls, HASH)) == 5
    assert not (tmp_path / "SHA256SUMS").exists()

    code, calls, err = run(tmp_path, {"watch": [[HASH, 0]], "set": FLUSH_NOW}, path, "-q")
    assert code == 0, err
    assert len(count(calls, HASH)) == len(files) - 5

    def expected() -> str:
        return "".join(f"{sha(files[r])}  data/{r}\n" for r in sorted(files))

    assert (tmp_path / "SHA256SUMS").read_text() == expected()
    # Same size, mtime put back: only the ctime tells. Then a size-keeping
    # change with a later mtime. Each is read again, nothing else.
    for rel, keep in (("d1/f04.bin", True), ("d2/f08.bin", False)):
        files[rel] = rewrite_same_size(tmp_path / "data" / rel, keep_mtime=keep)
        code, calls, err = run(tmp_path, {"watch": [[HASH, 0]]}, path, "-q")
        assert code == 0, err
        assert [Path(p).name for p in count(calls, HASH)] == [Path(rel).name]
        assert (tmp_path / "SHA256SUMS").read_text() == expected()
    assert (
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path).returncode == 0
    )


def test_an_interrupted_tar_is_restarted_but_not_the_copy_before_it(tmp_path: Path) -> None:
    files = make_tree(tmp_path / "src")
    path = recipe(
        tmp_path,
        """
- id: copy
  uses: copy
  with: {sources: src, to: out, workers: 1}
- id: tar
  uses: tar
  with: {source: out/src, to: out.tar}
""",
    )
    spec = {
        # the writer fstats each file it archives
        "kill": {
            "target": "os:fstat",
            "after": 6,
            "armed_by": "wsrun.formats.tarball:write_tar",
        },
        "watch": [[COPY, 0]],
        "set": {"wsrun.formats.tarball:PARALLEL_MIN": 1 << 60},  # one writer, this process
    }
    code, calls, err = run(tmp_path, spec, path, "-q")
    assert code == -9, err
    assert len(count(calls, COPY)) == len(files)
    assert not (tmp_path / "out.tar").exists()
    assert leftovers(tmp_path) != []  # the archive's temporary file, half written

    code, calls, err = run(tmp_path, {"watch": [[COPY, 0]]}, path, "-q")
    assert code == 0, err
    assert count(calls, COPY) == []
    with tarfile.open(tmp_path / "out.tar") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"src/{r}": d for r, d in files.items()}
    assert leftovers(tmp_path) == []


def test_a_killed_rsync_transfers_only_the_missing_files(tmp_path: Path) -> None:
    """rsync's own quick check (size and mtime) does the resuming; the kill
    comes while rsync runs (its files are throttled), and the re-run sends
    exactly the files that were not complete at the destination."""
    files = make_tree(tmp_path / "src", n=8, size=512 << 10)
    path = recipe(
        tmp_path,
        """
- id: sync
  uses: rsync
  with: {source: src/, to: out, options: [--bwlimit=2m]}
""",
        outputs="{files: '{{ steps.sync.outputs.files }}'}",
    )
    spec = {
        "kill": {
            "target": "wsrun.steps.rsync:_parse_line",
            "after": 7,  # ".", three directories, then files
            "armed_by": "wsrun.steps.rsync:apply",  # not the plan's dry run
        }
    }
    code, _, err = run(tmp_path, spec, path, "-q")
    assert code == -9, err
    complete = {r for r, d in files.items() if _read(tmp_path / "out" / r) == d}
    assert 0 < len(complete) < len(files)
    done = subprocess.run(
        [sys.executable, "-m", "wsrun", str(path), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)["outputs"]["files"]
    assert sorted(written) == sorted(f"{tmp_path}/out/{r}" for r in set(files) - complete)
    for rel, data in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
    assert leftovers(tmp_path) == []


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


# ---- object storage ---------------------------------------------------------------

CALL = "wsrun.stores.objectstore:Store.call"


def upload_recipe(tmp_path: Path, s3: S3Server, bucket: str, **extra: Any) -> Path:
    params = {
        "sources": "big.bin",
        "to": f"s3://{bucket}/c",
        "part_size": "5MiB",
        "workers": 1,
        "endpoint_url": s3.endpoint,
        **extra,
    }
    return recipe(tmp_path, f"- id: up\n  uses: s3-upload\n  with: {json.dumps(params)}")


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def kill_upload(tmp_path: Path, s3: S3Server, bucket: str, **extra: Any) -> tuple[Path, bytes]:
    """A 6-part upload killed before its fourth part: three parts on the store."""
    data = random.Random("big").randbytes(26 * MiB)
    (tmp_path / "big.bin").write_bytes(data)
    path = upload_recipe(tmp_path, s3, bucket, **extra)
    kill = {"target": CALL, "after": 3, "match": "upload_part", "label": 1}
    code, calls, err = run(tmp_path, {"kill": kill}, path, "-q")
    assert code == -9, err
    assert Counter(count(calls, CALL))["upload_part"] == 3
    [pending] = s3.client().list_multipart_uploads(Bucket=bucket)["Uploads"]
    parts = s3.client().list_parts(Bucket=bucket, Key="c/big.bin", UploadId=pending["UploadId"])
    assert len(parts["Parts"]) == 3
    return path, data


def test_a_killed_multipart_upload_sends_only_the_missing_parts(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    path, data = kill_upload(tmp_path, s3, bucket)
    code, calls, err = run(tmp_path, {"watch": [[CALL, 1]]}, path, "-q")
    assert code == 0, err
    sent = Counter(count(calls, CALL))
    assert sent["create_multipart_upload"] == 0 and sent["abort_multipart_upload"] == 0
    assert sent["list_parts"] == 1 and sent["upload_part"] == 3
    assert sent["complete_multipart_upload"] == 1
    client = s3.client()
    head = client.head_object(Bucket=bucket, Key="c/big.bin")
    assert head["ETag"].strip('"') == multipart_etag(data, 5 * MiB)
    assert client.get_object(Bucket=bucket, Key="c/big.bin")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_part_whose_source_changed_after_the_kill_is_sent_again(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """Bytes of the second part (already on the store) change, same size, later
    mtime: its listed ETag no longer matches the local bytes, so it goes again."""
    path, _ = kill_upload(tmp_path, s3, bucket)
    data = bytearray((tmp_path / "big.bin").read_bytes())
    data[5 * MiB + 10] ^= 0xFF
    (tmp_path / "big.bin").write_bytes(bytes(data))
    code, calls, err = run(tmp_path, {"watch": [[CALL, 1]]}, path, "-q")
    assert code == 0, err
    assert Counter(count(calls, CALL))["upload_part"] == 4
    client = s3.client()
    assert client.get_object(Bucket=bucket, Key="c/big.bin")["Body"].read() == bytes(data)
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_upload_with_other_metadata_is_aborted_and_started_again(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """With ``sha256: true`` the object's metadata is fixed when the upload
    starts; a changed file would make it wrong, so that upload is aborted."""
    path, _ = kill_upload(tmp_path, s3, bucket, sha256=True)
    data = bytearray((tmp_path / "big.bin").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "big.bin").write_bytes(bytes(data))
    code, calls, err = run(tmp_path, {"watch": [[CALL, 1]]}, path, "-q")
    assert code == 0, err
    sent = Counter(count(calls, CALL))
    assert sent["abort_multipart_upload"] == 1 and sent["create_multipart_upload"] == 1
    assert sent["upload_part"] == 6
    head = s3.client().head_object(Bucket=bucket, Key="c/big.bin")
    assert head["Metadata"]["sha256"] == sha(bytes(data))
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


GET = "wsrun.steps.s3_download:_get"
REST = "wsrun.steps.s3_download:_get_rest"
#: Every S3 request s3fs sends (its method name is argument 1).
S3_CALL = "s3fs.core:S3FileSystem._call_s3"


def download_recipe(tmp_path: Path, s3: S3Server, bucket: str) -> Path:
    params = {"sources": f"s3://{bucket}/obj.bin", "to": "restore", "endpoint_url": s3.endpoint}
    return recipe(tmp_path, f"- id: down\n  uses: s3-download\n  with: {json.dumps(params)}")


def killed_half_way(tmp_path: Path, s3: S3Server, bucket: str, data: bytes) -> Path:
    """The recipe of a download of ``data`` (put at obj.bin), after a run of
    it killed half way through the object."""
    s3.client().put_object(Bucket=bucket, Key="obj.bin", Body=data)
    path = download_recipe(tmp_path, s3, bucket)
    (tmp_path / "restore").mkdir()
    code, _, err = run(tmp_path, {"half_download": True}, path, "-q")
    assert code == -9, err
    return path


def test_a_killed_download_continues_from_where_it_stopped(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    data = random.Random("obj").randbytes(24 * MiB)
    path = killed_half_way(tmp_path, s3, bucket, data)
    assert not (tmp_path / "restore/obj.bin").exists()
    assert leftovers(tmp_path) != []  # half of it, under the temporary name

    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]]}, path, "-q")
    assert code == 0, err
    assert count(calls, GET) == [], err
    assert count(calls, REST) == [str(12 * MiB)]  # only the second half was fetched
    assert (tmp_path / "restore/obj.bin").read_bytes() == data
    assert leftovers(tmp_path) == []


def test_a_continued_download_counts_its_kept_bytes_then_the_rest_as_it_comes(
    tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat of the re-run: the half kept from the killed run at once
    (not fetched, not a rate to plan with), then the rest growing in chunks
    before the file is done."""
    data = random.Random("obj").randbytes(24 * MiB)
    path = killed_half_way(tmp_path, s3, bucket, data)
    monkeypatch.setenv("WSRUN_HEARTBEAT", "1e-12")  # a line for every report
    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]]}, path)
    assert code == 0, err
    assert count(calls, REST) == [str(12 * MiB)], err
    mid_file = [
        float(line.split(" files, ")[1].split("/")[0])
        for line in err.splitlines()
        if line.startswith("down (download): 0/1 files, ")
    ]
    moving = [mb for mb in mid_file if mb > 0]
    assert moving == sorted(moving), err
    assert moving[0] == round(12 * MiB / 1e6, 1), err  # the kept half, counted first
    assert len(set(moving)) >= 2 and moving[-1] <= round(24 * MiB / 1e6, 1), err
    assert (tmp_path / "restore/obj.bin").read_bytes() == data


def test_a_download_killed_mid_stream_leaves_a_start_of_the_object_to_continue(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """A real kill, not a simulated one: the run is SIGKILLed as it sends its
    sixth GET of the object (1 MiB ranges here, a few in flight). What it
    leaves under the temporary name is a start of the object, no holes, and
    the re-run fetches only the rest."""
    data = random.Random("ranges").randbytes(24 * MiB)
    s3.client().put_object(Bucket=bucket, Key="obj.bin", Body=data)
    path = download_recipe(tmp_path, s3, bucket)
    (tmp_path / "restore").mkdir()
    ranges = {"wsrun.steps.s3_download:RANGE_SIZE": MiB}
    kill = {"target": S3_CALL, "after": 5, "match": "get_object", "label": 1}
    code, _, err = run(tmp_path, {"kill": kill, "set": ranges}, path, "-q")
    assert code == -9, err
    [partial] = [tmp_path / p for p in leftovers(tmp_path)]
    kept = partial.read_bytes()
    assert 0 < len(kept) < len(data) and kept == data[: len(kept)]

    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]], "set": ranges}, path, "-q")
    assert code == 0, err
    assert count(calls, GET) == [] and count(calls, REST) == [str(len(kept))]
    assert (tmp_path / "restore/obj.bin").read_bytes() == data
    assert leftovers(tmp_path) == []


def test_a_killed_download_of_an_object_replaced_since_starts_over(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    client = s3.client()
    client.put_object(Bucket=bucket, Key="obj.bin", Body=os.urandom(24 * MiB))
    path = download_recipe(tmp_path, s3, bucket)
    (tmp_path / "restore").mkdir()
    code, _, err = run(tmp_path, {"half_download": True}, path, "-q")
    assert code == -9, err
    new = os.urandom(24 * MiB)  # same size, other ETag
    client.put_object(Bucket=bucket, Key="obj.bin", Body=new)
    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]]}, path, "-q")
    assert code == 0, err
    assert count(calls, REST) == [] and len(count(calls, GET)) == 1
    assert (tmp_path / "restore/obj.bin").read_bytes() == new
    assert leftovers(tmp_path) == []


def test_a_corrupt_partial_download_is_fetched_again_whole(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    """The kept half is damaged after the kill (same size, same mark): the
    continued file fails the ETag check, and the step downloads it whole."""
    data = os.urandom(24 * MiB)
    s3.client().put_object(Bucket=bucket, Key="obj.bin", Body=data)
    path = download_recipe(tmp_path, s3, bucket)
    (tmp_path / "restore").mkdir()
    code, _, err = run(tmp_path, {"half_download": True}, path, "-q")
    assert code == -9, err
    [partial] = [tmp_path / p for p in leftovers(tmp_path)]
    with open(partial, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 8)
    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]]}, path, "-q")
    assert code == 0, err
    assert count(calls, REST) == [str(12 * MiB)] and len(count(calls, GET)) == 1
    assert (tmp_path / "restore/obj.bin").read_bytes() == data


@pytest.fixture
def other_disk(tmp_path: Path) -> Any:
    """A second filesystem, so that a move has to copy."""
    yield from mounted(tmp_path / "other-disk", "64m")


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A filesystem of 1 MiB: every step below writes 2 MiB into it."""
    yield from mounted(tmp_path / "full-disk", "1m")


def test_a_killed_move_across_filesystems_copies_only_what_it_had_not(
    tmp_path: Path, other_disk: Path
) -> None:
    files = make_tree(tmp_path / "src")
    (tmp_path / "src" / "d0" / "link").symlink_to("f00.bin")
    path = recipe(
        tmp_path,
        f"""
- id: move
  uses: move
  with: {{source: src, to: {other_disk}/moved}}
""",
    )
    spec = {
        "kill": {"target": MOVE_COPY, "after": 5},
        "set": FLUSH_NOW,
        "returns": {"os:cpu_count": 1},
    }
    code, calls, err = run(tmp_path, spec, path, "-q")
    assert code == -9, err
    assert len(count(calls, MOVE_COPY)) == 5
    assert not (other_disk / "moved").exists()
    assert (tmp_path / "src").is_dir()
    # Meanwhile one copied file changes (same size, later mtime), one source
    # file goes away, and the killed run's copy gains a stray file.
    changed = Path(count(calls, MOVE_COPY)[0])
    files[str(changed.relative_to(tmp_path / "src"))] = rewrite_same_size(changed, keep_mtime=False)
    gone = sorted(
        set(files) - {str(Path(c).relative_to(tmp_path / "src")) for c in count(calls, MOVE_COPY)}
    )[0]
    (tmp_path / "src" / gone).unlink()
    del files[gone]
    [partial] = [p for p in other_disk.iterdir() if p.name.endswith(".wsrun-tmp")]
    (partial / "stray.bin").write_bytes(b"not in the source")

    code, calls, err = run(tmp_path, {"watch": [[MOVE_COPY, 0]]}, path, "-q")
    assert code == 0, err
    assert len(count(calls, MOVE_COPY)) == len(files) - 5 + 1
    assert str(changed) in count(calls, MOVE_COPY)
    moved = other_disk / "moved"
    got = {
        str(p.relative_to(moved)): p.read_bytes()
        for p in moved.rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    assert got == files
    assert os.readlink(moved / "d0" / "link") == "f00.bin"
    assert not (tmp_path / "src").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["copy-sha256", "tar", "move", "s3-download"])
def test_a_full_disk_mid_stream_is_one_line_naming_the_path_and_leaves_nothing(
    tmp_path: Path, full_disk: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    data = os.urandom(2 * MiB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.dat").write_bytes(data)
    out = full_disk / "out"
    if kind == "copy-sha256":
        step = f"uses: copy\n  with: {{sources: src, to: {out}, checksum: sha256}}"
        written = out / "src/big.dat"
    elif kind == "tar":
        step, written = f"uses: tar\n  with: {{source: src, to: {out}/a.tar}}", out / "a.tar"
    elif kind == "move":
        step, written = f"uses: move\n  with: {{source: src, to: {out}}}", out / "big.dat"
    else:
        s3 = request.getfixturevalue("s3")
        bucket = request.getfixturevalue("bucket")
        s3.client().put_object(Bucket=bucket, Key="big.dat", Body=data)
        params = {"sources": f"s3://{bucket}/big.dat", "to": str(out), "endpoint_url": s3.endpoint}
        step, written = f"uses: s3-download\n  with: {json.dumps(params)}", out / "big.dat"
    path = recipe(tmp_path, f"- id: w\n  {step}")
    done = subprocess.run(
        [sys.executable, "-m", "wsrun", str(path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.strip()]
    assert line.startswith("error: step 'w' ") and "No space left on device" in line, line
    if kind == "move":  # the copy beside the target failed: named by its temporary name
        assert f"{full_disk}/.out.wsrun-tmp" in line, line
    else:
        assert line.endswith(f"failed: {written}: No space left on device"), line
    assert [p for p in full_disk.rglob("*") if p.is_file()] == []
    assert (tmp_path / "src" / "big.dat").read_bytes() == data


def test_a_killed_upload_of_a_tree_sends_only_the_objects_not_there_yet(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    files = make_tree(tmp_path / "src", size=4096)
    params = {
        "sources": "src",
        "to": f"s3://{bucket}/t",
        "workers": 1,
        "endpoint_url": s3.endpoint,
    }
    path = recipe(tmp_path, f"- id: up\n  uses: s3-upload\n  with: {json.dumps(params)}")
    kill = {"target": CALL, "after": 5, "match": "put_object", "label": 1}
    code, calls, err = run(tmp_path, {"kill": kill}, path, "-q")
    assert code == -9, err
    assert Counter(count(calls, CALL))["put_object"] == 5
    code, calls, err = run(tmp_path, {"watch": [[CALL, 1]]}, path, "-q")
    assert code == 0, err
    assert Counter(count(calls, CALL))["put_object"] == len(files) - 5
    client = s3.client()
    for rel, data in files.items():
        assert client.get_object(Bucket=bucket, Key=f"t/src/{rel}")["Body"].read() == data


def test_a_killed_download_of_a_prefix_fetches_only_the_files_not_there_yet(
    tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    files = make_tree(tmp_path / "unused", size=4096)
    client = s3.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"p/{rel}", Body=data)
    params = {
        "sources": f"s3://{bucket}/p/",
        "to": "restore",
        "workers": 1,
        "endpoint_url": s3.endpoint,
    }
    path = recipe(tmp_path, f"- id: down\n  uses: s3-download\n  with: {json.dumps(params)}")
    code, calls, err = run(tmp_path, {"kill": {"target": GET, "after": 5, "label": 1}}, path, "-q")
    assert code == -9, err
    assert len(count(calls, GET)) == 5
    code, calls, err = run(tmp_path, {"watch": [[GET, 1], [REST, 3]]}, path, "-q")
    assert code == 0, err
    assert len(count(calls, GET)) == len(files) - 5 and count(calls, REST) == []
    for rel, data in files.items():
        assert (tmp_path / "restore/p" / rel).read_bytes() == data
    assert leftovers(tmp_path) == []


def test_wsrun_resume_rechecks_a_finished_copy_whose_source_changed(tmp_path: Path) -> None:
    """The copy finished, the tar after it was killed; then a source file changes
    (same size, later mtime). ``wsrun resume`` does not trust the journal's
    record of the copy: it copies that one file again, and the archive holds
    the new content."""
    files = make_tree(tmp_path / "src")
    path = recipe(
        tmp_path,
        """
- id: copy
  uses: copy
  with: {sources: src, to: out, workers: 1}
- id: tar
  uses: tar
  with: {source: out/src, to: out.tar}
""",
    )
    spec = {
        # the writer fstats each file it archives
        "kill": {
            "target": "os:fstat",
            "after": 6,
            "armed_by": "wsrun.formats.tarball:write_tar",
        },
        "set": {"wsrun.formats.tarball:PARALLEL_MIN": 1 << 60},
    }
    code, _, err = run(tmp_path, spec, path, "-q")
    assert code == -9, err
    files["d1/f04.bin"] = rewrite_same_size(tmp_path / "src/d1/f04.bin", keep_mtime=False)
    runs = subprocess.run(
        [sys.executable, "-m", "wsrun", "runs", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    [killed] = json.loads(runs.stdout)
    code, calls, err = run(tmp_path, {"watch": [[COPY, 0]]}, "resume", killed["id"], "-q")
    assert code == 0, err
    assert count(calls, COPY) == [f"{tmp_path}/src/d1/f04.bin"]
    with tarfile.open(tmp_path / "out.tar") as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"src/{r}": d for r, d in files.items()}
