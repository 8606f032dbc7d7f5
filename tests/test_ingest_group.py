"""``ingest_envoy``'s staging area is collected all or nothing (an atomic group), attacked.

A staging killed by SIGKILL is continued by the next run (what was staged whole is not
written again), which then ingests exactly the products an uninterrupted run ingests; a
failed ingest is retried on the same staged files (a staging area once complete is never
staged again unless its processing directory changed); a dry run shows the real run's
effects, also of a continued staging; a directory already staged (``--observation``, or a
staging directory given to ``--calibration``) is used as it is; a directory at the
staging area's place that is not one is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import killer_script, snapshot, write
from fixtures import processing, staging
from wsrun.core import groups
from wsrun.core.journal import Journal
from wsrun.stores.archive.store import ArchiveStore

ROOT_SETTING = "edu.nrao.workspaces.ProcessingSettings.rootDirectory"
CAL_LOCATOR = "uid://evla/calibration/6f0e1d2c-3b4a-4c5d-8e9f-0a1b2c3d4e5f"
#: What the ingest envoy writes into a staging area itself (request by request).
OWN = ("ingestion-manifest.json", "ingestion_artifacts")

KILLER = killer_script("wsrun.packs.nrao.ingestion_staging", "stage_file")


def _imaging(base: Path) -> Path:
    """An imaging processing directory whose metadata.json names its calibration."""
    root = processing.imaging(base).root
    meta = json.loads((root / "metadata.json").read_text())
    meta |= {"calProductLocator": CAL_LOCATOR, "sdmId": processing.EB}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _products(stage: Path) -> dict[str, str]:
    """The staged products (not the manifest and artifacts tar) -> sha256."""
    return {p.name: _sha256(p) for p in stage.iterdir() if not p.name.startswith(OWN)}


def _files(stage: Path) -> dict[str, tuple[int, int]]:
    """Staged product -> (inode, mtime_ns): the same file, not one staged again."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in stage.iterdir()
        if not p.name.startswith(OWN)
    }


def _archived(home: Path, stage: Path, tmp: Path) -> dict[str, str]:
    """Each file the archive holds from ``stage`` -> sha256 of the bytes it gives back
    (``get`` refuses stored bytes that fail their recorded checksum)."""
    archive = ArchiveStore.open(str(home / "archive"))
    out: dict[str, str] = {}
    try:
        for record in archive.products():
            if record.ingestion_path != str(stage):
                continue
            got = tmp / "got" / record.locator.rsplit("/", 1)[1]
            got.mkdir(parents=True)
            for path in archive.get(record.locator, str(got)):
                out[os.path.relpath(path, got)] = _sha256(Path(path))
    finally:
        archive.close()
    return out


def _effects(out: str, step: str) -> list[dict]:
    [found] = [s for s in json.loads(out)["steps"] if s["id"] == step]
    return found["effects"]


def _same_plan(dry: str, real: str) -> bool:
    """The dry run's effects are the real run's, where a size the dry run could not know
    (no ``bytes``: the gzipped weblog) matches any."""
    planned, done = json.loads(dry)["steps"], json.loads(real)["steps"]
    for p, d in zip(planned, done, strict=True):
        for e, r in zip(p["effects"], d["effects"], strict=True):
            if "bytes" not in e:
                r.pop("bytes", None)
    return [(s["id"], s["effects"]) for s in planned] == [(s["id"], s["effects"]) for s in done]


@pytest.mark.parametrize(
    ("how", "damage"),
    [
        ("rerun", "none"),
        ("resume", "none"),
        ("rerun", "a staged file changed behind wsrun's back"),
    ],
)
def test_killed_staging_is_continued_and_ingests_what_a_whole_run_does(
    cli, tmp_path: Path, wsrun_home: Path, how: str, damage: str
) -> None:
    img = _imaging(tmp_path / "spool")
    ws = tmp_path / "ws"
    args = ["nrao/ingest_envoy", "--image", str(img), "--set", f"{ROOT_SETTING}={ws}"]
    killer = write(tmp_path / "killer.py", KILLER)
    env = {**os.environ, "KILL_AFTER": "3", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(killer), *args, "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    # Nothing at the staging area's place (the workspaces root did not exist, so the
    # whole of it is staged beside it) and nothing ingested.
    assert not ws.exists()
    kept = Path(groups.staging_of(str(ws))) / "staging" / "image-imaging"
    before = _files(kept)
    assert len(before) == 3 and not (wsrun_home / "archive").exists()
    if damage != "none":
        # Same size and mtime: a continued staging trusts a whole staged file, so only
        # the archive check below can tell (and must).
        victim = sorted(kept.glob("*.fits"))[0]
        st = victim.stat()
        victim.write_bytes(b"\0" * st.st_size)
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    snap = snapshot(tmp_path)
    again = args
    if how == "resume":  # the killed run, continued (its settings are given again)
        journal = Journal(str(wsrun_home))
        try:
            (killed,) = journal.runs(5)
        finally:
            journal.close()
        again = ["resume", killed.id, *args[3:]]
    dry = cli(*again, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == snap
    real = cli(*again, "--json")
    assert real.code == 0, real.err
    assert _same_plan(dry.out, real.out), (dry.out, real.out)

    stage = ws / "staging" / "image-imaging"
    staged = [e["path"] for e in _effects(real.out, "staging") if e["op"] == "create_file"]
    assert sorted(Path(p).name for p in staged) == sorted(set(_files(stage)) - set(before))
    assert {n: _files(stage)[n] for n in before} == before  # continued, not staged again
    assert not Path(groups.staging_of(str(ws))).exists()

    # An uninterrupted run of the same processing directory stages the same bytes, and
    # the archive gives back exactly what was staged.
    clean = cli(*args[:3], "--set", f"{ROOT_SETTING}={tmp_path / 'clean'}")
    assert clean.code == 0, clean.err
    reference = _products(tmp_path / "clean" / "staging" / "image-imaging")
    archived = _archived(wsrun_home, stage, tmp_path)
    ingested = {n: d for n, d in _products(stage).items() if n != "aux_image_metadata.json"}
    assert {n: d for n, d in archived.items() if not n.startswith(OWN)} == ingested
    wrong = {n for n, d in _products(stage).items() if reference[n] != d}
    if damage == "none":
        assert wrong == set() and set(_products(stage)) == set(reference)
    else:
        assert wrong == {victim.name}


@pytest.mark.parametrize("retry", [[], ["--reingest"]])
def test_a_failed_ingest_is_retried_on_the_same_staged_files(
    cli, tmp_path: Path, wsrun_home: Path, retry: list[str]
) -> None:
    cal = processing.vla_calibration(tmp_path).root
    ws = tmp_path / "ws"
    args = ["nrao/ingest_envoy", "--calibration", str(cal), "--set", f"{ROOT_SETTING}={ws}"]
    bad = tmp_path / "archive-is-a-file"
    bad.write_text("x")
    failed = cli(*args, "--set", f"edu.nrao.archive.url={bad}/a", "--json")
    assert failed.code == 1 and "step 'ingest'" in failed.err
    stage = ws / "staging" / "calibration-calibration"
    staged = _files(stage)
    assert sorted(staged) == [f"{processing.EB}.caltables.tar", "weblog.tgz"]
    assert (stage / "ingestion-manifest.json").is_file()

    again = cli(*args, *retry, "--json")
    assert again.code == 0, again.err
    [group] = [s for s in json.loads(again.out)["steps"] if s["id"] == "staging"]
    assert group["status"] == "ok" and group["effects"] == []
    assert _files(stage) == staged  # the very files the failed run staged
    manifest = json.loads((stage / "ingestion-manifest.json").read_text())
    assert manifest["parameters"]["reingest"] is bool(retry)
    archived = _archived(wsrun_home, stage, tmp_path)
    assert {n: d for n, d in archived.items() if not n.startswith(OWN)} == _products(stage)

    # The check has teeth: a processing directory that changed since is staged again
    # (the staging area replaced whole), and the archive then wants --reingest.
    html = cal / "working" / "pipeline-20190530T120000" / "html" / "index.html"
    html.write_text("<html>recalibrated</html>")
    dry = cli(*args, "--dry-run", "--json")
    changed = cli(*args, "--json")
    assert changed.code == 1 and "run again with --reingest" in changed.err
    assert dry.code == 1 and _same_plan(dry.out, changed.out)
    assert _files(stage) != staged and _files(stage)["weblog.tgz"] != staged["weblog.tgz"]
    [group] = [s for s in json.loads(changed.out)["steps"] if s["id"] == "staging"]
    assert group["status"] == "changed"
    assert cli(*args, "--reingest").code == 0


def test_a_directory_already_staged_is_used_as_it_is(cli, tmp_path: Path) -> None:
    """--calibration with a staging directory, and --observation: no group, nothing
    staged, nothing left beside the directory."""
    area = staging.calibration(tmp_path / "staging" / "cal-1").parent
    before = {p.name: p.stat().st_ino for p in area.iterdir() if not p.name.startswith(OWN)}
    setting = f"edu.nrao.workspaces.IngestionSettings.stagingDirectory={tmp_path / 'staging'}"
    r = cli(
        "nrao/ingest_envoy",
        "--calibration",
        "cal-1",
        "--input",
        CAL_LOCATOR,
        "--set",
        setting,
        "--json",
    )
    assert r.code == 0, r.err
    [group] = [s for s in json.loads(r.out)["steps"] if s["id"] == "staging"]
    assert group["status"] == "skipped"
    assert {
        n: i for n, i in ((p.name, p.stat().st_ino) for p in area.iterdir()) if n in before
    } == before
    assert sorted(os.listdir(tmp_path / "staging")) == ["cal-1"]


def test_a_foreign_directory_at_the_staging_area_is_never_written(cli, tmp_path: Path) -> None:
    cal = processing.vla_calibration(tmp_path).root
    ws = tmp_path / "ws"
    stage = ws / "staging" / "calibration-calibration"
    stage.mkdir(parents=True)
    (stage / "notes.txt").write_text("mine")
    r = cli("nrao/ingest_envoy", "--calibration", str(cal), "--set", f"{ROOT_SETTING}={ws}")
    assert r.code == 1 and "holds no staging area" in r.err
    assert os.listdir(stage) == ["notes.txt"]
    assert os.listdir(ws / "staging") == ["calibration-calibration"]
