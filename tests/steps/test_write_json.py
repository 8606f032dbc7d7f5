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
        "path": "x",
        "checksum": {"$sha256sums": "files"},
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
    assert written["checksum"] == written["tree"]  # the same files, from the list beside it
    assert result.outputs == {
        "file": str(out / "doc.json"),
        "bytes": (out / "doc.json").stat().st_size,
    }
    # one file per line, as a reader skims it
    assert sum('"path": "x/' in line for line in (out / "doc.json").read_text().splitlines()) == 2
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


def listing(*lines: tuple[str, str]) -> str:
    """What sha256sum prints for these (digest, name), hashed."""
    return hashlib.sha256("".join(f"{d}  {n}\n" for d, n in lines).encode()).hexdigest()


def test_sha256sums_of_the_list_beside_it_at_any_depth(tmp_path: Path) -> None:
    """``{"$sha256sums": LIST}`` in an object nested past the levels rendered
    a line each (filled in whole) as near the top; a digest given as such."""
    tree = {
        "path": "d",
        "files": [
            {"path": "d/b", "sha256": {"$digest": "k/b"}},
            {"path": "d/a/z", "sha256": B},
        ],
        "sum": {"$sha256sums": "files"},
    }
    value = {"top": tree, "deep": {"a": {"b": {"c": tree}}}}
    params = {"to": str(tmp_path / "d.json"), "value": value, "digests": {"k/b": A}}
    run_step("write-json", params, str(tmp_path))
    written = json.loads((tmp_path / "d.json").read_text())
    assert written["top"]["sum"] == written["deep"]["a"]["b"]["c"]["sum"]
    assert written["top"]["sum"] == listing((B, "a/z"), (A, "b"))


@pytest.mark.parametrize(
    ("checksum", "files", "message"),
    [
        ("nope", [], "`\\$sha256sums` names 'nope', not a list of files beside it"),
        ("path", [], "names 'path', not a list"),
        ("files", [{"path": "e/a", "sha256": A}], "'e/a' is not a path under 'd'"),
        ("files", [{"path": "da/a", "sha256": A}], "'da/a' is not a path under 'd'"),
        ("files", [{"path": "d/a"}], "no `sha256` of 'd/a'"),
        ("files", [{"path": "d/a", "sha256": {"$digest": "gone"}}], "no digest of 'gone'"),
        (["d/a"], [], "takes {name: key} or the key of a list beside it"),
    ],
)
def test_a_bad_sha256sums_of_a_list_fails(
    tmp_path: Path, checksum: object, files: list, message: str
) -> None:
    value = {"sum": {"$sha256sums": checksum}, "path": "d", "files": files}
    params = {"to": str(tmp_path / "d.json"), "value": value, "digests": {}}
    with pytest.raises(StepError, match=message) as failed:
        run_step("write-json", params, str(tmp_path))
    assert "\n" not in str(failed.value)
    assert not (tmp_path / "d.json").exists()
    # not in an object with a path: at the top, or beside no `path`
    for value in ({"$sha256sums": "files"}, {"sum": {"$sha256sums": "files"}, "files": []}):
        params["value"] = value
        with pytest.raises(StepError, match="names 'files', not a list of files beside it"):
            run_step("write-json", params, str(tmp_path))
