"""The find-products step: what a processing directory's products are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fixtures.processing import BUILDERS, EB, SESSION, imaging, vla_calibration
from wsrun.core.effects import create_file
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.testing import plan_step, run_step


def find(source: Path, **params) -> dict:
    plan, result = run_step("find-products", {"source": str(source), **params}, str(source.parent))
    assert plan.effects == [] and result.effects == []
    assert result.outputs == plan.outputs
    return result.outputs


def by_name(outputs: dict) -> dict[str, dict]:
    return {p["name"]: p for p in outputs["products"]}


@pytest.mark.parametrize("style", ["pretty", "single"])
def test_calibration_manifest_names_every_product(tmp_path: Path, style: str) -> None:
    p = vla_calibration(tmp_path, style)
    out = find(p.root)
    assert out["method"] == "pipeline_manifest"
    assert out["manifests"] == [str(p.root / "products" / "unknown.pipeline_manifest.xml")]
    products = by_name(out)
    assert {n: x["type"] for n, x in products.items()} == {
        EB: "execution_block",
        f"unknown.{SESSION}.caltables.tgz": "calibration_tables",
        f"{EB}.ms.flagversions.tgz": "flag_versions",
        f"{EB}.ms.calapply.txt": "apply_commands",
        "weblog.tgz": "weblog",
        "PPR.xml": "ppr",
        "casa_pipescript.py": "script",
        "casa_piperestorescript.py": "script",
        "casa_commands.log": "log",
        "unknown.pipeline_manifest.xml": "pipeline_manifest",
    }
    # The execution block is not in products/: it is taken from rawdata/.
    assert products[EB]["path"] == str(p.root / "rawdata" / EB)
    assert products[EB]["kind"] == "dir"
    assert products[EB]["attributes"] == {"session": SESSION}
    assert products[f"{EB}.ms.flagversions.tgz"]["attributes"] == {"execution_block": EB}
    assert products[f"unknown.{SESSION}.caltables.tgz"]["attributes"] == {"session": SESSION}
    assert out["count"] == len(products)
    assert out["metadata"]["workflowName"] == "std_calibration"
    # Listed by type: execution blocks first, the manifest last.
    assert out["products"][0]["type"] == "execution_block"
    assert out["products"][-1]["type"] == "pipeline_manifest"


@pytest.mark.parametrize("style", ["pretty", "single"])
def test_imaging_manifest_images_thumbnails_and_undefined_values(
    tmp_path: Path, style: str
) -> None:
    p = imaging(tmp_path, style)
    products = by_name(find(p.root))
    images = {n: x for n, x in products.items() if x["type"] == "image"}
    assert len(images) == 4
    assert all(x["attributes"]["imtype"] in ("science", "calibrator") for x in images.values())
    thumbs = {n for n, x in products.items() if x["type"] == "thumbnail"}
    assert thumbs == {
        "oussid.s13_0.J1234+5678_sci.K_band.cont.I.pbcor.tt0.png",
        "oussid.s13_0.J1234+5678_sci.K_band.cont.I.alpha.fits.jpg",
    }
    # <image name="N/A">, <image name="Undefined">, <restorescript name="N/A"> are skipped.
    assert "N/A" not in products and "Undefined" not in products
    assert products["casa_commands.log"]["type"] == "log"  # <casa_cmds>


def test_without_manifest_products_are_typed_by_name(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, None)
    out = find(p.root)
    assert out["method"] == "names" and out["manifests"] == []
    types = {x["name"]: x["type"] for x in out["products"]}
    assert types[f"unknown.{SESSION}.caltables.tgz"] == "calibration_tables"
    assert types[f"{EB}.ms.flagversions.tgz"] == "flag_versions"
    assert types[f"{EB}.ms.calapply.txt"] == "apply_commands"
    assert types["weblog.tgz"] == "weblog" and types["PPR.xml"] == "ppr"
    assert types["casa_commands.log"] == "log" and types["casa_pipescript.py"] == "script"
    assert EB not in types  # only products/ is looked at


def test_heuristics_for_directories_and_other_files(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, None)
    products = p.root / "products"
    (products / "sdm").mkdir()
    (products / "sdm" / "ASDM.xml").write_text("<ASDM/>")
    (products / "target.ms").mkdir()
    (products / "weblog").mkdir()
    (products / "odd").mkdir()
    for name in ("x.fits", "x.png", "x.jpg", "README", ".hidden", "member_aquareport.xml"):
        (products / name).write_text(name)
    types = {x["name"]: (x["type"], x["kind"]) for x in find(p.root)["products"]}
    assert types["sdm"] == ("execution_block", "dir")
    assert types["target.ms"] == ("measurement_set", "dir")
    assert types["weblog"] == ("weblog", "dir")
    assert types["odd"] == ("other", "dir")
    assert types["x.fits"][0] == "image"
    assert types["x.png"][0] == types["x.jpg"][0] == "thumbnail"
    assert types["README"][0] == "other"
    assert types["member_aquareport.xml"][0] == "qa_report"
    assert ".hidden" not in types


def test_ignore_manifest_types_it_as_a_file(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, "pretty")
    out = find(p.root, piperesults="never")
    assert out["method"] == "names"
    assert by_name(out)["unknown.pipeline_manifest.xml"]["type"] == "pipeline_manifest"
    assert EB not in by_name(out)


def test_always_without_manifest_is_an_error(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, None)
    with pytest.raises(StepError, match="no CASA pipeline manifest"):
        find(p.root, piperesults="always")
    assert find(p.root, piperesults="auto")["method"] == "names"


def test_manifest_naming_a_missing_file_is_an_error(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, "pretty")
    (p.root / "products" / "PPR.xml").unlink()
    (p.root / "products" / "weblog.tgz").unlink()
    with pytest.raises(StepError, match=r"names missing files: .*PPR\.xml.*weblog\.tgz") as e:
        find(p.root)
    assert e.value.path.endswith("unknown.pipeline_manifest.xml")


def test_missing_execution_block_is_an_error(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, "single")
    os.rename(p.root / "rawdata" / EB, p.root / "rawdata" / "elsewhere")
    with pytest.raises(StepError, match=f"{EB}.*looked in products, rawdata"):
        find(p.root)


def test_execution_block_in_products_wins_over_rawdata(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, "pretty")
    (p.root / "products" / EB).mkdir()
    (p.root / "products" / EB / "ASDM.xml").write_text("<ASDM/>")
    assert by_name(find(p.root))[EB]["path"] == str(p.root / "products" / EB)


def test_final_ms_is_taken_from_working(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, "pretty")
    manifest = p.root / "products" / "unknown.pipeline_manifest.xml"
    text = manifest.read_text().replace(
        f'<applycmds name="{EB}.ms.calapply.txt"/>',
        f'<applycmds name="{EB}.ms.calapply.txt"/><finalms name="{EB}.ms"/>',
    )
    manifest.write_text(text)
    ms = by_name(find(p.root))[f"{EB}.ms"]
    assert ms["type"] == "measurement_set" and ms["path"] == str(p.root / "working" / f"{EB}.ms")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<piperesults><ous>", "not a valid pipeline manifest"),
        ("<results/>", "root element is <results>"),
        (
            '<piperesults><ous><weblog name="../../etc/passwd"/></ous></piperesults>',
            "not a file name",
        ),
    ],
)
def test_bad_manifests(tmp_path: Path, text: str, message: str) -> None:
    p = vla_calibration(tmp_path, None)
    (p.root / "products" / "x.pipeline_manifest.xml").write_text(text)
    with pytest.raises(StepError, match=message):
        find(p.root)


def test_rawdata(tmp_path: Path) -> None:
    p = imaging(tmp_path, "single")
    out = find(p.root, rawdata=True, piperesults="always")
    assert out["method"] == "rawdata" and out["manifests"] == []
    assert {x["name"]: x["type"] for x in out["products"]} == {
        f"{EB}.ms": "measurement_set",
        "flux.csv": "other",
    }
    c = vla_calibration(tmp_path, "pretty")
    assert {x["name"]: x["type"] for x in find(c.root, rawdata=True)["products"]} == {
        EB: "execution_block"
    }


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root.rename(root.with_name("gone")), "source directory does not exist"),
        (
            lambda root: (root.rename(root.with_name("gone")), root.write_text("x")),
            "not a directory",
        ),
        (lambda root: os.rename(root / "products", root / "p2"), "no products/ directory"),
        (
            lambda root: [f.unlink() for f in (root / "products").iterdir()],
            "no products to deliver",
        ),
        (lambda root: (root / "metadata.json").write_text("{oops"), "not valid JSON"),
    ],
)
def test_errors(tmp_path: Path, setup, message: str) -> None:
    p = vla_calibration(tmp_path, None)
    setup(p.root)
    with pytest.raises(StepError, match=message):
        find(p.root)


def test_rawdata_errors(tmp_path: Path) -> None:
    p = imaging(tmp_path, None)
    for entry in (p.root / "rawdata").iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    with pytest.raises(StepError, match="no products to deliver"):
        find(p.root, rawdata=True)
    (p.root / "rawdata").rmdir()
    with pytest.raises(StepError, match="no rawdata/ directory"):
        find(p.root, rawdata=True)


def test_symlinked_products_are_followed(tmp_path: Path) -> None:
    p = vla_calibration(tmp_path, None)
    elsewhere = tmp_path / "cache" / "image.fits"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"SIMPLE")
    (p.root / "products" / "image.fits").symlink_to(elsewhere)
    assert by_name(find(p.root))["image.fits"]["kind"] == "file"
    (p.root / "products" / "broken.fits").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StepError, match="dangling"):
        find(p.root)


def test_dry_run_sees_planned_files(tmp_path: Path) -> None:
    """In a dry run, products an earlier step would write are found."""
    p = vla_calibration(tmp_path, "pretty")
    view = WorldView()
    new = p.root / "products" / "extra.fits"
    manifest = p.root / "products" / "unknown.pipeline_manifest.xml"
    text = manifest.read_text().replace(
        "</ous>", '<image name="extra.fits" imtype="science"/></ous>'
    )
    view.record(create_file(str(manifest), len(text), content=text.encode()))
    view.record(create_file(str(new), 10, content=b"SIMPLE  = "))
    plan = plan_step("find-products", {"source": str(p.root)}, str(tmp_path), view=view)
    assert by_name(plan.outputs)["extra.fits"]["type"] == "image"
    assert not new.exists()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_fixture_is_identified(tmp_path: Path, name: str) -> None:
    p = BUILDERS[name](tmp_path)
    out = find(p.root)
    assert out["method"] == ("pipeline_manifest" if p.manifest else "names")
    # a file product's name is its delivered path's last part; a directory's, the first
    dirs = {EB, f"{EB}.ms"}
    expected = {
        r.split("/")[0] if r.split("/")[0] in dirs else r.split("/")[-1] for r in p.products
    }
    assert {x["name"] for x in out["products"]} == expected
