"""Tests of the ``symlink`` step type."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsrun.core.fileio import TMP_SUFFIX
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, StepError
from wsrun.steps import symlink as symlink_step
from wsrun.testing import effect_dicts, plan_step, run_step


@pytest.fixture
def area(tmp_path: Path) -> Path:
    (tmp_path / "archive/run41").mkdir(parents=True)
    (tmp_path / "archive/run42").mkdir()
    (tmp_path / "archive/run42/data").write_text("42")
    return tmp_path


def test_creates_a_link_storing_the_target_as_given(area: Path) -> None:
    plan, result = run_step("symlink", {"target": "run42", "link": "archive/latest"}, str(area))
    assert os.readlink(area / "archive/latest") == "run42"
    assert (area / "archive/latest/data").read_text() == "42"
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert effect_dicts(plan.effects) == [
        {"op": "create_symlink", "path": str(area / "archive/latest"), "target": "run42"}
    ]
    assert result.outputs == {"link": str(area / "archive/latest"), "target": "run42"}
    plan, result = run_step("symlink", {"target": "run42", "link": "archive/latest"}, str(area))
    assert plan.effects == [] and result.status == "ok"


def test_relative_target_and_missing_parents(area: Path) -> None:
    params = {"target": "archive/run42", "link": "pub/v1/latest", "relative": True}
    plan, _ = run_step("symlink", params, str(area))
    assert os.readlink(area / "pub/v1/latest") == "../../archive/run42"
    assert (area / "pub/v1/latest/data").read_text() == "42"
    assert [e.op for e in plan.effects] == ["create_dir", "create_dir", "create_symlink"]
    plan, _ = run_step("symlink", params, str(area))
    assert plan.effects == []


def test_link_elsewhere_is_replaced_only_with_force(area: Path) -> None:
    (area / "archive/latest").symlink_to("run41")
    with pytest.raises(StepError, match="is a link to run41, not run42; set force: true"):
        run_step("symlink", {"target": "run42", "link": "archive/latest"}, str(area))
    assert os.readlink(area / "archive/latest") == "run41"
    params = {"target": "run42", "link": "archive/latest", "force": True}
    plan, _ = run_step("symlink", params, str(area))
    assert os.readlink(area / "archive/latest") == "run42"
    assert [e.op for e in plan.effects] == ["create_symlink"]
    assert list(area.rglob(f"*{TMP_SUFFIX}")) == []


def test_file_in_the_way_needs_force(area: Path) -> None:
    (area / "archive/latest").write_text("a file")
    with pytest.raises(StepError, match="exists and is not a link; set force: true"):
        run_step("symlink", {"target": "run42", "link": "archive/latest"}, str(area))
    assert (area / "archive/latest").read_text() == "a file"
    run_step("symlink", {"target": "run42", "link": "archive/latest", "force": True}, str(area))
    assert os.readlink(area / "archive/latest") == "run42"


def test_directories_in_the_way(area: Path) -> None:
    with pytest.raises(StepError, match="not empty; refusing to replace it"):
        run_step("symlink", {"target": "run41", "link": "archive/run42", "force": True}, str(area))
    assert (area / "archive/run42/data").exists()
    (area / "archive/empty").mkdir()
    with pytest.raises(StepError, match="is a directory; set force: true"):
        run_step("symlink", {"target": "run42", "link": "archive/empty"}, str(area))
    params = {"target": "run42", "link": "archive/empty", "force": True}
    plan, result = run_step("symlink", params, str(area))
    assert [e.op for e in plan.effects] == ["remove", "create_symlink"]
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert os.readlink(area / "archive/empty") == "run42"


def test_leftover_temp_link_is_overwritten(area: Path) -> None:
    (area / f"archive/.latest{TMP_SUFFIX}").symlink_to("stale")
    run_step("symlink", {"target": "run42", "link": "archive/latest"}, str(area))
    assert os.readlink(area / "archive/latest") == "run42"
    assert list(area.rglob(f"*{TMP_SUFFIX}")) == []


def test_dangling_target_is_allowed_and_logged(area: Path) -> None:
    messages: list[str] = []
    ctx = StepContext(fs=WorldView(), workdir=str(area), log=messages.append)
    plan = symlink_step.plan({"target": "run43", "link": "archive/next"}, ctx)
    symlink_step.apply(plan, ctx)
    assert os.readlink(area / "archive/next") == "run43"
    assert messages == [f"{area / 'archive/next'}: target run43 does not exist (yet)"]


def test_dry_run_writes_nothing_and_chains(area: Path) -> None:
    before = sorted(area.rglob("*"))
    view = WorldView()
    linked = plan_step(
        "symlink",
        {"target": "run42", "link": "pub/latest", "relative": False},
        str(area),
        view=view,
    )
    for e in linked.effects:
        view.record(e)
    again = plan_step("symlink", {"target": "run42", "link": "pub/latest"}, str(area), view=view)
    assert again.effects == []
    copied = plan_step("copy", {"sources": "pub/latest", "to": "out"}, str(area), view=view)
    assert [(e.op, e.target) for e in copied.effects][-1] == ("create_symlink", "run42")
    assert sorted(area.rglob("*")) == before
    plan, _ = run_step("symlink", {"target": "run42", "link": "pub/latest"}, str(area))
    assert effect_dicts(plan.effects) == effect_dicts(linked.effects)
