"""Two runs on one destination, for every step type that writes (issue 14).

Each step type's destination is locked before the step plans (wsrun.core.locks):
a second run waits for the first and then finds its work done, or, when the
wait is over, fails with one line naming the destination and the run that
holds it. Nothing either run leaves is half-written, and no temporary file
or lock file is left behind. Also here: the temporary-file primitives the
steps share (never truncate or remove what a live writer holds; names that
fit in 255 bytes) and file names of 255 bytes through copy, tar and untar.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import write
from fixtures import staging
from fixtures.writers import KINDS, leftovers, make_case
from fixtures.zygote import Zygote
from wsrun.core import fileio, locks
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, load_step
from wsrun.formats import tarball
from wsrun.stores.archive.store import ArchiveStore
from wsrun.testing import run_step

REPEAT = 10


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def lock_files(home: Path) -> list[str]:
    directory = home / "locks"
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.mark.parametrize("kind", KINDS)
def test_two_runs_on_one_destination(
    kind: str, tmp_path: Path, wsrun_home: Path, zygote: Zygote, request: pytest.FixtureRequest
) -> None:
    """Ten times: two runs of the same recipe, the second started at once or a
    little later (a seeded random gap); both succeed (the second waits), the
    destination holds the complete result, and nothing is left over."""
    case = make_case(kind, tmp_path, request.getfixturevalue)
    rng = random.Random(f"two-runs-{kind}")
    env = dict(os.environ)
    for rep in range(REPEAT):
        version = rep % 2 + 1  # each repetition replaces the previous result
        case.prepare(version)
        recipe = case.recipe(version)
        first = zygote.start(recipe, "-q", cwd=case.tmp, env=env)
        time.sleep(rng.uniform(0, 0.05))  # where the second starts; not a synchronisation
        second = zygote.start(recipe, "-q", cwd=case.tmp, env=env)
        for run in (first, second):
            code = zygote.wait(run)
            assert code == 0, f"repetition {rep}: exit {code}: {run.stderr()}"
        assert case.state() == case.expected(version), f"repetition {rep}"
        assert leftovers(tmp_path) == []
        assert lock_files(wsrun_home) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_locked_destination_is_refused_naming_the_run(
    kind: str, tmp_path: Path, wsrun_home: Path, zygote: Zygote, request: pytest.FixtureRequest
) -> None:
    """While another run holds the destination, a run with no time to wait
    fails with one line naming the destination, the run and its pid, and
    changes nothing; once the holder is done the same run succeeds."""
    case = make_case(kind, tmp_path, request.getfixturevalue)
    case.prepare(1)
    uses, params = case.params(1)
    ctx = StepContext(fs=WorldView(), workdir=str(case.tmp))
    names = [
        os.path.realpath(n) if n.startswith("/") else n
        for n in load_step(uses).destinations(params, ctx)
    ]
    assert names, f"{uses} names no destination to lock"
    env = {**os.environ, locks.WAIT_ENV: "0"}
    held = locks.acquire(names, "20991231-000000-holder", 0)
    try:
        run = zygote.start(case.recipe(1), cwd=case.tmp, env=env)
        assert zygote.wait(run) == 1
    finally:
        held.release()
    failure = [line for line in run.stderr().splitlines() if "failed:" in line]
    assert len(failure) == 1, run.stderr()
    busy = f"destination is being written by run 20991231-000000-holder (pid {os.getpid()})"
    assert any(f"{name}: {busy}" in failure[0] for name in names), failure[0]
    assert case.state() is None
    if kind == "move":
        assert (case.src / "big.bin").exists()
    assert leftovers(tmp_path) == []
    run = zygote.start(case.recipe(1), "-q", cwd=case.tmp, env=env)
    assert zygote.wait(run) == 0, run.stderr()
    assert case.state() == case.expected(1)
    assert lock_files(wsrun_home) == []


OTHER_WRITERS = {
    "symlink": ("{link: out/link, target: ../stage}", "out/link"),
    "remove": ("{path: out/old}", "out/old"),
    "ingestion-manifest": ("{ingestion_path: stage, kind: calibration}", "stage"),
}


@pytest.mark.parametrize("uses", sorted(OTHER_WRITERS))
def test_other_writing_steps_lock_too(
    uses: str, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params, locked = OTHER_WRITERS[uses]
    staging.calibration(tmp_path / "stage")
    (tmp_path / "out" / "old").mkdir(parents=True)
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: other
        steps:
          - id: w
            uses: {uses}
            with: {params}
        """,
    )
    monkeypatch.setenv(locks.WAIT_ENV, "0")
    held = locks.acquire([str(tmp_path / locked)], "20991231-000000-holder", 0)
    try:
        refused = cli(recipe)
    finally:
        held.release()
    assert refused.code == 1
    assert (
        f"{tmp_path / locked}: destination is being written by run 20991231-000000" in refused.err
    )
    assert (tmp_path / "out" / "old").is_dir() and not (tmp_path / "out" / "link").exists()
    done = cli(recipe)
    assert done.code == 0, done.err


@pytest.mark.parametrize(
    "uses,params",
    [
        ("copy", "{{sources: {src}, to: cache}}"),
        ("rsync", "{{source: {src}, to: cache}}"),
    ],
)
def test_runs_writing_other_things_into_one_cache_do_not_wait(
    uses: str, params: str, cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pipeline drivers copy their products into one shared cache directory:
    only each source's place in it is locked, not the whole cache."""
    for name in ("ous1", "ous2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "product.fits").write_bytes(name.encode() * 1000)
    recipes = {
        name: write(
            tmp_path / f"{name}.yaml",
            f"""
            recipe: cache
            steps:
              - id: w
                uses: {uses}
                with: {params.format(src=name)}
            """,
        )
        for name in ("ous1", "ous2")
    }
    monkeypatch.setenv(locks.WAIT_ENV, "0")
    held = locks.acquire([str(tmp_path / "cache" / "ous1")], "20991231-000000-holder", 0)
    try:
        other = cli(recipes["ous2"])
        same = cli(recipes["ous1"])
    finally:
        held.release()
    assert other.code == 0, other.err
    assert (tmp_path / "cache/ous2/product.fits").read_bytes() == b"ous2" * 1000
    assert same.code == 1 and "is being written by run 20991231-000000-holder" in same.err
    assert not (tmp_path / "cache/ous1").exists()


def test_a_run_waits_for_the_holder_then_finishes(
    tmp_path: Path, wsrun_home: Path, zygote: Zygote, request: pytest.FixtureRequest
) -> None:
    case = make_case("tar.gz", tmp_path, request.getfixturevalue)
    case.prepare(1)
    held = locks.acquire([str(case.destination)], "20991231-000000-holder", 0)
    try:
        run = zygote.start(case.recipe(1), cwd=case.tmp, env={**os.environ, locks.WAIT_ENV: "60"})
        deadline = time.monotonic() + 60
        while "waiting:" not in run.stderr():
            assert zygote.poll(run) is None, run.stderr()
            assert time.monotonic() < deadline, "the run never said it waits"
            time.sleep(0.02)
        assert f"{case.destination} is being written by run 20991231-000000-holder" in run.stderr()
        assert case.state() is None
    finally:
        held.release()
    assert zygote.wait(run) == 0, run.stderr()
    assert case.state() == case.expected(1)


def test_two_ingests_of_other_products_into_a_new_archive(tmp_path: Path, zygote: Zygote) -> None:
    """Different staging areas lock different things, so two ingests run at
    once into one archive; the archive itself keeps them apart, also while
    the first of them creates it."""
    manifests = [staging.calibration(tmp_path / f"stage{i}", seed=f"s{i}") for i in (0, 1)]
    env = dict(os.environ)
    for rep in range(REPEAT):
        store = tmp_path / f"archive{rep}"
        recipes = []
        for i, manifest in enumerate(manifests):
            recipes.append(
                write(
                    tmp_path / f"ingest{i}.yaml",
                    f"""
                    recipe: ingest
                    steps:
                      - id: ingest
                        uses: ingest
                        with: {{manifest: "{manifest}", archive: "{store}"}}
                    """,
                )
            )
        runs = [zygote.start(r, "-q", cwd=tmp_path, env=env) for r in recipes]
        for run in runs:
            assert zygote.wait(run) == 0, f"repetition {rep}: {run.stderr()}"
        archive_store = ArchiveStore.open(str(store), create=False)
        try:
            assert archive_store.verify() == []
            paths = {p.ingestion_path for p in archive_store.products()}
            assert paths == {str(m.parent) for m in manifests}
        finally:
            archive_store.close()
        assert leftovers(tmp_path) == []


def test_archive_get_locks_its_destination(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = staging.calibration(tmp_path / "cal")
    store = tmp_path / "archive"
    _, result = run_step(
        "ingest", {"manifest": str(manifest), "archive": str(store)}, str(tmp_path)
    )
    locator = result.outputs["locators"][0]
    got = tmp_path / "got.tar"
    monkeypatch.setenv(locks.WAIT_ENV, "0")
    held = locks.acquire([str(got)], "20991231-000000-holder", 0)
    try:
        refused = cli("archive", "get", locator, str(got), "--archive", str(store))
    finally:
        held.release()
    assert refused.code == 1
    assert f"{got}: destination is being written by run 20991231-000000-holder" in refused.err
    assert not got.exists()
    done = cli("archive", "get", locator, str(got), "--archive", str(store))
    assert done.code == 0, done.err
    assert got.read_bytes() == (tmp_path / "cal" / locator_file(manifest)).read_bytes()


def locator_file(manifest: Path) -> str:
    return json.loads(manifest.read_text())["output_group"]["science_products"][0]["filename"]


# ---- the lock primitive ----------------------------------------------------------


def test_locks_nest_along_paths_and_leave_no_files(tmp_path: Path, wsrun_home: Path) -> None:
    d = str(tmp_path / "d")
    outer = locks.acquire([d], "outer", 0)
    for inner in (d + "/x", d + "/x/y", d):
        with pytest.raises(locks.DestinationBusy) as refused:
            locks.acquire([inner], "inner", 0)
        assert refused.value.path == inner
        assert f"by run outer (pid {os.getpid()})" in str(refused.value)
    sibling = locks.acquire([str(tmp_path / "d2"), "archive x (y)"], "sibling", 0)
    outer.release()
    inner = locks.acquire([d + "/x"], "inner", 0)
    with pytest.raises(locks.DestinationBusy, match=r"by run inner .*\(writing .*/d/x\)"):
        locks.acquire([d], "outer", 0)
    inner.release()
    sibling.release()
    assert lock_files(wsrun_home) == []


def test_a_killed_holder_releases_its_lock(tmp_path: Path, wsrun_home: Path) -> None:
    d = str(tmp_path / "d")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from wsrun.core import locks; "
            f"locks.acquire([{d!r}], 'killed', 0); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(locks.DestinationBusy, match=rf"by run killed \(pid {holder.pid}\)"):
            locks.acquire([d], "next", 0)
    finally:
        holder.kill()
        holder.wait()
    locks.acquire([d], "next", 0).release()
    assert lock_files(wsrun_home) == []


# ---- temporary files ------------------------------------------------------------


def test_a_held_temporary_file_is_neither_truncated_nor_removed(tmp_path: Path) -> None:
    target = tmp_path / "a.tar.gz"
    tmp = fileio.temp_path(str(target))
    fd = fileio.create_temp(tmp, 0o600)
    os.write(fd, b"the first run's bytes")
    with pytest.raises(fileio.TempBusy) as busy:
        with fileio.atomic_write(str(target)) as f:
            f.write(b"the second run's bytes")
    assert busy.value.errno == errno.EBUSY and busy.value.filename == tmp
    with pytest.raises(fileio.TempBusy):
        fileio.create_temp(tmp, 0o600)
    assert Path(tmp).read_bytes() == b"the first run's bytes"
    assert not target.exists()
    os.close(fd)  # the first run died: its file is a leftover now
    fileio.write_bytes_atomic(str(target), b"complete")
    assert target.read_bytes() == b"complete" and not os.path.lexists(tmp)


def test_a_leftover_symlink_is_removed_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    target = tmp_path / "out.txt"
    os.symlink(victim, fileio.temp_path(str(target)))
    fileio.write_bytes_atomic(str(target), b"new")
    assert victim.read_bytes() == b"keep me" and target.read_bytes() == b"new"


def test_a_temporary_file_replaced_under_the_writer_is_not_renamed_into_place(
    tmp_path: Path,
) -> None:
    target = tmp_path / "out.txt"
    tmp = fileio.temp_path(str(target))
    with pytest.raises(OSError, match="was replaced while being written"):
        with fileio.atomic_write(str(target)) as f:
            f.write(b"mine")
            other = tmp_path / "other"
            other.write_bytes(b"someone else's")
            os.replace(other, tmp)
    assert not target.exists()
    assert Path(tmp).read_bytes() == b"someone else's"  # not ours to remove


def test_tar_refuses_an_archive_that_lost_bytes_after_writing(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check behind "a run that exits 0 has a complete archive": the file
    must hold exactly what was written."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(50_000))
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: t
        steps:
          - id: t
            uses: tar
            with: {source: src, to: out/a.tar.gz}
        """,
    )
    original = tarball.write_tar

    def lossy(fd: int, *args, **kwargs) -> None:
        original(fd, *args, **kwargs)
        os.ftruncate(fd, os.fstat(fd).st_size - 10)

    monkeypatch.setattr(tarball, "write_tar", lossy)
    result = cli(recipe)
    assert result.code == 1
    assert "but the file has" in result.err and "a.tar.gz" in result.err
    assert not (tmp_path / "out" / "a.tar.gz").exists()
    assert leftovers(tmp_path) == []


def test_hidden_names_fit_in_255_bytes() -> None:
    for name in ("a" * 255, "é" * 127, "x" * 244, "ü" * 100 + "y" * 55):
        hidden = fileio.hidden_name(name, fileio.TMP_SUFFIX)
        raw = os.fsencode(hidden)
        assert len(raw) <= fileio.NAME_MAX
        assert fileio.is_temp_name(hidden)
        assert fileio.hidden_name(name, fileio.TMP_SUFFIX) == hidden  # resume finds it again
    assert fileio.hidden_name("a" * 254 + "b", ".s") != fileio.hidden_name("a" * 254 + "c", ".s")
    assert fileio.hidden_name("short", fileio.TMP_SUFFIX) == ".short.wsrun-tmp"


def test_255_byte_file_names_copy_tar_and_untar(cli, tmp_path: Path) -> None:
    long_name = "n" * 251 + ".bin"  # 255 bytes
    multibyte = "é" * 125 + ".bin"  # 254 bytes
    src = tmp_path / "src"
    src.mkdir()
    (src / long_name).write_bytes(b"long name\n" * 100)
    (src / multibyte).write_bytes(b"multibyte\n" * 100)
    archive_name = "a" * 248 + ".tar.gz"  # 255 bytes
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: long
        steps:
          - id: copy
            uses: copy
            with: {{sources: src, to: copied}}
          - id: tar
            uses: tar
            with: {{source: src, to: "packed/{archive_name}"}}
          - id: untar
            uses: untar
            with: {{source: "packed/{archive_name}", to: unpacked}}
        """,
    )
    result = cli(recipe)
    assert result.code == 0, result.err
    for root in ("copied/src", "unpacked/src"):
        for name in (long_name, multibyte):
            assert (tmp_path / root / name).read_bytes() == (src / name).read_bytes()
    with tarfile.open(tmp_path / "packed" / archive_name) as tar:
        assert sorted(tar.getnames()) == sorted(["src", f"src/{long_name}", f"src/{multibyte}"])
    assert leftovers(tmp_path) == []
    again = cli(recipe)
    assert again.code == 0 and "changed" not in again.out
