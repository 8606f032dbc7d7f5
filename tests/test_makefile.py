"""`make test`'s pytest command, run on a scratch project: a failing run ends with
the ids of the failed tests, and the exit status stays pytest's (5: no tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def scratch_makefile(tmp_path: Path) -> Path:
    """The Makefile's `test` recipe without its prerequisites and lint."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("test:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if "ruff" not in line:
            recipe.append(line)
    path = tmp_path / "Makefile"
    bin_dir = os.path.dirname(sys.executable)
    path.write_text(f"BIN := {bin_dir}\ntest:\n" + "\n".join(recipe) + "\n")
    return path


def make_test(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``make test`` in ``cwd`` as a top-level make, also when this suite itself runs
    under make (``make test``, ``make soak``): a sub-make prints "Entering directory"
    lines around its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "test"], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_ends_with_the_failed_test_ids(tmp_path: Path) -> None:
    scratch_makefile(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_some.py").write_text(
        "def test_fine():\n    pass\n\n\ndef test_broken():\n    assert 1 == 2\n"
    )
    result = make_test(tmp_path)
    assert result.returncode != 0
    lines = result.stdout.strip().splitlines()
    heading = [i for i, line in enumerate(lines) if line.startswith("make test: failed tests")]
    assert heading, result.stdout
    assert lines[heading[-1] + 1 :] == ["tests/test_some.py::test_broken"], result.stdout

    (tests / "test_some.py").write_text("VALUE = 1\n")  # no tests at all
    result = make_test(tmp_path)
    assert result.returncode != 0 and "Error 5" in result.stderr
    assert result.stdout.strip().endswith("make test: no tests ran")
