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
from wsrun.core.step import StepContext, load_step

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
    """Spill after 50 records, in chunks of 16."""
    monkeypatch.setattr(spool, "SPILL_AT", 50)
    monkeypatch.setattr(spool, "CHUNK", 16)


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
