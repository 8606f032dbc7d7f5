"""The manifest step: schema-valid JSON, exclusions, dry runs, idempotency."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from conftest import tree
from wsrun.core.effects import create_file
from wsrun.core.fs import WorldView
from wsrun.core.resources import schemas_dir
from wsrun.core.step import StepContext, StepError, load_step
from wsrun.testing import effect_dicts, plan_step, run_step

VALIDATOR = jsonschema.Draft202012Validator(
    json.loads((schemas_dir() / "manifest.schema.json").read_text())
)


@pytest.fixture
def delivery(tmp_path: Path) -> Path:
    d = tmp_path / "delivery"
    (d / "products" / "sub").mkdir(parents=True)
    (d / "b.fits").write_bytes(b"bravo")
    (d / "a-1.txt").write_bytes(b"")
    (d / "products" / "p q.xml").write_bytes(b"<xml/>")
    (d / "products" / "sub" / "z.dat").write_bytes(os.urandom(5000))
    os.utime(d / "b.fits", ns=(0, 1_700_000_000_123_456_789))
    (d / "link").symlink_to("b.fits")
    (d / ".b.fits.wsrun-tmp").write_bytes(b"leftover")
    return d


def load(path: Path) -> dict:
    doc = json.loads(path.read_text(encoding="utf-8"))
    VALIDATOR.validate(doc)
    return doc


def test_manifest_schema_is_valid() -> None:
    jsonschema.Draft202012Validator.check_schema(VALIDATOR.schema)


def test_writes_a_valid_manifest(delivery: Path, tmp_path: Path) -> None:
    plan, result = run_step("manifest", {"root": "delivery"}, str(tmp_path))
    path = delivery / "MANIFEST.json"
    doc = load(path)
    assert doc["version"] == 1 and doc["algorithm"] == "sha256" and doc["root"] == "delivery"
    paths = [f["path"] for f in doc["files"]]
    assert paths == ["a-1.txt", "b.fits", "products/p q.xml", "products/sub/z.dat"]
    for entry in doc["files"]:
        data = (delivery / entry["path"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        mtime = int((delivery / entry["path"]).stat().st_mtime)
        assert entry["mtime"] == datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert doc["files"][1]["mtime"] == "2023-11-14T22:13:20Z"
    assert doc["count"] == 4
    assert doc["total_bytes"] == 5 + 6 + 5000
    assert result.outputs == {"file": str(path), "count": 4, "total_bytes": 5011}
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert effect_dicts(result.effects) == [
        {"op": "create_file", "path": str(path), "bytes": path.stat().st_size}
    ]
    assert path.read_bytes().endswith(b"}\n")


def test_algorithm_exclude_and_outside_target(delivery: Path, tmp_path: Path) -> None:
    params = {
        "root": "delivery",
        "to": "delivery.manifest.json",
        "algorithm": "md5",
        "exclude": ["products/sub", "*.txt"],
    }
    run_step("manifest", params, str(tmp_path))
    doc = load(tmp_path / "delivery.manifest.json")
    assert [f["path"] for f in doc["files"]] == ["b.fits", "products/p q.xml"]
    assert doc["files"][0]["md5"] == hashlib.md5(b"bravo").hexdigest()
    assert "sha256" not in doc["files"][0]


def test_schema_rejects_inconsistent_documents() -> None:
    good = {
        "version": 1,
        "algorithm": "sha1",
        "root": "r",
        "files": [{"path": "a", "size": 1, "sha1": "0" * 40, "mtime": "2024-01-01T00:00:00Z"}],
        "total_bytes": 1,
        "count": 1,
    }
    VALIDATOR.validate(good)
    for bad_entry in [
        {"path": "a", "size": 1, "sha256": "0" * 64, "mtime": "2024-01-01T00:00:00Z"},
        {"path": "a", "size": 1, "sha1": "0" * 39, "mtime": "2024-01-01T00:00:00Z"},
        {"path": "../a", "size": 1, "sha1": "0" * 40, "mtime": "2024-01-01T00:00:00Z"},
        {"path": "a", "size": 1, "sha1": "0" * 40, "mtime": "2024-01-01 00:00:00"},
        {
            "path": "a",
            "size": 1,
            "sha1": "0" * 40,
            "md5": "0" * 32,
            "mtime": "2024-01-01T00:00:00Z",
        },
    ]:
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate({**good, "files": [bad_entry]})


def test_unicode_names_are_written_as_utf8(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ünï cödé.txt").write_text("x")
    run_step("manifest", {"root": "r"}, str(tmp_path))
    raw = (tmp_path / "r" / "MANIFEST.json").read_bytes()
    assert "ünï cödé.txt".encode() in raw
    assert load(tmp_path / "r" / "MANIFEST.json")["files"][0]["path"] == "ünï cödé.txt"


def test_non_utf8_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    open(os.path.join(os.fsencode(tmp_path / "r"), b"bad\xff"), "wb").close()
    with pytest.raises(StepError, match="not valid UTF-8"):
        run_step("manifest", {"root": "r"}, str(tmp_path))
    assert not (tmp_path / "r" / "MANIFEST.json").exists()


def test_second_run_changes_nothing(delivery: Path, tmp_path: Path) -> None:
    run_step("manifest", {"root": "delivery"}, str(tmp_path))
    path = delivery / "MANIFEST.json"
    mtime = path.stat().st_mtime_ns
    plan, result = run_step("manifest", {"root": "delivery"}, str(tmp_path))
    assert plan.effects == result.effects == []
    assert path.stat().st_mtime_ns == mtime
    (delivery / "new.txt").write_text("new")
    _, result = run_step("manifest", {"root": "delivery"}, str(tmp_path))
    assert result.status == "changed"
    assert "new.txt" in [f["path"] for f in load(path)["files"]]


def test_dry_run_writes_nothing_and_plans_the_real_effects(delivery: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    dry = plan_step("manifest", {"root": "delivery"}, str(tmp_path), view=WorldView())
    assert tree(tmp_path) == before
    _, result = run_step("manifest", {"root": "delivery"}, str(tmp_path))
    assert effect_dicts(dry.effects) == effect_dicts(result.effects)
    assert dry.effects[0].content == (delivery / "MANIFEST.json").read_bytes()


def test_dry_run_chain(delivery: Path, tmp_path: Path) -> None:
    view = WorldView()
    readme = plan_step(
        "template", {"content": "{{ n }} files\n", "to": "delivery/README", "vars": {"n": 4}},
        str(tmp_path), view=view,
    )  # fmt: skip
    for e in readme.effects:
        view.record(e)
    manifest = plan_step("manifest", {"root": "delivery"}, str(tmp_path), view=view)
    doc = json.loads(manifest.effects[0].content)
    VALIDATOR.validate(doc)
    entry = next(f for f in doc["files"] if f["path"] == "README")
    assert entry["sha256"] == hashlib.sha256(b"4 files\n").hexdigest()
    assert entry["size"] == 8
    for e in manifest.effects:
        view.record(e)
    sums = plan_step("checksum", {"paths": "delivery/MANIFEST.json"}, str(tmp_path), view=view)
    digest = hashlib.sha256(manifest.effects[0].content).hexdigest()
    assert sums.outputs["checksums"] == {str(delivery / "MANIFEST.json"): digest}
    assert not (delivery / "README").exists() and not (delivery / "MANIFEST.json").exists()


def test_dry_run_with_unknown_content(delivery: Path, tmp_path: Path) -> None:
    view = WorldView()
    view.record(create_file(str(delivery / "unpacked.bin"), bytes=10))
    plan = plan_step("manifest", {"root": "delivery"}, str(tmp_path), view=view)
    assert effect_dicts(plan.effects) == [
        {"op": "create_file", "path": str(delivery / "MANIFEST.json")}
    ]
    assert plan.effects[0].content is None
    assert plan.outputs["total_bytes"] is None and plan.outputs["count"] == 5


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="no such directory"):
        run_step("manifest", {"root": "nope"}, str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(StepError, match="not a directory"):
        run_step("manifest", {"root": "f"}, str(tmp_path))
    (tmp_path / "r").mkdir()
    with pytest.raises(StepError, match="directory does not exist"):
        run_step("manifest", {"root": "r", "to": "missing/M.json"}, str(tmp_path))


def test_failed_write_leaves_no_partial_file(
    delivery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load_step("manifest")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = module.plan({"root": "delivery"}, ctx)
    before = tree(tmp_path)

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr("wsrun.core.fileio.os.replace", fail)
    with pytest.raises(OSError):
        module.apply(plan, ctx)
    assert tree(tmp_path) == before
