"""The bounded fuzz pass of `make test`: the seed corpus and a fixed batch of
Hypothesis inputs (derandomized, so the same every run), at most 60 seconds.
`make fuzz MINUTES=N` runs the same target for longer with fresh inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).parent / "fuzz_recipes.py"


def test_bounded_fuzz_pass_answers_every_input_cleanly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--derandomize", "--examples", "150", "--seconds", "60"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,  # the pass stops itself at 60 s; this only catches a hang
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "all answered cleanly" in proc.stdout
    assert not (tmp_path / "fuzz-failures").exists()


def test_the_fuzz_target_catches_a_traceback(tmp_path: Path) -> None:
    """The target is not vacuous: a loader that raises an uncaught exception
    on one corpus input makes the pass fail and keep that input."""
    shim = tmp_path / "broken.py"
    shim.write_text(
        "import runpy, sys\n"
        "import wsrun.core.loader as loader\n"
        "real = loader.load\n"
        "def load(file, text=None):\n"
        "    doc = real(file, text)\n"
        "    if 'quickstart' in doc.text:\n"
        "        raise KeyError('planted')\n"
        "    return doc\n"
        "loader.load = load\n"
        "import wsrun.core.recipe\n"
        "wsrun.core.recipe.load = load\n"
        f"sys.argv = [{str(FUZZ)!r}, '--derandomize', '--examples', '30', '--seconds', '60']\n"
        f"runpy.run_path({str(FUZZ)!r}, run_name='__main__')\n"
    )
    proc = subprocess.run(
        [sys.executable, str(shim)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0
    assert "planted" in proc.stderr
    assert any("quickstart" in p.read_text() for p in (tmp_path / "fuzz-failures").iterdir())
