"""Tests of the ``mkdir`` step type."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.steps.mkdir import parse_mode
from wsrun.testing import effect_dicts, plan_step, run_step


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_creates_parents_and_sets_mode_on_the_leaf_only(tmp_path: Path) -> None:
    plan, result = run_step("mkdir", {"path": "a/b/c", "mode": "0700"}, str(tmp_path))
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert effect_dicts(plan.effects) == [
        {"op": "create_dir", "path": str(tmp_path / "a")},
        {"op": "create_dir", "path": str(tmp_path / "a/b")},
        {"op": "create_dir", "path": str(tmp_path / "a/b/c"), "mode": 0o700},
    ]
    assert (tmp_path / "a/b/c").stat().st_mode & 0o7777 == 0o700
    assert (tmp_path / "a/b").stat().st_mode & 0o7777 == 0o777 & ~_umask()
    assert result.outputs == {
        "paths": [str(tmp_path / "a/b/c")],
        "created": [str(tmp_path / p) for p in ("a", "a/b", "a/b/c")],
    }


def test_mode_beyond_the_umask_and_special_bits(tmp_path: Path) -> None:
    run_step("mkdir", {"path": ["shared", "drop"], "mode": 0o2777}, str(tmp_path))
    for name in ("shared", "drop"):
        assert (tmp_path / name).stat().st_mode & 0o7777 == 0o2777


def test_existing_directory_is_ok_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o755)
    plan, result = run_step("mkdir", {"path": ["d", "d"], "mode": "0700"}, str(tmp_path))
    assert plan.effects == [] and result.status == "ok"
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    plan, _ = run_step("mkdir", {"path": "d/e"}, str(tmp_path))
    plan, _ = run_step("mkdir", {"path": "d/e"}, str(tmp_path))
    assert plan.effects == []


def test_listed_parent_of_another_listed_path_gets_the_mode(tmp_path: Path) -> None:
    plan, _ = run_step("mkdir", {"path": ["x/y", "x"], "mode": "750"}, str(tmp_path))
    assert [(os.path.basename(e.path), e.mode) for e in plan.effects] == [
        ("x", 0o750),
        ("y", 0o750),
    ]
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o750


def test_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StepError, match="exists and is not a directory") as e:
        run_step("mkdir", {"path": "f/sub"}, str(tmp_path))
    assert e.value.path == str(tmp_path / "f")
    with pytest.raises(StepError, match="exists and is not a directory"):
        run_step("mkdir", {"path": ["ok", "f"]}, str(tmp_path))
    assert tree(tmp_path) == ["f"]


def test_dry_run_writes_nothing_and_chains_into_copy(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    view = WorldView()
    made = plan_step("mkdir", {"path": "out/deep"}, str(tmp_path), view=view)
    for e in made.effects:
        view.record(e)
    copied = plan_step("copy", {"sources": "in.txt", "to": "out/deep"}, str(tmp_path), view=view)
    assert [e.op for e in copied.effects] == ["create_file"]  # the directory is already planned
    assert plan_step("mkdir", {"path": "out/deep"}, str(tmp_path), view=view).effects == []
    assert tree(tmp_path) == ["in.txt"]


@pytest.mark.parametrize(
    ("value", "mode"), [("0755", 0o755), ("755", 0o755), ("0o2770", 0o2770), (448, 0o700)]
)
def test_parse_mode(value: str | int, mode: int) -> None:
    assert parse_mode(value) == mode


def _umask() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
