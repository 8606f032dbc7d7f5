"""The object-storage steps against a real S3 API (moto's server): s3-upload,
s3-download, s3-list, through recipes and the command line."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import snapshot
from fixtures.s3server import S3Server, free_port

MiB = 1 << 20


def recipe(tmp_path: Path, s3: S3Server, steps: str, extra: str = "") -> Path:
    """A recipe whose steps may use ``{{ vars.endpoint }}``; ``extra`` adds top-level keys."""
    path = tmp_path / "recipe.yaml"
    head = f"recipe: s3-test\nvars:\n  endpoint: {s3.endpoint}\n{extra}\nsteps:\n"
    body = "\n".join("  " + line for line in steps.strip().splitlines())
    path.write_text(head + body + "\n")
    return path


def upload_recipe(tmp_path: Path, s3: S3Server, bucket: str, **with_: Any) -> Path:
    params = {"sources": "data", "base": ".", "to": f"s3://{bucket}/coll", **with_}
    return recipe(
        tmp_path,
        s3,
        f"""
- id: up
  uses: s3-upload
  with: {json.dumps(params)}
""".replace('"ENDPOINT"', '"{{ vars.endpoint }}"'),
        extra="outputs: {etags: '{{ steps.up.outputs.etags }}', sha256: '{{ steps.up.outputs.sha256 }}'}",
    )


def data_tree(tmp_path: Path) -> dict[str, bytes]:
    """A small tree: nested folders, an empty file and a 12 MiB file (multipart at 5 MiB)."""
    files = {
        "data/series1/folder1/img001.tif": os.urandom(3000),
        "data/series1/folder1/img002.tif": b"",
        "data/series2/notes.txt": b"hello\n",
        "data/big.bin": os.urandom(12 * MiB),
    }
    for rel, content in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(content)
    return files


def multipart_etag(data: bytes, part: int) -> str:
    digests = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def objects(s3: S3Server, bucket: str) -> dict[str, dict[str, Any]]:
    page = s3.client().list_objects_v2(Bucket=bucket)
    return {o["Key"]: o for o in page.get("Contents", [])}


def effects(out: str) -> list[dict[str, Any]]:
    return [e for step in json.loads(out)["steps"] for e in step["effects"]]


def test_upload_tree_key_layout_and_etags(cli, tmp_path: Path, s3: S3Server, bucket: str) -> None:
    files = data_tree(tmp_path)
    path = upload_recipe(
        tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB", sha256=True
    )
    done = cli(path, "--json")
    assert done.code == 0, done.err
    stored = objects(s3, bucket)
    assert sorted(stored) == sorted("coll/" + rel for rel in files)
    client = s3.client()
    for rel, content in files.items():
        key = "coll/" + rel
        assert stored[key]["Size"] == len(content)
        want = multipart_etag(content, 5 * MiB) if len(content) >= 5 * MiB else None
        assert stored[key]["ETag"].strip('"') == (want or hashlib.md5(content).hexdigest())
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["sha256"] == hashlib.sha256(content).hexdigest()
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == content
    assert stored["coll/data/big.bin"]["ETag"].endswith('-3"')
    outputs = json.loads(done.out)["outputs"]
    assert outputs["etags"] == {
        f"s3://{bucket}/{k}": o["ETag"].strip('"') for k, o in sorted(stored.items())
    }
    assert outputs["sha256"][f"s3://{bucket}/coll/data/big.bin"] == (
        hashlib.sha256(files["data/big.bin"]).hexdigest()
    )
    assert {e["path"]: e["bytes"] for e in effects(done.out)} == {
        f"s3://{bucket}/coll/{rel}": len(c) for rel, c in files.items()
    }


def test_dry_run_equals_real_run_and_second_run_is_unchanged(
    cli, tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    data_tree(tmp_path)
    path = upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB")
    before = snapshot(tmp_path)
    dry = cli(path, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert objects(s3, bucket) == {} and snapshot(tmp_path) == before
    real = cli(path, "--json")
    assert real.code == 0, real.err
    assert effects(dry.out) == effects(real.out) and len(effects(real.out)) == 4
    again = cli(path, "--json")
    assert again.code == 0 and effects(again.out) == []
    assert json.loads(again.out)["status"] == "ok"
    # One changed file is the only upload; a dry run says so too.
    (tmp_path / "data/series2/notes.txt").write_bytes(b"HELLO\n")
    dry = cli(path, "--dry-run", "--json")
    real = cli(path, "--json")
    assert (
        effects(dry.out)
        == effects(real.out)
        == [
            {
                "op": "upload",
                "path": f"s3://{bucket}/coll/data/series2/notes.txt",
                "bytes": 6,
                "source": str(tmp_path / "data/series2/notes.txt"),
            }
        ]
    )


def test_object_uploaded_with_other_part_size_is_unchanged_by_sha256(
    cli, tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    data_tree(tmp_path)
    first = upload_recipe(
        tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB", sha256=True
    )
    assert cli(first).code == 0
    second = upload_recipe(
        tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="6MiB", sha256=True
    )
    again = cli(second, "--json")
    assert again.code == 0 and effects(again.out) == []


def test_failed_part_leaves_no_object_and_aborts_the_upload(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3.exceptions import S3ClientError
    from moto.s3.models import S3Backend

    data_tree(tmp_path)
    real_upload_part = S3Backend.upload_part

    def failing_part(self: Any, bucket_name: str, multipart_id: str, part_id: int, value: Any):
        if int(part_id) == 2:
            raise S3ClientError("InjectedFailure", "injected failure of part 2")
        return real_upload_part(self, bucket_name, multipart_id, part_id, value)

    monkeypatch.setattr(S3Backend, "upload_part", failing_part)
    path = upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB")
    done = cli(path)
    assert done.code == 1
    [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
    assert "step 'up'" in line and f"s3://{bucket}/coll/data/big.bin" in line
    assert "injected failure of part 2" in line
    assert "coll/data/big.bin" not in objects(s3, bucket)
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("carried_out", [True, False])
def test_a_failed_completion_counts_only_if_the_store_carried_it_out(
    cli,
    tmp_path: Path,
    s3: S3Server,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    carried_out: bool,
) -> None:
    """A completion whose reply is lost (a read timeout on a big object, then a
    retry that finds the upload gone) leaves the object in place: the step
    checks it (size and multipart ETag) and succeeds. One that really failed
    still fails, with no object and no upload left."""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.models import S3Backend

    files = data_tree(tmp_path)
    real_complete = S3Backend.complete_multipart_upload

    def lost_reply(self: Any, bucket_name: str, multipart_id: str, body: Any) -> Any:
        if carried_out:
            real_complete(self, bucket_name, multipart_id, body)
        raise S3ClientError("InjectedLostReply", "injected loss of the completion's reply")

    monkeypatch.setattr(S3Backend, "complete_multipart_upload", lost_reply)
    path = upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB")
    done = cli(path)
    stored = objects(s3, bucket)
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    if carried_out:
        assert done.code == 0, done.err
        want = multipart_etag(files["data/big.bin"], 5 * MiB)
        assert stored["coll/data/big.bin"]["ETag"].strip('"') == want
        body = s3.client().get_object(Bucket=bucket, Key="coll/data/big.bin")["Body"].read()
        assert body == files["data/big.bin"]
    else:
        assert done.code == 1
        [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
        assert "injected loss of the completion's reply" in line
        assert "coll/data/big.bin" not in stored


def test_a_failed_completion_does_not_take_an_object_of_other_bytes(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object found after a failed completion has the right size but other
    bytes (another writer's): the step fails and the object is not taken."""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.models import S3Backend

    files = data_tree(tmp_path)
    other = bytes(len(files["data/big.bin"]))

    def someone_else_wrote(self: Any, bucket_name: str, multipart_id: str, body: Any) -> Any:
        s3.client().put_object(Bucket=bucket, Key="coll/data/big.bin", Body=other)
        raise S3ClientError("InjectedLostReply", "injected loss of the completion's reply")

    monkeypatch.setattr(S3Backend, "complete_multipart_upload", someone_else_wrote)
    path = upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB")
    done = cli(path)
    assert done.code == 1
    assert "injected loss of the completion's reply" in done.err


def journal_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_wrong_key_from_settings_is_one_line_without_the_secret(
    cli, tmp_path: Path, s3: S3Server, bucket: str, wsrun_home: Path
) -> None:
    data_tree(tmp_path)
    secret = "wr0ngSecretValue/ShouldNeverBePrinted"
    path = recipe(
        tmp_path,
        s3,
        f"""
- id: up
  uses: s3-upload
  with:
    sources: data
    to: s3://{bucket}/coll
    endpoint_url: "{{{{ vars.endpoint }}}}"
    credentials: {{access_key_id_setting: s3_key, secret_access_key_setting: s3_secret}}
""",
        extra="settings: {s3_key: test.s3.accessKeyId, s3_secret: {name: test.s3.secretAccessKey, secret: true}}",
    )
    for key_id, code in (
        (s3.key_id, "SignatureDoesNotMatch"),
        ("AKIANOSUCHKEY", "InvalidAccessKeyId"),
    ):
        done = cli(
            path,
            "--set",
            f"test.s3.accessKeyId={key_id}",
            "--set",
            f"test.s3.secretAccessKey={secret}",
        )
        assert done.code == 1
        [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
        assert "step 'up'" in line and f"s3://{bucket}/coll" in line and code in line, line
        assert "access denied" in line
        assert secret not in done.out + done.err
    shown = cli("runs", "--json")
    assert secret not in shown.out + shown.err
    assert secret.encode() not in journal_bytes(wsrun_home)
    # The right key and secret through the same settings work.
    done = cli(
        path,
        "--set",
        f"test.s3.accessKeyId={s3.key_id}",
        "--set",
        f"test.s3.secretAccessKey={s3.secret}",
    )
    assert done.code == 0, done.err
    assert s3.secret not in done.out + done.err
    assert s3.secret.encode() not in journal_bytes(wsrun_home)


def test_wrong_key_in_the_environment(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_tree(tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envSecretThatIsWrong")
    path = upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT")
    done = cli(path, "--dry-run")
    assert done.code == 1
    [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
    assert "SignatureDoesNotMatch" in line and "envSecretThatIsWrong" not in done.out + done.err


def test_unknown_bucket_and_unreachable_endpoint(cli, tmp_path: Path, s3: S3Server) -> None:
    data_tree(tmp_path)
    path = upload_recipe(tmp_path, s3, "no-such-bucket-here", endpoint_url="ENDPOINT")
    done = cli(path)
    [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
    assert done.code == 1 and "step 'up'" in line
    assert "s3://no-such-bucket-here/coll: no such bucket" in line
    nowhere = f"http://127.0.0.1:{free_port()}"
    path = upload_recipe(tmp_path, s3, "any-bucket", endpoint_url=nowhere, retries=1)
    done = cli(path)
    [line] = [x for x in done.err.splitlines() if x.startswith("error:")]
    assert done.code == 1 and "step 'up'" in line and "s3://any-bucket/coll" in line
    assert f"cannot reach the store at {nowhere}" in line
    assert s3.secret not in done.out + done.err


def test_download_round_trip_list_and_unchanged(
    cli, tmp_path: Path, s3: S3Server, bucket: str
) -> None:
    files = data_tree(tmp_path)
    assert (
        cli(upload_recipe(tmp_path, s3, bucket, endpoint_url="ENDPOINT", part_size="5MiB")).code
        == 0
    )
    path = recipe(
        tmp_path,
        s3,
        f"""
- id: ls
  uses: s3-list
  with: {{prefix: "s3://{bucket}/coll/data/", endpoint_url: "{{{{ vars.endpoint }}}}"}}
- id: tifs
  uses: s3-list
  with: {{prefix: "s3://{bucket}/coll/data", match: "*.tif", endpoint_url: "{{{{ vars.endpoint }}}}"}}
- id: down
  uses: s3-download
  with:
    sources: "s3://{bucket}/coll/data/"
    to: restored
    part_size: 5MiB
    endpoint_url: "{{{{ vars.endpoint }}}}"
""",
        extra="outputs: {listed: '{{ steps.ls.outputs.objects }}', tifs: '{{ steps.tifs.outputs.keys }}', files: '{{ steps.down.outputs.files }}'}",
    )
    before = snapshot(tmp_path)
    dry = cli(path, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before
    done = cli(path, "--json")
    assert done.code == 0, done.err
    assert effects(dry.out) == effects(done.out)
    assert [e["op"] for e in effects(done.out)].count("create_file") == len(files)
    outputs = json.loads(done.out)["outputs"]
    stored = objects(s3, bucket)
    assert outputs["listed"] == [
        {
            "url": f"s3://{bucket}/{key}",
            "key": key.removeprefix("coll/data/"),
            "size": o["Size"],
            "etag": o["ETag"].strip('"'),
        }
        for key, o in sorted(stored.items())
    ]
    assert outputs["tifs"] == ["series1/folder1/img001.tif", "series1/folder1/img002.tif"]
    for rel, content in files.items():
        assert (tmp_path / "restored" / rel).read_bytes() == content
    assert not [p for p in (tmp_path / "restored").rglob(".*")]
    again = cli(path, "--json")
    assert again.code == 0 and effects(again.out) == []
    # A local file that differs (same size) is fetched again.
    (tmp_path / "restored/data/series2/notes.txt").write_bytes(b"HELLO\n")
    again = cli(path, "--json")
    assert [e["path"] for e in effects(again.out)] == [
        str(tmp_path / "restored/data/series2/notes.txt")
    ]
    assert (tmp_path / "restored/data/series2/notes.txt").read_bytes() == b"hello\n"


def test_big_objects_downloaded_at_once_hold_a_bounded_number_of_ranges(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight big objects on eight workers, each fetched in ranges a few at a
    time: the ranges fetched and not yet written, over all of them, never pass
    the process's RANGES_HELD (memory stays bounded), and a cap far below what
    the workers would take still lets every object finish (no circular wait)."""
    import threading

    from wsrun.steps import s3_download

    client = s3.client()
    data = {f"big/{i}.bin": os.urandom(6 * MiB + i) for i in range(8)}
    for key, body in data.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    held, most, lock = 0, 0, threading.Lock()
    fetch, write = s3_download._range, s3_download.pwrite_all

    def counted_fetch(*args: Any) -> bytes:
        nonlocal held, most
        with lock:
            held += 1
            most = max(most, held)
        return fetch(*args)

    def counted_write(fd: int, buf: bytes, offset: int) -> None:
        nonlocal held
        write(fd, buf, offset)
        with lock:
            held -= 1

    monkeypatch.setattr(s3_download, "RANGE_SIZE", MiB)
    monkeypatch.setattr(s3_download, "_held", threading.BoundedSemaphore(3))
    monkeypatch.setattr(s3_download, "_range", counted_fetch)
    monkeypatch.setattr(s3_download, "pwrite_all", counted_write)
    path = recipe(
        tmp_path,
        s3,
        f"""
- id: down
  uses: s3-download
  with:
    sources: "s3://{bucket}/big/"
    to: restored
    workers: 8
    endpoint_url: "{{{{ vars.endpoint }}}}"
""",
    )
    done = cli(path, "-q")
    assert done.code == 0, done.err
    for key, body in data.items():
        assert (tmp_path / "restored" / key).read_bytes() == body
    assert held == 0 and 1 < most <= 3


def test_download_refuses_content_that_does_not_match_the_etag(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.client().put_object(Bucket=bucket, Key="x/a.bin", Body=b"the real content")
    import fsspec.implementations.local  # noqa: F401
    import s3fs

    real_cat = s3fs.S3FileSystem._cat_file

    async def corrupting_cat(self: Any, path: str, **kwargs: Any) -> bytes:
        data: bytes = await real_cat(self, path, **kwargs)
        return b"T" + data[1:]

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", corrupting_cat)
    # A filesystem cached by an earlier test bound the real method when it was made.
    from wsrun.stores import objectstore

    monkeypatch.setattr(objectstore, "_s3_cache", {})
    path = recipe(
        tmp_path,
        s3,
        f"""
- id: down
  uses: s3-download
  with: {{sources: "s3://{bucket}/x/a.bin", to: out, endpoint_url: "{{{{ vars.endpoint }}}}"}}
""",
    )
    done = cli(path)
    assert done.code == 1
    assert "does not match the store's ETag" in done.err
    assert list((tmp_path / "out").iterdir()) == []


def test_any_fsspec_url(cli, tmp_path: Path, s3: S3Server) -> None:
    """Other fsspec stores: a temporary key renamed into place, unchanged on a second run."""
    files = data_tree(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    path = recipe(
        tmp_path,
        s3,
        f"""
- id: up
  uses: s3-upload
  with: {{sources: data, to: "file://{store}/coll"}}
- id: down
  uses: s3-download
  with: {{sources: "file://{store}/coll/data/", to: back}}
""",
    )
    done = cli(path, "--json")
    assert done.code == 0, done.err
    for rel, content in files.items():
        assert (store / "coll" / rel).read_bytes() == content
        assert (tmp_path / "back" / rel).read_bytes() == content
    assert not [p for p in store.rglob(".*")]
    again = cli(path, "--json")
    assert again.code == 0 and effects(again.out) == []


def test_one_s3_client_per_store_and_credentials() -> None:
    """Steps naming the same endpoint and keys share one s3fs filesystem (a client
    costs 0.3-0.9 s to open); other keys or another endpoint get their own, and
    the cache holds no key or secret in the clear."""
    from wsrun.core.fs import WorldView
    from wsrun.core.step import StepContext
    from wsrun.stores import objectstore

    def store(endpoint: str, secret: str) -> Any:
        ctx = StepContext(fs=WorldView(), settings={"key": "AKIAEXAMPLE", "secret": secret})
        params = {
            "endpoint_url": endpoint,
            "credentials": {"access_key_id_setting": "key", "secret_access_key_setting": "secret"},
        }
        return objectstore.open_store("s3://bucket/x", params, ctx)

    first = store("http://127.0.0.1:1", "s3cr3t-one")
    assert store("http://127.0.0.1:1", "s3cr3t-one").fs is first.fs
    assert store("http://127.0.0.1:1", "s3cr3t-two").fs is not first.fs
    assert store("http://127.0.0.1:2", "s3cr3t-one").fs is not first.fs
    assert not any("s3cr3t" in key for key in objectstore._s3_cache)
