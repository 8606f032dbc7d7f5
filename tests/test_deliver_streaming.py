"""A delivery of a million files (issue 15): find-products, write-json and the
whole ``deliver`` recipe hold nothing per file in memory. The spool's
thresholds are lowered so a few thousand files take the path a million take;
each test checks the result is still exactly the one the unspooled path
gives (delivery.json and the archive byte for byte), and that the dry run
still plans the real run."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conftest import killer_script, write
from fixtures.processing import EB, vla_calibration
from wsrun.core import groups, spool
from wsrun.core.fs import WorldView
from wsrun.core.journal import Journal
from wsrun.core.spool import SpooledDict, is_lazy
from wsrun.core.step import StepContext, load_step
from wsrun.steps import write_json

#: What planning may grow by from 1,000 extra files to 4,000 (3,000 more):
#: under 170 bytes a file, where the per-file dicts of the members map and of
#: delivery.json measured some 1,500 (find-products) and a filled document
#: held as one string some 400 (write-json).
BOUND = 500_000
#: The same for each step of a whole delivery, journal included: the journal
#: holds a step's per-file outputs compressed (one blob, a few tens of bytes
#: a file at a million; a few hundred for this test's long random paths),
#: where a list of the group's effects as dicts measured some 800.
WHOLE_BOUND = 1_000_000


@pytest.fixture
def small_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill after 50 records, in chunks of 16; delivery.json past 4 KiB is
    written as a stream; hash with 64 KiB buffers (see test_streaming). What
    is made a batch at a time (the journal's blobs, tar's files to hash) in
    batches of 64: a batch of thousands, a fixed size at a million files,
    would be all of a test's few thousand. Resume records are written as they
    are taken, 64 at a time: the writer thread lets up to 16 batches of 512
    wait, which is all of a test's few thousand when the machine is slow to
    write them, so the peak would follow the load (bounded at a million)."""
    from wsrun.core import hashing, journal_blobs, resumes
    from wsrun.steps import tar

    monkeypatch.setattr(spool, "SPILL_AT", 50)
    monkeypatch.setattr(spool, "CHUNK", 16)
    monkeypatch.setattr(write_json, "HELD_MAX", 4096)
    monkeypatch.setattr(write_json, "PIECE", 4096)
    monkeypatch.setattr(hashing, "CHUNK", 1 << 16)
    monkeypatch.setattr(journal_blobs, "CUT_MIN", 16)
    monkeypatch.setattr(journal_blobs, "CUT_MAX", 64)
    monkeypatch.setattr(tar, "HASH_BATCH", 64)
    monkeypatch.setattr(resumes, "WRITER_THREAD", False)
    monkeypatch.setattr(resumes, "FLUSH_FILES", 64)


def processing(base: Path, extra: int) -> Path:
    """A VLA calibration whose execution block holds ``extra`` more small
    files, 20 to a directory (a directory's listing, held while it is walked,
    is the same size for any number of files)."""
    p = vla_calibration(base, "pretty")
    for i in range(extra):
        path = p.root / "rawdata" / EB / "extra" / f"d{i // 20:04d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d" % i * (i % 7))
    return p.root


def peak(fn: Callable[[], Any]) -> tuple[int, Any]:
    """The peak bytes Python allocated while ``fn`` ran, and what it returned."""
    gc.collect()
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def find(root: Path, dest: Path, tar: bool) -> Any:
    params = {"source": str(root), "destination": str(dest), "prefix": "R1", "tar": tar}
    ctx = StepContext(fs=WorldView(), workdir=str(root.parent))
    return load_step("find-products").plan(params, ctx)


def plain(value: Any) -> Any:
    """A lazy list or mapping as the one it stands for."""
    return dict(value.items()) if isinstance(value, Mapping) else list(value)


def fake_digests(found: dict[str, Any]) -> SpooledDict[str]:
    """A digest for every file of the delivery (sorted by key, as copy gives them)."""
    keys = sorted(m for m in found["members"] if not m.endswith("/"))
    keys.append(found["archive"])
    return SpooledDict((k, hashlib.sha256(k.encode()).hexdigest()) for k in sorted(keys))


@pytest.fixture
def runs_of_400(small_spool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spill after 400 records: an external sort's runs (a temporary file
    each) then cost a few bytes a file, as with the real SPILL_AT, not the
    hundreds they cost at 50 a run."""
    monkeypatch.setattr(spool, "SPILL_AT", 400)


def test_find_products_and_write_json_hold_nothing_per_file(
    runs_of_400: None, tmp_path: Path
) -> None:
    find(processing(tmp_path / "warm", 5), tmp_path / "warm-out", True)  # imports
    peaks: dict[str, dict[int, int]] = {"find-products": {}, "write-json": {}}
    for n in (1000, 4000):
        root = processing(tmp_path / f"s{n}", n)
        dest = tmp_path / f"out{n}" / "R1"
        peaks["find-products"][n], plan = peak(partial(find, root, dest, True))
        found = plan.outputs
        assert is_lazy(found["members"]) and found["files"] == len(found["members"]) - (
            sum(1 for m in found["members"] if m.endswith("/"))
        )
        document = found["delivery"]
        assert document["files"] == found["files"] and n < found["files"] < n + 50
        dest.mkdir(parents=True)
        params = {
            "to": str(dest / "delivery.json"),
            "value": document,
            "digests": fake_digests(found),
        }
        ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
        step = load_step("write-json")
        peaks["write-json"][n], planned = peak(partial(step.plan, params, ctx))
        step.apply(planned, ctx)
        written = (dest / "delivery.json").read_bytes()
        assert planned.effects[0].bytes == len(written)
        # what the same document, held whole, renders to
        held = json.loads(json.dumps(document, default=plain))
        filler = write_json._Filler([dict(params["digests"].items())])
        assert written == "".join(write_json.render_parts(filler, held)).encode()
        assert json.loads(written)["archive"]["sha256"] == params["digests"][found["archive"]]
        del plan, found, document, params, planned
    for step_type, grown in peaks.items():
        assert grown[4000] - grown[1000] < BOUND, (step_type, grown)


def step_peaks(
    cli, monkeypatch: pytest.MonkeyPatch, root: Path, out: Path, *args: str, resume: str = ""
) -> tuple[dict[str, int], Any]:
    """What memory grew by at its peak during each step of a delivery (up to
    the step's journal record), by step: a structure made while little else
    is held (a group's effects, after its steps) shows as much as one made
    at the run's busiest moment. With ``resume``: of ``wsrun resume`` of that run."""
    from wsrun.core.journal import Journal

    grown: dict[str, int] = {}
    real = Journal.end_step

    def end_step(self: Journal, run_id: str, key: str, *rest: Any) -> None:
        real(self, run_id, key, *rest)
        now, top = tracemalloc.get_traced_memory()
        grown[key] = top - start[0]
        start[0] = now
        tracemalloc.reset_peak()

    monkeypatch.setattr(Journal, "end_step", end_step)
    gc.collect()
    tracemalloc.start()
    start = [tracemalloc.get_traced_memory()[0]]
    try:
        if resume:
            done = cli("resume", resume, "-q")
        else:
            done = cli("nrao/deliver", root, "-l", out, "--prefix", "R1", "-q", *args)
    finally:
        tracemalloc.stop()
        monkeypatch.setattr(Journal, "end_step", real)
    return grown, done


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_whole_delivery_holds_nothing_per_file(
    runs_of_400: None, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tar: bool
) -> None:
    """The deliver recipe end to end (find-products, copy or tar, write-json,
    checksum, the atomic group and the journal) grows at each step by about
    as much for 4,000 files as for 1,000."""
    flags = ["-t"] if tar else []
    step_peaks(cli, monkeypatch, processing(tmp_path / "warm", 5), tmp_path / "warm-out", *flags)
    grown = {}
    for n in (1000, 4000):
        out = tmp_path / f"out{n}"
        root = processing(tmp_path / f"s{n}", n)
        grown[n], done = step_peaks(cli, monkeypatch, root, out, *flags)
        assert done.code == 0, done.err
        checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "R1")
        assert checked.returncode == 0
        listed = json.loads((out / "R1" / "delivery.json").read_text())["files"]
        assert n < listed < n + 50
    assert set(grown[4000]) == set(grown[1000]) and "delivery" in grown[1000]
    for step in grown[1000]:
        assert grown[4000][step] - grown[1000][step] < WHOLE_BOUND, (step, grown)


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_spooled_delivery_is_byte_for_byte_the_held_one(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tar: bool
) -> None:
    """The same delivery made with everything held (a few hundred files are
    below the spool's threshold) and with everything spooled: the same
    delivery.json, SHA256SUMS and archive, byte for byte."""
    root = processing(tmp_path / "spool", 300)
    out = tmp_path / "out"
    flags = ["-t"] if tar else []
    made = {}
    lazy = []
    real_place = load_step("find-products").plan

    def plan(params: dict[str, Any], ctx: StepContext) -> Any:
        found = real_place(params, ctx)
        lazy.append(is_lazy(found.outputs["delivery"]["products"][0]["files"]))
        return found

    monkeypatch.setattr(load_step("find-products"), "plan", plan)
    for how in ("held", "spooled"):
        if how == "spooled":
            monkeypatch.setattr(spool, "SPILL_AT", 50)
            monkeypatch.setattr(spool, "CHUNK", 16)
            monkeypatch.setattr(write_json, "HELD_MAX", 4096)
        done = cli("nrao/deliver", root, "-l", out, "--prefix", "R1", "-q", *flags)
        assert done.code == 0, done.err
        made[how] = {p.name: p.read_bytes() for p in (out / "R1").iterdir() if p.is_file()}
        subprocess.run(["rm", "-rf", str(out)], check=True)
    assert lazy == [False, True]  # each run took the path it names
    assert {"delivery.json", "SHA256SUMS", *(["R1.tar"] if tar else [])} <= set(made["held"])
    assert made["spooled"] == made["held"]
    assert len(json.loads(made["held"]["delivery.json"])["products"][0]["files"]) > 300


@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_spooled_dry_run_plans_the_real_run(
    small_spool: None, cli, tmp_path: Path, tar: bool
) -> None:
    """Past the spool's threshold: the dry run writes nothing and plans exactly
    the effects and outputs the real run has; run again, nothing changes."""
    root = processing(tmp_path / "spool", 300)
    out = tmp_path / "out"
    args = ["nrao/deliver", root, "-l", out, "--prefix", "R1", "--json", *(["-t"] if tar else [])]
    dry = cli(*args, "--dry-run")
    assert dry.code == 0, dry.err
    assert not out.exists()
    real = cli(*args)
    assert real.code == 0, real.err
    planned, done = json.loads(dry.out), json.loads(real.out)
    assert [s["effects"] for s in planned["steps"]] == [s["effects"] for s in done["steps"]]
    assert planned["outputs"] == done["outputs"]
    (group,) = [s for s in done["steps"] if s["id"] == "delivery"]
    assert len(group["effects"]) > (3 if tar else 300)
    checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "R1")
    assert checked.returncode == 0
    again = cli(*args)
    assert again.code == 0, again.err
    assert all(not s["effects"] for s in json.loads(again.out)["steps"])


def test_a_spooled_tar_with_checksum_plans_and_gives_every_digest(
    small_spool: None, tmp_path: Path
) -> None:
    """tar with ``checksum`` and a member map past the threshold: the planned
    ``checksums`` (null digests: known after the run) and the real ones are
    spooled mappings of the same keys; the real ones are the files' digests."""
    root = processing(tmp_path / "spool", 300)
    dest = tmp_path / "out" / "R1"
    found = find(root, dest, True).outputs
    dest.mkdir(parents=True)
    params = {
        "members": found["members"],
        "to": found["archive"],
        "follow_symlinks": True,
        "checksum": "sha256",
    }
    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    planned = tar.plan(params, StepContext(fs=WorldView(), workdir=str(tmp_path), dry_run=True))
    assert isinstance(planned.outputs["checksums"], SpooledDict)
    assert set(planned.outputs["checksums"].values()) == {None}
    done = tar.apply(tar.plan(params, ctx), ctx)
    digests = done.outputs["checksums"]
    assert isinstance(digests, SpooledDict) and list(digests) == list(planned.outputs["checksums"])
    sources = dict(found["members"].items())
    for name in list(digests)[::37]:
        path = found["archive"] if name == found["archive"] else sources[name]
        assert digests[name] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("link", [False, True], ids=["plain", "with-a-link"])
def test_a_dry_run_view_holds_one_fact_for_a_followed_tree_without_links(
    small_spool: None, tmp_path: Path, link: bool
) -> None:
    """copy with ``follow_symlinks`` of a tree that has no link to follow is
    recorded in a dry run's view as one fact (a million files' delivery
    planned a node each: 600 MiB), and the view shows what the real copy
    writes; a tree with a link inside is recorded a file at a time, the link
    shown as the file it points to."""
    from wsrun.core.runner import Runner
    from wsrun.core.settings import Settings
    from wsrun.core.validate import load_valid

    src = tmp_path / "src"
    for i in range(200):
        path = src / f"d{i % 7}" / f"f{i:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d" % i * (i % 5))
    if link:
        (src / "d0" / "link").symlink_to("f0007" if (src / "d0" / "f0007").exists() else "f0000")
    recipe = tmp_path / "follow.yaml"
    recipe.write_text(
        "recipe: follow\n"
        "inputs: {src: {type: path, positional: true}, dest: {type: path, positional: true}}\n"
        "steps:\n"
        "  - uses: copy\n"
        '    with: {files: {tree: "{{ inputs.src }}"}, to: "{{ inputs.dest }}", '
        "follow_symlinks: true}\n"
    )
    inputs = {"src": str(src), "dest": str(tmp_path / "out")}
    runner = Runner(
        load_valid(str(recipe)), inputs, Settings(env={}), dry_run=True, workdir=str(tmp_path)
    )
    assert runner.run().status == "changed"
    view = runner.view
    assert (len(view._nodes) > 200) == link, "a node per planned file only for a linked tree"

    def seen(fs: WorldView) -> list[tuple[Any, ...]]:
        """Every entry: a file with its size, mode, mtime and content."""
        listed: list[tuple[Any, ...]] = []
        for rel, i in fs.walk(str(tmp_path / "out")):
            if not i.is_file:
                listed.append((rel, i.kind))
                continue
            with fs.open(str(tmp_path / "out" / rel)) as f:
                listed.append((rel, i.kind, i.size, i.mode, i.mtime_ns, f.read()))
        return listed

    planned = seen(view)
    real = Runner(load_valid(str(recipe)), inputs, Settings(env={}), workdir=str(tmp_path))
    assert real.run().status == "changed"
    assert planned == seen(WorldView()) and len(planned) == 200 + 7 + 1 + link


#: Names in a directory product that sha256sum lists its own way (a backslash
#: escaped, the line starting with one) or that sort differently by their
#: bytes than walked (``a.b`` before ``a/b``; ``Z`` before ``a``), and
#: enough more files to spool past the lowered threshold.
ODD_NAMES = [
    "a b.txt",
    "é€😀",
    "back\\slash",
    'quo"te',
    "a.b",
    "a/b",
    "Z",
    "sub/ü/deeper/z",
    "sub dir/x y",
    *(f"many/f{i:03d}" for i in range(80)),
]


def odd_processing(base: Path) -> Path:
    """A processing directory (products by name) with a directory product of
    odd names, nested; a file product; and an empty directory product."""
    root = vla_calibration(base, None).root
    for i, name in enumerate(ODD_NAMES):
        path = root / "products" / "odd dir é" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i * (i % 5))
    (root / "products" / "plain file ü.txt").write_bytes(b"plain\n")
    (root / "products" / "empty dir").mkdir()
    return root


def sha256sums_of(directory: Path) -> str:
    """A directory's checksum as docs/deliver.md defines it, from its files
    alone: the lines sha256sum prints for each, sorted by name's bytes, hashed."""
    names = sorted(
        os.fsencode(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()
    )
    listing = hashlib.sha256()
    for raw in names:
        digest = hashlib.sha256((directory / os.fsdecode(raw)).read_bytes()).hexdigest().encode()
        if b"\\" in raw:
            listing.update(b"\\" + digest + b"  " + raw.replace(b"\\", b"\\\\") + b"\n")
        else:
            listing.update(digest + b"  " + raw + b"\n")
    return listing.hexdigest()


def check_product_checksums(document: dict[str, Any], products: Path) -> None:
    """Each product's checksum in a written delivery.json is that of its source."""
    kinds = {}
    for product in document["products"]:
        source = products / product["name"]
        kinds[product["name"]] = product["kind"]
        if product["kind"] == "dir":
            assert product["checksum"] == sha256sums_of(source), product["name"]
        else:
            assert product["checksum"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert kinds["odd dir é"] == kinds["empty dir"] == "dir"
    assert kinds["plain file ü.txt"] == "file"


@pytest.mark.parametrize("spooled", [False, True], ids=["held", "spooled"])
@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_directory_products_checksum_is_reproduced_from_its_files(
    request: pytest.FixtureRequest, tmp_path: Path, tar: bool, spooled: bool
) -> None:
    """find-products refers to a directory product's own ``files`` for its
    checksum (the journal holds no second list of them), and write-json fills
    in the same delivery.json, byte for byte, as from the older ``{name: key}``
    form the document held before: a checksum reproduced from the files."""
    if spooled:
        request.getfixturevalue("small_spool")
    root = odd_processing(tmp_path / "spool")
    dest = tmp_path / "out" / "R1"
    found = find(root, dest, tar).outputs
    document = found["delivery"]
    by_name = {p["name"]: p for p in document["products"]}
    odd = by_name["odd dir é"]
    assert is_lazy(odd["files"]) == spooled and len(odd["files"]) == len(ODD_NAMES)
    for product in document["products"]:
        if product["kind"] == "dir":
            assert product["checksum"] == {"$sha256sums": "files"}
    digests = {found["archive"]: "f" * 64} if tar else {}  # and each file's, from its source
    for product in document["products"]:
        source = Path(found["placement"][product["path"]])
        for f in product["files"]:
            inner = f["path"][len(product["path"]) + 1 :]
            digests[f["sha256"]["$digest"]] = hashlib.sha256(
                (source / inner if inner else source).read_bytes()
            ).hexdigest()
    dest.mkdir(parents=True)
    params = {"to": str(dest / "delivery.json"), "value": document, "digests": digests}
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    step = load_step("write-json")
    step.apply(step.plan(params, ctx), ctx)
    written = (dest / "delivery.json").read_bytes()
    # the document as it was: each directory's files named again, {name: key}
    before = json.loads(json.dumps(document, default=plain))
    for product in before["products"]:
        if product["kind"] == "dir":
            inner = len(product["path"]) + 1
            names = {f["path"][inner:]: f["sha256"]["$digest"] for f in product["files"]}
            product["checksum"] = {"$sha256sums": names}
    filler = write_json._Filler([digests])
    assert written == "".join(write_json.render_parts(filler, before)).encode()
    check_product_checksums(json.loads(written), root / "products")


@pytest.mark.parametrize("spooled", [False, True], ids=["held", "spooled"])
@pytest.mark.parametrize("tar", [False, True], ids=["loose", "tar"])
def test_a_delivery_of_odd_names_has_the_checksums_of_its_sources(
    request: pytest.FixtureRequest, cli, tmp_path: Path, tar: bool, spooled: bool
) -> None:
    """The deliver recipe end to end (find-products' outputs through the
    journal to write-json), the dry run first: each directory product's
    checksum is the one its source directory has."""
    if spooled:
        request.getfixturevalue("small_spool")
    root = odd_processing(tmp_path / "spool")
    out = tmp_path / "out"
    args = ["nrao/deliver", root, "-l", out, "--prefix", "R1", "-q", *(["-t"] if tar else [])]
    dry = cli(*args, "--dry-run")
    assert dry.code == 0, dry.err
    done = cli(*args)
    assert done.code == 0, done.err
    check_product_checksums(
        json.loads((out / "R1" / "delivery.json").read_text()), root / "products"
    )


@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_a_continued_delivery_holds_nothing_per_file(
    runs_of_400: None, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A delivery SIGKILLed half way is continued, by a re-run or by
    `wsrun resume` (which reads find-products' outputs back from the journal,
    spooled): the staged files' digests come from the group's record through a
    temporary database, not a dict (a million took 400 MB), and the plan's
    known digests are spooled. Each step grows by about as much for 4,000
    files as for 1,000, and the result passes ``sha256sum -c``."""
    # the killed run journals in chunks of at most 64 items too, as small_spool
    # sets for this process (a chunk is decoded whole: 16,384 items at most)
    small = "from wsrun.core import journal_blobs\njournal_blobs.CUT_MIN, journal_blobs.CUT_MAX = 16, 64\n"
    killer = write(
        tmp_path / "killer.py", small + killer_script("wsrun.steps.copy", "copy_file_placed")
    )
    grown = {}
    for n in (10, 1000, 4000):  # the first warms up: imports, caches
        out = tmp_path / f"out{n}"
        root = processing(tmp_path / f"s{n}", n)
        env = {**os.environ, "KILL_AFTER": str(n // 2), "PYTHONPATH": os.pathsep.join(sys.path)}
        killed = subprocess.run(
            [sys.executable, killer, "nrao/deliver", root, "-l", out, "--prefix", "R1", "-q"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert killed.returncode == -9, killed.stderr
        record = Path(groups.digests_of(str(out)))
        recorded = record.read_text().splitlines() if record.exists() else []
        # files are copied in parallel: at the kill some were still in flight
        assert n < 1000 or len(recorded) >= n // 4
        killed_run = Journal().runs(1)[0].id if how == "resume" else ""
        grown[n], done = step_peaks(cli, monkeypatch, root, out, resume=killed_run)
        assert done.code == 0, done.err
        checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out / "R1")
        assert checked.returncode == 0
    for step in grown[1000]:
        assert grown[4000][step] - grown[1000][step] < WHOLE_BOUND, (step, grown)
