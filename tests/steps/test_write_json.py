"""Tests of the ``write-json`` step type: a JSON document with digests filled in."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.testing import plan_step, run_step

A = "a" * 64
B = "b" * 64


def document(out: Path) -> dict:
    return {
        "name": "delivery",
        "files": [
            {"path": "x/one", "sha256": {"$digest": str(out / "x/one")}},
            {"path": "x/two", "sha256": {"$digest": str(out / "x/two")}},
        ],
        "tree": {"$sha256sums": {"one": str(out / "x/one"), "two": str(out / "x/two")}},
        "plain": {"$digest": "not a reference", "other": 1},
    }


def test_references_are_filled_in(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "x").mkdir(parents=True)
    (out / "x" / "one").write_bytes(b"1\n")
    (out / "x" / "two").write_bytes(b"2\n")
    digests = {str(out / "x/one"): hashlib.sha256(b"1\n").hexdigest()}
    extra = {str(out / "x/two"): hashlib.sha256(b"2\n").hexdigest()}
    params = {"to": str(out / "doc.json"), "value": document(out), "digests": [digests, extra]}
    plan, result = run_step("write-json", params, str(tmp_path))
    written = json.loads((out / "doc.json").read_text())
    assert [f["sha256"] for f in written["files"]] == [*digests.values(), *extra.values()]
    assert written["plain"] == {"$digest": "not a reference", "other": 1}  # not one alone
    # the tree checksum is what sha256sum prints for the directory, hashed
    shell = "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum"
    out_sh = subprocess.run(shell, shell=True, cwd=out / "x", capture_output=True, text=True)
    assert written["tree"] == out_sh.stdout.split()[0]
    assert result.outputs == {
        "file": str(out / "doc.json"),
        "bytes": (out / "doc.json").stat().st_size,
    }
    # one file per line, as a reader skims it
    assert sum('"path"' in line for line in (out / "doc.json").read_text().splitlines()) == 2
    # unchanged: not written again
    mtime = (out / "doc.json").stat().st_mtime_ns
    again, _ = run_step("write-json", params, str(tmp_path))
    assert again.effects == [] and (out / "doc.json").stat().st_mtime_ns == mtime


def test_a_missing_digest_fails_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    params = {
        "to": str(out / "doc.json"),
        "value": document(out),
        "digests": {str(out / "x/one"): A},
    }
    with pytest.raises(StepError, match="no digest of .*x/two"):
        run_step("write-json", params, str(tmp_path))
    params["digests"] = {str(out / "x/one"): A, str(out / "x/two"): 42}
    with pytest.raises(StepError, match="x/two.* is 42, not a string or null"):
        run_step("write-json", params, str(tmp_path))
    assert os.listdir(out) == []


def test_dry_run_size_is_exact_with_unknown_digests(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    value = document(out)
    unknown = {str(out / "x/one"): None, str(out / "x/two"): None}
    dry = plan_step(
        "write-json",
        {"to": str(out / "d.json"), "value": value, "digests": unknown},
        str(tmp_path),
        view=WorldView(),
    )
    (effect,) = dry.effects
    assert effect.content is None  # only known after the real run
    known = {str(out / "x/one"): A, str(out / "x/two"): B}
    real, _ = run_step(
        "write-json", {"to": str(out / "d.json"), "value": value, "digests": known}, str(tmp_path)
    )
    assert effect.bytes == real.effects[0].bytes == (out / "d.json").stat().st_size
