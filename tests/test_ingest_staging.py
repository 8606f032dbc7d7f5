"""Collecting a processing directory for ingest (the ``ingestion-staging`` step and
``ingest_envoy --calibration/--image DIR``): staged files, manifests, archive contents."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import snapshot
from fixtures import processing
from wsrun.archive_store import ArchiveStore
from wsrun.fs import WorldView
from wsrun.step import StepError
from wsrun.testing import effect_dicts, plan_step, run_step

EXPECTED = Path(__file__).parent / "fixtures" / "expected_manifests"
EB = processing.EB
ROOT_SETTING = "edu.nrao.workspaces.ProcessingSettings.rootDirectory"


def _params(source: Path, kind: str, root: Path) -> dict[str, str]:
    return {"source": str(source), "kind": kind, "workspaces_root": str(root)}


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
    manifest = plan_step(
        "ingestion-manifest", {"ingestion_path": stage, "kind": "image"}, "/", view
    )
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
    assert plan.outputs == {"staging": "/s/cal-1", "inputs": [], "collected": False}


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
    steps = lambda out: [(s["id"], s["effects"]) for s in json.loads(out)["steps"]]  # noqa: E731
    assert steps(dry.out) == steps(real.out)
    stage = ws / "staging" / "calibration-calibration"
    expected = json.loads((EXPECTED / "calibration.json").read_text())
    assert _manifest_of(stage) == expected
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
            (
                "ingestion_artifacts",
                "ingestion_artifacts.tar",
                False,
                [("ingestion_artifacts.tar", sizes["ingestion_artifacts.tar"])],
            ),
        ]
    )
    record = archive.product(cal_locator)
    assert record is not None and record.inputs == [f"uid://evla/execblock/{EB}"]
    assert record.ancillary == []  # the weblog and artifacts belong to the whole group
    again = cli("nrao/ingest_envoy", "--calibration", str(cal), *setting, "--json")
    assert again.code == 0 and all(not e for _, e in steps(again.out))

    img = _imaging(tmp_path / "i", cal_locator)
    r = cli("nrao/ingest_envoy", "--image", str(img), *setting, "--json")
    assert r.code == 0, r.err
    istage = ws / "staging" / "image-imaging"
    expected = json.loads((EXPECTED / "image.json").read_text())
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
    proc = processing.vla_calibration(tmp_path).root
    a = plan_step("ingestion-staging", _params(proc, "calibration", tmp_path / "a"), "/")
    b = plan_step("ingestion-staging", _params(proc, "calibration", tmp_path / "b"), "/")
    assert [c for _, c in a.data] == [c for _, c in b.data]
