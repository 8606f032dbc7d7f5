"""Shared fixtures: an isolated journal home and a way to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def wsrun_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own journal, settings profile path and home."""
    home = tmp_path / "wsrun-home"
    monkeypatch.setenv("WSRUN_HOME", str(home))
    monkeypatch.delenv("CAPO_PROFILE", raising=False)
    monkeypatch.delenv("WSRUN_PROFILE", raising=False)
    monkeypatch.setenv("CAPO_PATH", str(tmp_path / "capo"))
    return home


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run ``wsrun ARGS`` in-process (fast); returns exit code and output."""
    from wsrun.cli.main import main

    def run(*args: str, cwd: Path | None = None) -> CliResult:
        monkeypatch.chdir(cwd or tmp_path)
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_wsrun(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> CliResult:
    """Run ``wsrun`` as a separate process, as an operator would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "wsrun", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below root with its kind and size, to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "wsrun-home" in p.relative_to(root).parts:
            continue  # the journal is written by dry runs too
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        out[str(p.relative_to(root))] = (kind, p.lstat().st_size if kind == "file" else 0)
    return out


def dry_then_real(cli: Any, root: Path, *args: Any) -> tuple[CliResult, CliResult]:
    """``wsrun ARGS --dry-run``, which must change nothing below ``root``, then
    ``wsrun ARGS``; both must succeed."""
    before = snapshot(root)
    dry = cli(*args, "--dry-run")
    assert dry.code == 0, dry.err
    assert snapshot(root) == before
    real = cli(*args)
    assert real.code == 0, real.err
    return dry, real


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry below root -> its content (None for directories)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
    return out


def stat_snapshot(root: str) -> dict[str, tuple]:
    """Every entry below root with its mode, size and mtime: proof nothing was touched."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


# The archive on each backend: embedded, PostgreSQL + directory, PostgreSQL + S3.
from fixtures.archives import store_url  # noqa: E402, F401

# PostgreSQL with a fresh schema per test (tests/fixtures/pgserver.py).
from fixtures.pgserver import pg_empty_url, pg_server, pg_url  # noqa: E402, F401

# moto's S3 server and a bucket per test (tests/fixtures/s3server.py).
from fixtures.s3server import bucket, s3, s3_server  # noqa: E402, F401

# wsrun serve in a thread, chromium through Playwright, screenshots on failure
# (tests/fixtures/webserver.py).
from fixtures.webserver import (  # noqa: E402, F401
    browser_page,
    chromium,
    live_server,
    pytest_runtest_makereport,
)


@pytest.fixture
def archivesspace():
    """A started, empty in-memory ArchivesSpace (tests/fixtures/fake_archivesspace.py):
    seed_collection(...), then digital_objects(), components(), writes()."""
    from fixtures.fake_archivesspace import FakeArchivesSpace

    with FakeArchivesSpace() as fake:
        yield fake


# The whole ALMA system on each set of backends (tests/fixtures/alma_backends.py), and
# the bus on each backend: embedded SQLite and RabbitMQ (tests/fixtures/rabbitmq.py).
from fixtures.alma_backends import alma_backends, scale_out_backends  # noqa: E402, F401
from fixtures.rabbitmq import bus_backend, rabbitmq  # noqa: E402, F401

#: What a real run reports of a file it wrote that its plan could not know
#: (an encoder decides the size): the plan leaves these out, the run fills them in.
WRITTEN_FACTS = ("bytes", "sha256")


def as_planned(done: dict[str, Any], planned: dict[str, Any]) -> dict[str, Any]:
    """A real run's effect without the facts of a written file its plan left out;
    dry-run fidelity means this equals the planned effect."""
    if done.get("op") != "create_file":
        return done
    return {k: v for k, v in done.items() if k in planned or k not in WRITTEN_FACTS}


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The test once on the default journal and once on PostgreSQL
    ($WSRUN_JOURNAL_URL, which the subprocesses inherit); a module opts in with
    ``pytestmark = pytest.mark.usefixtures("journal_url")``."""
    if request.param == "sqlite":
        monkeypatch.delenv("WSRUN_JOURNAL_URL", raising=False)
        return None
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("WSRUN_JOURNAL_URL", url)
    return url


def killer_script(module: str, name: str) -> str:
    """A Python script that runs ``wsrun`` with ``module.name`` wrapped so the
    process SIGKILLs itself (no clean-up of any kind) on the call after
    ``$KILL_AFTER`` calls: a kill at an exact point of a step, on any machine."""
    return f"""
import os, signal, sys
from {module.rpartition(".")[0]} import {module.rpartition(".")[2]} as target
from wsrun.cli.main import main

real = target.{name}
calls = {{"n": 0}}

def then_die(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] > int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

target.{name} = then_die
sys.exit(main(sys.argv[1:]))
"""
