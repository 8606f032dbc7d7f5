"""The compact journal and its retention: long effects and outputs stored
compressed once per content, read a page at a time; `wsrun runs prune` and the
``wsrun.journal.retention`` setting; an old journal file still opens. Each test
runs on the SQLite journal and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import write
from fixtures.legacy_schemas import JOURNAL as SCHEMA
from wsrun.core.journal import Journal

# Every test once on the default journal and once on PostgreSQL (conftest.journal_url).
pytestmark = pytest.mark.usefixtures("journal_url")

FILES = 300


COPY = """
recipe: compact
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}", checksum: sha256}
"""


def tree(root: Path, files: int = FILES) -> Path:
    for i in range(files):
        path = root / f"d{i % 7}" / f"file-{i:05d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64))
    return root


def blob_count(journal: Journal) -> int:
    return journal._query("SELECT count(*) FROM {blobs}")[0][0]


def stored_blobs(journal: Journal) -> list[str]:
    return [h for (h,) in journal._query("SELECT hash FROM {blobs}")]


def needed(journal: Journal) -> set[str]:
    """The blobs the steps refer to, and the chunks those are made of."""
    refs = {
        ref
        for row in journal._query("SELECT effects_ref, outputs_ref FROM {steps}")
        for ref in row
        if ref
    }
    parts = journal._query("SELECT blob, part FROM {parts}")
    return refs | {part for blob, part in parts if blob in refs}


def newest_run(cli) -> str:
    return json.loads(cli("runs", "--json").out)[0]["id"]


def test_long_effects_are_stored_once_compressed_and_read_a_page_at_a_time(
    cli, tmp_path: Path
) -> None:
    src = tree(tmp_path / "src")
    recipe = write(tmp_path / "r.yaml", COPY)
    dest = tmp_path / "out"
    dry = cli(recipe, src, dest, "--dry-run", "--json")
    real = cli(recipe, src, dest, "--json")
    assert dry.code == 0 and real.code == 0, real.err
    performed = json.loads(real.out)["steps"][0]
    journal = Journal()
    # the step row keeps a count and hashes; the effects and the long outputs
    # (files, checksums) are blobs; the dry run's effects are the same blob
    refs = {
        run: journal._query(
            "SELECT effects, effect_count, effects_ref FROM {steps} WHERE run_id=?", (run,)
        )[0]
        for run in (json.loads(dry.out)["run_id"], json.loads(real.out)["run_id"])
    }
    (_, _, planned), (effects, count, ref) = refs.values()
    assert effects is None and count == len(performed["effects"]) and ref == planned
    [step] = journal.steps(json.loads(real.out)["run_id"])
    assert step["effects"] == performed["effects"]
    sums = step["outputs"]["checksums"]
    assert len(sums) == FILES and step["outputs"]["copied"] == FILES
    one = dest / "src" / "d3" / "file-00010.dat"
    assert sums[str(one)] == hashlib.sha256(one.read_bytes()).hexdigest()

    run_id = newest_run(cli)
    shown = cli("runs", "show", run_id, "--effects", "--limit", "50", "--page", "2")
    assert shown.code == 0, shown.err
    lines = [line.strip() for line in shown.out.splitlines() if line.startswith("      ")]
    want = performed["effects"][50:100]
    assert [line.split(" ", 2)[1] for line in lines[:-1]] == [e["path"] for e in want]
    assert lines[-1] == f"(effects 51-100 of {count}; --page 3 for more)"
    paged = json.loads(cli("runs", "show", run_id, "--effects", "--page", "2", "--json").out)
    assert paged["steps"][0]["effects"] == performed["effects"][100:200]
    assert paged["steps"][0]["effect_count"] == count
    assert cli("runs", "show", run_id, "--effects", "--step", "nope").code == 2
    assert cli("runs", "show", run_id, "--effects", "--page", "0").code == 2


def test_a_rerun_that_changes_nothing_stores_no_new_blob(cli, tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    recipe = write(tmp_path / "r.yaml", COPY)
    first = json.loads(cli(recipe, src, tmp_path / "out", "--json").out)
    before = blob_count(Journal())
    again = json.loads(cli(recipe, src, tmp_path / "out", "--json").out)
    assert again["steps"][0]["effects"] == [] and again["status"] == "ok"
    assert blob_count(Journal()) == before  # the files and checksums: the first run's blob
    [step] = Journal().steps(again["run_id"])
    assert step["effect_count"] == 0
    [before_step] = Journal().steps(first["run_id"])
    assert step["outputs"]["checksums"] == before_step["outputs"]["checksums"]
    assert len(step["outputs"]["checksums"]) == FILES
    assert step["outputs"]["unchanged"] == FILES


RESUMED = """
recipe: resumed
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
  flag: {type: path, positional: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}", checksum: sha256}
  - id: gate
    uses: copy
    with: {sources: "{{ inputs.flag }}", to: "{{ inputs.dest }}/gate"}
outputs:
  copied: "{{ steps.copy.outputs.files | length }}"
"""


def test_resume_reads_the_outputs_of_a_finished_step_from_its_blob(cli, tmp_path: Path) -> None:
    src = tree(tmp_path / "src")
    recipe = write(tmp_path / "r.yaml", RESUMED)
    flag = tmp_path / "flag"
    failed = cli(recipe, src, tmp_path / "out", flag, "--json")
    assert failed.code == 1
    flag.write_text("go")
    resumed = cli("resume", json.loads(failed.out)["run_id"], "--json")
    assert resumed.code == 0, resumed.err
    report = json.loads(resumed.out)
    assert report["steps"][0]["resumed"] and len(report["steps"][0]["effects"]) > FILES
    assert int(report["outputs"]["copied"]) == FILES


def age_runs(journal: Journal, seconds: float) -> None:
    """Move every run ``seconds`` into the past."""
    sql = journal.sql("UPDATE {runs} SET started = started - ?")
    journal.tables.write([(sql, (seconds,))])


def test_prune_by_age_and_count_deletes_runs_steps_and_unused_blobs(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", COPY)
    for n in range(3):
        assert cli(recipe, tree(tmp_path / f"src{n}", 40), tmp_path / f"out{n}").code == 0
    journal = Journal()
    age_runs(journal, 40 * 86400)
    assert cli(recipe, tree(tmp_path / "src3", 40), tmp_path / "out3").code == 0
    ids = [r.id for r in journal.runs()]  # newest first
    blobs = blob_count(journal)

    dry = cli("runs", "prune", "--older-than", "30d", "--keep", "2", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert json.loads(dry.out) == {"dry_run": True, "pruned": ids[2:], "held": [], "kept": 2}
    assert [r.id for r in journal.runs()] == ids and blob_count(journal) == blobs

    pruned = cli("runs", "prune", "--older-than", "30d", "--keep", "2")
    assert pruned.code == 0 and "pruned 2 runs; the journal keeps 2" in pruned.out
    assert [r.id for r in journal.runs()] == ids[:2]
    for gone in ids[2:]:
        assert journal.steps(gone) == []
    # each pruned run had blobs of its own (manifests and chunks of other files):
    # gone, and every blob left is one a kept run needs
    assert blob_count(journal) < blobs and set(stored_blobs(journal)) == needed(journal)
    for kept in ids[:2]:
        assert journal.steps(kept)[0]["effect_count"] > 40  # its blobs are still there

    # the count alone; then the age alone, which spares the new run
    assert cli("runs", "prune", "--keep", "1", "--json").code == 0
    assert [r.id for r in journal.runs()] == ids[:1]
    assert "pruned 0 runs" in cli("runs", "prune", "--older-than", "1d").out
    bad = cli("runs", "prune")
    assert bad.code == 2 and "--older-than" in bad.err and "--keep" in bad.err
    assert cli("runs", "prune", "--older-than", "soon").code == 2


def test_prune_keeps_running_and_resumable_runs(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", COPY)
    assert cli(recipe, tmp_path / "missing", tmp_path / "out").code == 1  # resumable
    assert cli(recipe, tmp_path / "missing", tmp_path / "out", "--dry-run").code == 1
    journal = Journal()
    journal.start_run("r-live", "x", "/r.yaml", {}, {}, False, str(tmp_path))  # this pid: alive
    age_runs(journal, 90 * 86400)
    [dry_failed] = [r.id for r in journal.runs() if r.dry_run]
    [failed] = [r.id for r in journal.runs() if r.id != "r-live" and not r.dry_run]
    result = json.loads(cli("runs", "prune", "--older-than", "30d", "--json").out)
    assert result["pruned"] == [dry_failed]  # a failed dry run cannot be resumed
    assert sorted(result["held"]) == sorted([failed, "r-live"])
    shown = cli("runs", "prune", "--older-than", "30d")
    assert "kept 2 old runs still running or resumable" in shown.out
    result = json.loads(
        cli("runs", "prune", "--older-than", "30d", "--include-resumable", "--json").out
    )
    assert result["pruned"] == [failed] and result["held"] == ["r-live"]
    assert [r.id for r in journal.runs()] == ["r-live"]


def test_the_retention_setting_prunes_at_the_end_of_a_run_at_most_once_a_day(
    cli, tmp_path: Path
) -> None:
    recipe = write(tmp_path / "r.yaml", "recipe: tiny\nsteps:\n  - {uses: noop, with: {a: 1}}\n")
    keep = ("--set", "wsrun.journal.retention=keep 1")
    for _ in range(3):
        assert cli(recipe, *keep).code == 0
    journal = Journal()
    # the first run pruned (nothing to prune yet); the next two waited a day
    assert len(journal.runs()) == 3
    last = float(journal.meta("last_prune") or 0)
    assert time.time() - last < 3600
    journal.set_meta("last_prune", repr(last - 2 * 86400))
    assert cli(recipe, *keep).code == 0
    assert len(journal.runs()) == 1
    bad = cli(recipe, "--set", "wsrun.journal.retention=forever")
    assert bad.code == 0 and "warning: journal retention not applied" in bad.err
    assert "'forever' is neither an age (30d) nor a count (keep 500)" in bad.err


@pytest.mark.parametrize("journal_url", ["sqlite"], indirect=True)
def test_prune_gives_the_space_back_to_the_file_system(tmp_path: Path, wsrun_home: Path) -> None:
    """Also for a journal written before auto_vacuum was set: the first prune
    rewrites it once."""
    path = wsrun_home / "journal.db"
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)  # auto_vacuum off, as journals were made before
    old.close()
    journal = Journal()
    for n in range(40):
        run_id = f"r{n}"
        journal.start_run(run_id, "x", "/r.yaml", {}, {}, False, str(tmp_path))
        effects = [{"op": "create_file", "path": os.urandom(40).hex()} for _ in range(500)]
        journal.start_step(run_id, "s", 1, "copy")
        journal.end_step(run_id, "s", "changed", effects, None)
        journal.end_run(run_id, "changed")
    journal.flush()
    journal.tables.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
    full = path.stat().st_size
    assert full > 500_000
    assert len(journal.prune(keep=2).runs) == 38
    assert path.stat().st_size < full / 5
    assert journal.tables.db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # type: ignore[union-attr]
    assert [len(s["effects"]) for s in journal.steps("r39")] == [500]


@pytest.mark.parametrize("journal_url", ["sqlite"], indirect=True)
def test_an_old_journal_file_opens_and_keeps_its_runs(
    cli, tmp_path: Path, wsrun_home: Path
) -> None:
    """A journal.db from before compact effects (no count or blob columns, no
    host): opened, migrated, its runs shown as before, new runs written."""
    path = wsrun_home / "journal.db"
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE runs (id TEXT PRIMARY KEY, recipe TEXT NOT NULL, recipe_path TEXT NOT NULL,
            inputs TEXT NOT NULL, settings TEXT NOT NULL, dry_run INTEGER NOT NULL,
            status TEXT NOT NULL, started REAL NOT NULL, ended REAL, pid INTEGER,
            workdir TEXT, outputs TEXT, error TEXT);
        CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL,
            seq INTEGER NOT NULL, uses TEXT NOT NULL, status TEXT NOT NULL,
            started REAL NOT NULL, ended REAL, effects TEXT, outputs TEXT, error TEXT,
            PRIMARY KEY (run_id, key));
        INSERT INTO runs VALUES ('r-old', 'old', '/old.yaml', '{}', '{}', 0, 'changed',
            1000, 1001, 1, '/', NULL, NULL);
        INSERT INTO steps VALUES ('r-old', 'copy', 1, 'copy', 'changed', 1000, 1001,
            '[{"op":"create_file","path":"/a"},{"op":"create_file","path":"/b"}]',
            '{"files":["/a","/b"]}', NULL);
        """
    )
    old.commit()
    old.close()
    shown = json.loads(cli("runs", "show", "r-old", "--json").out)
    assert shown["steps"][0]["effects"][1] == {"op": "create_file", "path": "/b"}
    assert shown["steps"][0]["effect_count"] == 2
    assert shown["steps"][0]["outputs"] == {"files": ["/a", "/b"]}
    page = cli("runs", "show", "r-old", "--effects", "--limit", "1", "--page", "2")
    assert "create_file /b" in page.out and "create_file /a" not in page.out
    src = tree(tmp_path / "src", 40)
    assert cli(write(tmp_path / "r.yaml", COPY), src, tmp_path / "out").code == 0
    new, old_run = (r.id for r in Journal().runs())
    assert old_run == "r-old"
    assert cli("runs", "prune", "--keep", "1").code == 0
    assert [r.id for r in Journal().runs()] == [new]


def test_the_run_api_pages_each_steps_effects(cli, tmp_path: Path, live_server) -> None:
    import httpx

    src = tree(tmp_path / "src")
    real = json.loads(cli(write(tmp_path / "r.yaml", COPY), src, tmp_path / "out", "--json").out)
    performed = real["steps"][0]["effects"]
    server = live_server()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        url = f"/api/runs/{real['run_id']}"
        first = c.get(url).json()
        paged = c.get(url, params={"effects_page": 2, "effects_size": 50}).json()
        html = c.get(f"/runs/{real['run_id']}")
    [step] = first["steps"]
    assert step["effect_count"] == len(performed) > 300
    assert first["effects_size"] == 500  # the default page holds them all
    assert [e["path"] for e in step["effects"]] == [e["path"] for e in performed]
    [step] = paged["steps"]
    assert [e["path"] for e in step["effects"]] == [e["path"] for e in performed[50:100]]
    assert (paged["effects_page"], paged["effects_size"]) == (2, 50)
    copied = next(e for e in step["effects"] if e["op"] != "create_dir")
    assert copied["checksum"] == hashlib.sha256(Path(copied["path"]).read_bytes()).hexdigest()
    assert html.status_code == 200 and performed[0]["path"] in html.text


def test_effects_at_a_steps_end_are_those_it_ended_with_not_those_planned(
    wsrun_home: Path,
) -> None:
    """A spooled plan's effects are serialised once when the step ends with the
    very stream it planned; a step that ends with other effects (a changed
    stream, or one that grew since) has those journaled, not the planned ones."""
    from wsrun.core.effects import EffectSpool, create_file, effect_dict
    from wsrun.core.spool import SPILL_AT, Mapped

    def spool(n: int, tag: str) -> EffectSpool:
        return EffectSpool(create_file(f"/d/{tag}{i}", i) for i in range(n))

    journal = Journal()
    journal.start_run("run", "r", "r.yaml", {}, {}, False, "/")
    planned = spool(SPILL_AT + 5, "a")
    cases = {
        "same": lambda: planned,
        "other": lambda: spool(SPILL_AT + 5, "b"),
        "grown": lambda: (planned.append(create_file("/d/late", 1)), planned)[1],
    }
    for key, ended in cases.items():
        journal.start_step("run", key, 1, "copy", Mapped(planned, effect_dict))
        done = ended()
        journal.end_step("run", key, "changed", Mapped(done, effect_dict), {})
        journal.flush()
        stored = journal._effects(
            *journal._query(
                "SELECT effects, effects_ref FROM {steps} WHERE run_id=? AND key=?", ("run", key)
            )[0]
        )
        assert stored == [effect_dict(e) for e in done], key
