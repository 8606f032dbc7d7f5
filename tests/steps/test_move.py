"""Tests of the ``move`` step type."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from wsrun.core.fileio import TMP_SUFFIX
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.steps import move as move_step
from wsrun.testing import effect_dicts, plan_step, run_step

MTIME = 1_500_000_000_987_654_321


def snapshot(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, st.st_mtime_ns)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "run42"
    (src / "qa").mkdir(parents=True)
    (src / "data.fits").write_bytes(b"d" * 1000)
    (src / "qa/report.txt").write_bytes(b"ok\n")
    (src / "qa/report.txt").chmod(0o640)
    (src / "latest").symlink_to("data.fits")
    for p in (src / "data.fits", src / "qa/report.txt", src / "qa"):
        os.utime(p, ns=(MTIME, MTIME))
    (src / "qa").chmod(0o550)
    return src


def test_moves_a_tree_and_creates_parents(tmp_path: Path, tree: Path) -> None:
    before = snapshot(tree)
    plan, result = run_step("move", {"source": "run42", "to": "archive/2024/run42"}, str(tmp_path))
    dest = tmp_path / "archive/2024/run42"
    assert not tree.exists() and snapshot(dest) == before
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    assert effect_dicts(plan.effects) == [
        {"op": "create_dir", "path": str(tmp_path / "archive")},
        {"op": "create_dir", "path": str(tmp_path / "archive/2024")},
        {"op": "move", "path": str(tree), "bytes": 1003, "target": str(dest)},
    ]
    assert result.outputs == {"path": str(dest), "bytes": 1003, "moved": True}


def test_rerun_after_the_move_is_ok(tmp_path: Path, tree: Path) -> None:
    run_step("move", {"source": "run42/data.fits", "to": "data.fits"}, str(tmp_path))
    plan, result = run_step("move", {"source": "run42/data.fits", "to": "data.fits"}, str(tmp_path))
    assert plan.effects == [] and result.status == "ok"
    assert result.outputs["moved"] is False
    assert (tmp_path / "data.fits").read_bytes() == b"d" * 1000


def test_missing_source_and_target_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="no such file or directory") as e:
        plan_step("move", {"source": "nope", "to": "there"}, str(tmp_path))
    assert e.value.path == str(tmp_path / "nope")


def test_existing_target_is_refused_without_overwrite(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old/stale").write_text("stale")
    with pytest.raises(StepError, match="already exists; set overwrite: true"):
        run_step("move", {"source": "run42", "to": "old"}, str(tmp_path))
    assert tree.exists() and (tmp_path / "old/stale").exists()
    plan, _ = run_step("move", {"source": "run42", "to": "old", "overwrite": True}, str(tmp_path))
    assert [e.op for e in plan.effects] == ["remove", "move"]
    assert plan.effects[0].bytes == 5
    assert sorted(os.listdir(tmp_path / "old")) == ["data.fits", "latest", "qa"]
    assert list(tmp_path.rglob(f"*{TMP_SUFFIX}")) == []


def test_overwrite_replaces_a_file_atomically(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "data.fits").write_text("old")
    run_step(
        "move", {"source": "run42/data.fits", "to": "data.fits", "overwrite": True}, str(tmp_path)
    )
    assert (tmp_path / "data.fits").read_bytes() == b"d" * 1000


def test_kind_mismatch_and_moving_into_itself_are_refused(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StepError, match="cannot overwrite non-directory with directory"):
        plan_step("move", {"source": "run42", "to": "file", "overwrite": True}, str(tmp_path))
    with pytest.raises(StepError, match="cannot overwrite directory with non-directory"):
        plan_step("move", {"source": "file", "to": "run42", "overwrite": True}, str(tmp_path))
    with pytest.raises(StepError, match="into itself"):
        plan_step("move", {"source": "run42", "to": "run42/qa/inner"}, str(tmp_path))
    with pytest.raises(StepError, match="is not a directory"):
        plan_step("move", {"source": "run42", "to": "file/run42"}, str(tmp_path))


@pytest.fixture
def cross_device(tree: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make os.rename fail with EXDEV for what is under ``tree``, as if it were
    on another filesystem."""
    real = os.rename
    refused: list[str] = []

    def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if (os.fspath(src) + os.sep).startswith(str(tree) + os.sep):
            refused.append(os.fspath(src))
            raise OSError(errno.EXDEV, "Invalid cross-device link", os.fspath(src))
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return refused


def test_move_across_filesystems_copies_verifies_and_removes(
    tmp_path: Path, tree: Path, cross_device: list[str]
) -> None:
    before = snapshot(tree)
    plan, result = run_step("move", {"source": "run42", "to": "elsewhere/run42"}, str(tmp_path))
    assert cross_device == [str(tree)]
    assert snapshot(tmp_path / "elsewhere/run42") == before  # modes, mtimes, link kept
    assert not tree.exists()
    assert list(tmp_path.rglob(f"*{TMP_SUFFIX}")) == []
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)


def test_move_across_filesystems_over_an_existing_file(
    tmp_path: Path, tree: Path, cross_device: list[str]
) -> None:
    (tmp_path / "target").write_text("old")
    run_step(
        "move", {"source": "run42/data.fits", "to": "target", "overwrite": True}, str(tmp_path)
    )
    assert (tmp_path / "target").read_bytes() == b"d" * 1000
    assert not (tree / "data.fits").exists()


def test_move_across_filesystems_over_an_existing_directory(
    tmp_path: Path, tree: Path, cross_device: list[str]
) -> None:
    (tmp_path / "pub/old").mkdir(parents=True)
    before = snapshot(tree)
    run_step("move", {"source": "run42", "to": "pub", "overwrite": True}, str(tmp_path))
    assert snapshot(tmp_path / "pub") == before
    assert not tree.exists()
    assert list(tmp_path.rglob(f"*{TMP_SUFFIX}")) == []


def test_failed_verification_keeps_the_source(
    tmp_path: Path, tree: Path, cross_device: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(move_step, "hash_file", lambda *args: "0" * 64)
    before = snapshot(tree)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/old").write_text("old")
    with pytest.raises(StepError, match="copy does not match its source"):
        run_step("move", {"source": "run42", "to": "elsewhere", "overwrite": True}, str(tmp_path))
    assert snapshot(tree) == before
    assert os.listdir(tmp_path / "elsewhere") == ["old"]
    assert list(tmp_path.rglob(f"*{TMP_SUFFIX}")) == []


def test_leftover_temp_of_a_killed_cross_device_move_is_replaced(
    tmp_path: Path, tree: Path, cross_device: list[str]
) -> None:
    leftover = tmp_path / f".elsewhere{TMP_SUFFIX}"
    (leftover / "half").mkdir(parents=True)
    run_step("move", {"source": "run42", "to": "elsewhere"}, str(tmp_path))
    assert not leftover.exists()
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["data.fits", "latest", "qa"]


def test_dry_run_changes_nothing_and_chains(tmp_path: Path, tree: Path) -> None:
    before = snapshot(tmp_path)
    view = WorldView()
    moved = plan_step("move", {"source": "run42", "to": "pub/run42"}, str(tmp_path), view=view)
    for e in moved.effects:
        view.record(e)
    copied = plan_step("copy", {"sources": "pub/run42/qa", "to": "qa"}, str(tmp_path), view=view)
    assert copied.outputs["files"] == [str(tmp_path / "qa/qa/report.txt")]
    with pytest.raises(StepError, match="no such file"):
        plan_step("copy", {"sources": "run42", "to": "x"}, str(tmp_path), view=view)
    again = plan_step("move", {"source": "run42", "to": "pub/run42"}, str(tmp_path), view=view)
    assert again.effects == []
    assert snapshot(tmp_path) == before
    plan, _ = run_step("move", {"source": "run42", "to": "pub/run42"}, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(moved.effects)
