"""Mutation tests: every integrity check fails when exactly its subject is corrupted.

A check that cannot fail is a defect. Each test here damages what one check
looks at (a byte of the stored copy flipped between the write and the check, a
truncated archive, a digest changed in SHA256SUMS, bytes changed in transit to
or from S3) and asserts that the check fails with a clear message and that
nothing is left behind or recorded as good.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fixtures import processing, staging
from fixtures.s3server import S3Server
from wsrun.core.step import StepError
from wsrun.stores.archive.content import ArchiveError, LocalContent
from wsrun.stores.archive.store import Archive, ArchiveStore
from wsrun.testing import run_step

MiB = 1 << 20
ROOT_SETTING = "edu.nrao.workspaces.ProcessingSettings.rootDirectory"
CAL_LOCATOR = "uid://evla/calibration/0d8f6a51-7f34-4c55-9c0e-8e2d5bbf4a10"


def flip(path: Path, offset: int | None = None) -> None:
    """Flip one bit of the byte at ``offset`` (default: the middle) of ``path``."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))


def error_line(err: str) -> str:
    """The one error line a failed run prints."""
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    return line


def archive_holds(url: str) -> tuple[list[str], list[str]]:
    """(product locators, stored blobs) of the archive at ``url``; empty if there is none."""
    try:
        archive = ArchiveStore.open(url, create=False)
    except ArchiveError:
        return [], []
    assert isinstance(archive, Archive)
    try:
        return [p.locator for p in archive.products()], sorted(archive.content.blobs())
    finally:
        archive.close()


# ---- ingest: tar and tgz products are read through -----------------------------------


def test_staging_refuses_a_random_file_named_caltables(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    proc = processing.vla_calibration(tmp_path).root
    tables = proc / "products" / f"unknown.{processing.SESSION}.caltables.tgz"
    tables.write_bytes(os.urandom(5000))
    ws = tmp_path / "ws"
    args = ["nrao/ingest_envoy", "--calibration", proc, "--set", f"{ROOT_SETTING}={ws}"]
    dry = cli(*args, "--dry-run")
    assert dry.code == 1 and error_line(dry.err) and not ws.exists()
    r = cli(*args)
    assert r.code == 1
    line = error_line(r.err)
    assert "step 'stage'" in line and str(tables) in line
    assert "cannot be staged: not a tar archive" in line
    stage = ws / "staging" / "calibration-calibration"
    assert not stage.exists() or not any(p.name.endswith(".tar") for p in stage.iterdir())
    assert archive_holds(str(wsrun_home / "archive")) == ([], [])


def test_staging_refuses_a_truncated_pipeline_weblog(cli, tmp_path: Path, wsrun_home: Path) -> None:
    proc = processing.vla_calibration(tmp_path).root
    shutil.rmtree(proc / "working" / "pipeline-20190530T120000")  # stage products/weblog.tgz
    weblog = proc / "products" / "weblog.tgz"
    weblog.write_bytes(weblog.read_bytes()[: weblog.stat().st_size // 2])
    ws = tmp_path / "ws"
    r = cli("nrao/ingest_envoy", "--calibration", proc, "--set", f"{ROOT_SETTING}={ws}")
    assert r.code == 1
    line = error_line(r.err)
    assert str(weblog) in line and "truncated" in line
    assert archive_holds(str(wsrun_home / "archive")) == ([], [])


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _inner_tgz_flipped(path: Path) -> None:
    """A tar whose member (a tgz, as the pipeline's caltables) has one byte flipped."""
    inner = bytearray(staging.tar_of({"table.dat": os.urandom(20000)}, gz=True))
    inner[len(inner) // 2] ^= 0x01
    path.write_bytes(staging.tar_of({"unknown.session_1.caltables.tgz": bytes(inner)}))


TAR_DAMAGE = {
    "random 5 KB file as caltables": (
        lambda stage: (stage / "19A-001_sb1_eb2.ms.calapply.tar").write_bytes(os.urandom(5000)),
        "19A-001_sb1_eb2.ms.calapply.tar",
        "not a tar archive",
    ),
    "weblog.tgz truncated": (
        lambda stage: _truncate(stage / "weblog.tgz", (stage / "weblog.tgz").stat().st_size - 10),
        "weblog.tgz",
        "truncated",
    ),
    "tar cut at a member boundary": (
        lambda stage: _truncate(stage / "ingestion_artifacts_2026_11_23.tar", 512 + 3072),
        "ingestion_artifacts_2026_11_23.tar",
        "truncated",
    ),
    "a damaged tgz inside the caltables tar": (
        lambda stage: _inner_tgz_flipped(stage / "19A-001_sb1_eb2.ms.calapply.tar"),
        "19A-001_sb1_eb2.ms.calapply.tar",
        "member unknown.session_1.caltables.tgz: damaged compressed data (CRC check failed",
    ),
}


@pytest.mark.parametrize("damage", list(TAR_DAMAGE))
def test_ingest_reads_every_tar_product_through(tmp_path: Path, damage: str) -> None:
    corrupt, name, reason = TAR_DAMAGE[damage]
    stage = tmp_path / "cal"
    manifest = staging.calibration(stage)
    url = f"sqlite://{tmp_path}/archive"
    corrupt(stage)
    with pytest.raises(StepError) as refused:
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert refused.value.path == str(stage / name)
    assert "cannot be ingested: " in refused.value.message and reason in refused.value.message
    assert "\n" not in str(refused.value)
    assert archive_holds(url) == ([], [])  # all or nothing: not even the good files


def test_ingest_reads_a_zip_product_through(tmp_path: Path) -> None:
    """An ALMA weblog is a zip: a member with a flipped byte fails its CRC."""
    import zipfile

    stage = tmp_path / "cache"
    stage.mkdir()
    weblog = stage / "weblog-X1-2026.zip"
    with zipfile.ZipFile(weblog, "w", zipfile.ZIP_STORED) as z:
        z.writestr("html/index.html", os.urandom(4000))
    manifest = staging.write_manifest(
        stage,
        {
            "parameters": {"telescope": "ALMA", "ingestion_path": str(stage)},
            "output_group": {
                "science_products": [{"type": "pipeline_weblog", "filename": weblog.name}]
            },
        },
    )
    url = f"sqlite://{tmp_path}/archive"
    flip(weblog, 1000)  # inside the stored member's data
    with pytest.raises(StepError) as refused:
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert refused.value.path == str(weblog)
    assert "member html/index.html fails its CRC check" in refused.value.message
    assert archive_holds(url) == ([], [])
    weblog.write_bytes(weblog.read_bytes()[:-30])  # cut off: no central directory
    with pytest.raises(StepError, match="not a whole zip archive"):
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))


# ---- ingest: an image needs its calibration; the telescope must be known ---------------


def _image_area(root: Path) -> Path:
    """A pre-staged image area without a manifest (ingest_envoy writes it)."""
    staging.image(root, CAL_LOCATOR).unlink()
    return root


def test_image_ingest_without_calibration_locator_is_refused(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    stage = _image_area(tmp_path / "img")
    r = cli("nrao/ingest_envoy", "--image", stage)
    assert r.code == 1
    line = error_line(r.err)
    assert "no calibration locator" in line and str(stage) in line
    assert "--input" in line and "--without-calibration" in line
    assert not (stage / "ingestion-manifest.json").exists()
    assert archive_holds(str(wsrun_home / "archive")) == ([], [])
    # The generic step refuses too, naming its own option.
    with pytest.raises(StepError, match="set without_calibration"):
        run_step("ingestion-manifest", {"ingestion_path": str(stage), "kind": "image"}, "/")
    # Asked for explicitly, the image goes in without an input.
    r = cli("nrao/ingest_envoy", "--image", stage, "--without-calibration", "--json")
    assert r.code == 0, r.err
    manifest = json.loads((stage / "ingestion-manifest.json").read_text())
    assert "input_group" not in manifest
    # With the locator given, its provenance is recorded.
    other = _image_area(tmp_path / "img2")
    r = cli("nrao/ingest_envoy", "--image", other, "--input", CAL_LOCATOR, "--json")
    assert r.code == 0, r.err
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    [locator, _] = json.loads(r.out)["outputs"]["locators"]
    assert archive.product(locator).inputs == [CAL_LOCATOR]  # type: ignore[union-attr]


def test_unknown_telescope_is_refused(cli, tmp_path: Path, wsrun_home: Path) -> None:
    stage = tmp_path / "eb-1"
    staging.observation_area(stage)
    r = cli("nrao/ingest_envoy", "--observation", stage, "FOOSCOPE")
    assert r.code == 1
    line = error_line(r.err)
    assert "unknown telescope 'FOOSCOPE' (known: ALMA, EVLA, GBT, VLA, VLBA)" in line
    assert not (stage / "ingestion-manifest.json").exists()
    assert archive_holds(str(wsrun_home / "archive")) == ([], [])
    # A manifest written by hand is checked by the ingest step itself.
    manifest = staging.observation(tmp_path / "hand")
    data = json.loads(manifest.read_text())
    data["parameters"]["telescope"] = "FOOSCOPE"
    manifest.write_text(json.dumps(data))
    url = f"sqlite://{tmp_path}/archive"
    with pytest.raises(StepError, match=r"unknown telescope 'FOOSCOPE' \(known: ALMA"):
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert archive_holds(url) == ([], [])
    # Any case of a known one is accepted.
    r = cli("nrao/ingest_envoy", "--observation", stage, "vlba", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"]["locators"][0].startswith("uid://vlba/execution_block/")


def test_changed_reingest_names_the_option_the_user_has(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    args = staging.envoy_calibration_case(tmp_path)
    first = cli(*args, "--json")
    assert first.code == 0, first.err
    [old] = json.loads(first.out)["outputs"]["locators"]
    weblog = tmp_path / "staging" / "cal-1" / "weblog.tgz"
    weblog.write_bytes(staging.tar_of({"index.html": b"a newer weblog"}, gz=True))
    refused = cli(*args)
    assert refused.code == 1
    line = error_line(refused.err)
    assert f"already ingested as {old} with other content" in line
    assert "run again with --reingest to replace it" in line
    again = cli(*args, "--reingest", "--json")
    assert again.code == 0, again.err
    [new] = json.loads(again.out)["outputs"]["locators"]
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    assert archive.product(old) is None and archive.product(new) is not None


def test_reingest_refused_at_commit_names_the_option_too(tmp_path: Path) -> None:
    """Another run ingests the same products between this run's plan and its
    commit: the archive refuses, and the message still names the user's option."""
    from wsrun.core.fs import WorldView
    from wsrun.core.step import StepContext, load_step

    manifest = staging.calibration(tmp_path / "cal")
    url = f"sqlite://{tmp_path}/archive"
    params = {"manifest": str(manifest), "archive": url, "reingest_hint": "run again with --x"}
    step = load_step("ingest")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), step_id="ingest")
    stale = step.plan(params, ctx)
    _, other = run_step("ingest", params, str(tmp_path))
    with pytest.raises(StepError) as refused:
        step.apply(stale, ctx)
    [locator] = other.outputs["locators"]
    assert f"is already ingested as {locator}; run again with --x to replace it" in str(
        refused.value
    )
    assert archive_holds(url)[0] == [p["locator"] for p in other.outputs["products"]]


# ---- the archive: write check, verify, get ---------------------------------------------


def _corrupting_copy(monkeypatch: pytest.MonkeyPatch, size: int) -> list[str]:
    """Make every copy of ``size`` bytes into the archive land with one byte
    flipped, after the writer wrote it and before the check reads it; the
    paths it damaged."""
    from wsrun.core import filecopy

    real = filecopy.copy_file
    damaged: list[str] = []

    def copy_file(source: str, dest: str, *args: Any, **kwargs: Any) -> Any:
        digest = real(source, dest, *args, **kwargs)
        if os.path.getsize(dest) == size:
            flip(Path(dest))
            damaged.append(dest)
        return digest

    monkeypatch.setattr(filecopy, "copy_file", copy_file)
    return damaged


@pytest.mark.parametrize("size", [3000, 2 * MiB, 5 * MiB], ids=["small", "mapped", "overlapped"])
def test_archive_write_check_catches_a_flipped_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """Every size takes its own path through the copy (read/write, kernel copy,
    kernel copy with the source hashed on a second thread)."""
    stage = tmp_path / "obs"
    manifest = staging.observation(stage)
    sdm = next(p for p in stage.iterdir() if p.is_dir())
    (sdm / "ASDMBinary" / "uid___evla_bdf_1").write_bytes(os.urandom(size))
    assert size not in [p.stat().st_size for p in stage.rglob("*.xml")]
    url = f"sqlite://{tmp_path}/archive"
    damaged = _corrupting_copy(monkeypatch, size)
    with pytest.raises(StepError, match="checksum mismatch after copying into the archive"):
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert damaged
    assert archive_holds(url) == ([], [])
    assert os.listdir(tmp_path / "archive" / "tmp") == []


def test_archive_write_check_on_s3_catches_a_flipped_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3: S3Server, bucket: str
) -> None:
    from wsrun.stores.archive import content as archive_content

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    url = f"sqlite://{tmp_path}/archive?files=s3://{bucket}/archive"
    real = archive_content.stored_sha256
    damaged: list[str] = []

    def corrupt_then_check(fs: Any, path: str) -> str:
        """The object the writer just stored loses a bit; then the real check reads it."""
        data = bytearray(fs.cat_file(path))
        data[len(data) // 2] ^= 0x01
        fs.pipe_file(path, bytes(data))
        damaged.append(path)
        return real(fs, path)

    monkeypatch.setattr(archive_content, "stored_sha256", corrupt_then_check)
    manifest = staging.calibration(tmp_path / "cal")
    with pytest.raises(StepError, match="checksum mismatch after copying into the archive"):
        run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert damaged
    assert archive_holds(url) == ([], [])
    keys = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert keys == []  # neither the content nor the unverified copy in tmp/


def _ingested(tmp_path: Path, url: str) -> tuple[Archive, str]:
    _, result = run_step(
        "ingest", {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url}, "/"
    )
    archive = ArchiveStore.open(url)
    assert isinstance(archive, Archive) and isinstance(archive.content, LocalContent)
    return archive, result.outputs["locators"][0]


def test_archive_verify_finds_flipped_truncated_and_missing_content(cli, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/archive"
    archive, locator = _ingested(tmp_path, url)
    assert cli("archive", "verify", "--archive", url).code == 0
    record = archive.product(locator)
    assert record is not None
    [table] = record.files
    blob = Path(archive.content.blob_path(table.sha256))  # type: ignore[attr-defined]
    good = blob.read_bytes()
    for damage, issue in (
        (lambda: flip(blob), "checksum mismatch"),
        (lambda: _truncate(blob, len(good) - 1), "size mismatch"),
        (lambda: blob.unlink(), "missing"),
    ):
        damage()
        r = cli("archive", "verify", "--archive", url)
        assert r.code == 1
        assert f"{locator}: {table.name}: {issue}" in r.out
        assert "1 problems" in r.out
        blob.write_bytes(good)
        assert cli("archive", "verify", "--archive", url).code == 0


def test_archive_get_refuses_content_that_fails_its_checksum(cli, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/archive"
    archive, locator = _ingested(tmp_path, url)
    [table] = archive.product(locator).files  # type: ignore[union-attr]
    flip(Path(archive.content.blob_path(table.sha256)))  # type: ignore[attr-defined]
    out = tmp_path / "out"
    out.mkdir()
    r = cli("archive", "get", locator, out, "--archive", url)
    assert r.code == 1
    assert f"{table.name}: stored file {table.sha256} fails its checksum" in r.err
    assert list(out.iterdir()) == []  # neither the file nor its temporary copy


# ---- SHA256SUMS of deliveries --------------------------------------------------------


def sha256sum_check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"],
        cwd=directory,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_delivered_sha256sums_fail_on_a_corrupted_file_or_digest(
    cli, tmp_path: Path, tar: bool
) -> None:
    p = processing.vla_calibration(tmp_path / "spool")
    out = tmp_path / "out"
    r = cli("nrao/deliver", p.root, "-l", out, *(["-t"] if tar else []))
    assert r.code == 0, r.err
    assert sha256sum_check(out).returncode == 0
    sums = (out / "SHA256SUMS").read_text()
    first = sums.splitlines()[0]
    digest, name = first.split("  ", 1)
    # A delivered file with one byte flipped.
    target = out / name
    good = target.read_bytes()
    flip(target)
    check = sha256sum_check(out)
    assert check.returncode == 1 and f"{name}: FAILED" in check.stdout
    target.write_bytes(good)
    assert sha256sum_check(out).returncode == 0
    # A digest changed in the list.
    other = format(int(digest, 16) ^ 1, "064x")
    (out / "SHA256SUMS").write_text(sums.replace(first, f"{other}  {name}"))
    check = sha256sum_check(out)
    assert check.returncode == 1 and f"{name}: FAILED" in check.stdout


def test_checksum_step_list_fails_on_a_corrupted_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
    run_step("checksum", {"paths": str(data), "to": str(data / "SHA256SUMS")}, str(tmp_path))
    assert sha256sum_check(data).returncode == 0
    flip(data / "f1.bin")
    check = sha256sum_check(data)
    assert check.returncode == 1 and "f1.bin: FAILED" in check.stdout


# ---- S3: the ETag check of uploads, the download check ----------------------------------


def _upload_recipe(tmp_path: Path, s3: S3Server, bucket: str, **extra: Any) -> Path:
    params = {"sources": "data", "base": ".", "to": f"s3://{bucket}/coll", **extra}
    path = tmp_path / "up.yaml"
    path.write_text(
        f"recipe: up\nsteps:\n  - id: up\n    uses: s3-upload\n"
        f"    with: {json.dumps({**params, 'endpoint_url': s3.endpoint})}\n"
    )
    return path


def _keys(s3: S3Server, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_s3_upload_etag_check_fails_when_the_store_keeps_other_bytes(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server accepts the body (its Content-MD5 matched) but stores other
    bytes; the ETag it reports is theirs, and the upload must fail."""
    from moto.s3.models import S3Backend

    real = S3Backend.put_object

    def keeps_other_bytes(self: Any, bucket_name: str, key_name: str, value: bytes, **kw: Any):
        if kw.get("multipart") is None and value:
            value = bytes([value[0] ^ 0x01]) + value[1:]
        return real(self, bucket_name, key_name, value, **kw)

    monkeypatch.setattr(S3Backend, "put_object", keeps_other_bytes)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(os.urandom(3000))
    r = cli(_upload_recipe(tmp_path, s3, bucket))
    assert r.code == 1
    line = error_line(r.err)
    assert f"s3://{bucket}/coll/data/a.bin" in line and "the store reports ETag" in line
    assert "the object was removed" in line
    assert _keys(s3, bucket) == []


def test_s3_upload_part_etag_check_fails_on_a_part_changed_in_transit(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3.models import S3Backend

    real = S3Backend.upload_part

    def changed_part(self: Any, bucket_name: str, multipart_id: str, part_id: int, value: Any):
        if int(part_id) == 2:
            value = bytes([value[0] ^ 0x01]) + value[1:]
        return real(self, bucket_name, multipart_id, part_id, value)

    monkeypatch.setattr(S3Backend, "upload_part", changed_part)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(os.urandom(11 * MiB))
    r = cli(_upload_recipe(tmp_path, s3, bucket, part_size="5MiB"))
    assert r.code == 1
    line = error_line(r.err)
    assert "part 2" in line and "the store reports ETag" in line
    assert _keys(s3, bucket) == []
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_s3_download_check_fails_on_bytes_changed_in_transit(
    cli, tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    from wsrun.stores import objectstore

    content = os.urandom(4000)
    s3.client().put_object(Bucket=bucket, Key="x/a.bin", Body=content)
    real_cat = s3fs.S3FileSystem._cat_file
    changed = []

    async def changed_in_transit(self: Any, path: str, **kwargs: Any) -> bytes:
        data = bytearray(await real_cat(self, path, **kwargs))
        data[100] ^= 0x01
        changed.append(path)
        return bytes(data)

    # the step's one way of fetching an object's bytes (ranges of a big one)
    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", changed_in_transit)
    monkeypatch.setattr(objectstore, "_s3_cache", {})  # no filesystem made before the patch
    recipe = tmp_path / "down.yaml"
    recipe.write_text(
        "recipe: down\nsteps:\n  - id: down\n    uses: s3-download\n    with: "
        + json.dumps(
            {"sources": f"s3://{bucket}/x/a.bin", "to": "out", "endpoint_url": s3.endpoint}
        )
        + "\n"
    )
    r = cli(recipe)
    assert changed, "the download no longer goes through _cat_file: nothing was changed"
    assert r.code == 1
    line = error_line(r.err)
    etag = hashlib.md5(content).hexdigest()
    assert f"s3://{bucket}/x/a.bin" in line and f"does not match the store's ETag {etag}" in line
    assert list((tmp_path / "out").iterdir()) == []


def test_fsspec_upload_read_back_check_catches_a_flipped_byte(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other fsspec stores: the temporary key is read back before it is renamed."""
    from fsspec.implementations.local import LocalFileSystem

    real_open = LocalFileSystem._open

    def open_damaged(self: Any, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if mode == "rb" and ".wsrun-tmp" in path:
            flip(Path(path))  # between the write and the read-back
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", open_damaged)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.bin").write_bytes(os.urandom(3000))
    store = tmp_path / "store"
    store.mkdir()
    recipe = tmp_path / "up.yaml"
    recipe.write_text(
        "recipe: up\nsteps:\n  - id: up\n    uses: s3-upload\n    with: "
        + json.dumps({"sources": "data", "to": f"file://{store}/coll"})
        + "\n"
    )
    r = cli(recipe)
    assert r.code == 1
    assert "the store holds MD5" in error_line(r.err)
    assert [p for p in store.rglob("*") if p.is_file()] == []
