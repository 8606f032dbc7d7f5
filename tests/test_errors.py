"""Bad input gets one clear line, a non-zero exit, and no half-written file:
missing source, permission denied, disk full, template errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from conftest import write

RECIPE = """
recipe: copier
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
steps:
  - id: copy
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}", checksum: sha256}
"""


def stray_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".wsrun-tmp")]


def test_missing_source(cli, tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", RECIPE)
    r = cli(recipe, tmp_path / "nope", tmp_path / "out")
    assert r.code == 1
    first = r.err.splitlines()[0]
    assert first.startswith("error: step 'copy' (") and "r.yaml:6:5" in first
    assert str(tmp_path / "nope") in first and "no such file" in first.lower()
    assert "Traceback" not in r.err
    assert not (tmp_path / "out").exists()


def test_permission_denied(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = write(tmp_path / "r.yaml", RECIPE)
    src = tmp_path / "src"
    write(src / "a.txt", "a" * 1000)
    dest = tmp_path / "out"
    dest.mkdir()
    if os.geteuid() == 0:
        # root ignores file modes: make the kernel's answer the same as a user's would be
        real_open = os.open

        def deny(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
            if str(path).startswith(str(dest)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
    else:
        dest.chmod(0o500)
    r = cli(recipe, src, dest)
    assert r.code == 1
    assert "Permission denied" in r.err and str(dest) in r.err and "step 'copy'" in r.err
    assert "Traceback" not in r.err
    r = cli(recipe, src, dest, "-v")
    assert "Traceback" in r.err  # -v shows where


def test_disk_full_leaves_no_partial_file(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write(tmp_path / "r.yaml", RECIPE)
    src = tmp_path / "src"
    write(src / "small.txt", "fits")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    dest = tmp_path / "out"
    written = {"n": 0}

    def filling(real):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            n = real(*args)
            written["n"] += n
            if written["n"] > 1 << 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return n

        return call

    # every way the kernel or Python can write file data fills the "disk" after 1 MiB
    real = {name: getattr(os, name) for name in ("write", "copy_file_range", "sendfile")}
    for name, function in real.items():
        monkeypatch.setattr(os, name, filling(function))
    r = cli(recipe, src, dest)
    assert r.code == 1
    assert "No space left on device" in r.err and "step 'copy'" in r.err
    assert not stray_files(tmp_path)
    assert not (dest / "src" / "big.bin").exists()
    for name, function in real.items():
        monkeypatch.setattr(os, name, function)
    r = cli(recipe, src, dest)
    assert r.code == 0, r.err
    assert (dest / "src" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()


def test_template_error_names_step_key_and_line(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        """
        recipe: tmpl
        inputs:
          n: {type: int, default: 0}
        steps:
          - id: mk
            uses: mkdir
            with: {path: "{{ run.workdir }}/{{ 10 // inputs.n }}"}
    """,
    )
    r = cli(recipe)
    assert r.code == 1
    assert (
        "step 'mk'" in r.err
        and "r.yaml:5:5" in r.err
        and "with.path" in r.err
        and "ZeroDivisionError" in r.err
    )


TWO_STEPS = """
recipe: two-steps
inputs:
  src: {type: path, positional: true}
  dest: {type: path, positional: true}
  second: {type: path, positional: true}
steps:
  - id: first
    uses: copy
    with: {sources: "{{ inputs.src }}", to: "{{ inputs.dest }}"}
  - id: second
    uses: copy
    with: {sources: "{{ inputs.second }}", to: "{{ inputs.dest }}"}
"""


def test_resume_hint_only_when_resuming_helps(cli, tmp_path: Path) -> None:
    """A failure before anything changed (bad input) offers no resume; a failure
    after a step changed something does, and the resume then succeeds."""
    write(tmp_path / "src" / "a.txt", "a")
    recipe = write(tmp_path / "r.yaml", TWO_STEPS)
    r = cli(recipe, tmp_path / "nope", tmp_path / "out", tmp_path / "src")
    assert r.code == 1 and "wsrun resume" not in r.err
    r = cli(recipe, tmp_path / "src", tmp_path / "out", tmp_path / "later")
    assert r.code == 1 and "(resume with: wsrun resume " in r.err
    run_id = r.err.split("wsrun resume ")[1].split(")")[0]
    write(tmp_path / "later" / "b.txt", "b")
    assert cli("resume", run_id).code == 0
    assert (tmp_path / "out" / "later" / "b.txt").read_text() == "b"


def test_a_refused_request_offers_no_resume(cli, tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        "recipe: refuse\nsteps:\n  - id: refuse\n    uses: fail\n    with: {message: already queued}\n",
    )
    r = cli(recipe)
    assert r.code == 1 and "already queued" in r.err and "wsrun resume" not in r.err
