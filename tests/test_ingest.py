"""The ``ingest`` step: manifest checks, faithful dry runs, idempotence, reingest,
on every archive backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import snapshot, write
from fixtures import staging
from fixtures.archives import BACKENDS, backend_url
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.stores.archive.store import ArchiveStore
from wsrun.testing import effect_dicts, plan_step, run_step


def archive_files(root: Path) -> dict[str, tuple[str, int]]:
    """The archive's files, without SQLite's WAL housekeeping files (a reader may create them)."""
    return {k: v for k, v in snapshot(root).items() if not k.endswith(("-wal", "-shm"))}


@pytest.fixture(params=["embedded", "pg-local"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The archive on the embedded backend and on PostgreSQL + a directory; the tests
    where the file store matters run on PostgreSQL + S3 too (``ON_EVERY_BACKEND``)."""
    return backend_url(request, request.param, tmp_path)


ON_EVERY_BACKEND = pytest.mark.parametrize("url", BACKENDS, indirect=True)


@ON_EVERY_BACKEND
def test_real_run_ingests(tmp_path: Path, url: str) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    plan, result = run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    assert result.status == "changed"
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert result.outputs == plan.outputs
    cal = tmp_path / "cal"
    names = ["19A-001_sb1_eb2.ms.calapply.tar", "weblog.tgz", "ingestion_artifacts_2026_11_23.tar"]
    assert effect_dicts(result.effects) == [
        {"op": "upload", "path": str(cal / n), "bytes": (cal / n).stat().st_size, "target": url}
        for n in names
    ] + [
        {"op": "record", "path": str(cal / n), "type": t}
        for n, t in zip(
            names, ["calibration", "pipeline_weblog", "ingestion_artifacts"], strict=True
        )
    ]
    [locator] = result.outputs["locators"]
    assert locator.startswith("uid://evla/calibration/")
    assert [p["type"] for p in result.outputs["products"]] == [
        "calibration",
        "pipeline_weblog",
        "ingestion_artifacts",
    ]
    archive = ArchiveStore.open(url)
    assert [p.locator for p in archive.products()] == [
        p["locator"] for p in result.outputs["products"]
    ]
    assert archive.verify() == []


def test_default_archive_is_under_wsrun_home(tmp_path: Path, wsrun_home: Path) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    _, result = run_step("ingest", {"manifest": str(manifest)}, str(tmp_path))
    assert result.outputs["archive"] == str(wsrun_home / "archive")
    assert (wsrun_home / "archive" / "archive.db").is_file()


@ON_EVERY_BACKEND
def test_dry_run_changes_nothing_and_matches(tmp_path: Path, url: str) -> None:
    manifest = staging.image(tmp_path / "img", staging.EB_LOCATOR)
    params = {"manifest": str(manifest), "archive": url}
    before = snapshot(tmp_path)
    dry = plan_step("ingest", params, str(tmp_path), view=WorldView())
    assert snapshot(tmp_path) == before and not (tmp_path / "archive").exists()
    _, result = run_step("ingest", params, str(tmp_path))
    assert effect_dicts(dry.effects) == effect_dicts(result.effects)
    assert len([e for e in dry.effects if e.op == "record"]) == 6
    # A dry run against an existing archive also leaves it alone.
    (tmp_path / "img" / "weblog.tgz").write_bytes(staging.tar_of({"new": b"new"}, gz=True))
    archive_before = archive_files(tmp_path / "archive")
    with pytest.raises(StepError):
        plan_step("ingest", params, str(tmp_path), view=WorldView())
    assert archive_files(tmp_path / "archive") == archive_before


def test_second_run_is_ok(tmp_path: Path, url: str) -> None:
    params = {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url}
    _, first = run_step("ingest", params, str(tmp_path))
    archive_before = archive_files(tmp_path / "archive")
    plan, second = run_step("ingest", params, str(tmp_path))
    assert plan.effects == [] and second.status == "ok"
    assert second.outputs == first.outputs
    assert archive_files(tmp_path / "archive") == archive_before


@ON_EVERY_BACKEND
def test_reingest(tmp_path: Path, url: str) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    params = {"manifest": str(manifest), "archive": url}
    _, first = run_step("ingest", params, str(tmp_path))
    newer = staging.tar_of({"index.html": b"a newer weblog"}, gz=True)
    (tmp_path / "cal" / "weblog.tgz").write_bytes(newer)
    with pytest.raises(StepError, match="already ingested as .* set reingest in the manifest"):
        plan_step("ingest", params, str(tmp_path))
    data = json.loads(manifest.read_text())
    data["parameters"]["reingest"] = True
    manifest.write_text(json.dumps(data))
    plan, second = run_step("ingest", params, str(tmp_path))
    [record] = [e for e in second.effects if e.op == "record" and e.extra["type"] == "calibration"]
    assert record.extra["replaces"] == first.outputs["locators"][0]
    assert effect_dicts(plan.effects) == effect_dicts(second.effects)
    archive = ArchiveStore.open(url)
    assert [p.locator for p in archive.products()] == [
        p["locator"] for p in second.outputs["products"]
    ]
    assert archive.verify() == []
    # The same content again: nothing to do, even with reingest set.
    _, third = run_step("ingest", params, str(tmp_path))
    assert third.status == "ok" and third.outputs == second.outputs


def test_chain_with_provenance(tmp_path: Path, url: str) -> None:
    _, cal = run_step(
        "ingest",
        {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url},
        str(tmp_path),
    )
    manifest = staging.image(tmp_path / "img", cal.outputs["locators"][0])
    _, img = run_step("ingest", {"manifest": str(manifest), "archive": url}, str(tmp_path))
    archive = ArchiveStore.open(url)
    record = archive.product(cal.outputs["locators"][0])
    assert record is not None and record.outputs == sorted(img.outputs["locators"])


def test_dry_run_chain_sees_planned_files(tmp_path: Path, url: str) -> None:
    staging.image(tmp_path / "src", staging.EB_LOCATOR)
    view = WorldView()
    copy = plan_step(
        "copy", {"sources": str(tmp_path / "src"), "to": str(tmp_path / "stage")}, "/", view=view
    )
    for e in copy.effects:
        view.record(e)
    manifest = tmp_path / "stage" / "src" / "ingestion-manifest.json"
    plan = plan_step("ingest", {"manifest": str(manifest), "archive": url}, "/", view=view)
    uploads = [e.path for e in plan.effects if e.op == "upload"]
    assert uploads and all(p.startswith(str(tmp_path / "stage" / "src")) for p in uploads)
    assert not (tmp_path / "stage").exists()


def _manifest(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("output_group"), "'output_group' is a required property"),
        (lambda m: m["parameters"].pop("telescope"), "'telescope' is a required property"),
        (lambda m: m["parameters"].update(bogus=1), "parameters: Additional properties"),
        (
            lambda m: m["output_group"]["science_products"][0].update(filename="../x"),
            "output_group/science_products/0/filename",
        ),
        (
            lambda m: m["output_group"]["science_products"][0].update(filename="gone.tar"),
            "a file the manifest names is missing",
        ),
        (
            lambda m: m["parameters"].update(additional_metadata="aux.json"),
            "additional_metadata file is missing",
        ),
        (
            lambda m: m["parameters"].update(ingestion_path="/nonexistent"),
            "ingestion_path is not a directory",
        ),
    ],
)
def test_bad_manifests(tmp_path: Path, url: str, change, message: str) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    data = json.loads(manifest.read_text())
    change(data)
    bad = _manifest(tmp_path, data)
    with pytest.raises(StepError, match=message.replace("(", r"\(")):
        run_step("ingest", {"manifest": str(bad), "archive": url}, str(tmp_path))
    assert not (tmp_path / "archive").exists()


def test_unreadable_manifests(tmp_path: Path, url: str) -> None:
    with pytest.raises(StepError, match="no such manifest"):
        plan_step("ingest", {"manifest": "nope.json", "archive": url}, str(tmp_path))
    write(tmp_path / "bad.json", "{not json")
    with pytest.raises(StepError, match="not valid JSON"):
        plan_step("ingest", {"manifest": "bad.json", "archive": url}, str(tmp_path))


def test_ingest_failure_is_a_step_error(tmp_path: Path, url: str) -> None:
    params = {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url}
    plan_a = plan_step("ingest", params, str(tmp_path))
    plan_b = plan_step("ingest", params, str(tmp_path))
    from wsrun.core.step import StepContext, load_step

    module = load_step("ingest")
    module.apply(plan_a, StepContext(fs=WorldView(), workdir=str(tmp_path)))
    with pytest.raises(StepError, match="already ingested"):
        module.apply(plan_b, StepContext(fs=WorldView(), workdir=str(tmp_path)))


def test_recipe_runs_ingest(tmp_path: Path, cli) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    write(
        tmp_path / "ingest.yaml",
        """
        recipe: ingest
        inputs:
          manifest: {type: path, positional: true}
        steps:
          - id: ingest
            uses: ingest
            with: {manifest: "{{ inputs.manifest }}"}
        outputs:
          locators: "{{ steps.ingest.outputs.locators }}"
        """,
    )
    r = cli("ingest.yaml", str(manifest), "--dry-run", "--json")
    assert r.code == 0, r.err
    r = cli("ingest.yaml", str(manifest), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["outputs"]["locators"][0].startswith("uid://evla/calibration/")
    assert cli("archive", "verify").code == 0


# ---- the ingestion-manifest step ---------------------------------------------


CAL_LOCATOR = "uid://evla/calibration/0d8f6a51-7f34-4c55-9c0e-8e2d5bbf4a10"


def _stage_images(root: Path) -> None:
    for band in ("L", "C"):
        stem = f"VLASS_{band}.I.iter1"
        for suffix in (".image.pbcor.tt0.subim.fits", ".image.pbcor.tt0.subim.png"):
            write(root / (stem + suffix), band)
        write(root / f"{stem}.pb.tt0.fits", "pb")
        write(root / f"{stem}.mask.fits", "mask")
        write(root / f"{stem}.image.alpha.fits", "alpha")
    (root / "weblog.tgz").write_bytes(staging.tar_of({"index.html": b"weblog"}, gz=True))
    (root / "pipeline_artifacts.tar").write_bytes(staging.tar_of({"PPR.xml": b"artifacts"}))
    write(root / "casa.log", "log")
    write(root / "aux_image_metadata.json", '{"bands": ["L", "C"]}')


def test_manifest_for_images(tmp_path: Path, url: str) -> None:
    stage = tmp_path / "stage"
    _stage_images(stage)
    params = {
        "ingestion_path": str(stage),
        "kind": "seci",
        "inputs": ["uid://evla/calibration/1"],
        "collection_name": "VLASS2.1",
    }
    plan, result = run_step("ingestion-manifest", params, str(tmp_path))
    assert [e.path for e in result.effects] == [
        str(stage / "ingestion-manifest.json"),
        str(stage / "ingestion_artifacts.tar"),
    ]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    manifest = json.loads((stage / "ingestion-manifest.json").read_text())
    assert manifest["parameters"] == {
        "telescope": "EVLA",
        "ingestion_path": str(stage),
        "reingest": False,
        "ngas_ingest": True,
        "additional_metadata": "aux_image_metadata.json",
        "collection_name": "VLASS2.1",
    }
    assert manifest["input_group"] == {
        "science_products": [{"locator": "uid://evla/calibration/1"}]
    }
    [c_image, l_image] = manifest["output_group"]["science_products"]
    assert l_image["filename"] == "VLASS_L.I.iter1.image.pbcor.tt0.subim.fits"
    assert sorted(a["type"] for a in l_image["ancillary_products"]) == [
        "clean_mask",
        "primary_beam",
        "spectral_index",
        "thumbnail_image",
    ]
    assert [a["type"] for a in manifest["output_group"]["ancillary_products"]] == [
        "log_file",
        "pipeline_artifacts",
        "pipeline_weblog",
        "ingestion_artifacts",
    ]
    import tarfile

    with tarfile.open(stage / "ingestion_artifacts.tar") as tar:
        assert sorted(tar.getnames()) == ["aux_image_metadata.json", "ingestion-manifest.json"]
    # The manifest is what the ingest step takes.
    _, ingested = run_step(
        "ingest", {"manifest": str(stage / "ingestion-manifest.json"), "archive": url}, "/"
    )
    assert len(ingested.outputs["locators"]) == 2 and len(ingested.outputs["products"]) == 14
    # Again: nothing to write.
    plan, again = run_step("ingestion-manifest", params, str(tmp_path))
    assert again.effects == []


def test_manifest_for_calibration_and_observation(tmp_path: Path, url: str) -> None:
    cal = tmp_path / "cal"
    staging.calibration(cal)
    (cal / "ingestion-manifest.json").unlink()
    _, result = run_step(
        "ingestion-manifest",
        {"ingestion_path": str(cal), "kind": "calibration", "inputs": [staging.EB_LOCATOR]},
        "/",
    )
    manifest = json.loads((cal / "ingestion-manifest.json").read_text())
    assert manifest["output_group"]["science_products"] == [
        {"type": "calibration", "filename": "19A-001_sb1_eb2.ms.calapply.tar"}
    ]
    assert result.outputs["artifacts"] == str(cal / "ingestion_artifacts.tar")
    obs = tmp_path / "obs"
    staging.observation(obs)
    run_step(
        "ingestion-manifest",
        {"ingestion_path": str(obs), "kind": "observation", "calibrate": True, "artifacts": None},
        "/",
    )
    manifest = json.loads((obs / "ingestion-manifest.json").read_text())
    assert manifest["parameters"]["calibrate"] is True
    assert manifest["output_group"] == {
        "science_products": [{"type": "execution_block", "filename": "19A-001.sb1.eb2.58633.4"}]
    }
    with pytest.raises(StepError, match="no image products staged"):
        plan_step("ingestion-manifest", {"ingestion_path": str(obs), "kind": "image"}, "/")


def test_manifest_dry_run_chain(tmp_path: Path, url: str) -> None:
    stage = tmp_path / "stage"
    _stage_images(stage)
    before = snapshot(tmp_path)
    view = WorldView()
    params = {"ingestion_path": str(stage), "kind": "image", "inputs": [CAL_LOCATOR]}
    plan = plan_step("ingestion-manifest", params, "/", view)
    for e in plan.effects:
        view.record(e)
    ingest = plan_step(
        "ingest", {"manifest": str(stage / "ingestion-manifest.json"), "archive": url}, "/", view
    )
    assert str(stage / "ingestion_artifacts.tar") in [e.path for e in ingest.effects]
    assert snapshot(tmp_path) == before
    real, _ = run_step("ingestion-manifest", params, "/")
    assert effect_dicts(real.effects) == effect_dicts(plan.effects)


# ---- the ingest_envoy command ------------------------------------------------


def test_envoy_calibration(tmp_path: Path, cli, wsrun_home: Path) -> None:
    args = staging.envoy_calibration_case(tmp_path)
    before = snapshot(tmp_path)
    dry = cli(*args, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before
    real = cli(*args, "--json")
    assert real.code == 0, real.err
    steps = lambda out: [(s["id"], s["effects"]) for s in json.loads(out)["steps"]]  # noqa: E731
    assert steps(dry.out) == steps(real.out)
    [locator] = json.loads(real.out)["outputs"]["locators"]
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    record = archive.product(locator)
    assert record is not None and record.inputs == [staging.EB_LOCATOR]
    assert sorted(p.type for p in archive.products()) == [
        "calibration",
        "ingestion_artifacts",
        "pipeline_weblog",
    ]
    again = cli(*args, "--json")
    assert again.code == 0 and all(not e for _, e in steps(again.out))


def test_envoy_observation_image_and_seci(tmp_path: Path, cli, wsrun_home: Path) -> None:
    from wsrun.packs.nrao.console import ingest_envoy as main

    staging.observation(tmp_path / "obs")
    r = cli("nrao/ingest_envoy", "--observation", str(tmp_path / "obs"), "VLBA", "--json")
    assert r.code == 0, r.err
    [eb] = json.loads(r.out)["outputs"]["locators"]
    assert eb.startswith("uid://vlba/execution_block/")
    stage = tmp_path / "img"
    _stage_images(stage)
    r = cli("nrao/ingest_envoy", "--image", str(stage), "--input", eb, "--json")
    assert r.code == 0, r.err
    assert len(json.loads(r.out)["outputs"]["locators"]) == 2
    seci = tmp_path / "seci"
    _stage_images(seci)
    r = cli("nrao/ingest_envoy", "--seci", str(seci), "VLASS2.1", "--json")
    assert r.code == 0, r.err
    manifest = json.loads((seci / "ingestion-manifest.json").read_text())
    assert manifest["parameters"]["collection_name"] == "VLASS2.1"
    assert main([]) == 2 and main(["--image", "a", "--calibration", "b"]) == 2


@ON_EVERY_BACKEND
def test_timeout_mid_ingest_leaves_archive_unchanged(tmp_path: Path, url: str) -> None:
    from wsrun.core.step import StepContext, load_step

    module = load_step("ingest")
    params = {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url}
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), deadline=0.0)
    plan = module.plan(params, ctx)
    with pytest.raises(StepError, match="timed out"):
        module.apply(plan, ctx)
    archive = ArchiveStore.open(url)
    assert archive.products() == [] and archive.orphans() == []


def test_a_password_in_the_archive_url_stays_out_of_plans(tmp_path: Path, pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:s3cret@") + f"&files={tmp_path}/archive"
    params = {"manifest": str(staging.calibration(tmp_path / "cal")), "archive": url}
    plan, result = run_step("ingest", params, str(tmp_path))
    shown = json.dumps([effect_dicts(plan.effects), plan.outputs, result.outputs])
    assert "s3cret" not in shown and "postgres:****@" in shown
    assert len(ArchiveStore.open(url).products()) == 3
