"""Tests of the ``rsync`` step against the real rsync program."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wsrun.core.effects import Effect, create_dir, create_file, create_symlink
from wsrun.core.fs import WorldView
from wsrun.core.step import Progress, StepContext, StepError, load_step, params_schema
from wsrun.testing import effect_dicts, plan_step, run_step

rsync = load_step("rsync")

# Without rsync the tests that run it are skipped, except in CI, where a
# missing rsync must fail loudly rather than silently skip half the suite.
needs_rsync = pytest.mark.skipif(
    shutil.which("rsync") is None and os.environ.get("CI") != "true",
    reason="rsync is not installed (with CI=true these tests fail instead)",
)

ODD_NAMES = ["with space/c d.txt", "pi|pe", "new\nline", "ütf-8 é", "back\\#012x"]


def make_tree(root: Path, files: dict[str, str | bytes]) -> None:
    """Files (a value ending in "/" names a directory, "-> x" a symlink to x)."""
    for name, value in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(value, str) and value.startswith("-> "):
            path.symlink_to(value[3:])
        elif value == "/":
            path.mkdir()
        else:
            path.write_bytes(value.encode() if isinstance(value, str) else value)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root``: kind, mode, mtime and content (or link target)."""
    tree: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                tree[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                tree[rel] = ("dir", st.st_mode)
            else:
                tree[rel] = ("file", st.st_mode, st.st_mtime_ns, Path(path).read_bytes())
    return tree


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    make_tree(
        root,
        {
            "a.txt": "hello",
            "sub/b.bin": b"\x00" * 1000,
            "sub/deeper/c.txt": "c",
            "empty/": "/",
            "link": "-> a.txt",
        },
    )
    os.chmod(root / "sub" / "b.bin", 0o600)
    return root


def effects_of(*effects: Effect) -> list[dict[str, Any]]:
    return effect_dicts(list(effects))


# ---- schema and options -------------------------------------------------------------


def test_schema() -> None:
    validator = jsonschema.Draft202012Validator(params_schema(rsync))
    assert not list(validator.iter_errors({"source": "a/", "to": "b", "options": ["-H"]}))
    assert list(validator.iter_errors({"source": "a/", "to": "b", "options": ["bwlimit=1"]}))
    assert list(validator.iter_errors({"source": "a/"}))
    assert list(validator.iter_errors({"source": "a/", "to": "b", "mirror": True}))


@pytest.mark.parametrize(
    "option", ["-n", "--dry-run", "-avn", "-q", "--info=progress2", "-P", "--out-format=%n"]
)
def test_options_that_would_break_the_step_are_refused(
    src: Path, tmp_path: Path, option: str
) -> None:
    params = {"source": "src/", "to": "dst", "options": [option]}
    with pytest.raises(StepError, match=f"option {option} is not allowed here"):
        plan_step("rsync", params, str(tmp_path))
    assert not (tmp_path / "dst").exists()


# ---- real runs ------------------------------------------------------------------------


@needs_rsync
def test_new_tree_is_copied_and_reported(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out" / "dst"
    plan, result = run_step("rsync", {"source": "src/", "to": "out/dst"}, str(tmp_path))
    assert effect_dicts(result.effects) == effects_of(
        create_dir(str(tmp_path / "out")),
        create_dir(str(dst)),
        create_file(str(dst / "a.txt"), bytes=5, source=str(src / "a.txt")),
        create_dir(str(dst / "empty")),
        create_symlink(str(dst / "link"), "a.txt"),
        create_dir(str(dst / "sub")),
        create_file(str(dst / "sub" / "b.bin"), bytes=1000, source=str(src / "sub" / "b.bin")),
        create_dir(str(dst / "sub" / "deeper")),
        create_file(
            str(dst / "sub" / "deeper" / "c.txt"),
            bytes=1,
            source=str(src / "sub" / "deeper" / "c.txt"),
        ),
    )
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert result.outputs == {
        "files": [
            str(dst / "a.txt"),
            str(dst / "sub" / "b.bin"),
            str(dst / "sub" / "deeper" / "c.txt"),
        ],
        "bytes": 1006,
        "deleted": [],
    }
    assert plan.outputs == result.outputs
    # archive: content, modes, mtimes and symlinks as in the source.
    assert snapshot(dst) == snapshot(src)


@needs_rsync
def test_rerun_reports_nothing_and_changes_nothing(src: Path, tmp_path: Path) -> None:
    params = {"source": "src/", "to": "dst", "delete": True, "checksum": True}
    run_step("rsync", params, str(tmp_path))
    before = snapshot(tmp_path)
    plan, result = run_step("rsync", params, str(tmp_path))
    assert plan.effects == [] and plan.status == "ok"
    assert result.effects == [] and result.status == "ok"
    assert result.outputs == {"files": [], "bytes": 0, "deleted": []}
    assert snapshot(tmp_path) == before


@needs_rsync
def test_source_without_trailing_slash_copies_the_directory_itself(
    src: Path, tmp_path: Path
) -> None:
    (tmp_path / "dst").mkdir()
    plan, result = run_step("rsync", {"source": "src", "to": "dst"}, str(tmp_path))
    assert result.effects[0] == create_dir(str(tmp_path / "dst" / "src"))
    assert result.outputs["files"][0] == str(tmp_path / "dst" / "src" / "a.txt")
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert snapshot(tmp_path / "dst" / "src") == snapshot(src)


@needs_rsync
def test_a_single_file_goes_into_the_directory(src: Path, tmp_path: Path) -> None:
    plan, result = run_step("rsync", {"source": "src/a.txt", "to": "dst"}, str(tmp_path))
    assert effect_dicts(result.effects) == effects_of(
        create_dir(str(tmp_path / "dst")),
        create_file(str(tmp_path / "dst" / "a.txt"), bytes=5, source=str(src / "a.txt")),
    )
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


@needs_rsync
def test_changed_file_is_detected(src: Path, tmp_path: Path) -> None:
    params = {"source": "src/", "to": "dst"}
    run_step("rsync", params, str(tmp_path))
    (src / "sub" / "b.bin").write_bytes(b"\x01" * 1200)
    plan, result = run_step("rsync", params, str(tmp_path))
    dst_file = tmp_path / "dst" / "sub" / "b.bin"
    assert effect_dicts(result.effects) == effects_of(
        create_file(str(dst_file), bytes=1200, source=str(src / "sub" / "b.bin"))
    )
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert dst_file.read_bytes() == b"\x01" * 1200


@needs_rsync
def test_same_size_and_mtime_needs_checksum(src: Path, tmp_path: Path) -> None:
    run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))
    target = src / "a.txt"
    st = target.stat()
    target.write_text("HELLO")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    plan, _ = run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))
    assert plan.effects == []  # rsync's quick check: size and mtime match
    plan, result = run_step(
        "rsync", {"source": "src/", "to": "dst", "checksum": True}, str(tmp_path)
    )
    assert result.outputs["files"] == [str(tmp_path / "dst" / "a.txt")]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert (tmp_path / "dst" / "a.txt").read_text() == "HELLO"


@needs_rsync
def test_delete_removes_extraneous_files_but_keeps_excluded_ones(src: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))
    make_tree(dst, {"extra.txt": "x", "olddir/f": "f", "olddir/g/h": "h", "keep.tmp": "k"})

    plan, result = run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))
    assert plan.effects == [] and result.effects == []
    assert (dst / "extra.txt").exists()

    params = {"source": "src/", "to": "dst", "delete": True, "exclude": ["*.tmp"]}
    plan, result = run_step("rsync", params, str(tmp_path))
    assert effect_dicts(result.effects) == [
        {"op": "remove", "path": str(dst / p)}
        for p in ["olddir/g/h", "olddir/g", "olddir/f", "olddir", "extra.txt"]
    ]
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert result.outputs["deleted"] == [str(dst / "olddir/g/h"), str(dst / "olddir/g"),
                                         str(dst / "olddir/f"), str(dst / "olddir"),
                                         str(dst / "extra.txt")]  # fmt: skip
    assert sorted(os.listdir(dst)) == ["a.txt", "empty", "keep.tmp", "link", "sub"]


@needs_rsync
def test_excludes(src: Path, tmp_path: Path) -> None:
    make_tree(src, {"x.tmp": "t", "sub/y.tmp": "t", "scratch/big": "b"})
    params = {"source": "src/", "to": "dst", "exclude": ["*.tmp", "scratch/", "/sub/deeper"]}
    plan, result = run_step("rsync", params, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert sorted(snapshot(tmp_path / "dst")) == ["a.txt", "empty", "link", "sub", "sub/b.bin"]


@needs_rsync
def test_names_with_spaces_and_odd_characters(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {name: name for name in ODD_NAMES})
    plan, result = run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert sorted(result.outputs["files"]) == sorted(str(tmp_path / "dst" / n) for n in ODD_NAMES)
    for name in ODD_NAMES:
        assert (tmp_path / "dst" / name).read_text() == name
    assert run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))[0].effects == []


@needs_rsync
def test_archive_false_copies_content_only(src: Path, tmp_path: Path) -> None:
    params = {"source": "src/", "to": "dst", "archive": False, "checksum": True}
    plan, result = run_step("rsync", params, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    assert not (tmp_path / "dst" / "link").exists()  # symlinks need archive
    assert (tmp_path / "dst" / "sub" / "deeper" / "c.txt").read_text() == "c"
    assert run_step("rsync", params, str(tmp_path))[0].effects == []


@needs_rsync
def test_progress_is_reported(src: Path, tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []

    class Task:
        def advance(self, bytes: int = 0, files: int = 0) -> None:
            calls.append(("advance", (bytes, files)))

        def close(self) -> None:
            calls.append(("close", None))

    class Recorder(Progress):
        def task(
            self, description: str, total_bytes: int | None = None, total_files: int | None = None
        ) -> Task:
            calls.append(("task", (total_bytes, total_files)))
            return Task()

    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), progress=Recorder())
    rsync.apply(rsync.plan({"source": "src/", "to": "dst"}, ctx), ctx)
    assert calls[0] == ("task", (1006, 3))
    assert sorted(c[1] for c in calls if c[0] == "advance") == [(1, 1), (5, 1), (1000, 1)]
    assert calls[-1] == ("close", None)


# ---- errors -----------------------------------------------------------------------------


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="source does not exist") as e:
        run_step("rsync", {"source": "nowhere/", "to": "dst"}, str(tmp_path))
    assert e.value.path == str(tmp_path / "nowhere")
    assert not (tmp_path / "dst").exists()


def test_destination_must_be_a_directory(src: Path, tmp_path: Path) -> None:
    (tmp_path / "dst").write_text("a file")
    with pytest.raises(StepError, match="destination is not a directory"):
        run_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path))


@needs_rsync
def test_rsync_failure_gives_exit_code_meaning_and_cause(src: Path, tmp_path: Path) -> None:
    params = {"source": "src/", "to": "dst", "options": ["--no-such-option"]}
    with pytest.raises(StepError) as e:
        run_step("rsync", params, str(tmp_path))
    assert e.value.path == str(src)
    assert str(e.value.message) == (
        "rsync failed with exit code 1 (syntax or usage error): "
        "rsync: --no-such-option: unknown option"
    )


@needs_rsync
def test_partial_transfer_is_reported_with_its_cause(src: Path, tmp_path: Path) -> None:
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = rsync.plan({"source": "src/", "to": "dst"}, ctx)
    shutil.rmtree(src)  # vanishes between plan and apply
    with pytest.raises(StepError) as e:
        rsync.apply(plan, ctx)
    assert e.value.path == str(src)
    assert e.value.message.startswith(
        "rsync failed with exit code 23 (partial transfer due to error): "
    )
    assert "No such file or directory" in e.value.message


def test_rsync_program_not_found(src: Path, tmp_path: Path) -> None:
    params = {"source": "src/", "to": "dst", "rsync": str(tmp_path / "no-rsync")}
    with pytest.raises(StepError, match=r"program not found \(install rsync"):
        run_step("rsync", params, str(tmp_path))


@needs_rsync
def test_timeout_stops_rsync_and_leaves_no_partial_file(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {"big.bin": os.urandom(4 << 20)})
    params = {"source": "src/", "to": "dst", "options": ["--bwlimit=500"]}
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = rsync.plan(params, ctx)
    ctx.deadline = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises(StepError, match=r"timed out after [0-9.]+ s"):
        rsync.apply(plan, ctx)
    assert time.monotonic() - started < 4.5  # stopped, not waited for
    assert os.listdir(tmp_path / "dst") == []  # rsync removed its temporary file


# ---- dry runs -----------------------------------------------------------------------------


@needs_rsync
def test_dry_run_writes_nothing_and_matches_the_real_run(src: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "dst", {"old.txt": "old", "a.txt": "stale"})
    params = {"source": "src/", "to": "dst", "delete": True}
    before = snapshot(tmp_path)
    plan = plan_step("rsync", params, str(tmp_path), view=WorldView())
    assert snapshot(tmp_path) == before
    assert plan.status == "changed"
    _, result = run_step("rsync", params, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


@needs_rsync
def test_dry_run_chain_sees_the_synchronised_tree(src: Path, tmp_path: Path) -> None:
    view = WorldView()
    view.record(create_dir(str(tmp_path / "dst")))  # planned by an earlier step
    plan = plan_step("rsync", {"source": "src/", "to": "dst"}, str(tmp_path), view=view)
    assert create_dir(str(tmp_path / "dst")) not in plan.effects
    for effect in plan.effects:
        view.record(effect)
    with view.open(str(tmp_path / "dst" / "a.txt")) as f:
        assert f.read() == b"hello"
    assert view.lstat(str(tmp_path / "dst" / "link")).target == "a.txt"  # type: ignore[union-attr]
    assert not (tmp_path / "dst").exists()


def _planned_source(view: WorldView, root: Path) -> None:
    """Record a source tree as an earlier step would plan it."""
    view.record(create_dir(str(root)))
    view.record(create_file(str(root / "a.txt"), bytes=5, content=b"hello"))
    view.record(create_dir(str(root / "sub")))
    view.record(create_file(str(root / "sub" / "b.txt"), bytes=2, content=b"bb"))
    view.record(create_file(str(root / "sub" / "x.tmp"), bytes=1, content=b"t"))
    view.record(create_symlink(str(root / "link"), "a.txt"))


def _materialise(root: Path) -> None:
    make_tree(root, {"a.txt": "hello", "sub/b.txt": "bb", "sub/x.tmp": "t", "link": "-> a.txt"})


@needs_rsync
@pytest.mark.parametrize("source", ["made/", "made"])
def test_dry_run_of_a_planned_source_matches_the_real_run(tmp_path: Path, source: str) -> None:
    make_tree(tmp_path / "dst", {"old/f": "f", "keep.tmp": "k"})
    params = {"source": source, "to": "dst", "delete": True, "exclude": ["*.tmp"]}
    view = WorldView()
    _planned_source(view, tmp_path / "made")
    before = snapshot(tmp_path)
    plan = plan_step("rsync", params, str(tmp_path), view=view)
    assert snapshot(tmp_path) == before
    for effect in plan.effects:
        view.record(effect)
    dst = tmp_path / "dst" if source.endswith("/") else tmp_path / "dst" / "made"
    with view.open(str(dst / "sub" / "b.txt")) as f:
        assert f.read() == b"bb"

    _materialise(tmp_path / "made")
    _, result = run_step("rsync", params, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


def test_dry_run_of_a_planned_source_needs_no_rsync(tmp_path: Path) -> None:
    view = WorldView()
    _planned_source(view, tmp_path / "made")
    params = {"source": "made/", "to": "dst", "rsync": str(tmp_path / "no-rsync"), "checksum": True}
    plan = plan_step("rsync", params, str(tmp_path), view=view)
    assert plan.outputs == {
        "files": [str(tmp_path / "dst" / n) for n in ["a.txt", "sub/b.txt", "sub/x.tmp"]],
        "bytes": 8,
        "deleted": [],
    }


def test_examples_are_valid() -> None:
    validator = jsonschema.Draft202012Validator(params_schema(rsync))
    for example in rsync.EXAMPLES:
        for step in yaml.safe_load(example):
            assert list(validator.iter_errors(step["with"])) == []


def test_dry_run_after_a_shell_step_leaves_unknown_sizes_unknown(tmp_path: Path) -> None:
    view = WorldView()
    made = plan_step(
        "shell", {"argv": ["true"], "creates": ["gen/a.txt"]}, str(tmp_path), view=view
    )
    for effect in made.effects:
        view.record(effect)
    plan = plan_step("rsync", {"source": "gen/", "to": "dst"}, str(tmp_path), view=view)
    assert effect_dicts(plan.effects) == effects_of(
        create_dir(str(tmp_path / "dst")),
        create_file(
            str(tmp_path / "dst" / "a.txt"), bytes=None, source=str(tmp_path / "gen" / "a.txt")
        ),
    )
