"""Running wsrun on a hostile file with a memory and time bound, so that a
regression (an alias bomb, constant folding into gigabytes) fails the test
instead of hanging the suite or swapping the machine."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Address space a wsrun process may map: far above the 200 MB it may use
#: (Python maps more than it touches), far below what a bomb wants.
ADDRESS_SPACE = 1 << 30
#: A wall-clock bound only against hangs; the machine runs at load 10+.
WALL_SECONDS = 60
#: Budgets of issue 14 for any file up to 1 MB: CPU seconds (not wall time,
#: which load distorts) and peak resident memory.
CPU_SECONDS = 2.0
RSS_BYTES = 200 << 20

POSITION = re.compile(r"^(?P<file>/[^:\n]+):(?P<line>\d+):(?P<col>\d+): ", re.MULTILINE)


@dataclass
class Bounded:
    code: int
    out: str
    err: str
    cpu: float
    rss: int  # peak resident bytes


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (WALL_SECONDS, WALL_SECONDS))


# The child reports its own peak RSS (VmHWM) when it exits: the rusage of a
# forked child starts from its parent's peak, which is the test worker's.
CHILD = """
import atexit, os, sys
def peak():
    with open('/proc/self/status') as f:
        kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
    with open(os.environ['WSRUN_TEST_PEAK'], 'w') as f:
        f.write(kb)
atexit.register(peak)
from wsrun.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def run_bounded(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> Bounded:
    """``wsrun ARGS`` in a new process under the limits, with its CPU time and peak RSS."""
    out_path, err_path, peak_path = cwd / ".bounded.out", cwd / ".bounded.err", cwd / ".peak"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *map(str, args)],
            cwd=cwd,
            env={**os.environ, **(env or {}), "WSRUN_TEST_PEAK": str(peak_path)},
            stdout=out,
            stderr=err,
            preexec_fn=_limits,
        )
        deadline = time.monotonic() + WALL_SECONDS
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise AssertionError(f"wsrun {args} ran past {WALL_SECONDS}s")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Bounded(
        proc.returncode,
        out_path.read_text(errors="replace"),
        err_path.read_text(errors="replace"),
        usage.ru_utime + usage.ru_stime,
        int(peak_path.read_text()) * 1024 if peak_path.exists() else 0,  # 0: it died
    )


def assert_clean_error(r: Bounded | object, path: Path, line: int | None = None) -> None:
    """Exit 2, the first line is ``path:line:col: message``, no traceback."""
    code, err = r.code, r.err  # type: ignore[attr-defined]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    m = POSITION.match(err)
    assert m and m["file"] == str(path), err[:500]
    if line is not None:
        assert int(m["line"]) == line, err[:500]
