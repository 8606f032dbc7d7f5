"""Ingest at scale (issue 15): an execution block whose directory holds a
million files is ingested with no Python object per file held, in the step
(its files, effects and the no-op check), the archive store (stored rows,
content to clean up) and the metadata commit (rows inserted in batches).

The spool's and the commit's thresholds are lowered here so a few hundred
files take the path a million take; on that path the tests attack what
ingest promises: all or nothing when a failure comes in the middle of a big
batch, the re-run of the very same files left alone (and any other content
refused), and a dry run that shows the real run's effects."""

from __future__ import annotations

import gc
import hashlib
import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import dry_then_real, snapshot
from fixtures.archives import backend_url, temp_left
from wsrun.core import spool
from wsrun.core.fs import WorldView
from wsrun.core.step import Plan, Result, StepContext, StepError, load_step
from wsrun.stores.archive import metadata
from wsrun.stores.archive.metadata import SqlMetadata
from wsrun.stores.archive.store import Archive, ArchiveStore
from wsrun.testing import plan_step

#: Rows per INSERT batch in these tests: 400 files are 10 batches.
ROWS = 40


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill after 200 records in chunks of 16, insert 40 rows a batch, sweep
    100 noted contents a page, hash with 64 KiB buffers (see test_streaming.small_spool). The no-op check
    sorts on disk in runs of SPILL_AT records, each a spool of its own: 200
    keeps their count, what is left to grow, to 20 at 4,000 files."""
    from wsrun.core import hashing

    monkeypatch.setattr(spool, "SPILL_AT", 200)
    monkeypatch.setattr(spool, "CHUNK", 16)
    monkeypatch.setattr(metadata, "ROWS_AT_ONCE", ROWS)
    monkeypatch.setattr(Archive, "SWEEP_PAGE", 100)
    monkeypatch.setattr(hashing, "CHUNK", 1 << 16)


@pytest.fixture(params=["embedded", "pg-local"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def archive_url(request: pytest.FixtureRequest, backend: str, where: Path) -> str:
    return backend_url(request, backend, where)


#: Names whose order differs between code points and a language's collation
#: (PostgreSQL's en_US puts "a" before "B" and ignores "_" and "-").
ODD_NAMES = ["B", "a", "_c", "A-b", "ab", "Z.z", "é"]


def stage_eb(root: Path, files: int) -> Path:
    """An execution block (SDM directory) of ``files`` small files, 20 to a
    directory, some empty (one content for all of them), as
    ``ingest_envoy --observation`` stages it; its manifest."""
    for i in range(files):
        d = root / "sdm" / f"d{i // 20:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(b"%d" % i * (i % 50))
    for name in ODD_NAMES:
        (root / "sdm" / name).write_bytes(name.encode() * 3)
    manifest = root / "ingestion-manifest.json"
    product = {"type": "execution_block", "filename": "sdm"}
    document = {
        "parameters": {"telescope": "EVLA", "ingestion_path": ".", "calibrate": False},
        "output_group": {"science_products": [product]},
    }
    manifest.write_text(json.dumps(document))
    return manifest


def staged_count(files: int) -> int:
    return files + len(ODD_NAMES)


def ingest(manifest: Path, url: str, workdir: Path) -> tuple[Plan, Result]:
    module = load_step("ingest")
    ctx = StepContext(fs=WorldView(), workdir=str(workdir), step_id="ingest")
    plan = module.plan({"manifest": str(manifest), "archive": url}, ctx)
    return plan, module.apply(plan, ctx)


def archive_files(root: Path) -> dict[str, tuple[str, int]]:
    """The archive directory, without SQLite's WAL files (a reader may create them)."""
    return {k: v for k, v in snapshot(root).items() if not k.endswith(("-wal", "-shm"))}


def archive_state(url: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """What a reader sees (every product with its files), what is stored, and
    unverified copies left behind."""
    archive = ArchiveStore.open(url)
    assert isinstance(archive, Archive)
    try:
        products = [archive.product(p.locator).to_json() for p in archive.products()]  # type: ignore[union-attr]
        return products, sorted(archive.content.blobs()), temp_left(archive)
    finally:
        archive.close()


#: What ingesting 3,000 more files may add to the peak: under 100 bytes a
#: file. Holding the files as a list (FileSpec objects), the effects as a
#: list, or a digest per file (the old dict) costs 200 to 400 bytes a file each.
BOUND = 300_000


def test_ingest_memory_does_not_grow_with_the_files(
    small_batches: None, request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    """Structural: the peak memory of planning and applying an ingest of 4,000
    files is that of 1,000 (and of a re-run, the no-op check hashing every
    file), while the archive records every file, exactly."""
    warm = stage_eb(tmp_path / "warm", 5)  # imports, connections, buffers
    ingest(warm, archive_url(request, backend, tmp_path / "warm-archive"), tmp_path)
    peaks: dict[tuple[int, str], int] = {}
    for n in (1000, 4000):
        manifest = stage_eb(tmp_path / f"eb{n}", n)
        url = archive_url(request, backend, tmp_path / f"archive{n}")
        for run in ("first", "again"):
            gc.collect()
            tracemalloc.start()
            try:
                plan, result = ingest(manifest, url, tmp_path)
                peaks[n, run] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            if run == "first":
                assert result.status == "changed" and len(plan.effects) == staged_count(n) + 1
                assert plan.effects.spilled  # type: ignore[attr-defined]
            else:
                assert plan.effects == [] and result.status == "ok"
            del plan, result
        archive = ArchiveStore.open(url)
        [eb] = [p for p in archive.products() if p.ingestion_path == str(tmp_path / f"eb{n}")]
        stored = list(archive.stored_files(eb.locator))
        archive.close()
        assert len(stored) == staged_count(n)
        for f in stored[:: n // 10]:
            data = (tmp_path / f"eb{n}" / f.name).read_bytes()
            assert (f.size, f.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    for run in ("first", "again"):
        assert peaks[4000, run] - peaks[1000, run] < BOUND, peaks


@pytest.mark.parametrize("fault", ["removed", "truncated", "metadata"])
def test_a_failure_mid_batch_leaves_the_archive_as_it_was(
    small_batches: None,
    request: pytest.FixtureRequest,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
) -> None:
    """A reingest of 400 files replacing an earlier one fails part way: a file
    removed or cut short after the plan (two thirds through the files,
    a hundred stored before it), or the database refusing the fifth batch of
    file rows. The earlier ingestion is still all there is: its products,
    files and content, and nothing this attempt stored is left."""
    manifest = stage_eb(tmp_path / "eb", 400)
    url = archive_url(request, backend, tmp_path)
    ingest(manifest, url, tmp_path)
    before = archive_state(url)
    for i in range(0, 400, 3):  # other content: the reingest stores new files
        (tmp_path / "eb" / "sdm" / f"d{i // 20:04d}" / f"f{i:05d}").write_bytes(b"new %d" % i)
    document = json.loads(manifest.read_text())
    document["parameters"]["reingest"] = True
    manifest.write_text(json.dumps(document))
    module = load_step("ingest")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), step_id="ingest")
    plan = module.plan({"manifest": str(manifest), "archive": url}, ctx)
    victim = tmp_path / "eb" / "sdm" / "d0013" / "f00267"
    if fault == "removed":
        victim.unlink()
    elif fault == "truncated":
        victim.write_bytes(b"x")
    else:
        real = SqlMetadata._exec_many
        batches: list[str] = []

        def refuse_fifth(self: SqlMetadata, sql: str, rows: list) -> None:
            if sql.startswith("INSERT INTO {files}"):
                batches.append(sql)
                if len(batches) == 5:
                    assert len(rows) == ROWS
                    real(self, sql.replace("sha256)", "no_such_column)"), rows)
            real(self, sql, rows)

        monkeypatch.setattr(SqlMetadata, "_exec_many", refuse_fifth)
    failures = (StepError, OSError, sqlite3.Error, psycopg.Error)
    with pytest.raises(failures, match="f00267|changed while|no_such_column"):
        module.apply(plan, ctx)
    assert archive_state(url) == before


def test_the_same_files_again_are_left_alone_and_others_refused(
    small_batches: None, request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    """A re-run of an execution block of 300 files does nothing and changes
    nothing in the archive. The check compares every name, size and digest
    (streamed in name order from both sides, whatever the database's
    collation): one file's content changed (same size), or one file
    renamed, is other content and refused."""
    manifest = stage_eb(tmp_path / "eb", 300)
    url = archive_url(request, backend, tmp_path)
    if backend == "pg-local":
        # A database whose collation is not code point order (en_US, most
        # installations): ORDER BY name alone sorts "a" before "B".
        import psycopg

        with psycopg.connect(request.getfixturevalue("pg_url")) as conn:
            conn.execute('ALTER TABLE archive_files ALTER COLUMN name TYPE text COLLATE "en-x-icu"')
    _, first = ingest(manifest, url, tmp_path)
    archived = archive_files(tmp_path / "archive"), archive_state(url)
    plan, again = ingest(manifest, url, tmp_path)
    assert plan.effects == [] and again.status == "ok" and again.outputs == first.outputs
    assert (archive_files(tmp_path / "archive"), archive_state(url)) == archived

    deep = tmp_path / "eb" / "sdm" / "d0011" / "f00229"
    kept = deep.read_bytes()
    deep.write_bytes(kept[::-1].replace(b"2", b"3"))  # same size, other bytes
    assert len(deep.read_bytes()) == len(kept) and deep.read_bytes() != kept
    with pytest.raises(StepError, match="already ingested as .* with other content"):
        ingest(manifest, url, tmp_path)
    deep.write_bytes(kept)
    deep.rename(deep.with_name("f00229x"))
    with pytest.raises(StepError, match="already ingested as .* with other content"):
        ingest(manifest, url, tmp_path)
    deep.with_name("f00229x").rename(deep)
    plan, again = ingest(manifest, url, tmp_path)
    assert plan.effects == [] and again.outputs == first.outputs


def test_a_spooled_dry_run_equals_the_real_run(
    small_batches: None, cli, request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> None:
    """Past the spool's threshold, through the step and the command line: the
    dry run writes nothing and plans the real run's effects, one upload per
    file with its exact size and the record of the product; the journal
    pages through them all; a re-run has none."""
    from wsrun.core.journal import Journal

    manifest = stage_eb(tmp_path / "eb", 300)
    url = archive_url(request, backend, tmp_path)
    params = {"manifest": str(manifest), "archive": url}
    before = snapshot(tmp_path)
    dry = plan_step("ingest", params, str(tmp_path), view=WorldView())
    assert snapshot(tmp_path) == before
    uploads = [e for e in dry.effects if e.op == "upload"]
    staged = {str(p): p.stat().st_size for p in (tmp_path / "eb" / "sdm").rglob("*") if p.is_file()}
    assert {e.path: e.bytes for e in uploads} == staged and len(uploads) == len(staged)

    # The envoy's way: the execution block staged by an earlier step, which a
    # dry run only plans (its ingest reads the planned tree).
    recipe = tmp_path / "ingest.yaml"
    recipe.write_text(
        "recipe: stage-and-ingest\n"
        "inputs: {source: {type: path, positional: true}, stage: {type: path}, archive: {type: string}}\n"
        "steps:\n"
        "  - id: stage\n"
        "    uses: copy\n"
        '    with: {sources: "{{ inputs.source }}", to: "{{ inputs.stage }}"}\n'
        "  - id: ingest\n"
        "    uses: ingest\n"
        '    with: {manifest: "{{ inputs.stage }}/eb/ingestion-manifest.json", archive: "{{ inputs.archive }}"}\n'
    )
    stage = tmp_path / "stage"
    args = [recipe, tmp_path / "eb", "--stage", stage, "--archive", url, "--json"]
    planned, done = dry_then_real(cli, tmp_path, *args)
    dry_step = json.loads(planned.out)["steps"][1]
    real_step = json.loads(done.out)["steps"][1]
    moved = {str(stage / Path(e.path).relative_to(tmp_path)) for e in uploads}
    assert {e["path"] for e in dry_step["effects"] if e["op"] == "upload"} == moved
    assert [e.get("bytes") for e in dry_step["effects"][:-1]] == [e.bytes for e in uploads]
    assert real_step["effects"] == dry_step["effects"]
    assert (
        real_step["effects"][-1]["op"] == "record" and len(real_step["effects"]) == len(staged) + 1
    )
    journal = Journal(str(tmp_path / "wsrun-home"))
    run_id = json.loads(done.out)["run_id"]
    steps = {s["key"]: s for s in journal.steps(run_id, effects_limit=5)}
    assert steps["ingest"]["effect_count"] == len(staged) + 1
    assert journal.effects(run_id, "ingest", 150, 10) == real_step["effects"][150:160]
    journal.close()
    again = cli(*args)
    assert again.code == 0, again.err
    assert [s["effects"] for s in json.loads(again.out)["steps"]] == [[], []]


def test_postgres_notes_content_a_batch_at_a_time_before_placing_it(
    small_batches: None, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch
) -> None:
    """On PostgreSQL, where ingests run at once, content is noted for the sweep
    before it becomes visible at its address (so a failed ingest's content is
    found again), in batches of NOTE_BATCH staged files: three round trips for
    600 files, not one a file."""
    from wsrun.stores.archive.content import LocalContent
    from wsrun.stores.archive.metadata import PostgresMetadata

    noted: list[list[str]] = []
    real_track, real_place = PostgresMetadata.track, LocalContent.place

    def track(self: PostgresMetadata, shas: list[str]) -> None:
        noted.append(list(shas))
        real_track(self, shas)

    def place(self: LocalContent, staged: Any) -> bool:
        assert any(staged.sha256 in batch for batch in noted), "placed before it was noted"
        return real_place(self, staged)

    monkeypatch.setattr(PostgresMetadata, "track", track)
    monkeypatch.setattr(LocalContent, "place", place)
    manifest = stage_eb(tmp_path / "eb", 600)
    url = archive_url(request, "pg-local", tmp_path)
    _, result = ingest(manifest, url, tmp_path)
    assert result.status == "changed"
    assert [len(batch) for batch in noted] == [256, 256, staged_count(600) - 512]
