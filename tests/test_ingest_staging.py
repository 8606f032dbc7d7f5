"""Collecting a processing directory for ingest (the ``ingestion-staging`` step and
``ingest_envoy --calibration/--image DIR``): staged files, manifests, archive contents."""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import pytest

from conftest import dry_then_real, snapshot
from fixtures import processing, staging
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, StepError, load_step
from wsrun.stores.archive.store import ArchiveStore
from wsrun.testing import effect_dicts, plan_step, run_step

EXPECTED = Path(__file__).parent / "fixtures" / "expected_manifests"
EB = processing.EB
ROOT_SETTING = "edu.nrao.workspaces.ProcessingSettings.rootDirectory"


def _params(source: Path, kind: str, root: Path) -> dict[str, str]:
    return {"source": str(source), "kind": kind, "workspaces_root": str(root)}


def _stamp(*paths: Path) -> str:
    """The name stamp of the ingestion artifacts tar: the newest mtime, in UTC."""
    newest = max(p.stat().st_mtime for p in paths)
    return time.strftime("%Y_%m_%dT%H_%M_%S", time.gmtime(newest))


def _expected(kind: str, stamp: str) -> dict:
    text = (EXPECTED / f"{kind}.json").read_text().replace("{timestamp}", stamp)
    return json.loads(text)


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _imaging(base: Path, cal_locator: str) -> Path:
    """An imaging processing directory whose metadata.json names its calibration."""
    p = processing.imaging(base)
    meta = json.loads((p.root / "metadata.json").read_text())
    meta |= {"calProductLocator": cal_locator, "sdmId": EB, "calibrationSourceDirectory": "x"}
    (p.root / "metadata.json").write_text(json.dumps(meta))
    return p.root


def test_calibration_staging(tmp_path: Path) -> None:
    proc = processing.vla_calibration(tmp_path).root
    root = tmp_path / "ws"
    before = snapshot(tmp_path)
    dry = plan_step("ingestion-staging", _params(proc, "calibration", root), "/", WorldView())
    assert snapshot(tmp_path) == before
    plan, result = run_step("ingestion-staging", _params(proc, "calibration", root), "/")
    assert effect_dicts(result.effects) == effect_dicts(plan.effects) == effect_dicts(dry.effects)
    stage = root / "staging" / "calibration-calibration"
    assert result.outputs == {
        "staging": str(stage),
        "inputs": [f"uid://evla/execblock/{EB}"],
        "collected": True,
        "timestamp": _stamp(proc / "metadata.json"),
    }
    assert sorted(p.name for p in stage.iterdir()) == [f"{EB}.caltables.tar", "weblog.tgz"]
    assert _members(stage / f"{EB}.caltables.tar") == ["unknown.session_1.caltables.tgz"]
    with tarfile.open(stage / f"{EB}.caltables.tar") as tar:
        inner = tar.extractfile("unknown.session_1.caltables.tgz").read()
    assert inner == (proc / "products" / "unknown.session_1.caltables.tgz").read_bytes()
    # The newest weblog, from working/, freshly tarred.
    assert _members(stage / "weblog.tgz") == ["pipeline-20190530T120000/html/index.html"]
    _, again = run_step("ingestion-staging", _params(proc, "calibration", root), "/")
    assert again.effects == [] and again.status == "ok"


def test_newest_weblog_wins(tmp_path: Path) -> None:
    proc = processing.vla_calibration(tmp_path).root
    newer = proc / "working" / "pipeline-20190531T080000" / "html" / "index.html"
    newer.parent.mkdir(parents=True)
    newer.write_text("<html>rerun</html>")
    (proc / "working" / "pipeline-20190601T000000").mkdir()  # no html: not a weblog
    run_step("ingestion-staging", _params(proc, "calibration", tmp_path / "ws"), "/")
    tgz = tmp_path / "ws" / "staging" / "calibration-calibration" / "weblog.tgz"
    assert _members(tgz) == ["pipeline-20190531T080000/html/index.html"]


def test_image_staging_and_dry_run_chain(tmp_path: Path) -> None:
    proc = _imaging(tmp_path, "uid://evla/calibration/abc")
    root = tmp_path / "ws"
    before = snapshot(tmp_path)
    view = WorldView()
    plan = plan_step("ingestion-staging", _params(proc, "image", root), "/", view)
    for e in plan.effects:
        view.record(e)
    stage = plan.outputs["staging"]
    params = {"ingestion_path": stage, "kind": "image", "inputs": plan.outputs["inputs"]}
    manifest = plan_step("ingestion-manifest", params, "/", view)
    assert len(manifest.outputs["science_products"]) == 2
    assert snapshot(tmp_path) == before
    _, result = run_step("ingestion-staging", _params(proc, "image", root), "/")
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert result.outputs["inputs"] == ["uid://evla/calibration/abc"]
    staged = Path(stage)
    assert _members(staged / "pipeline_artifacts.tar") == [
        "PPR.xml",
        "casa_commands.log",
        "casa_pipescript.py",
    ]
    aux = json.loads((staged / "aux_image_metadata.json").read_text())
    assert aux["calProductLocator"] == "uid://evla/calibration/abc" and aux["sdmId"] == EB
    fits = sorted(p.name for p in staged.glob("*.fits"))
    assert fits == sorted(p.name for p in (proc / "products").glob("*.fits"))
    assert all((staged / n).read_bytes() == (proc / "products" / n).read_bytes() for n in fits)


def test_passes_a_staging_directory_through(tmp_path: Path) -> None:
    params = {"source": "cal-1", "kind": "calibration", "staging_directory": "/s/cal-1"}
    plan = plan_step("ingestion-staging", params, str(tmp_path), WorldView())
    assert plan.effects == []
    assert plan.outputs == {
        "staging": "/s/cal-1",
        "inputs": [],
        "collected": False,
        "timestamp": "1970_01_01T00_00_00",  # nothing staged there yet
    }


def test_errors_leave_nothing(tmp_path: Path) -> None:
    proc = processing.vla_calibration(tmp_path).root
    with pytest.raises(StepError, match="no workspaces root"):
        plan_step("ingestion-staging", {"source": str(proc), "kind": "calibration"}, "/")
    (proc / "products" / "unknown.session_1.caltables.tgz").unlink()
    with pytest.raises(StepError, match="no calibration tables"):
        run_step("ingestion-staging", _params(proc, "calibration", tmp_path / "ws"), "/")
    img = _imaging(tmp_path / "i", "")
    with pytest.raises(StepError, match="no calProductLocator"):
        run_step("ingestion-staging", _params(img, "image", tmp_path / "ws"), "/")
    assert not (tmp_path / "ws").exists()


def _manifest_of(stage: Path) -> dict:
    manifest = json.loads((stage / "ingestion-manifest.json").read_text())
    assert manifest["parameters"].pop("ingestion_path") == str(stage)
    return manifest


def _archived(archive: ArchiveStore) -> list[tuple]:
    return sorted(
        (p.type, p.filename, p.science, [(f.name, f.size) for f in p.files])
        for p in (archive.product(r.locator) for r in archive.products())
        if p is not None
    )


def _steps(out: str) -> list[tuple[str, list[dict]]]:
    """(step id, effects) of a --json run."""
    return [(s["id"], s["effects"]) for s in json.loads(out)["steps"]]


def _same_plan(dry: str, real: str) -> bool:
    """The dry run's effects are the real run's, where a size the dry run could not
    know (no ``bytes``: a compressed archive an earlier step writes) matches any."""
    planned, done = _steps(dry), _steps(real)
    for (_, effects), (_, real_effects) in zip(planned, done, strict=True):
        for e, r in zip(effects, real_effects, strict=True):
            if "bytes" not in e:
                r.pop("bytes", None)
    return planned == done


def test_envoy_collects_calibration_then_image(tmp_path: Path, cli, wsrun_home: Path) -> None:
    cal = processing.vla_calibration(tmp_path).root
    ws = tmp_path / "ws"
    setting = ["--set", f"{ROOT_SETTING}={ws}"]
    before = snapshot(tmp_path)
    dry = cli("nrao/ingest_envoy", "--calibration", str(cal), *setting, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before
    real = cli("nrao/ingest_envoy", "--calibration", str(cal), *setting, "--json")
    assert real.code == 0, real.err
    assert _same_plan(dry.out, real.out)
    weblog = [e for _, es in _steps(dry.out) for e in es if e["path"].endswith("/weblog.tgz")]
    assert weblog and all("bytes" not in e for e in weblog)  # unknown, not 0
    stage = ws / "staging" / "calibration-calibration"
    stamp = _stamp(cal / "metadata.json")
    artifacts = f"ingestion_artifacts_{stamp}.tar"
    assert _manifest_of(stage) == _expected("calibration", stamp)
    [cal_locator] = json.loads(real.out)["outputs"]["locators"]
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    sizes = {p.name: p.stat().st_size for p in stage.iterdir()}
    assert _archived(archive) == sorted(
        [
            (
                "calibration",
                f"{EB}.caltables.tar",
                True,
                [(f"{EB}.caltables.tar", sizes[f"{EB}.caltables.tar"])],
            ),
            ("pipeline_weblog", "weblog.tgz", False, [("weblog.tgz", sizes["weblog.tgz"])]),
            ("ingestion_artifacts", artifacts, False, [(artifacts, sizes[artifacts])]),
        ]
    )
    record = archive.product(cal_locator)
    assert record is not None and record.inputs == [f"uid://evla/execblock/{EB}"]
    assert record.ancillary == []  # the weblog and artifacts belong to the whole group
    again = cli("nrao/ingest_envoy", "--calibration", str(cal), *setting, "--json")
    assert again.code == 0 and all(not e for _, e in _steps(again.out))

    img = _imaging(tmp_path / "i", cal_locator)
    r = cli("nrao/ingest_envoy", "--image", str(img), *setting, "--json")
    assert r.code == 0, r.err
    istage = ws / "staging" / "image-imaging"
    expected = _expected("image", _stamp(img / "metadata.json"))
    expected["input_group"]["science_products"][0]["locator"] = cal_locator
    assert _manifest_of(istage) == expected
    images = json.loads(r.out)["outputs"]["locators"]
    assert len(images) == 2
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    by_name = {archive.product(loc).filename: archive.product(loc) for loc in images}
    assert all(r.inputs == [cal_locator] for r in by_name.values())
    science = "oussid.s13_0.J1234+5678_sci.K_band.cont.I"
    owned = by_name[f"{science}.pbcor.tt0.fits"].ancillary
    assert sorted(archive.product(a).filename for a in owned) == [
        f"{science}.alpha.fits",
        f"{science}.pb.tt0.fits",
        f"{science}.pbcor.tt0.png",
    ]
    assert sorted(archive.product(cal_locator).outputs) == sorted(images)
    # Every staged file is a product, but the manifest and the aux metadata (both are in
    # the ingestion artifacts tar).
    skip = ("ingestion-manifest.json", "aux_image_metadata.json")
    staged = sorted(p.name for p in istage.iterdir() if p.name not in skip)
    ingested = [p.filename for p in archive.products() if p.ingestion_path == str(istage)]
    assert sorted(ingested) == staged


def test_envoy_ingests_an_observation(tmp_path: Path, cli, wsrun_home: Path) -> None:
    stage = tmp_path / "eb-1"
    sdm = staging.observation_area(stage)
    args = ["nrao/ingest_envoy", "--observation", str(stage), "EVLA", "--json"]
    dry, real = dry_then_real(cli, tmp_path, *args)
    assert _steps(dry.out) == _steps(real.out)
    stamp = _stamp(sdm)
    assert _manifest_of(stage) == _expected("observation", stamp)
    [locator] = json.loads(real.out)["outputs"]["locators"]
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    record = archive.product(locator)
    assert record is not None and record.type == "execution_block"
    assert record.filename == sdm.name and record.inputs == []
    sdm_files = sorted(
        (str(p.relative_to(stage)), p.stat().st_size) for p in sdm.rglob("*") if p.is_file()
    )
    assert sorted((f.name, f.size) for f in record.files) == sdm_files
    artifacts = stage / f"ingestion_artifacts_{stamp}.tar"
    assert _archived(archive) == sorted(
        [
            ("execution_block", sdm.name, True, sdm_files),
            (
                "ingestion_artifacts",
                artifacts.name,
                False,
                [(artifacts.name, artifacts.stat().st_size)],
            ),
        ]
    )
    assert _members(artifacts) == ["ingestion-manifest.json"]
    again = cli(*args)
    assert again.code == 0 and all(not e for _, e in _steps(again.out))


def test_envoy_ingests_a_seci_image(tmp_path: Path, cli, wsrun_home: Path) -> None:
    stage = staging.seci_area(tmp_path / "seci-1")
    args = ["nrao/ingest_envoy", "--seci", str(stage), "VLASS2.1", "--json"]
    dry, real = dry_then_real(cli, tmp_path, *args)
    assert _steps(dry.out) == _steps(real.out)
    stamp = _stamp(*(p for p in stage.iterdir() if not p.name.startswith("ingestion")))
    assert _manifest_of(stage) == _expected("seci", stamp)
    [locator] = json.loads(real.out)["outputs"]["locators"]
    archive = ArchiveStore.open(str(wsrun_home / "archive"))
    stem = "VLASS2.1.se.T10t01.J123456+563000.06.2048.v1.I.iter1"
    image = archive.product(locator)
    assert image is not None and image.filename == f"{stem}.image.pbcor.tt0.subim.fits"
    assert sorted(archive.product(a).filename for a in image.ancillary) == [
        f"{stem}.image.pbcor.tt0.subim.png",
        f"{stem}.pb.tt0.subim.fits",
    ]
    sizes = {p.name: p.stat().st_size for p in stage.iterdir()}
    archived = _archived(archive)
    assert [(t, n, s) for t, n, s, _ in archived] == sorted(
        [
            ("image", f"{stem}.image.pbcor.tt0.subim.fits", True),
            ("thumbnail_image", f"{stem}.image.pbcor.tt0.subim.png", False),
            ("primary_beam", f"{stem}.pb.tt0.subim.fits", False),
            ("pipeline_weblog", "weblog.tgz", False),
            ("pipeline_artifacts", "pipeline_artifacts.tar", False),
            ("ingestion_artifacts", f"ingestion_artifacts_{stamp}.tar", False),
        ]
    )
    assert all(files == [(n, sizes[n])] for _, n, _, files in archived)
    artifacts = stage / f"ingestion_artifacts_{stamp}.tar"
    assert _members(artifacts) == ["ingestion-manifest.json", "aux_image_metadata.json"]
    again = cli(*args)
    assert again.code == 0 and all(not e for _, e in _steps(again.out))


def test_envoy_failed_ingest_keeps_staging_area(tmp_path: Path, cli, wsrun_home: Path) -> None:
    cal = processing.vla_calibration(tmp_path).root
    ws = tmp_path / "ws"
    bad = tmp_path / "archive-is-a-file"
    bad.write_text("x")
    args = ["--set", f"{ROOT_SETTING}={ws}", "--set", f"edu.nrao.archive.url={bad}/a"]
    r = cli("nrao/ingest_envoy", "--calibration", str(cal), *args)
    assert r.code != 0
    stage = ws / "staging" / "calibration-calibration"
    assert (stage / "ingestion-manifest.json").is_file() and (stage / "weblog.tgz").is_file()
    r = cli("nrao/ingest_envoy", "--calibration", str(cal), "--set", f"{ROOT_SETTING}={ws}")
    assert r.code == 0, r.err


def test_generated_tars_are_deterministic(tmp_path: Path) -> None:
    """Tars are streamed to disk, the same bytes on every run; the plan knows the exact size of
    the plain tar, and neither plan nor run claims one for the gzipped weblog."""
    proc = processing.vla_calibration(tmp_path).root
    runs = []
    for root in ("a", "b"):
        plan, result = run_step(
            "ingestion-staging", _params(proc, "calibration", tmp_path / root), "/"
        )
        assert effect_dicts(result.effects) == effect_dicts(plan.effects)
        runs.append(Path(plan.outputs["staging"]))
        sizes = {Path(e.path).name: e.bytes for e in plan.effects if e.op == "create_file"}
        assert sizes == {
            f"{EB}.caltables.tar": (runs[-1] / f"{EB}.caltables.tar").stat().st_size,
            "weblog.tgz": None,
        }
    a, b = runs
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert all((a / p.name).read_bytes() == (b / p.name).read_bytes() for p in a.iterdir())
    assert not [p for p in a.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_table_changing_under_the_tar_leaves_no_partial_file(tmp_path: Path) -> None:
    proc = processing.vla_calibration(tmp_path).root
    params = _params(proc, "calibration", tmp_path / "ws")
    ctx = StepContext(fs=WorldView(), workdir="/", step_id="stage")
    step = load_step("ingestion-staging")
    plan = step.plan(params, ctx)
    with (proc / "products" / "unknown.session_1.caltables.tgz").open("ab") as f:
        f.write(b"more")
    with pytest.raises(StepError, match="changed while the step ran"):
        step.apply(plan, ctx)
    stage = Path(plan.outputs["staging"])
    assert list(stage.iterdir()) == []  # neither the tar nor its temporary file
