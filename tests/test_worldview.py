"""The dry-run view: planned effects layered over the real disk."""

from __future__ import annotations

from pathlib import Path

from wsrun.core import effects as fx
from wsrun.core.fs import WorldView


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "one.txt").write_text("one")
    (root / "a" / "b" / "two.txt").write_text("two!")
    return root


def test_planned_files_are_visible_with_content(tmp_path: Path) -> None:
    root = tree(tmp_path)
    v = WorldView()
    v.record(fx.create_file(str(root / "new" / "copy.txt"), 3, source=str(root / "a" / "one.txt")))
    v.record(fx.create_file(str(root / "gen.txt"), 5, content=b"hello"))
    assert v.is_dir(str(root / "new")) and v.is_file(str(root / "new" / "copy.txt"))
    with v.open(str(root / "new" / "copy.txt")) as f:
        assert f.read() == b"one"
    with v.open(str(root / "gen.txt")) as f:
        assert f.read() == b"hello"
    assert v.listdir(str(root)) == ["a", "gen.txt", "new"]
    assert not (root / "new").exists()


def test_remove_hides_real_tree_and_recreate_starts_empty(tmp_path: Path) -> None:
    root = tree(tmp_path)
    v = WorldView()
    v.record(fx.remove(str(root / "a")))
    assert v.lstat(str(root / "a")) is None and v.lstat(str(root / "a" / "b" / "two.txt")) is None
    v.record(fx.create_dir(str(root / "a")))
    assert v.is_dir(str(root / "a")) and v.listdir(str(root / "a")) == []
    assert (root / "a" / "one.txt").exists()


def test_move_of_a_real_directory_shows_its_contents_at_the_new_place(tmp_path: Path) -> None:
    root = tree(tmp_path)
    v = WorldView()
    v.record(fx.move(str(root / "a"), str(root / "moved" / "a")))
    assert v.lstat(str(root / "a")) is None
    assert v.is_file(str(root / "moved" / "a" / "b" / "two.txt"))
    assert [rel for rel, _ in v.walk(str(root / "moved"))] == [
        "a",
        "a/b",
        "a/one.txt",
        "a/b/two.txt",
    ]
    v.record(fx.remove(str(root / "moved" / "a" / "one.txt")))
    assert v.listdir(str(root / "moved" / "a")) == ["b"]


def test_move_of_a_real_directory_takes_what_is_planned_inside_it(tmp_path: Path) -> None:
    """An atomic group continuing a real staging directory plans files into it, a
    removal and a moved-in directory, then renames it into place: a later step sees all
    of it at the new place (the real files, the planned ones, not the removed one)."""
    root = tree(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "three.txt").write_text("3")
    v = WorldView()
    v.record(fx.create_file(str(root / "a" / "b" / "planned.txt"), 5, content=b"hello"))
    v.record(fx.create_file(str(root / "a" / "new" / "deep.txt"), 1, content=b"x"))
    v.record(fx.remove(str(root / "a" / "one.txt")))
    v.record(fx.move(str(tmp_path / "other"), str(root / "a" / "other")))
    v.record(fx.move(str(root / "a"), str(root / "moved")))
    assert [rel for rel, _ in v.walk(str(root / "moved"))] == [
        "b",
        "new",
        "other",
        "b/planned.txt",
        "b/two.txt",
        "new/deep.txt",
        "other/three.txt",
    ]
    with v.open(str(root / "moved" / "b" / "planned.txt")) as f:
        assert f.read() == b"hello"
    assert v.lstat(str(root / "a")) is None and v.lstat(str(root / "moved" / "one.txt")) is None


def test_symlinks_planned_and_followed(tmp_path: Path) -> None:
    root = tree(tmp_path)
    v = WorldView()
    v.record(fx.create_symlink(str(root / "latest"), "a"))
    assert v.lstat(str(root / "latest")).is_symlink
    assert v.is_dir(str(root / "latest")) and v.is_file(str(root / "latest" / "one.txt"))
    assert v.listdir(str(root / "latest")) == ["b", "one.txt"]


def test_walk_matches_between_real_and_virtual_paths(tmp_path: Path) -> None:
    root = tree(tmp_path)
    real = [(rel, i.kind, i.size) for rel, i in WorldView().walk(str(root))]
    v = WorldView()
    v.record(fx.create_file(str(tmp_path / "elsewhere"), 1, content=b"x"))  # make the view virtual
    virtual = [(rel, i.kind, i.size) for rel, i in v.walk(str(root))]
    assert (
        real
        == virtual
        == [
            ("a", "dir", real[0][2]),
            ("a/b", "dir", real[1][2]),
            ("a/one.txt", "file", 3),
            ("a/b/two.txt", "file", 4),
        ]
    )
