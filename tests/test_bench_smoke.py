"""The benchmark suite still runs: every case, on tiny data, in seconds.

Timings at this scale mean nothing (wsrun's start-up dominates), so only that
each case produced numbers is checked, not whether it met its target.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("wsrun_bench", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wsrun_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_case_runs_and_the_data_is_removed(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # the big file and the million-file data set are cached on purpose, apart from BENCH_DIR
    cache = tmp_path_factory.mktemp("bench-cache")
    env = dict(
        os.environ, BENCH_DIR=str(tmp_path), BENCH_CACHE=str(cache), WSRUN_BENCH_CACHE=str(cache)
    )
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(REPO / "bench" / "run.py"),
                "--scale",
                "0.001",
                "--repeat",
                "1",
                "--json",
                "--no-sync",
            ],
            env=env,
            capture_output=True,
            text=True,
            # a guard against a hang only: 10-20 s idle, but 8 min 46 s at a load of 18-22
            # on 2 cores (every case starts processes), which a 300 s guard failed 5 of 5
            timeout=900,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the bench ran over {e.timeout:.0f} s; its log so far:\n{as_text(e.stderr)}")
    if done.returncode != 0:
        pytest.fail(bench_failure(f"the bench exited with {done.returncode}", done))
    cases = json.loads(done.stdout)["cases"]
    assert [c["case"] for c in cases] == [c.name for c in bench_module().CASES]
    for case in cases:
        ran = (
            case["status"] in ("pass", "fail", "info")
            and case["wsrun_seconds"] > 0
            and case["ratio"] is not None
            and case["ratio"] >= 0
        )
        if not ran:
            pytest.fail(bench_failure(f"case {case['case']} did not run: {case}", done))
    assert list(tmp_path.iterdir()) == []


def as_text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def bench_failure(why: str, done: subprocess.CompletedProcess[str]) -> str:
    """The whole story of a failed bench run, for pytest.fail (an assert's
    message would be cut to a few lines): why, then every case's status and
    note with the stderr of a command that failed in it, then the bench's log."""
    lines = [why]
    with contextlib.suppress(ValueError, KeyError):
        for case in json.loads(done.stdout)["cases"]:
            lines.append(f"{case['case']}: {case['status']}: {case['note']}")
            if case["details"].get("stderr"):
                lines.append("  its stderr:\n" + case["details"]["stderr"].rstrip())
    return "\n".join([*lines, "the bench's log:", done.stderr])


def test_a_failed_command_keeps_its_stderr_in_the_case(tmp_path: Path) -> None:
    """What the smoke test shows when a case fails: the failed command's error
    output, not only its last line."""
    bench = bench_module()
    b = bench.Bench(str(tmp_path / "b"), 0.001, 1, False, lambda message: None)
    script = "echo first words >&2; echo last words >&2; exit 3"

    def failing(which: str) -> Any:
        def run(b: Any, case: Any) -> Any:
            if which == "timed":
                b.timed(["sh", "-c", script], "the tool")
            b.measured(["sh", "-c", script], "the tool")

        return run

    for which in ("timed", "measured"):
        case = bench.Case(f"failing-{which}", "a failing command", None, (), failing(which))
        outcome = bench.run_case(b, case)
        assert outcome.status == "error"
        assert outcome.note == "the tool failed: last words"
        assert outcome.details["stderr"] == "first words\nlast words\n"
