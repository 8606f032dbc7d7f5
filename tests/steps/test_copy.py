"""Tests of the ``copy`` step type."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from wsrun.core import filecopy
from wsrun.core.effects import create_dir
from wsrun.core.fileio import TMP_SUFFIX
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.testing import effect_dicts, plan_step, run_step

MTIME = 1_600_000_000_123_456_789


def snapshot(root: Path) -> dict[str, Any]:
    """Everything observable about a tree: kinds, modes, mtimes, contents, link targets."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                out[rel] = ("file", st.st_mode & 0o7777, st.st_mtime_ns, p.read_bytes())
    return out


def temps(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(f"*{TMP_SUFFIX}")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """src/ with files of several modes, a nested directory and a symlink."""
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    files = {
        "a.txt": (b"alpha\n", 0o644),
        "run.sh": (b"#!/bin/sh\n", 0o755),
        "secret": (b"s" * 5000, 0o600),
        "open": (b"o", 0o777),
        "sub/b.dat": (os.urandom(300_000), 0o444),
        "sub/deep/empty": (b"", 0o640),
    }
    for rel, (data, mode) in files.items():
        p = src / rel
        p.write_bytes(data)
        p.chmod(mode)
        os.utime(p, ns=(MTIME, MTIME))
    (src / "link").symlink_to("a.txt")
    (src / "sub").chmod(0o750)
    return src


def test_copies_tree_with_modes_mtimes_and_symlinks(tmp_path: Path, tree: Path) -> None:
    plan, result = run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert snapshot(tmp_path / "out" / "src") == snapshot(tree)
    assert os.lstat(tmp_path / "out/src/a.txt").st_mtime_ns == MTIME
    assert os.lstat(tmp_path / "out/src/sub").st_mtime_ns == os.lstat(tree / "sub").st_mtime_ns
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    ops = [(e.op, os.path.relpath(e.path, tmp_path)) for e in plan.effects]
    assert ops[:2] == [("create_dir", "out"), ("create_dir", "out/src")]
    assert ("create_symlink", "out/src/link") in ops
    b = next(e for e in plan.effects if e.path.endswith("b.dat"))
    assert (b.bytes, b.source) == (300_000, str(tree / "sub/b.dat"))
    out = result.outputs
    assert out["copied"] == 6 and out["unchanged"] == 0
    assert out["bytes"] == 6 + 10 + 5000 + 1 + 300_000
    assert out["files"] == sorted(out["files"]) and len(out["files"]) == 6
    assert out["symlinks"] == [str(tmp_path / "out/src/link")]
    assert "checksums" not in out
    assert temps(tmp_path) == []


def test_second_run_has_no_effects_and_changes_nothing(tmp_path: Path, tree: Path) -> None:
    run_step("copy", {"sources": "src", "to": "out", "checksum": "sha256"}, str(tmp_path))
    before = snapshot(tmp_path / "out")
    plan, result = run_step(
        "copy", {"sources": "src", "to": "out", "checksum": "sha256"}, str(tmp_path)
    )
    assert plan.effects == [] and result.status == "ok"
    assert result.outputs["copied"] == 0 and result.outputs["unchanged"] == 6
    assert len(result.outputs["checksums"]) == 6  # read from the destination
    assert snapshot(tmp_path / "out") == before


def test_only_changed_files_are_copied(tmp_path: Path, tree: Path) -> None:
    run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    (tree / "a.txt").write_bytes(b"changed\n")
    os.utime(tree / "secret", ns=(MTIME + 1, MTIME + 1))  # same size, newer
    (tree / "secret").chmod(0o600)
    (tree / "run.sh").chmod(0o700)  # only the mode differs
    plan, result = run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    changed = sorted(os.path.basename(e.path) for e in plan.effects)
    assert changed == ["a.txt", "run.sh", "secret"]
    assert result.outputs["copied"] == 3 and result.outputs["unchanged"] == 3
    assert snapshot(tmp_path / "out/src") == snapshot(tree)


@pytest.mark.parametrize("algorithm", ["sha256", "md5", "sha1"])
def test_checksums_are_computed_while_copying(tmp_path: Path, tree: Path, algorithm: str) -> None:
    _, result = run_step(
        "copy", {"sources": "src", "to": "out", "checksum": algorithm}, str(tmp_path)
    )
    checksums = result.outputs["checksums"]
    assert list(checksums) == result.outputs["files"]
    for path, digest in checksums.items():
        assert digest == hashlib.new(algorithm, Path(path).read_bytes()).hexdigest()


def test_compare_by_checksum_ignores_mtime(tmp_path: Path, tree: Path) -> None:
    params = {"sources": "src", "to": "out", "compare": "checksum", "checksum": "md5"}
    run_step("copy", params, str(tmp_path))
    os.utime(tmp_path / "out/src/a.txt", ns=(5, 5))  # touched, same content
    (tmp_path / "out/src/secret").write_bytes(b"x" * 5000)  # same size, other content
    plan, result = run_step("copy", params, str(tmp_path))
    assert [os.path.basename(e.path) for e in plan.effects] == ["secret"]
    assert (tmp_path / "out/src/secret").read_bytes() == b"s" * 5000
    a = str(tmp_path / "out/src/a.txt")
    assert result.outputs["checksums"][a] == hashlib.md5(b"alpha\n").hexdigest()
    assert os.lstat(a).st_mtime_ns == 5  # left alone


def test_base_keeps_layout_of_listed_files(tmp_path: Path, tree: Path) -> None:
    sources = ["src/sub/deep/empty", "src/a.txt", "src/sub/b.dat"]
    plan, result = run_step("copy", {"sources": sources, "to": "out", "base": "src"}, str(tmp_path))
    assert sorted(os.path.relpath(p, tmp_path / "out") for p in result.outputs["files"]) == [
        "a.txt",
        "sub/b.dat",
        "sub/deep/empty",
    ]
    assert (tmp_path / "out/sub/b.dat").read_bytes() == (tree / "sub/b.dat").read_bytes()
    assert effect_dicts(result.effects) == effect_dicts(plan.effects)
    dirs = [os.path.relpath(e.path, tmp_path) for e in plan.effects if e.op == "create_dir"]
    assert dirs == ["out", "out/sub", "out/sub/deep"]


def test_base_with_a_directory_and_a_file_inside_it(tmp_path: Path, tree: Path) -> None:
    params = {"sources": ["src/sub/b.dat", "src/sub"], "to": "out", "base": "src"}
    plan, result = run_step("copy", params, str(tmp_path))
    assert result.outputs["copied"] == 2
    assert snapshot(tmp_path / "out/sub") == snapshot(tree / "sub")


def test_source_outside_base_is_refused(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(StepError, match="not inside base") as e:
        plan_step("copy", {"sources": "src/a.txt", "to": "out", "base": "src/sub"}, str(tmp_path))
    assert e.value.path == str(tree / "a.txt")


def test_several_sources_land_by_basename(tmp_path: Path, tree: Path) -> None:
    _, result = run_step("copy", {"sources": ["src/a.txt", "src/sub"], "to": "out"}, str(tmp_path))
    assert (tmp_path / "out/a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "out/sub/deep/empty").exists()
    assert result.outputs["copied"] == 3


def test_two_sources_with_one_basename_are_refused(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other/a.txt").write_text("other")
    with pytest.raises(StepError, match="would both be copied here"):
        plan_step("copy", {"sources": ["src/a.txt", "other/a.txt"], "to": "out"}, str(tmp_path))


def test_missing_source_is_an_error_and_creates_nothing(tmp_path: Path, tree: Path) -> None:
    with pytest.raises(StepError) as e:
        run_step("copy", {"sources": ["src/a.txt", "src/nope"], "to": "out"}, str(tmp_path))
    assert str(e.value) == f"{tmp_path / 'src/nope'}: no such file or directory"
    assert not (tmp_path / "out").exists()


def test_type_conflicts_are_refused(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/src").write_text("a file where the tree goes")
    with pytest.raises(StepError, match="cannot overwrite non-directory with directory"):
        plan_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    (tmp_path / "out2/a.txt").mkdir(parents=True)
    with pytest.raises(StepError, match="cannot overwrite directory with non-directory"):
        plan_step("copy", {"sources": "src/a.txt", "to": "out2"}, str(tmp_path))
    with pytest.raises(StepError, match="destination is not a directory"):
        plan_step("copy", {"sources": "src", "to": "src/a.txt"}, str(tmp_path))
    with pytest.raises(StepError, match="into itself"):
        plan_step("copy", {"sources": "src", "to": "src/sub"}, str(tmp_path))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(StepError, match="special file"):
        plan_step("copy", {"sources": "fifo", "to": "out"}, str(tmp_path))


def test_dry_run_writes_nothing_and_matches_real_run(tmp_path: Path, tree: Path) -> None:
    params = {"sources": "src", "to": "out/deep", "checksum": "sha256"}
    before = snapshot(tmp_path)
    dry = plan_step("copy", params, str(tmp_path), view=WorldView())
    assert snapshot(tmp_path) == before
    plan, result = run_step("copy", params, str(tmp_path))
    assert effect_dicts(dry.effects) == effect_dicts(plan.effects) == effect_dicts(result.effects)
    planned = dry.outputs.pop("checksums")
    assert {k: v for k, v in result.outputs.items() if k != "checksums"} == dry.outputs
    # a dry run knows no digest of a file still to copy; the same files have one after
    assert planned == dict.fromkeys(result.outputs["checksums"])


def test_dry_run_chain_sees_planned_copies(tmp_path: Path, tree: Path) -> None:
    view = WorldView()
    first = plan_step("copy", {"sources": "src", "to": "stage"}, str(tmp_path), view=view)
    for e in first.effects:
        view.record(e)
    second = plan_step(
        "copy",
        {"sources": "stage/src/sub", "to": "final", "compare": "checksum"},
        str(tmp_path),
        view=view,
    )
    files = {os.path.relpath(e.path, tmp_path): e.bytes for e in second.effects}
    assert files == {
        "final": None,
        "final/sub": None,
        "final/sub/b.dat": 300_000,
        "final/sub/deep": None,
        "final/sub/deep/empty": 0,
    }
    assert second.outputs["files"] == [
        str(tmp_path / "final/sub/b.dat"),
        str(tmp_path / "final/sub/deep/empty"),
    ]
    assert not (tmp_path / "stage").exists()


def test_resume_after_kill_removes_stray_temps(tmp_path: Path, tree: Path) -> None:
    run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    dest = tmp_path / "out/src"
    (dest / "sub/b.dat").unlink()
    (dest / f"sub/.b.dat{TMP_SUFFIX}").symlink_to("../a.txt")  # a link is never followed
    (dest / f".a.txt{TMP_SUFFIX}").write_bytes(b"half")  # where nothing else is written
    an_hour_ago = time.time() - 3600  # a killed run's leftover, not a file being written now
    os.utime(dest / f".a.txt{TMP_SUFFIX}", (an_hour_ago, an_hour_ago))
    plan_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert len(temps(tmp_path)) == 2  # planning never changes anything
    plan, result = run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert [os.path.basename(e.path) for e in plan.effects] == ["b.dat"]
    assert temps(tmp_path) == []
    assert (tree / "a.txt").read_bytes() == b"alpha\n"
    assert snapshot(dest) == snapshot(tree)


def test_temps_in_the_source_are_not_copied(tmp_path: Path, tree: Path) -> None:
    (tree / f".x{TMP_SUFFIX}").write_text("partial")
    (tree / f".d{TMP_SUFFIX}").mkdir()
    (tree / f".d{TMP_SUFFIX}/inner").write_text("partial")
    _, result = run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert result.outputs["copied"] == 6
    assert temps(tmp_path / "out") == []


def test_failure_midway_leaves_no_partial_file(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = filecopy._copy_fast
    calls = []

    def failing(src_fd: int, dst_fd: int, left: int, *rest: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            os.write(dst_fd, b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src_fd, dst_fd, left, *rest)

    monkeypatch.setattr(filecopy, "_copy_fast", failing)
    with pytest.raises(OSError, match="No space left"):
        run_step("copy", {"sources": "src", "to": "out", "workers": 1}, str(tmp_path))
    assert temps(tmp_path) == []
    for p in (tmp_path / "out").rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert p.read_bytes() == (tree / p.relative_to(tmp_path / "out/src")).read_bytes()
    monkeypatch.setattr(filecopy, "_copy_fast", real)
    run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert snapshot(tmp_path / "out/src") == snapshot(tree)


@pytest.mark.parametrize("broken", [["copy_file_range"], ["copy_file_range", "sendfile"]])
def test_falls_back_when_the_kernel_cannot_copy(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch, broken: list[str]
) -> None:
    def unsupported(*args: Any) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    for name in broken:
        monkeypatch.setattr(os, name, unsupported)
    run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
    assert snapshot(tmp_path / "out/src") == snapshot(tree)


def test_parallel_and_serial_copies_agree(tmp_path: Path) -> None:
    src = tmp_path / "many"
    for i in range(200):
        d = src / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(i * 37))
    results = {}
    for workers in (1, 4):
        _, result = run_step(
            "copy",
            {"sources": "many", "to": f"w{workers}", "workers": workers, "checksum": "sha1"},
            str(tmp_path),
        )
        assert snapshot(tmp_path / f"w{workers}/many") == snapshot(src)
        results[workers] = {
            os.path.relpath(k, tmp_path / f"w{workers}"): v
            for k, v in result.outputs["checksums"].items()
        }
    assert results[1] == results[4] and len(results[1]) == 200


def test_symlink_at_destination_is_replaced_not_followed(tmp_path: Path, tree: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "victim").write_text("keep me")
    (tmp_path / "out/a.txt").symlink_to(tmp_path / "victim")
    run_step("copy", {"sources": "src/a.txt", "to": "out"}, str(tmp_path))
    assert not (tmp_path / "out/a.txt").is_symlink()
    assert (tmp_path / "out/a.txt").read_bytes() == b"alpha\n"
    assert (tmp_path / "victim").read_text() == "keep me"


def test_files_larger_than_the_buffer_hash_and_copy_in_chunks(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    data = os.urandom(filecopy.BUFFER_SIZE + 12345)
    for name in ("x", "y", "z"):
        (tmp_path / "big" / name).write_bytes(data)
    _, result = run_step(
        "copy", {"sources": "big", "to": "out", "checksum": "sha256", "workers": 2}, str(tmp_path)
    )
    digest = hashlib.sha256(data).hexdigest()
    assert set(result.outputs["checksums"].values()) == {digest}
    for name in ("x", "y", "z"):
        assert (tmp_path / "out/big" / name).read_bytes() == data


@pytest.mark.parametrize("kernel", ["whole", "short", "missing"])
def test_checksummed_copy_through_the_kernel_and_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    real = os.copy_file_range

    def short(src: int, dst: int, count: int) -> int:
        return real(src, dst, min(count, 100_001))  # odd sizes: unaligned mmap offsets

    def missing(*args: Any) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    if kernel != "whole":
        monkeypatch.setattr(os, "copy_file_range", short if kernel == "short" else missing)
    data = os.urandom(filecopy.MMAP_MIN * 2 + 777)
    (tmp_path / "f.bin").write_bytes(data)
    _, result = run_step(
        "copy", {"sources": "f.bin", "to": "out", "checksum": "sha1"}, str(tmp_path)
    )
    assert (tmp_path / "out/f.bin").read_bytes() == data
    assert result.outputs["checksums"] == {
        str(tmp_path / "out/f.bin"): hashlib.sha1(data).hexdigest()
    }


def test_a_temp_another_run_is_writing_is_left_alone(tmp_path: Path, tree: Path) -> None:
    """Two runs copying into one directory at once must not delete each other's
    temporary files (two ALMA pipeline drivers sharing a cache did)."""
    from wsrun.core.fileio import atomic_write, remove_stray_temps

    out = tmp_path / "out" / "src"  # where the copy below writes
    out.mkdir(parents=True)
    old = time.time() - 3600
    with atomic_write(str(out / "busy.dat")) as busy:  # another run, mid-write
        busy.write(b"half")
        busy.flush()
        os.utime(out / f".busy.dat{TMP_SUFFIX}", (old, old))  # even if slow
        (out / f".dead.dat{TMP_SUFFIX}").write_bytes(b"left by a killed run")
        os.utime(out / f".dead.dat{TMP_SUFFIX}", (old, old))
        run_step("copy", {"sources": "src", "to": "out"}, str(tmp_path))
        assert temps(out) == [str(out / f".busy.dat{TMP_SUFFIX}")]
        remove_stray_temps(str(out))
        assert temps(out) == [str(out / f".busy.dat{TMP_SUFFIX}")]
    assert (out / "busy.dat").read_bytes() == b"half" and temps(out) == []


# ---- files: a map of places, follow_symlinks, delete -------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_puts_each_source_in_its_place_following_links(tmp_path: Path, tree: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "eb" / "inner").mkdir(parents=True)
    (cache / "eb" / "inner" / "data.bin").write_bytes(b"d" * 1000)
    (cache / "eb" / "alias").symlink_to(cache / "eb" / "inner" / "data.bin")
    (tmp_path / "link-to-eb").symlink_to(cache / "eb")
    (tmp_path / "link-to-a").symlink_to(tree / "a.txt")
    params = {
        "files": {
            "images/a.txt": "link-to-a",
            "scripts/run.sh": "src/run.sh",
            "eb": "link-to-eb",
        },
        "to": "out",
        "follow_symlinks": True,
        "checksum": "sha256",
    }
    plan, result = run_step("copy", params, str(tmp_path))
    out = tmp_path / "out"
    assert not any(p.is_symlink() for p in out.rglob("*"))  # content, never links
    assert (out / "images" / "a.txt").read_bytes() == b"alpha\n"
    assert (out / "eb" / "alias").read_bytes() == (out / "eb" / "inner" / "data.bin").read_bytes()
    assert os.stat(out / "scripts" / "run.sh").st_mode & 0o777 == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert result.outputs["checksums"] == {str(p): _sha(p) for p in files}
    # the same map again: nothing to do
    again = plan_step("copy", params, str(tmp_path))
    assert again.effects == [] and again.outputs["unchanged"] == len(files)


def test_files_refuses_places_outside_and_dangling_links(tmp_path: Path, tree: Path) -> None:
    for bad in ("../x", "/abs/x", "."):
        with pytest.raises(StepError, match="not a path below the destination"):
            plan_step("copy", {"files": {bad: "src/a.txt"}, "to": "out"}, str(tmp_path))
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    params = {"files": {"x": "gone"}, "to": "out", "follow_symlinks": True}
    with pytest.raises(StepError, match="dangling"):
        plan_step("copy", params, str(tmp_path))
    (tmp_path / "src" / "sub" / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(StepError, match="dangling"):
        plan_step("copy", {**params, "files": {"x": "src"}}, str(tmp_path))
    with pytest.raises(StepError, match="both be copied"):
        plan_step(
            "copy", {"files": {"x": "src/a.txt", "x/": "src/run.sh"}, "to": "out"}, str(tmp_path)
        )


def test_delete_removes_what_the_sources_do_not_put_there(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    (out / "stale" / "deep").mkdir(parents=True)
    (out / "stale" / "deep" / "old.bin").write_bytes(b"old")
    (out / "extra.txt").write_text("not the sources'")
    (out / "SHA256SUMS").write_text("kept\n")
    params = {
        "files": {"a.txt": "src/a.txt", "sub": "src/sub"},
        "to": "out",
        "delete": True,
        "keep": ["SHA256SUMS"],
    }
    dry = plan_step("copy", params, str(tmp_path), view=WorldView())
    removed = [e.path for e in dry.effects if e.op == "remove"]
    assert sorted(removed) == [str(out / "extra.txt"), str(out / "stale")]
    plan, result = run_step("copy", params, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(dry.effects)
    assert sorted(os.listdir(out)) == ["SHA256SUMS", "a.txt", "sub"]
    assert (out / "SHA256SUMS").read_text() == "kept\n"
    assert plan_step("copy", params, str(tmp_path)).effects == []
    # without delete, extras stay (as they always did)
    (out / "extra.txt").write_text("x")
    assert plan_step("copy", {**params, "delete": False}, str(tmp_path)).effects == []


def test_dry_run_checksums_are_the_recorded_ones(
    tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run reports the digests this host recorded for unchanged files, and
    none for a file changed since (same size and mtime, new content: a new ctime)."""
    monkeypatch.setenv("WSRUN_HOME", str(tmp_path / "home"))
    params = {"files": {"a.txt": "src/a.txt", "sub": "src/sub"}, "to": "out", "checksum": "sha256"}
    _, result = run_step("copy", params, str(tmp_path))
    dry = plan_step("copy", params, str(tmp_path), view=WorldView())
    assert dry.effects == [] and dry.outputs["checksums"] == result.outputs["checksums"]
    copied = tmp_path / "out" / "a.txt"
    st = copied.stat()
    copied.write_bytes(b"ALPHA\n")  # same size
    os.utime(copied, ns=(st.st_atime_ns, st.st_mtime_ns))
    dry = plan_step("copy", params, str(tmp_path), view=WorldView())
    assert dry.outputs["checksums"][str(copied)] is None


def test_a_plan_read_from_the_disk_equals_one_read_through_a_view(
    tmp_path: Path, tree: Path
) -> None:
    """A tree the view shows as the disk is read straight from it (no FileInfo
    per file): the plan (effects, what apply does, outputs) is the one a walk
    through a view with planned effects elsewhere gives, and each file's
    effect still carries its source's facts for a dry run's view."""
    (tree / "sub" / f".x{TMP_SUFFIX}").write_bytes(b"a killed run's")
    (tree / "tolink").symlink_to("sub", target_is_directory=True)
    params = {"sources": "src", "to": "out", "checksum": "sha256"}
    disk = plan_step("copy", params, str(tmp_path), view=WorldView())
    layered = WorldView()
    layered.record(create_dir(str(tmp_path / "elsewhere")))
    assert layered.virtual
    view = plan_step("copy", params, str(tmp_path), view=layered)
    assert effect_dicts(disk.effects) == effect_dicts(view.effects)
    assert list(disk.data.files) == list(view.data.files)
    assert (disk.data.dirs, disk.data.links) == (view.data.dirs, view.data.links)
    assert disk.outputs == view.outputs and disk.trees == view.trees == []  # a temp left out
    files = [e for e in disk.effects if e.op == "create_file"]
    assert len(files) == 6
    assert all(e.source_info == WorldView().lstat(e.source) for e in files)
