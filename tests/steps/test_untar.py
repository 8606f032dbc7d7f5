"""Tests of the ``untar`` step: extraction, idempotence and hostile archives."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import time
import zipfile

import pytest

from conftest import stat_snapshot
from wsrun.core.fs import WorldView
from wsrun.core.step import StepContext, StepError, load_step
from wsrun.formats import tarread
from wsrun.testing import effect_dicts, plan_step, run_step

MTIME = 1_600_000_000


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = MTIME
    ti.mode = 0o644
    for k, v in attrs.items():
        setattr(ti, k, v)
    if ti.type != tarfile.REGTYPE:
        ti.size = 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def make_tar(path, members, fmt=tarfile.GNU_FORMAT, mode="w") -> None:
    """``members``: (name, data) for files or (name, data, attrs)."""
    with tarfile.open(path, mode, format=fmt) as tf:
        for name, data, *attrs in members:
            add(tf, name, data, **(attrs[0] if attrs else {}))


def sample(path, mode="w", fmt=tarfile.GNU_FORMAT) -> None:
    long_name = "top/" + "n" * 120 + "/é-file.txt"
    make_tar(
        path,
        [
            ("top", b"", {"type": tarfile.DIRTYPE, "mode": 0o750}),
            ("top/a.txt", b"alpha\n", {"mode": 0o600}),
            ("top/sub/b.bin", bytes(range(256)) * 40),
            (long_name, b"long\n"),
            ("top/link", b"", {"type": tarfile.SYMTYPE, "linkname": "a.txt"}),
            ("top/hard", b"", {"type": tarfile.LNKTYPE, "linkname": "top/a.txt"}),
        ],
        fmt,
        mode,
    )


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("w", tarfile.GNU_FORMAT),
        ("w", tarfile.PAX_FORMAT),
        ("w", tarfile.USTAR_FORMAT),
        ("w:gz", tarfile.GNU_FORMAT),
        ("w:bz2", tarfile.PAX_FORMAT),
        ("w:xz", tarfile.GNU_FORMAT),
    ],
)
def test_extracts_tarfile_archives(tmp_path, mode, fmt):
    src = tmp_path / "in.bin"  # the name says nothing about the compression
    sample(src, mode, fmt)
    plan, result = run_step("untar", {"source": "in.bin", "to": "out"}, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    top = tmp_path / "out" / "top"
    assert (top / "a.txt").read_bytes() == b"alpha\n"
    assert stat.S_IMODE((top / "a.txt").stat().st_mode) == 0o600
    assert (top / "a.txt").stat().st_mtime == MTIME
    assert (top / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 40
    assert (top / ("n" * 120) / "é-file.txt").read_bytes() == b"long\n"
    assert os.readlink(top / "link") == "a.txt"
    assert (top / "hard").stat().st_ino == (top / "a.txt").stat().st_ino
    assert stat.S_IMODE(top.stat().st_mode) == 0o750 and top.stat().st_mtime == MTIME
    assert result.outputs["members"] == 6
    assert result.outputs["files"] == [
        str(top / "a.txt"),
        str(top / "sub" / "b.bin"),
        str(top / ("n" * 120) / "é-file.txt"),
        str(top / "hard"),
    ]
    assert [e.op for e in result.effects] == [
        "create_dir",  # out
        "create_dir",  # top
        "create_file",
        "create_dir",  # top/sub, not listed in the archive
        "create_file",
        "create_dir",
        "create_file",
        "create_symlink",
        "create_file",  # the hard link
    ]
    assert not [n for n in os.listdir(top) if n.endswith(".wsrun-tmp")]


def test_extracts_zst_and_gnu_tar_archives(tmp_path):
    import zstandard

    sample(tmp_path / "plain.tar")
    data = zstandard.ZstdCompressor().compress((tmp_path / "plain.tar").read_bytes())
    (tmp_path / "x.tar.zst").write_bytes(data)
    run_step("untar", {"source": "x.tar.zst", "to": "z"}, str(tmp_path))
    assert (tmp_path / "z" / "top" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 40

    (tmp_path / "g" / "d").mkdir(parents=True)
    (tmp_path / "g" / "d" / "f").write_text("gnu")
    subprocess.run(["tar", "-czf", "gnu.tgz", "-C", "g", "."], cwd=tmp_path, check=True)
    _, result = run_step("untar", {"source": "gnu.tgz", "to": "g2"}, str(tmp_path))
    assert (tmp_path / "g2" / "d" / "f").read_text() == "gnu"
    assert result.outputs["files"] == [str(tmp_path / "g2" / "d" / "f")]


def test_zip_round_trip(tmp_path):
    with zipfile.ZipFile(tmp_path / "in.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/", "")
        info = zipfile.ZipInfo("pkg/run.sh", (2020, 5, 17, 12, 30, 10))
        info.external_attr = (stat.S_IFREG | 0o755) << 16
        info.create_system = 3
        zf.writestr(info, "#!/bin/sh\n")
        zf.writestr("pkg/data/values.csv", "a,b\n1,2\n")
        link = zipfile.ZipInfo("pkg/latest")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        link.create_system = 3
        zf.writestr(link, "run.sh")
    _, result = run_step(
        "untar", {"source": "in.zip", "to": "out", "strip_components": 1}, str(tmp_path)
    )
    out = tmp_path / "out"
    assert (out / "run.sh").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert (out / "run.sh").stat().st_mtime == time.mktime((2020, 5, 17, 12, 30, 10, 0, 0, -1))
    assert (out / "data" / "values.csv").read_text() == "a,b\n1,2\n"
    assert os.readlink(out / "latest") == "run.sh"
    assert result.outputs["members"] == 3  # "pkg/" itself is stripped away
    assert (
        plan_step(
            "untar", {"source": "in.zip", "to": "out", "strip_components": 1}, str(tmp_path)
        ).status
        == "ok"
    )


def test_second_run_ok_and_only_changed_files_rewritten(tmp_path):
    sample(tmp_path / "x.tar.gz", "w:gz")
    params = {"source": "x.tar.gz", "to": "out"}
    _, first = run_step("untar", params, str(tmp_path))
    before = stat_snapshot(str(tmp_path))
    plan, result = run_step("untar", params, str(tmp_path))
    assert plan.status == "ok" and result.effects == []
    assert result.outputs == first.outputs
    assert stat_snapshot(str(tmp_path)) == before

    (tmp_path / "out" / "top" / "sub" / "b.bin").write_bytes(b"edited")
    plan = plan_step("untar", params, str(tmp_path))
    assert effect_dicts(plan.effects) == [
        {
            "op": "create_file",
            "path": str(tmp_path / "out/top/sub/b.bin"),
            "bytes": 10240,
            "mode": 0o644,
        }
    ]
    run_step("untar", params, str(tmp_path))
    assert (tmp_path / "out" / "top" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 40


def test_rewritten_file_also_relinks_its_hard_link(tmp_path):
    sample(tmp_path / "x.tar")
    params = {"source": "x.tar", "to": "out"}
    run_step("untar", params, str(tmp_path))
    a = tmp_path / "out" / "top" / "a.txt"
    a.unlink()
    a.write_text("other!")  # same size, other mtime and inode
    paths = [e.path for e in plan_step("untar", params, str(tmp_path)).effects]
    assert paths == [str(a), str(tmp_path / "out" / "top" / "hard")]
    run_step("untar", params, str(tmp_path))
    assert (tmp_path / "out" / "top" / "hard").stat().st_ino == a.stat().st_ino


def test_dry_run_writes_nothing_and_chains(tmp_path):
    sample(tmp_path / "x.tar.xz", "w:xz")
    before = stat_snapshot(str(tmp_path))
    view = WorldView()
    plan = plan_step("untar", {"source": "x.tar.xz", "to": "out"}, str(tmp_path), view=view)
    assert stat_snapshot(str(tmp_path)) == before
    for e in plan.effects:
        view.record(e)
    later = plan_step("tar", {"source": "out/top", "to": "again.tar"}, str(tmp_path), view=view)
    assert (
        later.outputs["members"] == 8
    )  # top, a.txt, sub, sub/b.bin, long dir, its file, link, hard
    _, result = run_step("untar", {"source": "x.tar.xz", "to": "out"}, str(tmp_path))
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


# ---- hostile archives -----------------------------------------------------------------


def hostile_tars(outside: str) -> dict[str, list]:
    sym = tarfile.SYMTYPE
    return {
        "absolute": [("ok.txt", b"fine"), (outside + "/abs.txt", b"pwned")],
        "dotdot": [("ok.txt", b"fine"), ("sub/../../outside/escape.txt", b"pwned")],
        "symlink-then-file": [
            ("evil", b"", {"type": sym, "linkname": outside}),
            ("evil/pwned.txt", b"pwned"),
        ],
        "symlink-to-etc": [("etc", b"", {"type": sym, "linkname": "/etc"})],
        "relative-symlink-out": [("d/up", b"", {"type": sym, "linkname": "../../outside"})],
        "symlink-chain-out": [
            ("l1", b"", {"type": sym, "linkname": "."}),
            ("l2", b"", {"type": sym, "linkname": "l1/../outside"}),
        ],
        "symlink-out-via-later-link": [
            ("l2", b"", {"type": sym, "linkname": "later/../outside"}),
            ("later", b"", {"type": sym, "linkname": "."}),
        ],
        "hardlink-out": [("h", b"", {"type": tarfile.LNKTYPE, "linkname": "../outside/secret"})],
        "hardlink-absolute": [
            ("h", b"", {"type": tarfile.LNKTYPE, "linkname": outside + "/secret"})
        ],
        "hardlink-to-symlink": [
            ("s", b"", {"type": sym, "linkname": "x"}),
            ("h", b"", {"type": tarfile.LNKTYPE, "linkname": "s"}),
        ],
        "device": [
            ("ok.txt", b"fine"),
            ("null", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        ],
        "fifo": [("fifo", b"", {"type": tarfile.FIFOTYPE})],
        "duplicate": [("a", b"", {"type": sym, "linkname": "b"}), ("a", b"file")],
    }


CASES = list(hostile_tars("/x"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("compression", ["", "gz"])
def test_hostile_tar_is_refused_before_writing(tmp_path, case, compression):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    members = hostile_tars(str(outside))[case]
    make_tar(tmp_path / "evil.tar", members, mode=f"w:{compression}" if compression else "w")
    before = stat_snapshot(str(tmp_path))
    with pytest.raises(StepError, match="refusing") as info:
        run_step("untar", {"source": "evil.tar", "to": "target"}, str(tmp_path))
    assert info.value.path is not None
    assert (
        stat_snapshot(str(tmp_path)) == before
    )  # nothing outside, and "target" was not even created
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/tmp/evil-zip-abs.txt"])
def test_zip_slip_is_refused(tmp_path, name):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("fine.txt", "fine")
        zf.writestr(name, "pwned")
    before = stat_snapshot(str(tmp_path))
    with pytest.raises(StepError, match="refusing") as info:
        run_step("untar", {"source": "evil.zip", "to": "target"}, str(tmp_path))
    assert info.value.path == name
    assert stat_snapshot(str(tmp_path)) == before
    assert not os.path.exists("/tmp/evil-zip-abs.txt")


def test_existing_symlink_in_target_is_not_written_through(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "target" / "data")
    make_tar(tmp_path / "x.tar", [("data/f.txt", b"pwned")])
    with pytest.raises(StepError, match="through the symlink data"):
        run_step("untar", {"source": "x.tar", "to": "target"}, str(tmp_path))
    assert os.listdir(tmp_path / "outside") == []


def test_symlink_replaced_after_planning_is_caught(tmp_path):
    make_tar(tmp_path / "x.tar", [("d", b"", {"type": tarfile.DIRTYPE}), ("d/f.txt", b"data")])
    (tmp_path / "outside").mkdir()
    (tmp_path / "target" / "d").mkdir(parents=True)
    untar = load_step("untar")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = untar.plan({"source": "x.tar", "to": "target"}, ctx)
    os.rmdir(tmp_path / "target" / "d")
    os.symlink(tmp_path / "outside", tmp_path / "target" / "d")
    with pytest.raises(StepError, match="no longer a directory"):
        untar.apply(plan, ctx)
    assert os.listdir(tmp_path / "outside") == []


def test_symlinks_inside_the_target_are_allowed(tmp_path):
    make_tar(
        tmp_path / "x.tar",
        [
            ("a/b/f.txt", b"x"),
            ("a/up", b"", {"type": tarfile.SYMTYPE, "linkname": "../a/b/f.txt"}),
            (
                "a/abs",
                b"",
                {"type": tarfile.SYMTYPE, "linkname": str(tmp_path / "target" / "a" / "b")},
            ),
            ("a/dot", b"", {"type": tarfile.SYMTYPE, "linkname": "."}),
        ],
    )
    run_step("untar", {"source": "x.tar", "to": "target"}, str(tmp_path))
    assert (tmp_path / "target" / "a" / "up").read_text() == "x"


# ---- errors -------------------------------------------------------------------------


def test_errors_leave_nothing_behind(tmp_path):
    work = str(tmp_path)
    with pytest.raises(StepError, match="does not exist"):
        run_step("untar", {"source": "nope.tar", "to": "t"}, work)
    (tmp_path / "junk.tar").write_bytes(b"this is not an archive" * 50)
    with pytest.raises(StepError, match="not a valid tar or zip archive"):
        run_step("untar", {"source": "junk.tar", "to": "t"}, work)
    sample(tmp_path / "x.tar.gz", "w:gz")
    with pytest.raises(StepError, match="not a zip file"):
        run_step("untar", {"source": "x.tar.gz", "to": "t", "format": "zip"}, work)
    (tmp_path / "file").write_text("f")
    with pytest.raises(StepError, match="not a directory"):
        run_step("untar", {"source": "x.tar.gz", "to": "file"}, work)
    (tmp_path / "t" / "top" / "a.txt").mkdir(parents=True)
    with pytest.raises(StepError, match="is a directory"):
        run_step("untar", {"source": "x.tar.gz", "to": "t"}, work)
    assert sorted(os.listdir(tmp_path / "t" / "top")) == ["a.txt"]

    data = (tmp_path / "x.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(StepError, match="cut.tar.gz"):
        run_step("untar", {"source": "cut.tar.gz", "to": "c"}, work)
    assert not (tmp_path / "c").exists()


def test_archive_changed_after_planning(tmp_path):
    sample(tmp_path / "x.tar")
    untar = load_step("untar")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path))
    plan = untar.plan({"source": "x.tar", "to": "out"}, ctx)
    with open(tmp_path / "x.tar", "ab") as f:
        f.write(bytes(512))
    with pytest.raises(StepError, match="changed since"):
        untar.apply(plan, ctx)
    assert not (tmp_path / "out").exists()


def test_reader_agrees_with_tarfile(tmp_path):
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        sample(tmp_path / "x.tar", "w", fmt)
        with open(tmp_path / "x.tar", "rb") as f:
            reader = tarread.TarReader(f, seekable=True)
            ours = []
            while (h := reader.next()) is not None:
                ours.append(
                    (h.name.rstrip("/"), h.type, h.size, h.mode, int(h.mtime), h.linkname, h.offset)
                )
        with tarfile.open(tmp_path / "x.tar") as tf:
            theirs = [
                (m.name, m.type, m.size, m.mode, int(m.mtime), m.linkname, m.offset_data)
                for m in tf
            ]
        assert ours == theirs
