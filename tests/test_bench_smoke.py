"""The benchmark suite still runs: every case, on tiny data, in seconds.

Timings at this scale mean nothing (wsrun's start-up dominates), so only that
each case produced numbers is checked, not whether it met its target.
"""

from __future__ import annotations

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
        timeout=300,  # a guard against a hang: it takes 10-20 s, more on a busy machine
    )
    assert done.returncode == 0, done.stderr
    cases = json.loads(done.stdout)["cases"]
    assert [c["case"] for c in cases] == [c.name for c in bench_module().CASES]
    for case in cases:
        assert case["status"] in ("pass", "fail", "info"), case
        assert case["wsrun_seconds"] > 0, case
        assert case["ratio"] is not None and case["ratio"] >= 0, case
    assert list(tmp_path.iterdir()) == []
