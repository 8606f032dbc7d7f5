"""The find step: glob semantics, kinds, sizes, depth, exclusions, dry runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from wsrun.core.effects import create_dir, create_file, remove
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.steps.find import glob_to_regex
from wsrun.testing import plan_step, run_step


def matches(pattern: str, path: str) -> bool:
    return re.fullmatch(glob_to_regex(pattern), path, re.DOTALL) is not None


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.fits", "a.fits", True),
        ("*.fits", "sub/a.fits", False),
        ("*.fits", ".hidden.fits", True),
        ("*", "a/b", False),
        ("?.xml", "a.xml", True),
        ("?.xml", "ab.xml", False),
        ("a?b", "a/b", False),
        ("**/*.xml", "top.xml", True),
        ("**/*.xml", "a/top.xml", True),
        ("**/*.xml", "a/b/c/top.xml", True),
        ("**/*.xml", "a/b/top.xmlx", False),
        ("products/**", "products/a", True),
        ("products/**", "products/a/b/c.fits", True),
        ("products/**", "products", False),
        ("products/**", "productsx/a", False),
        ("products/**", "other/products/a", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
        ("a/**/b", "ab", False),
        ("**", "a", True),
        ("**", "a/b/c", True),
        ("**/**/x", "x", True),
        ("**/**/x", "a/b/x", True),
        ("a**b", "axxb", True),
        ("a**b", "ax/xb", False),
        ("**/*", "a", True),
        ("**/*", "a/b", True),
        ("[ab].txt", "a.txt", True),
        ("[ab].txt", "c.txt", False),
        ("[!ab].txt", "c.txt", True),
        ("[!ab].txt", "a.txt", False),
        ("x[!a]y", "x/y", False),
        ("x[/]y", "x/y", False),
        ("[]]", "]", True),
        ("[!]]", "a", True),
        ("[a-c]1", "b1", True),
        ("[a-c]1", "d1", False),
        ("x[^]", "x^", True),
        ("x[", "x[", True),
        ("a+b(c).d$", "a+b(c).d$", True),
        ("a+b", "aab", False),
        ("sub/", "sub", True),
        ("*.txt", "new\nline.txt", True),
        ("CASE.txt", "case.txt", False),
    ],
)
def test_glob_to_regex(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    for rel, size in {
        "a.fits": 10,
        "big.fits": 1000,
        "top.xml": 5,
        "products/p.fits": 20,
        "products/meta.xml": 7,
        "products/deep/d.xml": 3,
        "products/deep/d.fits": 0,
        "scratch/s.fits": 4,
        "scratch/inner/t.xml": 2,
        ".hidden": 1,
        ".leftover.wsrun-tmp": 9,
    }.items():
        p = r / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
    (r / "emptydir").mkdir()
    (r / "link.fits").symlink_to("a.fits")
    return r


def found(params: dict, tmp_path: Path, view: WorldView | None = None) -> list[str]:
    plan = plan_step("find", {"root": "root", **params}, str(tmp_path), view=view)
    assert plan.effects == []
    return [os.path.relpath(p, tmp_path / "root") for p in plan.outputs["files"]]


def test_default_lists_every_regular_file(root: Path, tmp_path: Path) -> None:
    plan, result = run_step("find", {"root": "root"}, str(tmp_path))
    assert result.effects == []
    rels = [os.path.relpath(p, root) for p in result.outputs["files"]]
    assert rels == sorted(rels)
    assert set(rels) == {
        "a.fits", "big.fits", "top.xml", "products/p.fits", "products/meta.xml",
        "products/deep/d.xml", "products/deep/d.fits", "scratch/s.fits",
        "scratch/inner/t.xml", ".hidden",
    }  # fmt: skip
    assert all(os.path.isabs(p) for p in result.outputs["files"])
    assert result.outputs["count"] == 10
    assert result.outputs["bytes"] == 10 + 1000 + 5 + 20 + 7 + 3 + 0 + 4 + 2 + 1
    assert result.outputs == plan.outputs


def test_patterns(root: Path, tmp_path: Path) -> None:
    assert found({"patterns": "*.fits"}, tmp_path) == ["a.fits", "big.fits"]
    assert found({"patterns": ["**/*.xml"]}, tmp_path) == [
        "products/deep/d.xml", "products/meta.xml", "scratch/inner/t.xml", "top.xml",
    ]  # fmt: skip
    assert found({"patterns": "products/**"}, tmp_path) == [
        "products/deep/d.fits", "products/deep/d.xml", "products/meta.xml", "products/p.fits",
    ]  # fmt: skip
    assert found({"patterns": ["*.xml", "products/*.fits"]}, tmp_path) == [
        "products/p.fits", "top.xml",
    ]  # fmt: skip
    assert found({"patterns": []}, tmp_path) == []


def test_exclude_prunes_directories(root: Path, tmp_path: Path) -> None:
    assert found({"patterns": "**/*.xml", "exclude": "scratch"}, tmp_path) == [
        "products/deep/d.xml", "products/meta.xml", "top.xml",
    ]  # fmt: skip
    assert found({"patterns": "**/*.fits", "exclude": ["products/deep", "*.fits"]}, tmp_path) == [
        "products/p.fits", "scratch/s.fits",
    ]  # fmt: skip
    assert ".hidden" not in found({"exclude": "**/.*"}, tmp_path)


def test_types(root: Path, tmp_path: Path) -> None:
    assert found({"type": "dir"}, tmp_path) == [
        "emptydir", "products", "products/deep", "scratch", "scratch/inner",
    ]  # fmt: skip
    assert found({"type": "symlink"}, tmp_path) == ["link.fits"]
    assert found({"type": "file", "patterns": "*.fits"}, tmp_path) == ["a.fits", "big.fits"]
    both = found({"type": "any", "patterns": ["*.fits", "products"]}, tmp_path)
    assert both == ["a.fits", "big.fits", "link.fits", "products"]


def test_sizes_and_depth(root: Path, tmp_path: Path) -> None:
    assert found({"patterns": "**/*.fits", "min_size": 10, "max_size": 20}, tmp_path) == [
        "a.fits", "products/p.fits",
    ]  # fmt: skip
    assert found({"patterns": "**/*.fits", "max_size": 0}, tmp_path) == ["products/deep/d.fits"]
    assert found({"max_depth": 1, "patterns": "**/*.xml"}, tmp_path) == ["top.xml"]
    assert found({"max_depth": 2, "patterns": "**/*.xml"}, tmp_path) == [
        "products/meta.xml", "top.xml",
    ]  # fmt: skip
    plan = plan_step("find", {"root": "root", "min_size": 100}, str(tmp_path))
    assert plan.outputs == {"files": [str(root / "big.fits")], "count": 1, "bytes": 1000}


def test_dry_run_sees_planned_files(root: Path, tmp_path: Path) -> None:
    view = WorldView()
    view.record(create_dir(str(root / "new")))
    view.record(create_file(str(root / "new" / "n.fits"), bytes=50, content=b"y" * 50))
    view.record(remove(str(root / "products")))
    assert found({"patterns": "**/*.fits"}, tmp_path, view=view) == [
        "a.fits", "big.fits", "new/n.fits", "scratch/s.fits",
    ]  # fmt: skip
    assert not (root / "new").exists()


def test_missing_or_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="no such directory") as err:
        plan_step("find", {"root": "nope"}, str(tmp_path))
    assert err.value.path == str(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StepError, match="not a directory"):
        plan_step("find", {"root": "file"}, str(tmp_path))
