"""Long effects and outputs in the journal: content-defined chunks stored once
and column by column (wsrun.core.journal_blobs). What is read back is what was
written; two records that share most of their items share most of their bytes;
a damaged or missing chunk is an error naming it; a prune keeps every chunk a
kept run needs."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_wsrun, write
from test_journal_compact import COPY
from test_journal_compact import tree as compact_tree
from wsrun.core import journal_blobs, spool
from wsrun.core.journal import _ENCODE, Journal, JournalError
from wsrun.core.spool import PairsDict, Spool, SpooledDict


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 8 to 32 items, so a test's few hundred make many."""
    monkeypatch.setattr(journal_blobs, "CUT_MIN", 8)
    monkeypatch.setattr(journal_blobs, "CUT_MAX", 32)
    monkeypatch.setattr(journal_blobs, "CUT_MASK", 7)


def digest(i: int) -> str:
    return hashlib.sha256(b"%d" % i).hexdigest()


def effects(n: int, at: str = "/dest") -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []
    for i in range(n):
        if i % 50 == 0:
            made.append({"op": "create_dir", "path": f"{at}/d{i // 50:03d}"})
        made.append(
            {
                "op": "create_file",
                "path": f"{at}/d{i // 50:03d}/f{i:05d}.dat",
                "bytes": i * 7 % 1000,
                "source": f"/src/d{i // 50:03d}/f{i:05d}.dat",
            }
        )
    return made


def stored_bytes(journal: Journal) -> int:
    journal.flush()
    return sum(len(d) for (d,) in journal._query("SELECT data FROM {blobs}"))


# -- what is written is what is read -------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # newlines, quotes, non-ASCII
    st.text(alphabet="0123456789abcdef", min_size=2, max_size=8).filter(lambda t: len(t) % 2 == 0),
    st.just("\udcff-not-utf8"),
)
items = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(["op", "path", "bytes", "sha256"]), scalars, max_size=4),
    st.dictionaries(
        st.sampled_from(["path", "sha256"]),
        st.one_of(scalars, st.fixed_dictionaries({"$digest": st.text(max_size=5)})),
    ),
    st.lists(scalars, max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(items, min_size=1, max_size=40))
def test_a_chunk_of_any_json_values_reads_back_as_written(values: list[Any]) -> None:
    digest, stored = journal_blobs.encode_chunk(values, False, _ENCODE)
    assert journal_blobs.decode_chunk(stored, digest) == json.loads(_ENCODE(values))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(), items), min_size=1, max_size=40))
def test_a_chunk_of_pairs_reads_back_as_written(pairs: list[tuple[str, Any]]) -> None:
    digest, stored = journal_blobs.encode_chunk(pairs, True, _ENCODE)
    assert journal_blobs.decode_chunk(stored, digest) == [
        (k, json.loads(_ENCODE(v))) for k, v in pairs
    ]


def test_digests_are_stored_as_bytes_and_paths_as_lines() -> None:
    pairs = [(f"/dest/f{i:05d}", digest(i)) for i in range(2000)]
    ref, stored = journal_blobs.encode_chunk(pairs, True, _ENCODE)
    # 32 bytes a digest, not 64 hex characters (nor the 40 that JSON compressed to)
    assert len(stored) < 2000 * 34
    assert journal_blobs.decode_chunk(stored, ref) == pairs
    upper = [(k, v.upper()) for k, v in pairs]  # not what bytes.hex() gives back
    ref, stored = journal_blobs.encode_chunk(upper, True, _ENCODE)
    assert journal_blobs.decode_chunk(stored, ref) == upper


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(items, min_size=0, max_size=300), st.integers(0, 320), st.integers(0, 50))
def test_the_journal_reads_back_effects_and_outputs_a_page_at_a_time(
    tmp_path: Path, small_chunks: None, values: list[Any], offset: int, limit: int
) -> None:
    journal = Journal(home=str(tmp_path / f"h{offset}-{limit}-{len(values)}"))
    effects_list = [{"op": "x", "path": f"/p{i}", "v": v} for i, v in enumerate(values)]
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r", "s", 0, "copy", effects_list)
    mapping = {f"/k{i}": v for i, v in enumerate(values)}
    outputs = {"files": [e["path"] for e in effects_list], "map": mapping, "n": len(values)}
    journal.end_step("r", "s", "changed", effects_list, outputs)
    journal.flush()
    expected = json.loads(_ENCODE(effects_list))
    assert journal.effects("r", "s") == expected
    assert journal.effects("r", "s", offset, limit) == expected[offset : offset + limit]
    assert journal.steps("r")[0]["outputs"] == json.loads(_ENCODE(outputs))


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
def test_spooled_effects_and_outputs_read_back(tmp_path: Path, small_chunks: None) -> None:
    spooled = Spool(effects(700))
    journal = Journal(home=str(tmp_path))
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r", "s", 0, "copy", spooled)
    journal.end_step("r", "s", "changed", spooled, {"files": Spool(e["path"] for e in spooled)})
    journal.flush()
    assert journal.effects("r", "s") == list(spooled)
    assert journal.steps("r")[0]["outputs"] == {"files": [e["path"] for e in spooled]}


def test_a_page_reads_only_the_chunks_it_needs(
    tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(home=str(tmp_path))
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    made = effects(500)
    journal.start_step("r", "s", 0, "copy", made)
    journal.flush()
    read: list[str] = []
    real = Journal._stored
    monkeypatch.setattr(Journal, "_stored", lambda self, ref: read.append(ref) or real(self, ref))
    assert journal.effects("r", "s", 480, 5) == made[480:485]
    assert 2 <= len(read) <= 3  # the manifest and the chunk (or two) holding the page
    chunks = journal._query("SELECT count(*) FROM {parts}")[0][0]
    assert chunks > 10


# -- shared items are stored once ------------------------------------------------------


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
def test_a_list_holding_another_stores_only_what_differs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checksum list of a delivery lists every digest the copy computed,
    and one file more; its group's effects are its steps' effects. (Chunks of
    about 500 items: the first chunk of each differs.)"""
    monkeypatch.setattr(journal_blobs, "CUT_MIN", 256)
    monkeypatch.setattr(journal_blobs, "CUT_MASK", 255)
    n = 20_000
    copied = {f"/dest/r/tree/f{i:06d}.dat": digest(i) for i in range(n)}
    listed = {"/dest/r/delivery.json": digest(-1), **copied}
    made = effects(n)
    journal = Journal(home=str(tmp_path))
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    for seq, key in enumerate(("copy", "sums", "group")):
        journal.start_step("r", key, seq, "x")
    journal.end_step("r", "copy", "changed", made, {"checksums": copied})
    first = stored_bytes(journal)
    assert first < n * 45  # digests as bytes: 32 a file, paths and sizes a few
    journal.end_step("r", "sums", "changed", [], {"checksums": listed})
    journal.end_step("r", "group", "changed", [{"op": "create_dir", "path": "/dest"}, *made], {})
    added = stored_bytes(journal) - first
    assert added < first * 0.1, (first, added)
    assert journal.steps("r")[1]["outputs"]["checksums"] == listed


def test_a_loose_delivery_stores_its_digests_once(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deliver -r: the SHA256SUMS step's checksums (every copied file and
    delivery.json) share the copy's chunks, and the group's effects its steps'
    (chunks of about 300 items here, a few thousand at a million files)."""
    monkeypatch.setattr(journal_blobs, "CUT_MIN", 128)
    monkeypatch.setattr(journal_blobs, "CUT_MASK", 127)
    raw = tmp_path / "proc" / "rawdata" / "eb1"
    for i in range(6000):
        path = raw / f"d{i // 100:02d}" / f"f{i:05d}.dat"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(i % 300))
    (tmp_path / "proc" / "products").mkdir()
    dest = tmp_path / "out"
    done = cli("nrao/deliver", tmp_path / "proc", "-r", "-l", dest, "-q")
    assert done.code == 0, done.err
    journal = Journal()
    run = journal.runs()[0].id
    rows = {
        key: (effects_ref, outputs_ref)
        for key, effects_ref, outputs_ref in journal._query(
            "SELECT key, effects_ref, outputs_ref FROM {steps} WHERE run_id=?", (run,)
        )
    }

    def chunks(ref: str) -> set[str]:
        return {p for (p,) in journal._query("SELECT part FROM {parts} WHERE blob=?", (ref,))}

    def size(refs: set[str]) -> int:
        return sum(len(journal._stored(r)) for r in refs)

    copy_outputs, sums_outputs = chunks(rows["files"][1]), chunks(rows["sums"][1])
    assert size(sums_outputs - copy_outputs) < size(copy_outputs) * 0.1
    copy_effects, group_effects = chunks(rows["files"][0]), chunks(rows["delivery"][0])
    assert size(group_effects - copy_effects) < size(copy_effects) * 0.2
    [sums] = [s["outputs"]["checksums"] for s in journal.steps(run) if s["key"] == "sums"]
    assert len(sums) == 6001 and sums[str(dest / "eb1" / "d00" / "f00001.dat")] == (
        hashlib.sha256((dest / "eb1" / "d00" / "f00001.dat").read_bytes()).hexdigest()
    )


# -- faults -------------------------------------------------------------------------


def chunked_run(tmp_path: Path) -> tuple[Journal, list[dict[str, Any]], list[str]]:
    journal = Journal(home=str(tmp_path))
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    made = effects(200)
    journal.start_step("r", "s", 0, "copy", made)
    journal.flush()
    parts = [p for (p,) in journal._query("SELECT part FROM {parts}")]
    return journal, made, parts


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
def test_a_missing_chunk_is_an_error_naming_it(tmp_path: Path, small_chunks: None) -> None:
    journal, _, parts = chunked_run(tmp_path)
    journal._write("DELETE FROM {blobs} WHERE hash=?", (parts[-1],), commit=True)
    with pytest.raises(JournalError, match=f"blob {parts[-1][:12]} is missing"):
        journal.effects("r", "s")


def test_a_damaged_chunk_is_an_error_naming_it(tmp_path: Path, small_chunks: None) -> None:
    journal, made, parts = chunked_run(tmp_path)
    assert journal.effects("r", "s") == made
    with sqlite3.connect(tmp_path / "journal.db") as db:
        (data,) = db.execute("SELECT data FROM blobs WHERE hash=?", (parts[0],)).fetchone()
        damaged = data[:20] + bytes(b ^ 0x5A for b in data[20:60]) + data[60:]
        db.execute("UPDATE blobs SET data=? WHERE hash=?", (damaged, parts[0]))
    with pytest.raises(JournalError, match=f"blob {parts[0][:12]} is damaged"):
        journal.effects("r", "s")


def test_a_chunk_that_still_decodes_but_says_other_things_is_caught(
    tmp_path: Path, small_chunks: None
) -> None:
    """A well-formed chunk under another chunk's hash (a row changed by hand, a
    bad restore): zstd reads it fine, so only the check of the content against
    its hash, independent of how it was written, can tell."""
    journal, made, parts = chunked_run(tmp_path)
    first = [dict(e) for e in journal_blobs.decode_chunk(journal._stored(parts[0]), parts[0])]
    first[-1]["bytes"] = 999_999  # one size changed
    _, forged = journal_blobs.encode_chunk(first, False, _ENCODE)
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute("UPDATE blobs SET data=? WHERE hash=?", (forged, parts[0]))
    with pytest.raises(JournalError, match=f"blob {parts[0][:12]} is damaged"):
        journal.effects("r", "s")
    with pytest.raises(ValueError, match="does not match its hash"):
        journal_blobs.decode_chunk(forged, parts[0])


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
def test_a_prune_keeps_the_chunks_a_kept_run_shares(cli, tmp_path: Path) -> None:
    """Two runs copy the same tree: the newer run's effects are the older's
    chunks; pruning the older run must leave them."""
    src = tmp_path / "src"
    for i in range(3000):
        (src / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 5}" / f"f{i:05d}").write_bytes(b"%d" % i)
    recipe = write(tmp_path / "r.yaml", COPY)
    assert cli(recipe, src, tmp_path / "out", "--dry-run").code == 0
    assert cli(recipe, src, tmp_path / "out").code == 0
    journal = Journal()
    real, dry = [r.id for r in journal.runs()]
    expected = journal.effects(real, "copy")
    assert len(expected) > 3000
    assert cli("runs", "prune", "--keep", "1").code == 0
    assert [r.id for r in journal.runs()] == [real]
    assert journal.effects(real, "copy") == expected  # the dry run's chunks, still there
    left = {h for (h,) in journal._query("SELECT hash FROM {blobs}")}
    refs = {
        r
        for row in journal._query("SELECT effects_ref, outputs_ref FROM {steps}")
        for r in row
        if r
    }
    needed = refs | {p for b, p in journal._query("SELECT blob, part FROM {parts}") if b in refs}
    assert left == needed


@pytest.mark.usefixtures("journal_url")  # SQLite and PostgreSQL
def test_a_resumed_run_gets_long_outputs_and_effects_on_disk(
    tmp_path: Path, small_chunks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `wsrun resume` reads of its finished steps stays spooled past a
    spool's worth, as in the run that made it (a million files' delivery
    document held as dicts was some 400 MB): lists and effects as spools, a
    sorted mapping looked up a chunk at a time, an unsorted one kept in order."""
    monkeypatch.setattr(spool, "SPILL_AT", 100)
    made = effects(300)
    ordered = {f"/dest/f{i:05d}": digest(i) for i in range(300)}
    placed = {f"/src/f{i:05d}": f"/dest/{299 - i}" for i in range(300)}
    placed = dict(reversed(list(placed.items())))  # not in key order
    short = {f"/dest/f{i:05d}": digest(i) for i in range(80)}
    journal = Journal(home=str(tmp_path))
    journal.start_run("r", "x", "/r.yaml", {}, {}, False, str(tmp_path))
    journal.start_step("r", "s", 0, "copy", made)
    outputs = {"checksums": ordered, "placement": placed, "few": short, "files": list(ordered)}
    journal.end_step("r", "s", "changed", made, outputs)
    journal.flush()
    done = journal.finished_steps("r")["s"]
    got = done["outputs"]
    assert isinstance(done["effects"], Spool) and list(done["effects"]) == made
    assert isinstance(got["checksums"], SpooledDict) and dict(got["checksums"]) == ordered
    assert got["checksums"]["/dest/f00123"] == digest(123)
    assert isinstance(got["placement"], PairsDict) and list(got["placement"].items()) == list(
        placed.items()
    )
    assert got["few"] == short and type(got["few"]) is dict  # short: held, as before
    assert isinstance(got["files"], Spool) and list(got["files"]) == list(ordered)
    # what `wsrun runs show` and the run page read is held whole, as JSON gives it
    assert journal.steps("r")[0]["outputs"] == outputs


@pytest.mark.parametrize("how", ["run", "resume"])
def test_a_finished_command_leaves_no_write_ahead_log(
    tmp_path: Path, wsrun_home: Path, how: str
) -> None:
    """The command closes its journal: SQLite folds the log into journal.db and
    removes it. Left open (the command freezes what is left at exit), the log
    stayed as big as the run's records, and doubled the journal on disk."""
    recipe = write(tmp_path / "r.yaml", COPY)
    src = compact_tree(tmp_path / "src", 2000)
    args = [str(recipe), str(src), str(tmp_path / "out")]
    if how == "resume":  # a failed run, resumed once its source is there
        missing = [str(recipe), str(tmp_path / "later"), str(tmp_path / "out")]
        assert run_wsrun(*missing, "-q", cwd=tmp_path).code == 1
        src.rename(tmp_path / "later")
        journal = Journal()
        failed = journal.runs(1)[0].id
        journal.close()  # this process's connection, too, would keep the log
        args = ["resume", failed]
    done = run_wsrun(*args, "-q", cwd=tmp_path)
    assert done.code == 0, done.err
    log = wsrun_home / "journal.db-wal"
    assert not log.exists() or log.stat().st_size == 0
    assert Journal().steps(Journal().runs(1)[0].id)[0]["effect_count"] > 2000
