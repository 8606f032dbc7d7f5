"""Atomic groups (`group:` with `steps:`), attacked.

A failing step leaves the destination untouched (with the staging area removed
or kept, as asked); a run killed by SIGKILL inside a group is continued by the
next run, which writes only what is missing and reuses the recorded digests;
two runs on one destination take turns; a dry run plans exactly the real run's
effects in every case (new, empty, replaced, unchanged, continued); the
journal records begin, commit and abort; bad group syntax is a
``file:line:col`` error.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import killer_script, snapshot, write
from fixtures.processing import vla_calibration
from wsrun.core import groups
from wsrun.core.journal import Journal

RECIPE = """
recipe: grouped
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
  fail: {type: bool, flags: [--fail]}
  keep: {type: bool, flags: [--keep]}
  replace: {type: bool, flags: [--replace]}
steps:
  - id: out
    name: The copy, all or nothing
    group:
      destination: "{{ inputs.dest }}"
      on_failure: "{{ 'keep' if inputs.keep else 'remove' }}"
      replace: "{{ inputs.replace }}"
      marker: SHA256SUMS
    steps:
      - id: files
        uses: copy
        with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}", checksum: sha256, workers: 1}
      - id: boom
        if: "{{ inputs.fail }}"
        uses: fail
        with: {message: "boom after the copy"}
      - id: sums
        uses: checksum
        with:
          paths: "{{ inputs.dest }}"
          to: "{{ inputs.dest }}/SHA256SUMS"
          digests: "{{ steps.files.outputs.checksums | default({}) }}"
  - id: after
    uses: noop
outputs:
  files: "{{ steps.files.outputs.files }}"
  sums: "{{ steps.sums.outputs.file }}"
"""


def source(root: Path, version: int = 1) -> Path:
    """A small tree: two directories, a few files (content depends on version)."""
    src = root / "src"
    for i in range(6):
        path = src / f"d{i % 2}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(f"{version}-{i}".encode()).digest() * (100 + i))
    return src


def run(cli, recipe: Path, *args) -> tuple[int, dict, str]:
    r = cli(recipe, *args, "--json")
    return r.code, (json.loads(r.out) if r.out.strip() else {}), r.err


def group_report(report: dict) -> dict:
    (step,) = [s for s in report["steps"] if s["id"] == "out"]
    return step


def sums_ok(dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=dest, capture_output=True, text=True
    )


def whole(dest: Path, src: Path) -> None:
    """``dest`` holds exactly the copy of ``src`` and a SHA256SUMS that checks."""
    check = sums_ok(dest)
    assert check.returncode == 0, check.stdout + check.stderr
    found = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert found == {f"src/{p.relative_to(src)}" for p in src.rglob("*") if p.is_file()} | {
        "SHA256SUMS"
    }
    for p in src.rglob("*"):
        if p.is_file():
            assert (dest / "src" / p.relative_to(src)).read_bytes() == p.read_bytes()


def staging(dest: Path) -> Path:
    return Path(groups.staging_of(str(dest)))


# ---- failure: nothing lands --------------------------------------------------------------


@pytest.mark.parametrize("keep", [False, True], ids=["remove", "keep"])
def test_a_failing_step_leaves_a_new_destination_absent(cli, tmp_path: Path, keep: bool) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out" / "deep"
    extra = ["--keep"] if keep else []
    code, report, err = run(cli, recipe, src, dest, "--fail", *extra)
    assert code == 1 and "boom after the copy" in err and "g.yaml:" in err
    assert not (tmp_path / "out").exists()  # not even the parent the group would create
    kept = staging(tmp_path / "out")
    assert kept.is_dir() == keep
    assert Path(groups.digests_of(str(tmp_path / "out"))).exists() == keep
    if keep:  # the copy is all there, under the staging name
        assert (kept / "deep" / "src" / "d0" / "f0.bin").read_bytes() == (
            src / "d0" / "f0.bin"
        ).read_bytes()
    # The next run finishes; one that continues a kept staging area copies nothing again.
    code, report, err = run(cli, recipe, src, dest, *extra)
    assert code == 0, err
    written = sorted(
        Path(e["path"]).name for e in group_report(report)["effects"] if e["op"] == "create_file"
    )
    copies = [f"f{i}.bin" for i in range(6)]
    assert written == (["SHA256SUMS"] if keep else ["SHA256SUMS", *copies])
    whole(dest, src)
    assert not kept.exists() and not Path(groups.digests_of(str(tmp_path / "out"))).exists()


@pytest.mark.parametrize("keep", [False, True], ids=["remove", "keep"])
def test_a_failing_replacement_leaves_the_old_result_untouched(
    cli, tmp_path: Path, keep: bool
) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path, 1)
    dest = tmp_path / "out"
    assert run(cli, recipe, src, dest)[0] == 0
    before = {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    source(tmp_path, 2)
    extra = ["--keep"] if keep else []
    code, report, err = run(cli, recipe, src, dest, "--replace", "--fail", *extra)
    assert code == 1 and "boom" in err
    assert {p: p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert staging(dest).exists() == keep
    assert sums_ok(dest).returncode == 0
    # Without --replace a different result is refused, whatever is staged.
    code, report, err = run(cli, recipe, src, dest, *extra)
    assert code == 1 and "already holds a different result" in err
    code, report, err = run(cli, recipe, src, dest, "--replace", *extra)
    assert code == 0, err
    whole(dest, src)
    assert not staging(dest).exists() and not Path(groups.old_of(str(dest))).exists()


def test_a_destination_that_is_not_the_groups_is_never_written(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    for extra in ([], ["--replace"]):
        code, report, err = run(cli, recipe, src, dest, *extra)
        assert code == 1 and "holds no result" in err
    assert os.listdir(dest) == ["notes.txt"] and not staging(dest).exists()
    (dest / "notes.txt").unlink()  # an empty directory is filled, in place
    code, report, err = run(cli, recipe, src, dest)
    assert code == 0, err
    assert not any(e["path"] == str(dest) for e in group_report(report)["effects"])
    whole(dest, src)


# ---- killed, then run again ------------------------------------------------------------

KILLER = killer_script("wsrun.steps.copy", "copy_file_placed")


@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_deliver_killed_mid_copy_is_continued_with_the_recorded_digests(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wsrun_home: Path, how: str
) -> None:
    """Issue 15: SIGKILL half way through a delivery; the re-run continues the
    staging area, writes only the missing files, reads none of the staged ones
    again (their digests were recorded as they were copied), and the delivery
    passes `sha256sum -c`."""
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    killer = write(tmp_path / "killer.py", KILLER)
    env = {**os.environ, "KILL_AFTER": "6", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(killer), "nrao/deliver", str(p.root), "-l", str(out), "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert not out.exists()
    kept = staging(out)
    staged = [f for f in kept.rglob("*") if f.is_file() and not f.name.endswith(".wsrun-tmp")]
    recorded = Path(groups.digests_of(str(out))).read_text().splitlines()
    # Files copied in parallel: each digest is recorded just before its file is
    # renamed into place whole, so the record is never behind the staged files;
    # a kill between the two leaves at most one recorded, unstaged file a worker.
    workers = os.cpu_count() or 1
    assert len(recorded) >= 6 - workers and len(staged) > 0
    assert len(staged) <= len(recorded) <= len(staged) + workers
    total = len(p.products)
    # The re-run may not read a staged file again: hashing one is an error now.
    from wsrun.steps import copy

    def no_rehash(path: str, *args, **kwargs) -> str:
        raise AssertionError(f"read again: {path}")

    monkeypatch.setattr(copy, "hash_file", no_rehash)
    if how == "resume":
        journal = Journal(str(wsrun_home))
        try:
            (killed,) = journal.runs(5)
        finally:
            journal.close()
        r = cli("resume", killed.id, "--json")
    else:
        r = cli("nrao/deliver", p.root, "-l", out, "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    (content,) = [s for s in report["steps"] if s["id"] == "delivery"]
    written = [
        e
        for e in content["effects"]
        if e["op"] == "create_file"
        and e["path"] not in (str(out / "delivery.json"), str(out / "SHA256SUMS"))
    ]
    assert 0 < len(written) <= total - len(staged)
    check = sums_ok(out)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not kept.exists() and not Path(groups.digests_of(str(out))).exists()


def test_recorded_digests_are_what_the_rerun_trusts(cli, tmp_path: Path) -> None:
    """The check has teeth: a staged file changed behind wsrun's back (same size
    and mtime) keeps its recorded digest, so `sha256sum -c` of the result fails
    on exactly that file."""
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out"
    assert run(cli, recipe, src, dest, "--fail", "--keep")[0] == 1
    victim = staging(dest) / "src" / "d1" / "f1.bin"
    st = victim.stat()
    victim.write_bytes(b"X" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, report, err = run(cli, recipe, src, dest, "--keep")
    assert code == 0, err
    check = sums_ok(dest)
    assert check.returncode == 1 and "src/d1/f1.bin: FAILED" in check.stdout


# ---- two runs, dry runs, journal ---------------------------------------------------------


def test_two_runs_on_one_destination_take_turns(tmp_path: Path) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wsrun", str(recipe), str(src), str(dest), "--json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], results
    states = sorted(json.loads(out)["steps"][0]["status"] for out, _ in results)
    assert states == ["changed", "ok"]  # one wrote it, the other found it done
    whole(dest, src)
    assert not staging(dest).exists()


def effects(report: dict) -> list[list[dict]]:
    return [s["effects"] for s in report["steps"]]


@pytest.mark.parametrize("case", ["new", "empty", "replace", "unchanged", "continued"])
def test_dry_run_plans_the_real_runs_effects(cli, tmp_path: Path, case: str) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out"
    args: list[str] = []
    if case == "empty":
        dest.mkdir()
    elif case in ("replace", "unchanged"):
        assert run(cli, recipe, src, dest)[0] == 0
        if case == "replace":
            source(tmp_path, 2)
            args = ["--replace"]
    elif case == "continued":
        args = ["--keep"]
        assert run(cli, recipe, src, dest, "--fail", *args)[0] == 1
    before = snapshot(tmp_path)
    code, dry, err = run(cli, recipe, src, dest, *args, "--dry-run")
    assert code == 0, err
    assert snapshot(tmp_path) == before
    code, real, err = run(cli, recipe, src, dest, *args)
    assert code == 0, err
    assert effects(dry) == effects(real)
    assert dry["outputs"]["files"] == real["outputs"]["files"]
    shown = json.dumps(real)
    assert ".wsrun-staging" not in shown  # effects and outputs name the final paths
    assert all(f.startswith(str(dest) + "/") for f in real["outputs"]["files"])
    ops = [e["op"] for e in group_report(real)["effects"]]
    if case == "unchanged":
        assert ops == [] and group_report(real)["status"] == "ok"
    elif case == "replace":
        assert ops[:2] == ["remove", "create_dir"]
    whole(dest, src)


def test_the_journal_records_begin_commit_and_abort(cli, tmp_path: Path, wsrun_home: Path) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    src = source(tmp_path)
    dest = tmp_path / "out"
    code, failed, _ = run(cli, recipe, src, dest, "--fail", "--keep")
    code, done, _ = run(cli, recipe, src, dest, "--keep")
    journal = Journal(str(wsrun_home))
    try:
        first = {s["key"]: s for s in journal.steps(failed["run_id"])}
        second = {s["key"]: s for s in journal.steps(done["run_id"])}
    finally:
        journal.close()
    assert first["out:begin"]["outputs"]["staging"] == str(staging(dest))
    assert first["out:abort"]["status"] == "failed" and first["out:abort"]["outputs"]["kept"]
    assert "boom" in first["out:abort"]["error"] and "out:commit" not in first
    assert second["out:commit"]["outputs"] == {"destination": str(dest)}
    assert list(second).index("out:begin") < list(second).index("files")
    assert list(second).index("sums") < list(second).index("out:commit")


# ---- the syntax ----------------------------------------------------------------------------

BAD = {
    "nested": (
        """
        - id: outer
          group: {destination: /tmp/a}
          steps:
            - id: inner
              group: {destination: /tmp/a/b}
              steps:
                - uses: noop
        """,
        "groups do not nest",
        7,
    ),
    "uses": (
        """
        - group: {destination: /tmp/a}
          uses: copy
          steps:
            - uses: noop
        """,
        "a group has no `uses:`",
        4,
    ),
    "for_each": (
        """
        - group: {destination: /tmp/a}
          for_each: [1, 2]
          steps:
            - uses: noop
        """,
        "a group has no `for_each:`",
        4,
    ),
    "no steps": (
        """
        - group: {destination: /tmp/a}
        """,
        "'steps' is a required property",
        3,
    ),
    "no destination": (
        """
        - group: {on_failure: keep}
          steps:
            - uses: noop
        """,
        "'destination' is a required property",
        3,
    ),
    "bad on_failure": (
        """
        - group: {destination: /tmp/a, on_failure: sometimes}
          steps:
            - uses: noop
        """,
        "'sometimes' is not one of ['remove', 'keep']",
        3,
    ),
    "unknown key": (
        """
        - group: {destination: /tmp/a, atomically: true}
          steps:
            - uses: noop
        """,
        "unknown key 'atomically'",
        3,
    ),
    "recipe inside": (
        """
        - group: {destination: /tmp/a}
          steps:
            - uses: ./other.yaml
        """,
        "cannot call a recipe",
        5,
    ),
    "unknown name": (
        """
        - group: {destination: "{{ inputs.nope }}"}
          steps:
            - uses: noop
        """,
        "unknown input 'nope'",
        3,
    ),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_group_syntax_is_a_positioned_error(cli, tmp_path: Path, name: str) -> None:
    steps, message, line = BAD[name]
    text = (
        "recipe: bad\nsteps:\n" + textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ") + "\n"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    r = cli("validate", path)
    assert r.code == 2, r.out
    located = [x for x in r.err.splitlines() + r.out.splitlines() if message in x]
    assert located, r.err + r.out
    assert located[0].startswith(f"{path}:{line}:"), located[0]


def test_ids_inside_a_group_are_known_after_it(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path / "g.yaml", RECIPE)
    assert cli("validate", recipe).code == 0
    later = recipe.read_text().replace("steps.sums.outputs.file", "steps.nothere.outputs.file")
    (tmp_path / "g2.yaml").write_text(later)
    r = cli("validate", tmp_path / "g2.yaml")
    assert r.code == 2 and "step 'nothere' does not exist" in r.err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replace", "{{ 'yes' }}", "group.replace: expected true or false, got 'yes'"),
        ("on_failure", "{{ 'later' }}", "group.on_failure: 'later' is not one of remove, keep"),
        ("destination", "{{ none }}", "group.destination: expected a path, got None"),
    ],
)
def test_group_values_from_expressions_are_checked_when_run(
    cli, tmp_path: Path, field: str, value: str, message: str
) -> None:
    spec = {"destination": str(tmp_path / "out"), field: value}
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        json.dumps(
            {"recipe": "g", "steps": [{"id": "g", "group": spec, "steps": [{"uses": "noop"}]}]}
        )
    )
    r = cli(recipe)
    assert r.code == 1 and message in r.err and "g.yaml:1:" in r.err, r.err
    assert not (tmp_path / "out").exists()


def test_a_killed_loose_delivery_continued_as_a_tar_holds_only_the_archive(
    cli, tmp_path: Path
) -> None:
    """The staging area a killed delivery left is continued by the next run
    even when that run asks for something else (-t): what it staged and this
    delivery does not hold is removed (copy's delete), not delivered."""
    p = vla_calibration(tmp_path / "spool", "pretty")
    out = tmp_path / "out"
    killer = write(tmp_path / "killer.py", KILLER)
    env = {**os.environ, "KILL_AFTER": "6", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(killer), "nrao/deliver", str(p.root), "-l", str(out), "-q"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    assert any(f.is_file() for f in staging(out).rglob("*"))
    r = cli("nrao/deliver", p.root, "-l", out, "-t", "--json")
    assert r.code == 0, r.err
    assert sorted(os.listdir(out)) == ["SHA256SUMS", "calibration.tar", "delivery.json"]
    check = sums_ok(out)
    assert check.returncode == 0, check.stdout + check.stderr


_STAGED = groups.Redirect("/d/r", "/d/.r.wsrun-staging")
_PATHS = st.sampled_from(
    ["/d/.r.wsrun-staging", "/d/.r.wsrun-staging/a", "/d/.r.wsrun-stagingX/a", "/d/r/b", "op", ""]
)
_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _PATHS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_PATHS, inner, max_size=3),
    max_leaves=12,
)


def _renamed(value: object) -> object:
    """What a staged path in ``value`` becomes, by its definition."""
    if isinstance(value, str):
        return _STAGED.final(value)
    if isinstance(value, dict):
        return {_renamed(k): _renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v) for v in value]
    return value


@given(_VALUES)
def test_every_staged_path_in_a_value_is_renamed_keys_and_values(value: object) -> None:
    assert _STAGED.finals(value) == _renamed(value)


def test_the_digest_record_is_looked_up_exactly(tmp_path: Path) -> None:
    """What a killed run recorded, looked up in a temporary database: a name
    that is not UTF-8, a file re-staged (the last digest wins), a torn last
    line (ignored), and a file changed since (size or mtime: not trusted)."""
    staging = tmp_path / "stage"
    odd = os.fsdecode(b"caf\xe9.dat")  # a Latin-1 name: not UTF-8
    record = tmp_path / "record"
    lines = [
        json.dumps([odd, 3, 10, "sha256", "a" * 64]),
        json.dumps(["d/f", 5, 20, "sha256", "b" * 64]),
        json.dumps(["d/f", 5, 20, "sha256", "c" * 64]),  # staged again
    ]
    record.write_text("\n".join(lines) + '\n["torn", 1, 2, "sha2')
    cache = groups.DigestCache(str(record), str(staging))
    try:
        assert cache.get(str(staging / odd), 3, 10, "sha256") == "a" * 64
        assert cache.get(str(staging / "d/f"), 5, 20, "sha256") == "c" * 64
        assert cache.get(str(staging / "d/f"), 5, 21, "sha256") is None  # touched since
        assert cache.get(str(staging / "d/f"), 6, 20, "sha256") is None  # grew since
        assert cache.get(str(staging / "d/f"), 5, 20, "md5") is None
        assert cache.get(str(tmp_path / "d/f"), 5, 20, "sha256") is None  # not staged
        assert cache.get(str(staging / "torn"), 1, 2, "sha256") is None
    finally:
        cache.close()
    assert groups.DigestCache(str(tmp_path / "none"), str(staging)).known is None
