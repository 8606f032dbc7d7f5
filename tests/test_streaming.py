"""Streaming plans (issue 15): a step's plan for a big tree holds no Python
object per file. The spool's thresholds are lowered here so a few hundred files
take the path a million take; every test checks the totals and contents stay
exact, and the dry run still equals the real run."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
from pathlib import Path

import pytest

from conftest import as_planned, snapshot
from wsrun.core import spool
from wsrun.core.effects import Effect, EffectSpool, create_dir, create_file
from wsrun.core.fs import WorldView
from wsrun.core.spool import Mapped, SortedSpool, Spool, SpooledDict
from wsrun.core.step import StepContext, StepError, load_step

RECIPE = """\
recipe: stream
inputs:
  source: {type: path, positional: true, required: true}
  dest: {type: path, positional: true, required: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.source }}", to: "{{ inputs.dest }}", checksum: sha256}
  - id: sums
    uses: checksum
    with: {paths: "{{ steps.copy.outputs.files }}", to: "{{ inputs.dest }}/SHA256SUMS"}
"""


@pytest.fixture
def small_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill after 50 records, in chunks of 16; hash with 64 KiB buffers (one
    per hashing thread: with a MiB each, how many threads a run happened to
    start would swamp the memory measured per file). The digests a plan
    records for later runs are written as they are taken, 64 at a time: the
    writer thread lets up to 16 batches of 512 wait, which is all of a test's
    few thousand when a loaded machine is slow to write them, so the peak
    followed the load (bounded at a million; it failed CI once)."""
    from wsrun.core import hashing, resumes

    monkeypatch.setattr(spool, "SPILL_AT", 50)
    monkeypatch.setattr(spool, "CHUNK", 16)
    monkeypatch.setattr(hashing, "CHUNK", 1 << 16)
    monkeypatch.setattr(resumes, "WRITER_THREAD", False)
    monkeypatch.setattr(resumes, "FLUSH_FILES", 64)


def make_tree(root: Path, files: int, dirs: int = 7) -> dict[str, bytes]:
    rng = random.Random(files)
    made = {}
    for i in range(files):
        d = root / f"d{i % dirs}"
        d.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(0, 300))
        (d / f"f{i:05d}").write_bytes(data)
        made[f"d{i % dirs}/f{i:05d}"] = data
    (root / "link").symlink_to("d0")
    return made


def test_a_spool_is_a_list_that_spills_to_disk(small_spool: None) -> None:
    items = [(f"p{i}", i, None, {"k": i}) for i in range(203)]
    s: Spool = Spool(items[:10])
    assert not s.spilled and list(s) == items[:10]
    s.extend(items[10:])
    assert s.spilled, "past SPILL_AT the records live on disk"
    assert len(s) == 203 and bool(s)
    assert list(s) == items and s == items and list(s) == list(s)  # read twice
    assert s[0] == items[0] and s[-1] == items[-1] and s[100] == items[100]
    assert s[5:40:3] == items[5:40:3] and s[::-1] == items[::-1]
    with pytest.raises(IndexError):
        s[203]
    assert s != items[:-1]
    s.close()
    assert len(s) == 0 and list(s) == []


def test_a_sorted_spool_reads_back_sorted(small_spool: None) -> None:
    rng = random.Random(1)
    names = [f"/d{rng.randint(0, 9)}/f{rng.randint(0, 10**6)}" for _ in range(500)]
    s: SortedSpool = SortedSpool(names)
    assert s.spilled and len(s) == 500
    assert list(s) == sorted(names) and s[0] == min(names) and s[-1] == max(names)
    short: SortedSpool = SortedSpool(names[:20])
    assert not short.spilled and list(short) == sorted(names[:20])


def test_a_spooled_dict_looks_up_every_key_and_streams_its_items(small_spool: None) -> None:
    pairs = sorted((f"/out/f{i:04d}", hashlib.sha256(b"%d" % i).hexdigest()) for i in range(300))
    d = SpooledDict(pairs)
    assert len(d) == 300 and d == dict(pairs) and list(d.items()) == pairs
    for k, v in pairs:
        assert d[k] == v
    for missing in ("/out/f0300", "/", "/out/f0000x", "~"):
        assert missing not in d
        with pytest.raises(KeyError):
            d[missing]


def test_effect_spool_keeps_exact_totals(small_spool: None) -> None:
    effects = [create_file(f"/o/f{i}", i, source=f"/i/f{i}") for i in range(120)]
    effects += [create_dir("/o/d"), create_file("/o/size-unknown", None)]
    s = EffectSpool(effects)
    assert s.spilled
    assert (s.files, s.bytes) == (121, sum(range(120)))
    assert [e.to_dict() for e in s] == [e.to_dict() for e in effects]
    with pytest.raises(ValueError, match="content"):
        s.append(create_file("/o/x", 1, content=b"x"))


def test_effect_dicts_are_the_effects_to_dict(small_spool: None) -> None:
    """A spooled plan's effects as dicts, made from its records, are exactly
    each effect's ``to_dict()``: on disk and still in memory, every field, in
    order, and the extras."""
    from wsrun.core.effects import EffectDicts, create_symlink, move

    odd = [create_dir("/o/d", why="x"), create_symlink("/o/l", "f1"), move("/o/a", "/o/b", 3)]
    odd += [create_file("/o/size-unknown", None)]
    effects = [*odd, *(create_file(f"/o/f{i}", i, source=f"/i/{i}", mode=0o600) for i in range(99))]
    effects += odd
    s = EffectSpool(effects)
    assert s.spilled and len(s._head) > 0, "records on disk and in memory both"
    dicts = list(EffectDicts(s))
    assert dicts == [e.to_dict() for e in effects]
    assert [list(d) for d in dicts] == [list(e.to_dict()) for e in effects], "key order"
    assert EffectDicts(s)[3] == effects[3].to_dict() and len(EffectDicts(s)) == len(effects)


def test_outside_skips_the_effects_of_trees_recorded_whole(small_spool: None) -> None:
    from wsrun.core.effects import outside

    effects = [create_dir("/o"), create_dir("/o/tree"), create_dir("/o/treex")]
    effects += [create_file(f"/o/tree/f{i}", i, source=f"/i/f{i}") for i in range(100)]
    effects += [create_file("/o/treex/f", 1), create_file("/o/f", 2)]
    kept = ["/o", "/o/treex", "/o/treex/f", "/o/f"]
    for given in (effects, EffectSpool(effects)):
        assert [e.path for e in outside(given, {"/o/tree"})] == kept
        assert [e.to_dict() for e in outside(given, set())] == [e.to_dict() for e in effects]


def live_effects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Effect))


def test_a_copy_plan_holds_no_effect_per_file(small_spool: None, tmp_path: Path) -> None:
    """Structural: the Effect objects alive after planning 2,000 files are no
    more than after planning 200 (a chunk of them at most), while the plan
    still reports every file, exactly."""
    copy = load_step("copy")
    alive = {}
    for n in (200, 2000):
        src = tmp_path / f"src{n}"
        made = make_tree(src, n)
        before = live_effects()
        ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
        plan = copy.plan({"sources": str(src), "to": str(tmp_path / f"out{n}")}, ctx)
        alive[n] = live_effects() - before
        assert plan.effects.spilled and plan.outputs["files"].spilled
        assert plan.outputs["copied"] == n and plan.outputs["unchanged"] == 0
        assert plan.outputs["bytes"] == sum(map(len, made.values()))
        expected = sorted(str(tmp_path / f"out{n}" / f"src{n}" / rel) for rel in made)
        assert list(plan.outputs["files"]) == expected
        assert sum(e.op == "create_file" for e in plan.effects) == n
        assert plan.trees == [(str(tmp_path / f"out{n}" / f"src{n}"), str(src))]
        del plan
    assert alive[2000] <= alive[200] + spool.SPILL_AT, alive


def test_spooled_dry_run_equals_real_run(small_spool: None, cli, tmp_path: Path) -> None:
    """Through the command line, with spooled effects, outputs and checksums:
    the dry run prints the real run's effects, writes nothing, a later step
    sees the planned tree, the journal pages through every effect, and a
    re-run changes nothing."""
    made = make_tree(tmp_path / "src", 400)
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(RECIPE)
    args = [recipe, tmp_path / "src", tmp_path / "out"]
    before = snapshot(tmp_path)
    dry = cli(*args, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before
    real = cli(*args, "--json")
    assert real.code == 0, real.err
    planned = {s["id"]: s["effects"] for s in json.loads(dry.out)["steps"]}
    done = {s["id"]: s["effects"] for s in json.loads(real.out)["steps"]}
    assert planned.keys() == done.keys() == {"copy", "sums"}
    for step, effects in planned.items():
        assert [as_planned(d, p) for p, d in zip(effects, done[step], strict=True)] == effects
    files = [e for e in done["copy"] if e["op"] == "create_file"]
    assert len(files) == 400 and sum(e["bytes"] for e in files) == sum(map(len, made.values()))
    sums = (tmp_path / "out" / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 400
    for line in sums:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256(made[name.lstrip("*").removeprefix("src/")]).hexdigest() == digest

    from wsrun.core.journal import Journal

    journal = Journal(str(tmp_path / "wsrun-home"))
    run_id = json.loads(real.out)["run_id"]
    steps = {s["key"]: s for s in journal.steps(run_id, effects_limit=5)}
    assert steps["copy"]["effect_count"] == len(done["copy"])
    assert journal.effects(run_id, "copy", 395, 10) == done["copy"][395:405]
    outputs = journal.finished_steps(run_id)["copy"]["outputs"]
    assert outputs["copied"] == 400 and len(outputs["files"]) == 400
    assert outputs["checksums"] == {
        str(tmp_path / "out" / "src" / rel): hashlib.sha256(data).hexdigest()
        for rel, data in made.items()
    }
    journal.close()
    again = cli(*args, "--json")
    assert again.code == 0, again.err
    assert all(not s["effects"] for s in json.loads(again.out)["steps"])


def test_a_dry_run_view_holds_one_fact_for_a_tree_copied_whole(
    small_spool: None, tmp_path: Path
) -> None:
    """The overlay records a copied tree as one alias, and shows the same
    entries (names, kinds, sizes, modes, mtimes, link targets, content) the
    real copy produces."""
    from wsrun.core.runner import Runner
    from wsrun.core.settings import Settings
    from wsrun.core.validate import load_valid

    make_tree(tmp_path / "src", 300)
    os.chmod(tmp_path / "src" / "d1", 0o750)
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(RECIPE.split("  - id: sums")[0])
    inputs = {"source": str(tmp_path / "src"), "dest": str(tmp_path / "out")}
    runner = Runner(
        load_valid(str(recipe)), inputs, Settings(env={}), dry_run=True, workdir=str(tmp_path)
    )
    assert runner.run().status == "changed"
    view = runner.view
    assert len(view._nodes) < 5, "no node per planned file"
    planned = [
        (rel, i.kind, i.size, i.mode, i.mtime_ns, i.target)
        for rel, i in view.walk(str(tmp_path / "out"))
    ]
    with view.open(str(tmp_path / "out" / "src" / "d3" / "f00003")) as f:
        assert f.read() == (tmp_path / "src" / "d3" / "f00003").read_bytes()
    real = Runner(load_valid(str(recipe)), inputs, Settings(env={}), workdir=str(tmp_path))
    assert real.run().status == "changed"
    written = [
        (rel, i.kind, i.size, i.mode, i.mtime_ns, i.target)
        for rel, i in WorldView().walk(str(tmp_path / "out"))
    ]
    assert planned == written and len(written) == 300 + 7 + 2


def test_mapped_is_lazy_and_equal() -> None:
    base = Spool(range(10))
    m = Mapped(base, lambda x: x * 2)
    assert (
        len(m) == 10 and list(m) == [2 * x for x in range(10)] and m == [2 * x for x in range(10)]
    )
    assert m[3] == 6 and m[:3] == [0, 2, 4]


def planned_peak(step: str, params: dict, workdir: Path) -> tuple[int, object]:
    """The peak bytes Python allocated while ``step`` planned, and the plan
    (after a first plan of the same step, which imports what it needs)."""
    import tracemalloc

    warm = workdir / "warm"
    if not warm.exists():
        spread_tree(warm, 5)
    load_step(step).plan(
        {**params, **{k: "warm" for k in ("source", "paths") if k in params}},
        StepContext(fs=WorldView(), workdir=str(workdir)),
    )
    gc.collect()
    tracemalloc.start()
    try:
        plan = load_step(step).plan(params, StepContext(fs=WorldView(), workdir=str(workdir)))
        return tracemalloc.get_traced_memory()[1], plan
    finally:
        tracemalloc.stop()


def spread_tree(root: Path, files: int) -> dict[str, bytes]:
    """``files`` small files, 20 to a directory: a directory's listing (held
    while it is walked) is the same size for any number of files."""
    made = {}
    for i in range(files):
        d = root / f"d{i // 20:04d}"
        d.mkdir(parents=True, exist_ok=True)
        data = b"%d" % i * (i % 50)
        (d / f"f{i:05d}").write_bytes(data)
        made[f"d{i // 20:04d}/f{i:05d}"] = data
    return made


#: What planning may grow by from 1,000 files to 4,000 (3,000 more): under 170
#: bytes a file, where a Python object per file (a path string, a tuple or a
#: dict entry, a Member) measured about 400 (tar) and 2,600 (checksum). The
#: growth left is the external sort's runs, one per SPILL_AT (here 50) files;
#: 1,000 files already fill the hashing threads' window.
BOUND = 500_000


def test_a_tar_plan_holds_no_member_per_file(small_spool: None, tmp_path: Path) -> None:
    """Structural: the memory a tar plan takes at its peak does not grow with
    the number of files (members stream into a spool in archive order), and
    the spool still gives every member, the exact size and the totals."""
    peaks = {}
    for n in (1000, 4000):
        made = spread_tree(tmp_path / f"s{n}", n)
        peaks[n], plan = planned_peak("tar", {"source": f"s{n}", "to": f"t{n}.tar"}, tmp_path)
        members = plan.data.members
        assert members.spilled and len(members) == n + n // 20 + 1
        assert plan.outputs["members"] == len(members)
        assert (members.files, members.file_bytes) == (n, sum(map(len, made.values())))
        names = [m[0] for m in members]
        assert names == sorted(names, key=lambda name: name.replace("/", "\0"))
        assert plan.effects[-1].bytes == plan.data.tar_size
        del plan, members
    assert peaks[4000] - peaks[1000] < BOUND, peaks


def test_a_checksum_plan_holds_nothing_per_file(small_spool: None, tmp_path: Path) -> None:
    """Structural, as for tar: files, digests and lines stream through spools;
    the outputs are still exact."""
    peaks = {}
    for n in (1000, 4000):
        made = spread_tree(tmp_path / f"s{n}", n)
        peaks[n], plan = planned_peak("checksum", {"paths": f"s{n}", "to": f"s{n}/SUMS"}, tmp_path)
        sums = plan.outputs["checksums"]
        assert isinstance(sums, SpooledDict) and len(sums) == n
        for rel in (min(made), max(made), f"d0007/f{140:05d}"):
            assert sums[str(tmp_path / f"s{n}" / rel)] == hashlib.sha256(made[rel]).hexdigest()
        assert plan.effects[0].bytes == sum(64 + 2 + len(rel) + 1 for rel in made)
        del plan, sums
    assert peaks[4000] - peaks[1000] < BOUND, peaks


def test_a_manifest_plan_holds_nothing_per_file(small_spool: None, tmp_path: Path) -> None:
    """Structural, as for tar: the manifest's entries and document stream
    through spools, and the document is exactly what json.dumps writes."""
    peaks = {}
    for n in (1000, 4000):
        made = spread_tree(tmp_path / f"s{n}", n)
        peaks[n], plan = planned_peak("manifest", {"root": f"s{n}", "to": f"m{n}.json"}, tmp_path)
        assert plan.outputs["count"] == n
        assert plan.outputs["total_bytes"] == sum(map(len, made.values()))
        load_step("manifest").apply(plan, StepContext(fs=WorldView(), workdir=str(tmp_path)))
        written = (tmp_path / f"m{n}.json").read_bytes()
        assert plan.effects[0].bytes == len(written)
        document = json.loads(written)
        assert [f["path"] for f in document["files"]] == sorted(made)
        assert written == (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
        del plan
    assert peaks[4000] - peaks[1000] < BOUND, peaks


def test_a_streamed_manifest_is_byte_for_byte_json(small_spool: None, tmp_path: Path) -> None:
    """Names that JSON escapes (quotes, backslashes, control characters,
    non-ASCII), an empty file, and an empty tree."""
    from wsrun.steps.manifest import iso_utc

    root = tmp_path / "r"
    names = ['a"b', "back\\slash", "tab\there", "é€😀", "new\nline", "empty"]
    names += [f"f{i:03d}" for i in range(80)]  # past the spill threshold
    root.mkdir()
    for i, name in enumerate(names):
        (root / name).write_bytes(b"x" * (0 if name == "empty" else i))
    step = load_step("manifest")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = step.plan({"root": "r", "to": "m.json"}, ctx)
    step.apply(plan, ctx)
    files = []
    for name in sorted(names):
        data = (root / name).read_bytes()
        mtime = iso_utc((root / name).stat().st_mtime_ns)
        entry = {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        files.append({**entry, "mtime": mtime})
    document = {"version": 1, "algorithm": "sha256", "root": "r", "files": files}
    document |= {"total_bytes": sum(f["size"] for f in files), "count": len(files)}
    expected = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
    assert (tmp_path / "m.json").read_bytes() == expected
    again = step.plan({"root": "r", "to": "m.json"}, ctx)
    assert again.effects == [], "the manifest already there is compared piece by piece"
    (root / "f000").write_bytes(b"y")  # same size, other content
    assert step.plan({"root": "r", "to": "m.json"}, ctx).effects != []

    (tmp_path / "none").mkdir()
    plan = step.plan({"root": "none", "to": "n.json"}, ctx)
    step.apply(plan, ctx)
    empty = {"version": 1, "algorithm": "sha256", "root": "none", "files": []}
    empty |= {"total_bytes": 0, "count": 0}
    assert json.loads((tmp_path / "n.json").read_text()) == empty
    assert (tmp_path / "n.json").read_text() == json.dumps(empty, indent=2) + "\n"


PACK = """\
recipe: pack
inputs:
  source: {type: path, positional: true, required: true}
  out: {type: path, positional: true, required: true}
steps:
  - id: tar
    uses: tar
    with: {source: "{{ inputs.source }}", to: "{{ inputs.out }}/pack.tar"}
  - id: manifest
    uses: manifest
    with: {root: "{{ inputs.source }}", to: "{{ inputs.out }}/MANIFEST.json"}
  - id: sums
    uses: checksum
    with: {paths: "{{ inputs.source }}", to: "{{ inputs.out }}/SHA256SUMS", relative_to: "{{ inputs.source }}"}
  - id: sums_of_sums
    uses: checksum
    with: {paths: ["{{ inputs.out }}/SHA256SUMS", "{{ inputs.out }}/MANIFEST.json"]}
outputs:
  digests: "{{ steps.sums_of_sums.outputs.checksums }}"
"""


def test_spooled_tar_manifest_checksum_dry_run_equals_real_run(
    small_spool: None, cli, tmp_path: Path
) -> None:
    """tar, manifest and checksum past the spool threshold through the
    command line: the dry run writes nothing and prints the real run's
    effects, a later step of the dry run reads the planned list and manifest
    (their digests equal the real ones), and a re-run changes nothing."""
    import tarfile

    made = make_tree(tmp_path / "src", 300)
    (tmp_path / "out").mkdir()
    recipe = tmp_path / "pack.yaml"
    recipe.write_text(PACK)
    args = [recipe, tmp_path / "src", tmp_path / "out"]
    before = snapshot(tmp_path)
    dry = cli(*args, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert snapshot(tmp_path) == before
    real = cli(*args, "--json")
    assert real.code == 0, real.err
    planned = {s["id"]: s for s in json.loads(dry.out)["steps"]}
    done = {s["id"]: s for s in json.loads(real.out)["steps"]}
    for step in ("tar", "manifest", "sums"):
        effects = planned[step]["effects"]
        assert len(effects) == 1 and effects[0]["op"] == "create_file"
        assert [as_planned(d, p) for p, d in zip(effects, done[step]["effects"], strict=True)] == (
            effects
        )
    digests = json.loads(dry.out)["outputs"]["digests"]
    assert digests == json.loads(real.out)["outputs"]["digests"] and len(digests) == 2
    assert None not in digests.values()
    with tarfile.open(tmp_path / "out" / "pack.tar") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert files == {f"src/{rel}": data for rel, data in made.items()}
    with tarfile.open(tmp_path / "out" / "pack.tar") as tar:
        assert len(tar.getnames()) == 300 + 7 + 1 + 1  # files, directories, the link, src/
    sums = (tmp_path / "out" / "SHA256SUMS").read_text().splitlines()
    assert sums == [f"{hashlib.sha256(made[r]).hexdigest()}  {r}" for r in sorted(made)]
    assert len(json.loads((tmp_path / "out" / "MANIFEST.json").read_text())["files"]) == 300
    again = cli(*args, "--json")
    assert again.code == 0, again.err
    assert all(not s["effects"] for s in json.loads(again.out)["steps"])


def test_spool_ranges_and_an_ordered_sorted_spool(small_spool: None) -> None:
    items = [(f"p{i:04d}", i) for i in range(500)]
    s: Spool = Spool(items)
    for start, stop in [(0, 500), (0, 1), (49, 51), (17, 33), (100, 100), (480, 600), (499, 500)]:
        assert list(s.iter_range(start, stop)) == items[start:stop], (start, stop)
    ordered: SortedSpool = SortedSpool(items)
    assert ordered.spilled and ordered._ordered and list(ordered) == items
    ordered.append(("p0250x", -1))  # one out of order: merged again
    assert not ordered._ordered and list(ordered) == sorted([*items, ("p0250x", -1)])


def test_hash_each_keeps_order_and_raises_the_failure(tmp_path: Path) -> None:
    from wsrun.core.hashing import WORKERS, hash_each

    paths = []
    for i in range(10 * WORKERS):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i * i)
        paths.append(str(tmp_path / f"f{i}"))
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    got = list(hash_each(ctx, iter(paths), "sha256"))
    assert [p for p, _ in got] == paths
    for p, (digest, size) in got:
        data = Path(p).read_bytes()
        assert (digest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(FileNotFoundError):
        list(hash_each(ctx, [*paths[:5], str(tmp_path / "gone"), *paths[5:]], "sha256"))


def test_a_spooled_member_list_splits_where_a_list_does(small_spool: None) -> None:
    """The spool keeps the archive's size and the split points of forked
    writers as members are appended: the same as computed from a list."""
    from wsrun.formats import tarball

    members = [tarball.Member("d/", "dir", "")]
    members += [tarball.Member(f"d/{i}", "file", "", i * 1000) for i in range(300)]
    members.append(tarball.Member("d/" + "l" * 200, "file", "", 5))  # a long-name record
    members.append(tarball.Member("d/s", "symlink", "", 0, linkname="t" * 150))
    spooled = tarball.MemberSpool(members)
    assert spooled.spilled and list(spooled) == [tuple(m) for m in members]
    assert spooled.size() == tarball.archive_size(members) == tarball.archive_size(spooled)
    assert (spooled.files, spooled.file_bytes) == (301, sum(i * 1000 for i in range(300)) + 5)
    for i, offset in spooled.marks:
        assert offset == sum(map(tarball._span, members[:i]))
    import unittest.mock

    with (
        unittest.mock.patch.object(tarball, "PARALLEL_MIN", 1),
        unittest.mock.patch.object(tarball, "cpu_count", lambda: 3),
    ):
        shares = tarball._shares(spooled, spooled.size())
    assert len(shares) == 3 and shares[0][0] == 0 and shares[-1][1] == len(members)
    for (_, end, _), (first, _, offset) in zip(shares, shares[1:], strict=False):
        assert end == first and offset == sum(map(tarball._span, members[:first]))
        assert first % spool.CHUNK == 0  # at a mark
    parts = [list(tarball._part(spooled, a, b)) for a, b, _ in shares]
    assert [m for part in parts for m in part] == [tuple(m) for m in members]


def test_spooled_tar_of_several_sources_merges_and_refuses_twins(
    small_spool: None, tmp_path: Path
) -> None:
    import tarfile

    made = make_tree(tmp_path / "a", 120)
    make_tree(tmp_path / "b", 90)
    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = tar.plan({"source": ["b", "a"], "to": "ab.tar"}, ctx)
    tar.apply(plan, ctx)
    names = [m[0] for m in plan.data.members]
    assert names == sorted(names, key=lambda n: n.replace("/", "\0")) and names[0] == "a/"
    with tarfile.open(tmp_path / "ab.tar") as t:
        assert [m.name + ("/" if m.isdir() else "") for m in t] == names
        assert t.extractfile(f"a/{min(made)}").read() == made[min(made)]  # type: ignore[union-attr]
    with pytest.raises(StepError, match="same name"):
        tar.plan({"source": ["a", "a/d1"], "base": ".", "to": "x.tar"}, ctx)
    with pytest.raises(StepError, match="same name"):
        tar.plan({"source": ["a/d1", str(tmp_path / "a" / "d1")], "base": ".", "to": "x.tar"}, ctx)


def test_spooled_copy_checksums_feed_a_checksum_step(
    small_spool: None, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy's spooled ``checksums`` given as ``digests``: checked as the
    mapping it stands for (not materialised), joined by path, and no file
    copy hashed is read again by the checksum step."""
    from wsrun.core import hashing

    made = make_tree(tmp_path / "src", 200)
    recipe = tmp_path / "digests.yaml"
    recipe.write_text(
        RECIPE.replace(
            'to: "{{ inputs.dest }}/SHA256SUMS"}',
            'to: "{{ inputs.dest }}/SHA256SUMS", digests: "{{ steps.copy.outputs.checksums }}"}',
        )
    )
    opened: list[str] = []
    real_one = hashing._Hasher.one

    def one(self: hashing._Hasher, path: str) -> object:
        opened.append(path)
        return real_one(self, path)

    monkeypatch.setattr(hashing._Hasher, "one", one)
    real = cli(recipe, tmp_path / "src", tmp_path / "out", "--json")  # copy's checksums: real runs
    assert real.code == 0, real.err
    assert opened == []
    sums = (tmp_path / "out" / "SHA256SUMS").read_text().splitlines()
    expected = sorted(
        (f"src/{rel}", hashlib.sha256(data).hexdigest()) for rel, data in made.items()
    )
    assert sums == [f"{digest}  {name}" for name, digest in expected]
