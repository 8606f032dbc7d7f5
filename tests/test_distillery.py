"""The Distillery recipes (engine/wsrun/packs/distillery/recipes/) end to end through the CLI: a
collection in the fake ArchivesSpace, generated TIFF folders, moto's S3 server,
an Islandora staging area with a fake drush, and the alchemist under a real
``wsrun worker`` process."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import as_planned as written_as_planned
from conftest import snapshot
from fixtures.distillery import COLLECTION, IMAGES, KEYS, PROFILE, RECIPES, Site, make_site, tiff
from fixtures.fake_archivesspace import Received
from fixtures.jp2 import decode_pnm, need_opj_decompress

ALL_IMAGES = sorted(i for images in IMAGES.values() for i in images)


@pytest.fixture
def site(tmp_path: Path, archivesspace: Any, s3: Any, bucket: str) -> Site:
    return make_site(tmp_path / "site", archivesspace, s3, bucket)


def run(cli: Any, recipe: str, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a Distillery recipe with the site's profile: (exit code, --json report, stderr)."""
    result = cli(f"distillery/{recipe}", *args, "--profile", PROFILE, "--json")
    report = json.loads(result.out) if result.out.strip() else {}
    return result.code, report, result.err


def effects(report: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(s["id"], s["effects"]) for s in report["steps"]]


def changes(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for _, es in effects(report) for e in es]


def rel(image: str) -> str:
    """An image's path relative to its area: <collection>/<folder>/<image>.tif."""
    return f"{COLLECTION}/{image.rsplit('_', 1)[0]}/{image}.tif"


def as_planned(effect: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    """The real effect without a size the dry run cannot know: an upload or rsync
    copy of an image an earlier step of the same run encodes. The real run's later
    step plans against the written file, so it knows the size (a core limit:
    wsrun's real runs do not yet remember which sizes were unknown when planned)."""
    if effect["op"] == "create_file":
        return written_as_planned(effect, planned)
    if "bytes" in planned or effect["op"] != "upload":
        return effect
    return {k: v for k, v in effect.items() if k != "bytes"}


def faithful_run(cli: Any, site: Site, recipe: str, *args: str) -> dict[str, Any]:
    """A dry run that writes nothing, then the real run with the same effects
    (records, state, commands and files exactly; see ``as_planned`` for sizes)."""
    before = snapshot(site.root)
    writes = len(site.aspace.writes())
    code, dry, err = run(cli, recipe, *args, "--dry-run")
    assert code == 0, err
    assert snapshot(site.root) == before, "a dry run must not write anything"
    assert len(site.aspace.writes()) == writes and not site.drush_calls()
    code, real, err = run(cli, recipe, *args)
    assert code == 0, err
    for (step, planned), (step2, done) in zip(effects(dry), effects(real), strict=True):
        assert step == step2
        assert [as_planned(d, p) for p, d in zip(planned, done, strict=True)] == planned, step
    assert changes(real), "the run should change something"
    return real


def assert_second_run_changes_nothing(cli: Any, site: Site, recipe: str, *args: str) -> None:
    before = (snapshot(site.root), len(site.aspace.writes()), site.objects(), site.drush_calls())
    code, again, err = run(cli, recipe, *args)
    assert code == 0, err
    assert changes(again) == []
    after = (snapshot(site.root), len(site.aspace.writes()), site.objects(), site.drush_calls())
    assert after == before


def components(site: Site) -> dict[str, dict[str, Any]]:
    return {c["component_id"]: c for c in site.aspace.components()}


def digital_objects(site: Site) -> dict[str, dict[str, Any]]:
    return {d["digital_object_id"]: d for d in site.aspace.digital_objects()}


def areas(site: Site) -> tuple[list[str], list[str]]:
    """The TIFFs in the initial and in the completed area, relative to the area."""
    return tuple(  # type: ignore[return-value]
        sorted(str(p.relative_to(root)) for p in root.rglob("*.tif"))
        for root in (site.initial, site.completed)
    )


# ---- preservation ---------------------------------------------------------------


def test_preservation_masters_keys_records_and_a_second_run(cli: Any, site: Site) -> None:
    report = faithful_run(cli, site, "distill", COLLECTION)
    bucket = f"s3://{site.bucket}"
    assert report["outputs"]["preserved"] == [rel(i) for i in ALL_IMAGES]
    assert report["outputs"]["skipped"] == []
    assert report["outputs"]["objects"] == [f"{bucket}/{KEYS[i]}" for i in ALL_IMAGES]

    # The bucket holds exactly the masters under collection/series/subseries/folder/image.
    objects = site.objects()
    assert sorted(objects) == sorted(KEYS.values())
    client = site.s3.client()
    records = components(site)
    assert sorted(records) == ALL_IMAGES
    for image, key in KEYS.items():
        body = client.get_object(Bucket=site.bucket, Key=key)["Body"].read()
        md5 = hashlib.md5(body).hexdigest()
        # ETag and MD5 agree, and the object is the local master byte for byte.
        assert objects[key]["ETag"].strip('"') == md5
        local = site.work / "preservation" / key
        assert local.read_bytes() == body
        assert objects[key]["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
        # Lossless: the master decodes to exactly the TIFF's pixels.
        source = site.completed / rel(image)
        with Image.open(io.BytesIO(body)) as master, Image.open(source) as original:
            assert master.format == "JPEG2000"
            assert master.tobytes() == original.tobytes()
        assert b"<dc:identifier>" in body and image.encode() in body  # metadata embedded
        # The component records the master: URL, MD5, size, format.
        (version,) = records[image]["file_versions"]
        assert version["file_uri"] == f"{bucket}/{key}"
        assert version["use_statement"] == "master"
        assert (version["checksum"], version["checksum_method"]) == (md5, "md5")
        assert version["file_size_bytes"] == len(body)
        assert version["file_format_name"] == "JPEG 2000"
        assert records[image]["title"] == f"{image}.tif"

    # One digital object per folder, linked to its archival object.
    folders = digital_objects(site)
    assert sorted(folders) == sorted(IMAGES)
    for folder, record in folders.items():
        ao = site.aspace.records[site.uris[folder]]
        assert {"ref": record["uri"]} in [i["digital_object"] for i in ao["instances"]]
        for image in IMAGES[folder]:
            assert records[image]["digital_object"] == {"ref": record["uri"]}
    assert folders["MS01_001"]["title"] == "Letters to R. Millikan, 1921"

    # The sources moved to the completed area, nothing left waiting.
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])
    assert_second_run_changes_nothing(cli, site, "distill", COLLECTION)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_failing_image_is_skipped_and_the_rest_goes_on(cli: Any, site: Site) -> None:
    broken = site.initial / COLLECTION / "MS01_001" / "MS01_001_0003.tif"
    broken.write_bytes(b"II*\x00 this is not a TIFF")
    stray = tiff(site.initial / COLLECTION / "MS01_999" / "MS01_999_0001.tif", seed=9)
    code, report, err = run(cli, "distill", COLLECTION)
    assert code == 0, err
    out = report["outputs"]
    assert out["preserved"] == [rel(i) for i in ALL_IMAGES]
    skipped = {s["image"]: s for s in out["skipped"]}
    assert sorted(skipped) == [
        f"{COLLECTION}/MS01_001/MS01_001_0003.tif",
        f"{COLLECTION}/MS01_999/MS01_999_0001.tif",
    ]
    bad = skipped[f"{COLLECTION}/MS01_001/MS01_001_0003.tif"]
    assert bad["failed_step"] == "master" and "is not an image Pillow can read" in bad["error"]
    assert not bad["preserved"] and bad["url"].endswith("MS01_001/MS01_001_0003.jp2")
    lost = skipped[f"{COLLECTION}/MS01_999/MS01_999_0001.tif"]
    assert lost["failed_step"] == "metadata"
    assert "no archival object with component id MS01_999 in collection MS01" in lost["error"]
    # The failures are in the run's journal, each with its step and error.
    from wsrun.core.journal import Journal

    failed = {
        s["key"]: s["error"] for s in Journal().steps(report["run_id"]) if s["status"] == "failed"
    }
    assert sorted(failed) == ["folders[0]/images[2]/master", "folders[2]/images[0]/metadata"]
    assert "is not an image Pillow can read" in failed["folders[0]/images[2]/master"]
    # Skipped sources stay where they were; nothing of theirs reached the bucket or ArchivesSpace.
    assert broken.exists() and stray.exists()
    assert sorted(site.objects()) == sorted(KEYS.values())
    assert sorted(components(site)) == ALL_IMAGES


def test_a_48_bit_scan_keeps_16_bits_and_a_cmyk_scan_is_skipped(
    cli: Any, site: Site, tmp_path: Path
) -> None:
    """Issue 14: the master of a 3 x 16-bit RGB TIFF holds every 16-bit sample (decoded
    here by opj_decompress, not the encoder); a TIFF no master can keep exactly is
    skipped with its reason, stays in the initial area and reaches neither S3 nor
    ArchivesSpace."""
    need_opj_decompress()
    deep = site.initial / rel("MS01_001_0001")
    samples = np.random.default_rng(48).integers(0, 65536, (32, 48, 3), dtype=np.uint16)
    tifffile.imwrite(deep, samples, photometric="rgb", compression="lzw", byteorder=">")
    cmyk = site.initial / rel("MS01_001_0002")
    tifffile.imwrite(cmyk, np.full((32, 48, 4), 7, np.uint8), photometric="separated")
    code, report, err = run(cli, "distill", COLLECTION)
    assert code == 0, err
    out = report["outputs"]
    assert out["preserved"] == [rel("MS01_001_0001"), rel("MS01_002_0001")]
    [skip] = out["skipped"]
    assert skip["image"] == rel("MS01_001_0002") and skip["failed_step"] == "master"
    assert str(cmyk) in skip["error"]
    assert "cannot make a lossless master: is CMYK: JP2 has no CMYK colour space" in skip["error"]
    assert areas(site) == (
        [rel("MS01_001_0002")],
        [rel("MS01_001_0001"), rel("MS01_002_0001")],
    )
    assert sorted(site.objects()) == sorted([KEYS["MS01_001_0001"], KEYS["MS01_002_0001"]])
    assert sorted(components(site)) == ["MS01_001_0001", "MS01_002_0001"]
    body = site.s3.client().get_object(Bucket=site.bucket, Key=KEYS["MS01_001_0001"])["Body"]
    master = tmp_path / "master.jp2"
    master.write_bytes(body.read())
    decoded, bits = decode_pnm(master)
    assert bits == 16 and np.array_equal(decoded, samples)


def test_an_unknown_collection_or_an_unusable_bucket_stops_the_run(cli: Any, site: Site) -> None:
    code, report, err = run(cli, "distill", "MS99")
    assert code == 1
    assert "no resource with identifier 'MS99'" in err
    code, report, err = run(
        cli,
        "distill",
        COLLECTION,
        "--set",
        "edu.caltech.distillery.preservationBucket=s3://no-such-bucket-d2",
    )
    assert code == 1
    assert "no such bucket" in err
    assert [s["id"] for s in report["steps"]] == ["collection", "bucket"]
    assert site.aspace.writes() == [] and site.objects() == {}
    assert areas(site)[1] == []


def test_a_bucket_lost_in_the_middle_stops_the_run(cli: Any, site: Site) -> None:
    """Skip versus stop: once the bucket is gone, going on would only skip every image."""
    client = site.s3.client()

    def losing_the_bucket(request: Received) -> None:
        if request.method == "POST" and request.path.endswith("/digital_object_components"):
            for o in client.list_objects_v2(Bucket=site.bucket).get("Contents", []):
                client.delete_object(Bucket=site.bucket, Key=o["Key"])
            client.delete_bucket(Bucket=site.bucket)
        return None

    site.aspace.inject_failures(losing_the_bucket)
    code, report, err = run(cli, "distill", COLLECTION)
    assert code == 1
    assert f"s3://{site.bucket}: the preservation bucket cannot be used; stopping:" in err
    assert "no such bucket" in err
    assert sorted(components(site)) == ["MS01_001_0001"]
    assert areas(site) == ([rel("MS01_001_0002"), rel("MS01_002_0001")], [rel("MS01_001_0001")])


def test_a_master_that_cannot_be_recorded_is_deleted_again(cli: Any, site: Site) -> None:
    """No orphans: ArchivesSpace refuses one component; its master leaves the bucket."""
    fake = site.aspace

    def refusing(request: Received) -> tuple[int, str] | None:
        if (
            request.method == "POST"
            and request.path.endswith("/digital_object_components")
            and request.body.get("component_id") == "MS01_001_0002"
        ):
            return 500, "database is on fire"
        return None

    fake.inject_failures(refusing)
    code, report, err = run(cli, "distill", COLLECTION)
    assert code == 0, err
    (skipped,) = report["outputs"]["skipped"]
    assert skipped["image"] == rel("MS01_001_0002")
    assert skipped["failed_step"] == "component" and "database is on fire" in skipped["error"]
    assert skipped["orphan_removed"] is True
    assert KEYS["MS01_001_0002"] not in site.objects()
    assert sorted(site.objects()) == sorted(k for i, k in KEYS.items() if i != "MS01_001_0002")
    assert (site.initial / rel("MS01_001_0002")).exists()
    # Once ArchivesSpace works again, the next run preserves just that image.
    fake.inject_failures(None)
    code, report, err = run(cli, "distill", COLLECTION)
    assert code == 0, err
    assert report["outputs"]["preserved"] == [rel("MS01_001_0002")]
    assert sorted(site.objects()) == sorted(KEYS.values())
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])


# ---- access ------------------------------------------------------------------------


def test_access_copies_mods_ingest_and_urls(cli: Any, site: Site) -> None:
    report = faithful_run(cli, site, "islandora", COLLECTION)
    out = report["outputs"]
    assert out["published"] == [rel(i) for i in ALL_IMAGES]
    assert out["ocr"] == "skipped: tesseract is not installed"
    staged = site.staging / COLLECTION
    # One batch directory per folder, holding its book; pages numbered from 0001.
    book = staged / "MS01_001" / "MS01_001"
    assert sorted(p.name for p in book.iterdir()) == ["0001", "0002", "MODS.xml"]
    assert sorted(p.name for p in (book / "0001").iterdir()) == [
        "JPG.jpg",
        "MODS.xml",
        "OBJ.jp2",
        "TN.jpg",
    ]
    with (
        Image.open(book / "0002" / "TN.jpg") as thumb,
        Image.open(site.completed / rel("MS01_001_0002")) as page,
    ):
        assert thumb.size == page.size  # 48x32 is below every max_size
    mods = (book / "MODS.xml").read_text()
    assert "<title>Letters to R. Millikan, 1921</title>" in mods
    assert '<identifier type="local">MS01_001</identifier>' in mods
    assert '<dateCreated encoding="w3cdtf">1921</dateCreated>' in mods
    assert "<partName>Series 1: Correspondence</partName>" in mods
    assert '<extent unit="images">2</extent>' in mods
    assert "image 2</title>" in (book / "0002" / "MODS.xml").read_text()
    assert (
        "<title>Papers of Ada Example</title>" in (staged / "collection" / "MODS.xml").read_text()
    )
    # drush: preprocess, ingest of that set, PID lookup, per book.
    calls = site.drush_calls()
    assert [c[2] for c in calls] == [
        "islandora_book_batch_preprocess",
        "islandora_batch_ingest",
        "islandora_datastream_crud_fetch_pids",
    ] * 2
    assert calls[0] == [
        "--user=1",
        "--root=/var/www/drupal7",
        "islandora_book_batch_preprocess",
        "--output_set_id=TRUE",
        "--type=directory",
        "--namespace=caltech",
        f"--parent=caltech:{COLLECTION}",
        f"--scan_target={staged}/MS01_001",
    ]
    assert calls[1][3:] == ["--ingest_set=1"] and calls[4][3:] == ["--ingest_set=2"]
    # The book URLs on the folders' digital objects (created here: no preservation ran).
    base = "https://digital.archives.example.edu/islandora/object/"
    assert out["books"] == [base + "caltech:100", base + "caltech:103"]
    folders = digital_objects(site)
    assert folders["MS01_001"]["file_versions"][0]["file_uri"] == base + "caltech:100"
    assert folders["MS01_001"]["file_versions"][0]["use_statement"] == "image-service"
    assert folders["MS01_002"]["file_versions"][0]["file_uri"] == base + "caltech:103"
    assert site.objects() == {}
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])
    assert_second_run_changes_nothing(cli, site, "islandora", COLLECTION)


def test_ocr_with_tesseract_installed(
    cli: Any, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = site.bin / "tesseract"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\nopen(sys.argv[2] + '.txt', 'w').write('OCR of ' + sys.argv[1])\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{site.bin}{os.pathsep}{os.environ['PATH']}")
    code, report, err = run(cli, "islandora", COLLECTION)
    assert code == 0, err
    assert report["outputs"]["ocr"] == f"made with {fake}"
    ocr = site.staging / COLLECTION / "MS01_002" / "MS01_002" / "0001" / "OCR.txt"
    assert ocr.read_text() == f"OCR of {site.initial / rel('MS01_002_0001')}"


def test_access_after_preservation_finds_the_completed_sources(cli: Any, site: Site) -> None:
    code, _, err = run(cli, "distill", COLLECTION)
    assert code == 0, err
    code, report, err = run(cli, "islandora", COLLECTION)
    assert code == 0, err
    assert report["outputs"]["published"] == [rel(i) for i in ALL_IMAGES]
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])
    # The folder's digital object keeps its components and gains the Islandora URL.
    folder = digital_objects(site)["MS01_001"]
    assert [v["use_statement"] for v in folder["file_versions"]] == ["image-service"]
    assert sorted(components(site)) == ALL_IMAGES


# ---- the alchemist ----------------------------------------------------------------------


def test_both_through_the_alchemist_moves_sources_only_at_the_end(cli: Any, site: Site) -> None:
    report = faithful_run(cli, site, "alchemist", COLLECTION, "--preservation", "--access")
    steps = {s["id"]: s for s in report["steps"]}
    # Neither distill nor islandora moved a TIFF: the alchemist did, after both.
    moves = [e for s in ("preserve", "access") for e in steps[s]["effects"] if e["op"] == "move"]
    assert moves == []
    moved = [(e["path"], e["target"]) for e in steps["complete"]["effects"] if e["op"] == "move"]
    assert moved == [(str(site.initial / rel(i)), str(site.completed / rel(i))) for i in ALL_IMAGES]
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])
    assert sorted(site.objects()) == sorted(KEYS.values())
    assert digital_objects(site)["MS01_002"]["file_versions"][0]["use_statement"] == "image-service"
    shown = cli("state", "show", "distillery-collection", COLLECTION, "--json")
    entity = json.loads(shown.out)
    assert entity["state"] == "Done" and entity["attributes"]["skipped"] == []
    history = cli("state", "history", "distillery-collection", COLLECTION, "--json")
    moves_seen = [(c["state"], c["substate"]) for c in json.loads(history.out)]
    assert moves_seen[0] == ("Queued", None) and moves_seen[-1] == ("Done", None)
    assert ("Processing", "Preservation") in moves_seen and ("Processing", "Access") in moves_seen
    assert ("Processing", "Completing") in moves_seen
    progress = [c["attributes"].get("progress") for c in json.loads(history.out)]
    assert [(p["unit"], p["position"], p["total"], p["image"]) for p in progress if p] == [
        ("image", 1, 3, "MS01_001_0001.tif"),
        ("image", 2, 3, "MS01_001_0002.tif"),
        ("image", 3, 3, "MS01_002_0001.tif"),
        ("book", 1, 2, None),
        ("book", 2, 2, None),
    ]
    # Again: the nested recipes change nothing; only the lock moves.
    code, again, err = run(cli, "alchemist", COLLECTION, "--preservation", "--access")
    assert code == 0, err
    assert {e["op"] for e in changes(again)} == {"set_state"}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_collection_done_with_skipped_images_says_how_many_and_why(cli: Any, site: Site) -> None:
    broken = site.initial / COLLECTION / "MS01_001" / "MS01_001_0003.tif"
    broken.write_bytes(b"II*\x00 this is not a TIFF")
    code, _, err = run(cli, "alchemist", COLLECTION, "--preservation")
    assert code == 0, err
    shown = cli("state", "show", "distillery-collection", COLLECTION)
    lines = shown.out.splitlines()
    assert "  state     Done" in lines
    total = len(ALL_IMAGES) + 1
    assert f"  outcome   Done, 1 of {total} images skipped" in lines
    [why] = [line for line in lines if line.startswith("    - ")]
    assert why.startswith(f"    - image {COLLECTION}/MS01_001/MS01_001_0003.tif (step master): ")
    assert "is not an image Pillow can read" in why and str(site.initial) not in why
    entity = json.loads(cli("state", "show", "distillery-collection", COLLECTION, "--json").out)
    assert entity["attributes"]["counts"] == {"images": total, "books": 0}


def test_a_collection_being_processed_is_refused(cli: Any, site: Site) -> None:
    lifecycle = (
        Path(__file__).resolve().parent.parent
        / "engine/wsrun/packs/distillery/recipes/collection-lifecycle.yaml"
    )
    assert cli("state", "lifecycle", lifecycle).code == 0
    assert cli("state", "set", "distillery-collection", COLLECTION, "Queued", "--create").code == 0
    assert (
        cli(
            "state",
            "set",
            "distillery-collection",
            COLLECTION,
            "Processing",
            "--substate",
            "Access",
        ).code
        == 0
    )
    code, report, err = run(cli, "alchemist", COLLECTION, "--preservation")
    assert code == 1
    assert (
        "MS01: already being processed (Access; `wsrun state show distillery-collection MS01`)"
        in err
    )
    assert site.objects() == {} and site.aspace.writes() == []
    code, report, err = run(cli, "alchemist", COLLECTION)
    assert code == 1 and "choose preservation, access or both" in err


def test_queued_collections_run_in_a_worker(cli: Any, site: Site, tmp_path: Path) -> None:
    """The alchemist under ``wsrun worker``: a request queued with the command line
    is processed (here for access) and its message acknowledged."""
    from wsrun.stores.bus import open_bus
    from wsrun.stores.state import open_state_store

    worker = subprocess.Popen(
        [sys.executable, "-m", "wsrun", "worker", RECIPES / "alchemist.yaml", "--profile", PROFILE],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = cli("distillery/queue", COLLECTION, "--access")
        assert sent.code == 0, sent.err
        store = open_state_store()
        deadline = time.monotonic() + 60
        entity = None
        while time.monotonic() < deadline:
            entity = store.get("distillery-collection", COLLECTION)
            if entity is not None and entity.state in ("Done", "Failed"):
                break
            time.sleep(0.1)
        assert entity is not None and entity.state == "Done", entity
        assert entity.attributes["access"] is True and entity.attributes["preservation"] is False
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    assert areas(site) == ([], [rel(i) for i in ALL_IMAGES])
    assert len(digital_objects(site)) == 2 and site.objects() == {}
    bus = open_bus()
    try:
        messages = bus.messages()
    finally:
        bus.close()
    assert [(m.selector, m.status, m.body) for m in messages] == [
        (
            "distillery.process",
            "done",
            {"collection": COLLECTION, "preservation": False, "access": True},
        )
    ]


def test_queue_publishes_one_request_per_collection(cli: Any) -> None:
    result = cli("distillery/queue", COLLECTION)
    assert result.code == 1 and "choose --preservation, --access or both" in result.err
    result = cli("distillery/queue", COLLECTION, "--access")
    assert result.code == 0, result.err
    again = cli("distillery/queue", COLLECTION, "--preservation")
    assert again.code == 1 and "MS01: already Queued" in again.err
    from wsrun.stores.bus import open_bus
    from wsrun.stores.state import open_state_store

    bus = open_bus()
    try:
        (message,) = bus.messages()
    finally:
        bus.close()
    assert message.selector == "distillery.process"
    assert message.body == {"collection": COLLECTION, "preservation": False, "access": True}
    entity = open_state_store().get("distillery-collection", COLLECTION)
    assert entity is not None and entity.state == "Queued"
    assert entity.attributes == {"preservation": False, "access": True}


def test_s3_remove_deletes_only_what_is_there(
    cli: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    from conftest import write

    s3.client().put_object(Bucket=bucket, Key="a/one.jp2", Body=b"12345")
    recipe = write(
        tmp_path / "remove.yaml",
        f"""
        recipe: remove
        steps:
          - id: gone
            uses: s3-remove
            with:
              urls: ["s3://{bucket}/a/one.jp2", "s3://{bucket}/a/two.jp2"]
              endpoint_url: {s3.endpoint}
        outputs:
          removed: "{{{{ steps.gone.outputs.removed }}}}"
          absent: "{{{{ steps.gone.outputs.absent }}}}"
        """,
    )
    dry = cli(recipe, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    planned = json.loads(dry.out)["steps"][0]["effects"]
    assert planned == [{"op": "remove", "path": f"s3://{bucket}/a/one.jp2", "bytes": 5}]
    real = cli(recipe, "--json")
    assert real.code == 0, real.err
    report = json.loads(real.out)
    assert report["steps"][0]["effects"] == planned
    assert report["outputs"] == {
        "removed": [f"s3://{bucket}/a/one.jp2"],
        "absent": [f"s3://{bucket}/a/two.jp2"],
    }
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)
    again = cli(recipe, "--json")
    assert again.code == 0 and json.loads(again.out)["steps"][0]["effects"] == []
    bad = write(
        tmp_path / "bad.yaml",
        recipe.read_text()
        .replace("/a/one.jp2", "")
        .replace(', "s3://' + bucket + '/a/two.jp2"', ""),
    )
    result = cli(bad)
    assert result.code == 1 and "names a bucket, not an object" in result.err
