"""The ``archivesspace`` step through recipes, against the fake ArchivesSpace in tests/fixtures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import write
from fixtures.fake_archivesspace import FakeArchivesSpace
from wsrun.packs.distillery.archivesspace_api import ArchivesSpace

SERIES = [
    {
        "title": "Series 1: Correspondence",
        "level": "series",
        "component_id": "S1",
        "children": [
            {
                "title": "Subseries 1.1: Millikan",
                "level": "subseries",
                "children": [
                    {
                        "title": "Letters, 1921",
                        "level": "file",
                        "component_id": "MS01_001",
                        "dates": [{"expression": "1921", "begin": "1921", "date_type": "single"}],
                    },
                    {"title": "Letters, 1922", "level": "file", "component_id": "MS01_002"},
                    {"title": "Letters, 1923", "level": "file", "component_id": "MS01_003"},
                ],
            }
        ],
    },
    {"title": "Series 2: Photographs", "level": "series", "component_id": "S2"},
]


@pytest.fixture
def aspace() -> Iterator[FakeArchivesSpace]:
    with FakeArchivesSpace(waypoint_size=2) as fake:  # small waypoints: paging is exercised
        yield fake


def recipe(tmp_path: Path, with_: str, outputs: str = "") -> Path:
    """A recipe with one archivesspace step logging in through settings."""
    body = "\n".join("      " + line for line in with_.strip().splitlines())
    text = f"""
recipe: aspace
settings:
  url: distillery.aspace.url
  user: distillery.aspace.user
  password: {{name: distillery.aspace.password, secret: true}}
steps:
  - id: aspace
    uses: archivesspace
    with:
      url: "{{{{ settings.url }}}}"
      username: "{{{{ settings.user }}}}"
      password: "{{{{ settings.password }}}}"
{body}
outputs:
  result: "{{{{ steps.aspace.outputs }}}}"
"""
    return write(tmp_path / "aspace.yaml", text)


def run(cli: Any, aspace: FakeArchivesSpace, path: Path, *args: str) -> Any:
    return cli(
        path,
        "--set",
        f"distillery.aspace.url={aspace.url}",
        "--set",
        f"distillery.aspace.user={aspace.username}",
        "--set",
        f"distillery.aspace.password={aspace.password}",
        "--json",
        *args,
    )


def ok(r: Any) -> dict[str, Any]:
    assert r.code == 0, r.err + r.out
    return json.loads(r.out)


def effects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for s in doc["steps"] for e in s["effects"]]


def test_resource_and_its_tree(cli: Any, tmp_path: Path, aspace: FakeArchivesSpace) -> None:
    uris = aspace.seed_collection("MS01", "Robert A. Millikan Papers", SERIES)
    aspace.seed_collection("MS02", "Other Papers", [{"title": "Elsewhere"}])
    doc = ok(run(cli, aspace, recipe(tmp_path, "action: resource\nidentifier: MS01")))
    result = doc["outputs"]["result"]
    assert result["resource"] == {
        "uri": uris["resource"],
        "title": "Robert A. Millikan Papers",
        "identifier": "MS01",
    }
    objects = result["archival_objects"]
    assert [(o["title"], o["level"], o["component_id"]) for o in objects] == [
        ("Series 1: Correspondence", "series", "S1"),
        ("Subseries 1.1: Millikan", "subseries", None),
        ("Letters, 1921", "file", "MS01_001"),
        ("Letters, 1922", "file", "MS01_002"),
        ("Letters, 1923", "file", "MS01_003"),
        ("Series 2: Photographs", "series", "S2"),
    ]
    folder = objects[2]
    assert folder == {
        "uri": uris["MS01_001"],
        "title": "Letters, 1921",
        "display_string": "Letters, 1921",
        "component_id": "MS01_001",
        "level": "file",
        "ref_id": folder["ref_id"],
        "dates": [{"expression": "1921", "begin": "1921", "date_type": "single"}],
        "ancestors": [uris["S1"], uris["Subseries 1.1: Millikan"]],
        "path": [
            {
                "uri": uris["S1"],
                "title": "Series 1: Correspondence",
                "level": "series",
                "component_id": "S1",
            },
            {
                "uri": uris["Subseries 1.1: Millikan"],
                "title": "Subseries 1.1: Millikan",
                "level": "subseries",
                "component_id": None,
            },
        ],
        "digital_objects": [],
    }
    # Three folders under one subseries with waypoints of two: the second page was fetched.
    assert any(r.path.endswith("/tree/waypoint") for r in aspace.received)
    assert aspace.writes() == []


def test_archival_object_by_uri(cli: Any, tmp_path: Path, aspace: FakeArchivesSpace) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    path = recipe(tmp_path, f"action: archival-object\nuri: {uris['MS01_002']}")
    got = ok(run(cli, aspace, path))["outputs"]["result"]["archival_object"]
    assert got["title"] == "Letters, 1922" and got["component_id"] == "MS01_002"
    assert [p["title"] for p in got["path"]] == [
        "Series 1: Correspondence",
        "Subseries 1.1: Millikan",
    ]


DIGITAL_OBJECT = """
action: digital-object
digital_object_id: MS01_001
title: Letters, 1921
archival_object: {folder}
file_versions:
  - file_uri: s3://archives/MS01/S1/Subseries-1.1/MS01_001/MS01_001_0001.jp2
    use_statement: master
    checksum: 9e107d9d372bb6826bd81d3542a419d6
    checksum_method: md5
    file_size_bytes: 1234
"""


def test_create_link_and_second_run_changes_nothing(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    path = recipe(tmp_path, DIGITAL_OBJECT.format(folder=uris["MS01_001"]))
    dry = ok(run(cli, aspace, path, "--dry-run"))
    assert aspace.writes() == [] and aspace.digital_objects() == []
    real = ok(run(cli, aspace, path))
    assert (
        effects(real)
        == effects(dry)
        == [
            {
                "op": "record",
                "path": "/repositories/2/digital_objects",
                "action": "create",
                "digital_object_id": "MS01_001",
            },
            {
                "op": "record",
                "path": uris["MS01_001"],
                "action": "link",
                "digital_object_id": "MS01_001",
            },
        ]
    )
    [record] = aspace.digital_objects()
    assert real["outputs"]["result"] == {"uri": record["uri"], "change": "created"}
    assert record == {
        "jsonmodel_type": "digital_object",
        "digital_object_id": "MS01_001",
        "title": "Letters, 1921",
        "uri": "/repositories/2/digital_objects/1",
        "lock_version": 0,
        "file_versions": [
            {
                "jsonmodel_type": "file_version",
                "file_uri": "s3://archives/MS01/S1/Subseries-1.1/MS01_001/MS01_001_0001.jp2",
                "use_statement": "master",
                "checksum": "9e107d9d372bb6826bd81d3542a419d6",
                "checksum_method": "md5",
                "file_size_bytes": 1234,
                "identifier": "1",
                "lock_version": 0,
            }
        ],
    }
    folder = aspace.records[uris["MS01_001"]]
    assert folder["instances"] == [
        {
            "jsonmodel_type": "instance",
            "instance_type": "digital_object",
            "digital_object": {"ref": record["uri"]},
        }
    ]
    assert folder["lock_version"] == 1
    writes = len(aspace.writes())
    again = ok(run(cli, aspace, path))
    assert again["status"] == "ok" and effects(again) == []
    assert again["outputs"]["result"] == {"uri": record["uri"], "change": "unchanged"}
    assert len(aspace.writes()) == writes and len(aspace.digital_objects()) == 1


def test_update_file_versions_replace_and_merge(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    ok(run(cli, aspace, recipe(tmp_path, DIGITAL_OBJECT.format(folder=uris["MS01_001"]))))
    access = """
action: digital-object
digital_object_id: MS01_001
title: Letters, 1921
file_versions_mode: merge
file_versions:
  - {file_uri: "https://islandora.example.edu/islandora/object/caltech:1", use_statement: image-service, publish: true}
"""
    doc = ok(run(cli, aspace, recipe(tmp_path, access)))
    uri = "/repositories/2/digital_objects/1"
    assert effects(doc) == [
        {
            "op": "record",
            "path": "/repositories/2/digital_objects",
            "action": "update",
            "digital_object_id": "MS01_001",
        }
    ]
    assert doc["outputs"]["result"] == {"uri": uri, "change": "updated"}
    [record] = aspace.digital_objects()
    assert record["lock_version"] == 1
    assert [(v["file_uri"], v["use_statement"]) for v in record["file_versions"]] == [
        ("s3://archives/MS01/S1/Subseries-1.1/MS01_001/MS01_001_0001.jp2", "master"),
        ("https://islandora.example.edu/islandora/object/caltech:1", "image-service"),
    ]
    assert ok(run(cli, aspace, recipe(tmp_path, access)))["status"] == "ok"
    # replace: exactly the versions given
    replaced = access.replace("merge", "replace")
    ok(run(cli, aspace, recipe(tmp_path, replaced)))
    [record] = aspace.digital_objects()
    assert [v["file_uri"] for v in record["file_versions"]] == [
        "https://islandora.example.edu/islandora/object/caltech:1"
    ]
    assert record["lock_version"] == 2


def test_component_with_file_version(cli: Any, tmp_path: Path, aspace: FakeArchivesSpace) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    text = f"""
recipe: components
settings:
  password: {{name: distillery.aspace.password, secret: true}}
steps:
  - id: object
    uses: archivesspace
    with:
      url: "{aspace.url}"
      username: admin
      password: "{{{{ settings.password }}}}"
      action: digital-object
      digital_object_id: MS01_001
      title: Letters, 1921
      archival_object: {uris["MS01_001"]}
  - id: page
    uses: archivesspace
    with:
      url: "{aspace.url}"
      username: admin
      password: "{{{{ settings.password }}}}"
      action: digital-object-component
      digital_object: MS01_001
      component_id: MS01_001_0001
      title: Letters, 1921, image 1
      file_versions:
        - {{file_uri: "s3://archives/MS01/MS01_001/MS01_001_0001.jp2", checksum: abc123, checksum_method: md5}}
"""
    path = write(tmp_path / "components.yaml", text)
    args = ["--set", f"distillery.aspace.password={aspace.password}", "--json"]
    dry = ok(cli(path, *args, "--dry-run"))
    real = ok(cli(path, *args))
    assert effects(dry) == effects(real)
    assert effects(real)[-1] == {
        "op": "record",
        "path": "/repositories/2/digital_object_components",
        "action": "create",
        "component_id": "MS01_001_0001",
    }
    [component] = aspace.components()
    assert component == {
        "jsonmodel_type": "digital_object_component",
        "component_id": "MS01_001_0001",
        "title": "Letters, 1921, image 1",
        "digital_object": {"ref": "/repositories/2/digital_objects/1"},
        "uri": "/repositories/2/digital_object_components/1",
        "lock_version": 0,
        "file_versions": [
            {
                "jsonmodel_type": "file_version",
                "file_uri": "s3://archives/MS01/MS01_001/MS01_001_0001.jp2",
                "checksum": "abc123",
                "checksum_method": "md5",
                "identifier": "1",
                "lock_version": 0,
            }
        ],
    }
    again = ok(cli(path, *args))
    assert again["status"] == "ok" and len(aspace.components()) == 1


def test_a_dry_run_sees_records_planned_by_earlier_steps(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    """A digital object created and linked by one step, then updated by a later one:
    the dry run plans the update (not a second create and link), like the real run."""
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    step = """
  - id: {id}
    uses: archivesspace
    with:
      url: "{url}"
      username: admin
      password: "{{{{ settings.password }}}}"
      action: digital-object
      digital_object_id: MS01_001
      title: Letters, 1921
      archival_object: {folder}
      file_versions: {versions}
      file_versions_mode: merge
"""
    steps = step.format(id="first", url=aspace.url, folder=uris["MS01_001"], versions="[]")
    steps += step.format(
        id="later",
        url=aspace.url,
        folder=uris["MS01_001"],
        versions='[{file_uri: "https://islandora.example.edu/object/caltech:1"}]',
    )
    text = (
        "recipe: twice\nsettings:\n  password: {name: distillery.aspace.password, secret: true}\n"
    )
    path = write(tmp_path / "twice.yaml", text + "steps:" + steps)
    args = ["--set", f"distillery.aspace.password={aspace.password}", "--json"]
    dry = ok(cli(path, *args, "--dry-run"))
    assert aspace.writes() == []
    real = ok(cli(path, *args))
    planned = [(s["id"], s["effects"]) for s in dry["steps"]]
    assert planned == [(s["id"], s["effects"]) for s in real["steps"]]
    assert [[e["action"] for e in effects] for _, effects in planned] == [
        ["create", "link"],
        ["update"],
    ]
    [record] = aspace.digital_objects()
    assert [v["file_uri"] for v in record["file_versions"]] == [
        "https://islandora.example.edu/object/caltech:1"
    ]
    assert record["lock_version"] == 1  # created, then updated once
    find = "action: find-digital-object\ndigital_object_id: MS01_001\n"
    found = ok(run(cli, aspace, recipe(tmp_path, find)))["outputs"]["result"]["digital_object"]
    assert found["uri"] == record["uri"] and found["title"] == "Letters, 1921"
    assert [v["file_uri"] for v in found["file_versions"]] == [
        "https://islandora.example.edu/object/caltech:1"
    ]
    missing = ok(run(cli, aspace, recipe(tmp_path, find.replace("MS01_001", "MS01_404"))))
    assert missing["outputs"]["result"]["digital_object"] is None


def test_wrong_password_is_one_line_without_the_password(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    aspace.seed_collection("MS01", "Papers", SERIES)
    wrong = "Not-The-Password-99"
    r = cli(
        recipe(tmp_path, "action: resource\nidentifier: MS01"),
        "--set",
        f"distillery.aspace.url={aspace.url}",
        "--set",
        "distillery.aspace.user=admin",
        "--set",
        f"distillery.aspace.password={wrong}",
    )
    assert r.code != 0
    errors = [ln for ln in r.err.splitlines() if "login failed" in ln]
    assert len(errors) == 1
    assert f"ArchivesSpace login failed for user 'admin' at {aspace.url}" in errors[0]
    assert "check the user name and password" in errors[0]
    assert wrong not in r.err + r.out


def test_unknown_identifier_is_a_clear_error(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    aspace.seed_collection("MS01", "Papers", SERIES)
    r = run(cli, aspace, recipe(tmp_path, "action: resource\nidentifier: MS99"))
    assert r.code != 0
    assert f"no resource with identifier 'MS99' in repository 2 at {aspace.url}" in r.err


def test_password_is_never_kept(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace, wsrun_home: Path
) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    path = recipe(tmp_path, DIGITAL_OBJECT.format(folder=uris["MS01_001"]))
    outputs = [run(cli, aspace, path, "--dry-run"), run(cli, aspace, path)]
    outputs.append(cli("runs", "--json"))
    secret = aspace.password.encode()
    assert all(secret not in (r.out + r.err).encode() for r in outputs)
    kept = [p for p in wsrun_home.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert kept == []
    # The fake saw it, so the test would notice if it had been sent some other way.
    assert any(r.body.get("password") == aspace.password for r in aspace.received if r.body)


def test_expired_session_logs_in_again(archivesspace: FakeArchivesSpace) -> None:
    aspace = archivesspace  # the conftest fixture later recipe tests use
    aspace.seed_collection("MS01", "Papers", SERIES)
    with ArchivesSpace(aspace.url, aspace.username, aspace.password) as client:
        assert client.find_resource(2, "MS01") is not None
        aspace.expire_sessions()
        assert client.find_resource(2, "MS01") is not None
    logins = [r for r in aspace.received if r.path.endswith("/login")]
    assert len(logins) == 2


def test_without_file_versions_an_update_keeps_them(
    cli: Any, tmp_path: Path, aspace: FakeArchivesSpace
) -> None:
    uris = aspace.seed_collection("MS01", "Papers", SERIES)
    ok(run(cli, aspace, recipe(tmp_path, DIGITAL_OBJECT.format(folder=uris["MS01_001"]))))
    retitle = "action: digital-object\ndigital_object_id: MS01_001\ntitle: Letters, 1921-1922"
    doc = ok(run(cli, aspace, recipe(tmp_path, retitle)))
    assert doc["outputs"]["result"]["change"] == "updated"
    [record] = aspace.digital_objects()
    assert record["title"] == "Letters, 1921-1922"
    assert [v["use_statement"] for v in record["file_versions"]] == ["master"]
