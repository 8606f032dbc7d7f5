"""Integrity at the edges of a run's output: file names that are not UTF-8 in
--json, text and the journal; a full disk or a file-size limit while writing;
a journal that cannot be written."""

from __future__ import annotations

import base64
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write

NAME = b"\xff\xfe.dat"  # not UTF-8


def wsrun(*args: object, cwd: Path, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``wsrun ARGS`` as a process, output as bytes; with ``fsize``, no file it
    writes may grow beyond that many bytes (EFBIG, as on a full disk)."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "wsrun", *map(os.fsencode, map(str, args))],
        cwd=cwd,
        capture_output=True,
        preexec_fn=limit,
        timeout=120,
    )


def tree(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    (src / "plain.txt").write_text("plain\n")
    with open(os.path.join(os.fsencode(src), NAME), "wb") as f:
        f.write(b"not utf-8 name\n")
    return src


RECIPE = """
recipe: both
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}"}
  - id: tar
    uses: tar
    with: {source: "{{ inputs.src }}", to: "{{ inputs.dest }}/src.tar"}
"""


@pytest.mark.parametrize("dry", [True, False], ids=["dry-run", "real-run"])
def test_json_is_valid_for_file_names_that_are_not_utf8(tmp_path: Path, dry: bool) -> None:
    src = tree(tmp_path)
    recipe = write(tmp_path / "both.yaml", RECIPE)
    dest = tmp_path / "out"
    result = wsrun(recipe, src, dest, "--json", *(["--dry-run"] if dry else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.decode("utf-8"))  # strict UTF-8, strict JSON
    effects = [e for s in report["steps"] for e in s["effects"]]
    [odd] = [e for e in effects if e["path"].endswith(".dat")]
    # shown with the byte escaped, and exactly in base64
    assert odd["path"] == f"{dest}/src/\\xff\\xfe.dat"
    assert base64.b64decode(odd["path_base64"]) == os.fsencode(dest / "src") + b"/" + NAME
    assert base64.b64decode(odd["source_base64"]) == os.fsencode(src) + b"/" + NAME
    assert "path_base64" not in next(e for e in effects if e["path"].endswith("plain.txt"))
    if not dry:
        copied = os.path.join(os.fsencode(dest / "src"), NAME)
        assert open(copied, "rb").read() == b"not utf-8 name\n"
        import tarfile

        with tarfile.open(dest / "src.tar") as archive:
            assert os.fsdecode(b"src/" + NAME) in archive.getnames()
    # the text output and the journal take the name too
    text = wsrun(recipe, src, tmp_path / "again", *(["--dry-run"] if dry else []), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    if dry:
        assert "/src/\\xff\\xfe.dat" in text.stdout.decode("utf-8")
    shown = wsrun("runs", "show", report["run_id"], "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    steps = json.loads(shown.stdout.decode("utf-8"))["steps"]
    assert any(e["path"] == odd["path"] for s in steps for e in s["effects"])
    # an input that is not UTF-8: kept exactly for resume, shown escaped
    odd_src = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"src-\xff"))
    os.rename(src, odd_src)
    assert wsrun(recipe, odd_src, tmp_path / "third", cwd=tmp_path).returncode == 0
    listed = json.loads(wsrun("runs", "--json", cwd=tmp_path).stdout.decode("utf-8"))
    assert listed[0]["inputs"]["src"] == f"{tmp_path}/src-\\xff"
    text = wsrun("runs", "show", listed[0]["id"], cwd=tmp_path).stdout.decode("utf-8")
    assert "src-\\\\xff" in text  # JSON of the escaped form


def test_an_error_about_a_name_that_is_not_utf8_is_printed_and_journaled(
    tmp_path: Path, wsrun_home: Path
) -> None:
    recipe = write(tmp_path / "both.yaml", RECIPE)
    missing = os.path.join(os.fsencode(tmp_path), NAME)
    result = wsrun(recipe, os.fsdecode(missing), tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 1
    err = result.stderr.decode("utf-8")
    assert f"{tmp_path}/\\xff\\xfe.dat" in err and "Traceback" not in err
    as_json = wsrun(recipe, os.fsdecode(missing), tmp_path / "out", "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout.decode("utf-8"))
    assert f"{tmp_path}/\\xff\\xfe.dat" in report["error"]
    with sqlite3.connect(wsrun_home / "journal.db") as db:
        errors = [error for (error,) in db.execute("SELECT error FROM runs")]
    assert len(errors) == 2 and all(f"{tmp_path}/\\xff\\xfe.dat" in e for e in errors)


#: step type -> its parameters, and the file it writes (below the destination)
WRITERS = {
    "copy": ('{sources: "{{ inputs.src }}", to: "{{ inputs.dest }}"}', "src/big.dat"),
    "tar": ('{source: "{{ inputs.src }}", to: "{{ inputs.dest }}/big.tar"}', "big.tar"),
    "tar.gz": ('{source: "{{ inputs.src }}", to: "{{ inputs.dest }}/big.tar.gz"}', "big.tar.gz"),
    "untar": ('{source: "{{ inputs.src }}/big.tar", to: "{{ inputs.dest }}"}', "big.dat"),
}


@pytest.mark.parametrize("case", list(WRITERS))
def test_a_write_beyond_the_file_size_limit_names_the_file(tmp_path: Path, case: str) -> None:
    """EFBIG (RLIMIT_FSIZE) as a full disk shows itself: one line naming the file
    being written, exit 1, no file or temporary left at the destination."""
    import tarfile

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.dat").write_bytes(os.urandom(3 << 20))  # incompressible
    if case == "untar":
        with tarfile.open(tmp_path / "big.tar", "w") as archive:
            archive.add(src / "big.dat", "big.dat")
        (src / "big.dat").unlink()
        (tmp_path / "big.tar").rename(src / "big.tar")
    params, written = WRITERS[case]
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        recipe: r
        inputs:
          src: {{type: path, positional: true}}
          dest: {{type: path, positional: true}}
        steps:
          - id: write
            uses: {case.split(".")[0]}
            with: {params}
        """,
    )
    dest = tmp_path / "out"
    result = wsrun(recipe, src, dest, cwd=tmp_path, fsize=1 << 20)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.endswith(f"failed: {dest / written}: File too large"), err
    assert "Traceback" not in err
    leftovers = [p.name for p in dest.rglob("*") if p.is_file()] if dest.exists() else []
    assert leftovers == []


def many_random_names(root: Path) -> None:
    """3,000 files whose names are 220 random hex digits: their plan is about
    330 KiB of the journal even zstd-compressed (the journal compresses a plan of
    ordinary names to a few bytes a file)."""
    for _ in range(3000):
        (root / f"{os.urandom(110).hex()}.txt").write_bytes(b"x")


def test_a_journal_that_cannot_be_written_mid_run_stops_the_run_in_one_line(
    tmp_path: Path, wsrun_home: Path
) -> None:
    """The journal's file may not grow (as on a full disk) when the second step
    records its plan: one line naming the journal, exit 1, the first step's work
    in place and the second step's not begun."""
    src = tmp_path / "many"
    src.mkdir()
    many_random_names(src)  # a plan far bigger than the journal may grow, compressed
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          src: {type: path, positional: true}
          dest: {type: path, positional: true}
        steps:
          - id: layout
            uses: mkdir
            with: {path: "{{ inputs.dest }}/first"}
          - id: copy
            uses: copy
            with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}/second"}
        """,
    )
    dest = tmp_path / "out"
    result = wsrun(recipe, src, dest, cwd=tmp_path, fsize=192 << 10)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    journal = wsrun_home / "journal.db"
    [line] = [x for x in err.splitlines() if str(journal) in x]
    assert line.startswith(f"r: journal {journal}: ") and "the run stopped" in line
    assert "Traceback" not in err and "OperationalError" not in err
    assert (dest / "first").is_dir()
    assert not (dest / "second").exists()
    runs = wsrun("runs", "--json", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    [run] = json.loads(runs.stdout)
    assert run["status"] == "failed" and str(journal) in run["error"]


def test_a_journal_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory\n")
    home = tmp_path / "plain-file" / "home"
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        steps:
          - uses: noop
        """,
    )
    env = {**os.environ, "WSRUN_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "wsrun", str(recipe)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"r: journal {home}/journal.db: Not a directory"
    listed = subprocess.run(
        [sys.executable, "-m", "wsrun", "runs"], capture_output=True, text=True, env=env
    )
    assert listed.returncode == 2
    assert listed.stderr.strip() == f"wsrun: journal {home}/journal.db: Not a directory"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real full disk: a tmpfs of 1 MiB (needs the right to mount; skips without)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path: Path, small_disk: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.dat").write_bytes(os.urandom(2 << 20))
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          src: {type: path, positional: true}
          dest: {type: path, positional: true}
        steps:
          - uses: copy
            with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}"}
        """,
    )
    result = wsrun(recipe, src, small_disk / "out", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    [line] = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.endswith(f"failed: {small_disk}/out/src/big.dat: No space left on device")
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []


def test_a_journal_on_a_full_disk_stops_the_run_in_one_line(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal shares a disk that the run's first step nearly fills; the second
    step's plan cannot be recorded: one line naming the journal, nothing of the
    second step done."""
    home = small_disk / "home"
    monkeypatch.setenv("WSRUN_HOME", str(home))
    src = tmp_path / "src"
    src.mkdir()
    (src / "fill.dat").write_bytes(os.urandom(800 << 10))
    many = tmp_path / "many"
    many.mkdir()
    many_random_names(many)
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: r
        inputs:
          src: {type: path, positional: true}
          many: {type: path, positional: true}
          dest: {type: path, positional: true}
        steps:
          - id: fill
            uses: copy
            with: {sources: "{{ inputs.src }}/fill.dat", to: "{{ inputs.dest }}"}
          - id: copy
            uses: copy
            with: {sources: "{{ inputs.many }}", to: "{{ run.workdir }}/second"}
        """,
    )
    result = wsrun(recipe, src, many, small_disk / "data", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    journal = home / "journal.db"
    [line] = [x for x in err.splitlines() if str(journal) in x]
    assert line.startswith(f"r: journal {journal}: ") and "the run stopped" in line
    assert "Traceback" not in err
    assert (small_disk / "data" / "fill.dat").stat().st_size == 800 << 10
    assert not (tmp_path / "second").exists()
