"""Tests of the ``remove`` step type."""

from __future__ import annotations

import errno
import os
import tracemalloc
from pathlib import Path

import pytest

from wsrun.core import removal
from wsrun.core.fs import WorldView
from wsrun.core.removal import remove_tree
from wsrun.core.step import StepError
from wsrun.testing import effect_dicts, plan_step, run_step


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def area(tmp_path: Path) -> Path:
    (tmp_path / "stage/run/ro").mkdir(parents=True)
    (tmp_path / "stage/run/a").write_bytes(b"a" * 100)
    (tmp_path / "stage/run/ro/b").write_bytes(b"b" * 20)
    (tmp_path / "stage/run/ro").chmod(0o555)  # as archives often unpack
    (tmp_path / "keep").write_text("keep")
    (tmp_path / "stage/link").symlink_to(tmp_path / "keep")
    (tmp_path / "stage/dirlink").symlink_to(tmp_path / "stage/run")
    return tmp_path


def test_removes_files_links_and_trees(area: Path) -> None:
    params = {"path": ["stage/run", "stage/link", "stage/dirlink"]}
    plan, result = run_step("remove", params, str(area))
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert effect_dicts(plan.effects) == [
        {"op": "remove", "path": str(area / "stage/run"), "bytes": 120},
        {"op": "remove", "path": str(area / "stage/link"), "bytes": 0},
        {"op": "remove", "path": str(area / "stage/dirlink"), "bytes": 0},
    ]
    assert tree(area) == ["keep", "stage"]
    assert (area / "keep").read_text() == "keep"  # links are never followed
    assert result.outputs == {"removed": [e.path for e in plan.effects], "bytes": 120}


def test_link_to_a_directory_is_removed_without_its_target(area: Path) -> None:
    run_step("remove", {"path": "stage/dirlink"}, str(area))
    assert (area / "stage/run/a").exists()


def test_missing_path_is_ok_unless_it_must_exist(area: Path) -> None:
    run_step("remove", {"path": "stage/run/a"}, str(area))
    plan, result = run_step("remove", {"path": "stage/run/a"}, str(area))
    assert plan.effects == [] and result.status == "ok"
    with pytest.raises(StepError, match="no such file or directory") as e:
        run_step("remove", {"path": "stage/run/a", "must_exist": True}, str(area))
    assert e.value.path == str(area / "stage/run/a")


def test_paths_inside_another_listed_path_go_with_it(area: Path) -> None:
    plan, _ = run_step("remove", {"path": ["stage/run/a", "stage", "stage/run"]}, str(area))
    assert [e.path for e in plan.effects] == [str(area / "stage")]
    assert plan.effects[0].bytes == 120
    assert tree(area) == ["keep"]


def test_refuses_the_root_and_the_working_directory(area: Path) -> None:
    for path in ("/", ".", "..", str(area)):
        with pytest.raises(StepError, match="refusing to remove"):
            plan_step("remove", {"path": path}, str(area / "stage"))
    assert (area / "stage/run/a").exists()


def test_dry_run_writes_nothing_and_chains(area: Path) -> None:
    before = tree(area)
    view = WorldView()
    removed = plan_step("remove", {"path": "stage/run"}, str(area), view=view)
    for e in removed.effects:
        view.record(e)
    assert plan_step("remove", {"path": "stage/run"}, str(area), view=view).effects == []
    with pytest.raises(StepError, match="no such file"):
        plan_step("copy", {"sources": "stage/run/a", "to": "out"}, str(area), view=view)
    made = plan_step("mkdir", {"path": "stage/run/new"}, str(area), view=view)
    assert [os.path.relpath(e.path, area) for e in made.effects] == ["stage/run", "stage/run/new"]
    assert tree(area) == before
    plan, _ = run_step("remove", {"path": "stage/run"}, str(area))
    assert effect_dicts(plan.effects) == effect_dicts(removed.effects)


def test_a_failure_names_the_file_it_could_not_remove(
    area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.unlink

    def unlink(path, *args, **kwargs):
        if path == "b":
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(OSError) as e:
        remove_tree(str(area / "stage/run"))
    assert e.value.filename == str(area / "stage/run/ro/b") and e.value.errno == errno.EIO


def test_a_directory_that_became_a_symlink_is_removed_not_followed(tmp_path: Path) -> None:
    """Between the listing and the descent a directory may be swapped for a
    symlink to somewhere else: opened with O_NOFOLLOW, it is unlinked."""
    outside = tmp_path / "outside"
    (outside / "precious").mkdir(parents=True)
    (outside / "precious" / "f").write_text("keep")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "sub").symlink_to(outside / "precious")
    fd = os.open(tmp_path / "tree", os.O_RDONLY | os.O_DIRECTORY)
    try:  # as the walk does for an entry it saw as a directory
        removal._remove_dir(fd, "sub", str(tmp_path / "tree"), lambda: None)
    finally:
        os.close(fd)
    assert not (tmp_path / "tree" / "sub").is_symlink()
    assert (outside / "precious" / "f").read_text() == "keep"


def test_a_big_directory_is_removed_without_listing_it_first(tmp_path: Path) -> None:
    """Entries go as they are read: 20,000 in one directory hold no list (as
    shutil.rmtree's did: some 3 MB, 300 MB for a million)."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(20_000):
        (flat / f"f{i:05d}").touch()
    reported: list[int] = []
    tracemalloc.start()
    try:
        remove_tree(str(flat), reported.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not flat.exists() and sum(reported) == 20_000 and len(reported) > 50
    assert peak < 300_000, peak
