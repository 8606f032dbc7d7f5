"""Tests of the ``tar`` step and the archive writer."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import shutil
import stat
import subprocess
import tarfile
from types import SimpleNamespace

import pytest

from conftest import stat_snapshot
from wsrun.core import fileio
from wsrun.core.effects import create_file
from wsrun.core.fs import WorldView
from wsrun.core.step import StepError
from wsrun.formats import tarball
from wsrun.testing import effect_dicts, plan_step, run_step

COMPRESSIONS = ["none", "gz", "bz2", "xz", "zst"]
LONG_DIR = "d" * 70 + "/" + "e" * 70
LONG_LINK = "./" * 50 + "../a.txt"  # longer than a header field holds
MTIME = 1_700_000_000


def make_tree(root: str) -> None:
    """Files of several sizes (empty, small, above DIRECT_MIN), nested and long
    names, a symlink with a long target, odd modes and fixed mtimes."""
    os.makedirs(os.path.join(root, "sub", LONG_DIR))
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/block.bin": bytes(range(256)) * 2,  # exactly 512 bytes
        "sub/big.bin": os.urandom(tarball.DIRECT_MIN + 1234),
        f"sub/{LONG_DIR}/file-with-a-long-name.txt": b"deep\n",
        "sub/text.log": b"line of text\n" * 5000,
    }
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "a.txt"), 0o640)
    os.chmod(os.path.join(root, "sub/text.log"), 0o755)
    os.symlink("../a.txt", os.path.join(root, "sub/link"))
    os.symlink(LONG_LINK, os.path.join(root, "sub/long-link"))
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (MTIME, MTIME), follow_symlinks=False)
    os.utime(root, (MTIME, MTIME))


def tree(root: str) -> dict[str, tuple]:
    """Every entry below ``root``: kind, mode, mtime (s), content digest or link target."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, root)] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[os.path.relpath(p, root)] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[os.path.relpath(p, root)] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    int(st.st_mtime),
                    digest,
                )
    return out


@pytest.fixture
def work(tmp_path):
    make_tree(str(tmp_path / "src"))
    return str(tmp_path)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip(work, compression):
    to = f"out/x.{compression}"
    plan, result = run_step("tar", {"source": "src", "to": to, "compression": compression}, work)
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)
    path = os.path.join(work, to)
    assert result.outputs["archive"] == path
    assert result.outputs["bytes"] == os.path.getsize(path)
    assert result.outputs["members"] == 12
    if compression == "none":
        assert plan.effects[-1].bytes == os.path.getsize(path)
    run_step("untar", {"source": to, "to": "back"}, work)
    assert tree(os.path.join(work, "back", "src")) == tree(os.path.join(work, "src"))
    assert os.listdir(os.path.join(work, "out")) == [f"x.{compression}"]  # no temporary file left


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_gnu_tools_read_the_archive(work, compression, tmp_path):
    tool = {"none": None, "gz": "gzip", "bz2": "bzip2", "xz": "xz", "zst": "zstd"}[compression]
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    ext = {"none": "tar", "gz": "tar.gz", "bz2": "tar.bz2", "xz": "tar.xz", "zst": "tar.zst"}[
        compression
    ]
    run_step("tar", {"source": "src", "to": f"x.{ext}"}, work)
    path = os.path.join(work, f"x.{ext}")
    if tool:
        subprocess.run([tool, "-t", path], check=True, capture_output=True)
    listing = subprocess.run(
        ["tar", "-tf", path], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    assert f"src/sub/{LONG_DIR}/file-with-a-long-name.txt" in listing
    assert listing[0] == "src/"
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "-xf", path, "-C", str(dest)], check=True, capture_output=True)
    assert tree(str(dest / "src")) == tree(os.path.join(work, "src"))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_python_tarfile_reads_the_archive(work, compression):
    run_step("tar", {"source": "src", "to": "x", "compression": compression}, work)
    if compression == "zst":
        import zstandard

        with open(os.path.join(work, "x"), "rb") as f:
            data = zstandard.ZstdDecompressor().stream_reader(f).read()
        tf = tarfile.open(fileobj=io.BytesIO(data))
    else:
        tf = tarfile.open(os.path.join(work, "x"))
    with tf:
        members = {m.name: m for m in tf.getmembers()}
        assert members["src/sub/long-link"].linkname == LONG_LINK
        assert members["src/a.txt"].mode == 0o640
        assert members["src/a.txt"].mtime == MTIME
        assert members["src/a.txt"].uid == os.getuid()
        assert members["src/a.txt"].uname == ""
        assert tf.extractfile(members["src/sub/text.log"]).read() == b"line of text\n" * 5000


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_byte_identical_across_runs(work, compression, monkeypatch):
    run_step("tar", {"source": "src", "to": "one", "compression": compression}, work)
    monkeypatch.setattr(tarball, "cpu_count", lambda: 1)  # the output must not depend on it
    run_step("tar", {"source": "src", "to": "two", "compression": compression}, work)
    with open(os.path.join(work, "one"), "rb") as a, open(os.path.join(work, "two"), "rb") as b:
        assert a.read() == b.read()


def test_gzip_of_many_chunks_is_one_valid_member(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = b"".join(b"%08d some repetitive text\n" % i for i in range(200_000))
    (src / "data").write_bytes(data)
    run_step("tar", {"source": "src", "to": "x.tar.gz"}, str(tmp_path))
    raw = (tmp_path / "x.tar.gz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00"
    with tarfile.open(tmp_path / "x.tar.gz") as tf:
        assert tf.extractfile("src/data").read() == (src / "data").read_bytes()
    # a single gzip member: the whole stream decompresses in one go
    import zlib

    d = zlib.decompressobj(31)
    tar_bytes = d.decompress(raw)
    assert d.eof and d.unused_data == b""
    assert len(tar_bytes) == tarball.archive_size(
        [tarball.Member("src/", "dir", ""), tarball.Member("src/data", "file", "", len(data))]
    )
    assert gzip.decompress(raw) == tar_bytes


def test_headers_match_tarfile_gnu_format():
    name = ("x" * 120).encode()
    link = ("y" * 130).encode()
    ti = tarfile.TarInfo(name.decode())
    ti.type = tarfile.SYMTYPE
    ti.linkname = link.decode()
    ti.mode, ti.uid, ti.gid, ti.mtime = 0o777, 1000, 100, MTIME
    ti.uname = ti.gname = ""
    ours = tarball.long_name(link, b"K") + tarball.long_name(name, b"L")
    ours += tarball.header(name, b"2", 0o777, 1000, 100, 0, MTIME, link)
    assert ours == ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def test_huge_numbers_use_base_256():
    block = tarball.header(b"big", b"0", 0o644, 2**22, 0, 9 * 2**30, MTIME)
    ti = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    assert (ti.size, ti.uid) == (9 * 2**30, 2**22)


def test_exact_size_prediction_with_long_names(tmp_path):
    src = tmp_path / "src"
    deep = src / ("n" * 99) / ("m" * 101)
    deep.mkdir(parents=True)
    for size in (0, 1, 511, 512, 513, 10240):
        (deep / f"f{size}").write_bytes(b"z" * size)
    os.symlink("t" * 200, src / "l")
    plan, result = run_step("tar", {"source": "src", "to": "x.tar"}, str(tmp_path))
    assert plan.effects[0].bytes == os.path.getsize(tmp_path / "x.tar") == result.outputs["bytes"]
    assert os.path.getsize(tmp_path / "x.tar") % tarball.RECORD == 0


def test_second_run_is_ok_and_changes_nothing(work):
    for compression in COMPRESSIONS:
        params = {"source": "src", "to": f"x.{compression}", "compression": compression}
        _, first = run_step("tar", params, work)
        before = stat_snapshot(work)
        plan, result = run_step("tar", params, work)
        assert plan.status == "ok" and result.status == "ok"
        assert result.effects == []
        assert result.outputs == first.outputs
        assert stat_snapshot(work) == before


@pytest.mark.parametrize("compression", ["none", "zst"])
def test_rebuilt_when_a_member_changes(work, compression):
    params = {"source": "src", "to": "x", "compression": compression}
    run_step("tar", params, work)
    path = os.path.join(work, "src", "a.txt")
    os.utime(path, (MTIME + 5, MTIME + 5))  # same size, other mtime
    assert plan_step("tar", params, work).status == "changed"
    run_step("tar", params, work)
    assert plan_step("tar", params, work).status == "ok"
    with open(os.path.join(work, "src", "new"), "w") as f:
        f.write("new")
    assert plan_step("tar", params, work).status == "changed"


def test_rebuilt_when_compression_changes(work):
    run_step("tar", {"source": "src", "to": "x", "compression": "gz"}, work)
    plan = plan_step("tar", {"source": "src", "to": "x", "compression": "xz"}, work)
    assert plan.status == "changed"


def test_dry_run_writes_nothing(work):
    before = stat_snapshot(work)
    plan = plan_step("tar", {"source": "src", "to": "new/dir/x.tar"}, work, view=WorldView())
    assert [e.op for e in plan.effects] == ["create_dir", "create_dir", "create_file"]
    assert stat_snapshot(work) == before
    _, result = run_step("tar", {"source": "src", "to": "new/dir/x.tar"}, work)
    assert effect_dicts(plan.effects) == effect_dicts(result.effects)


def test_dry_run_chain_sees_planned_files_and_feeds_untar(tmp_path):
    work = str(tmp_path)
    (tmp_path / "src").mkdir()
    view = WorldView()
    view.record(
        create_file(os.path.join(work, "src", "planned.dat"), bytes=1000, content=b"p" * 1000)
    )
    plan = plan_step("tar", {"source": "src", "to": "x.tar"}, work, view=view)
    assert plan.outputs["members"] == 2
    assert (
        plan.effects[-1].bytes == 512 + 512 + 1024 + 1024 + 7168
    )  # headers, data, end, record padding
    for e in plan.effects:
        view.record(e)
    later = plan_step("untar", {"source": "x.tar", "to": "out"}, work, view=view)
    assert [e.op for e in later.effects] == ["create_dir"]  # members are known only in a real run
    assert os.listdir(work) == ["src"]


def test_single_file_base_arcname_and_exclude(work):
    run_step("tar", {"source": "src/a.txt", "to": "one.tar"}, work)
    assert tarfile.open(os.path.join(work, "one.tar")).getnames() == ["a.txt"]

    run_step(
        "tar",
        {
            "source": ["src/a.txt", "src/sub"],
            "base": "src",
            "to": "two.tar",
            "exclude": ["*.bin", "d*"],
        },
        work,
    )
    names = tarfile.open(os.path.join(work, "two.tar")).getnames()
    assert names == ["a.txt", "sub", "sub/link", "sub/long-link", "sub/text.log"]

    run_step("tar", {"source": "src", "base": "src", "to": "three.tar"}, work)
    assert tarfile.open(os.path.join(work, "three.tar")).getnames()[:2] == ["a.txt", "empty"]

    run_step("tar", {"source": "src/sub", "arcname": "release-1/data", "to": "four.tar"}, work)
    assert tarfile.open(os.path.join(work, "four.tar")).getnames()[0] == "release-1/data"


def test_members_sorted_depth_first(tmp_path):
    for rel in ["b/x", "a-b", "a/z", "a/y/q"]:
        p = tmp_path / "s" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(rel)
    run_step("tar", {"source": "s", "to": "x.tar"}, str(tmp_path))
    names = tarfile.open(tmp_path / "x.tar").getnames()
    assert names == ["s", "s/a", "s/a/y", "s/a/y/q", "s/a/z", "s/a-b", "s/b", "s/b/x"]


def test_archive_inside_its_source_and_stray_temps_are_left_out(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "f").write_text("f")
    (tmp_path / "s" / fileio.temp_path("old")).write_text("leftover")  # a killed run's
    run_step("tar", {"source": "s", "to": "s/self.tar"}, str(tmp_path))
    assert tarfile.open(tmp_path / "s" / "self.tar").getnames() == ["s", "s/f"]


def test_errors(work):
    with pytest.raises(StepError, match="source does not exist"):
        run_step("tar", {"source": "nope", "to": "x.tar"}, work)
    with pytest.raises(StepError, match="is a directory"):
        run_step("tar", {"source": "src", "to": "src"}, work)
    with pytest.raises(StepError, match="out of range"):
        run_step("tar", {"source": "src", "to": "x.tar.gz", "level": 12}, work)
    with pytest.raises(StepError, match="single source"):
        run_step("tar", {"source": ["src", "src/sub"], "arcname": "a", "to": "x.tar"}, work)
    with pytest.raises(StepError, match="same name"):
        run_step(
            "tar", {"source": ["src/sub/link", "src/sub"], "base": "src/sub", "to": "x.tar"}, work
        )
    with pytest.raises(StepError, match="not below base"):
        run_step("tar", {"source": "src", "base": "src/sub", "to": "x.tar"}, work)
    assert sorted(os.listdir(work)) == ["src"]


def test_file_changed_after_planning_leaves_nothing(work):
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=work)
    plan = tar.plan({"source": "src", "to": "x.tar.gz"}, ctx)
    with open(os.path.join(work, "src", "sub", "text.log"), "ab") as f:
        f.write(b"more")
    with pytest.raises(StepError, match="changed while the step ran") as info:
        tar.apply(plan, ctx)
    assert info.value.path == os.path.join(work, "src", "sub", "text.log")
    assert sorted(os.listdir(work)) == ["src"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failed_apply_closes_every_file(work):
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=work)
    plan = tar.plan({"source": "src", "to": "x.tar"}, ctx)
    os.truncate(os.path.join(work, "src", "sub", "text.log"), 10)
    before = open_fds()
    with pytest.raises(StepError, match="changed while the step ran"):
        tar.apply(plan, ctx)
    assert open_fds() == before
    assert sorted(os.listdir(work)) == ["src"]


def test_copy_stops_at_a_short_file(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 1000)
    src = os.open(tmp_path / "f", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o644)
    with pytest.raises(EOFError):
        tarball.copy_range(src, out, 2000)  # more than the file holds: it shrank
    os.close(src)
    os.close(out)


def test_without_copy_file_range(work, monkeypatch):
    run_step("tar", {"source": "src", "to": "kernel.tar"}, work)

    def unsupported(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    run_step("tar", {"source": "src", "to": "plain.tar"}, work)
    with (
        open(os.path.join(work, "kernel.tar"), "rb") as a,
        open(os.path.join(work, "plain.tar"), "rb") as b,
    ):
        assert a.read() == b.read()
    run_step("untar", {"source": "plain.tar", "to": "back"}, work)
    assert tree(os.path.join(work, "back", "src")) == tree(os.path.join(work, "src"))


def test_fifo_is_left_out_with_a_message(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "f").write_text("f")
    os.mkfifo(tmp_path / "s" / "pipe")
    messages: list[str] = []
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=str(tmp_path), log=messages.append)
    tar.apply(tar.plan({"source": "s", "to": "x.tar"}, ctx), ctx)
    assert tarfile.open(tmp_path / "x.tar").getnames() == ["s", "s/f"]
    assert messages == [
        f"{tmp_path}/s/pipe: not a file, directory or symlink; left out of the archive"
    ]


# ---- uncompressed archives written by several processes ----------------------


@pytest.fixture
def forked(monkeypatch):
    """Split every uncompressed archive among three processes; the list the
    fixture returns collects the pids forked."""
    pids: list[int] = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(tarball, "PARALLEL_MIN", 1)
    monkeypatch.setattr(tarball, "cpu_count", lambda: 3)
    return pids


def all_reaped(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        return False
    return True


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_several_writers_give_the_same_bytes(work, monkeypatch, forked, workers):
    for i in range(40):  # enough members for every split to fall somewhere else
        with open(os.path.join(work, "src", f"f{i:02d}"), "wb") as f:
            f.write(bytes([i]) * (i * 999))
    monkeypatch.setattr(tarball, "cpu_count", lambda: 1)
    plan, _ = run_step("tar", {"source": "src", "to": "one.tar"}, work)
    assert forked == []
    monkeypatch.setattr(tarball, "cpu_count", lambda: workers)
    _, result = run_step("tar", {"source": "src", "to": "many.tar"}, work)
    assert len(forked) == workers - 1
    assert all_reaped(forked)
    with (
        open(os.path.join(work, "one.tar"), "rb") as a,
        open(os.path.join(work, "many.tar"), "rb") as b,
    ):
        assert a.read() == b.read()
    assert result.outputs["bytes"] == plan.effects[-1].bytes
    assert sorted(os.listdir(work)) == ["many.tar", "one.tar", "src"]


def test_shares_cover_the_members_in_order(monkeypatch):
    members = [tarball.Member("d/", "dir", "")]
    members += [tarball.Member(f"d/{i}", "file", "", i * 10_000) for i in range(50)]
    members.append(tarball.Member("d/" + "l" * 200, "file", "", 5))  # with a long-name record
    size = tarball.archive_size(members)
    monkeypatch.setattr(tarball, "PARALLEL_MIN", 1)
    for n in (1, 2, 3, 4):
        monkeypatch.setattr(tarball, "cpu_count", lambda n=n: n)
        shares = tarball._shares(members, size)
        assert len(shares) == n
        assert shares[0][:2] == (0, shares[1][0] if n > 1 else len(members))
        assert shares[-1][1] == len(members)
        for (_, end, _), (first, _, offset) in itertools.pairwise(shares):
            assert end == first
            assert offset == sum(map(tarball._span, members[:first]))
    monkeypatch.setattr(tarball, "PARALLEL_MIN", size)  # too little work to share
    monkeypatch.setattr(tarball, "cpu_count", lambda: 4)
    assert tarball._shares(members, size) == [(0, len(members), 0)]


def test_progress_of_several_writers_adds_up(work, forked, tmp_path):
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=work)
    plan = tar.plan({"source": "src", "to": "x.tar"}, ctx)
    files = [m for m in plan.data.members if m[1] == "file"]
    seen = [0, 0]

    def progress(n, count):
        seen[0] += n
        seen[1] += count

    fd = os.open(tmp_path / "direct.tar", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        tarball.write_tar(fd, plan.data.members, progress=progress)
    finally:
        os.close(fd)
    assert forked and all_reaped(forked)
    assert seen == [sum(m[3] for m in files), len(files)]
    assert os.path.getsize(tmp_path / "direct.tar") == plan.data.tar_size


def test_file_changed_in_another_process_share_leaves_nothing(work, forked):
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=work)
    plan = tar.plan({"source": "src", "to": "x.tar"}, ctx)
    shares = tarball._shares(plan.data.members, plan.data.tar_size)
    assert plan.data.members[-1][0] == "src/sub/text.log" and len(shares) == 3
    os.truncate(os.path.join(work, "src", "sub", "text.log"), 10)  # in a forked share
    before = open_fds()
    with pytest.raises(StepError, match="changed while the step ran") as info:
        tar.apply(plan, ctx)
    assert info.value.path == os.path.join(work, "src", "sub", "text.log")
    assert forked and all_reaped(forked)
    assert open_fds() == before
    assert sorted(os.listdir(work)) == ["src"]


def test_unreadable_file_in_another_process_share(work, forked, monkeypatch):
    bad = os.path.join(work, "src", "sub", "text.log")
    real_open = os.open

    def deny(path, *args, **kwargs):
        if path == bad:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(PermissionError) as info:
        run_step("tar", {"source": "src", "to": "x.tar"}, work)
    assert info.value.filename == bad
    assert forked and all_reaped(forked)
    assert sorted(os.listdir(work)) == ["src"]


def test_killed_writer_process_fails_the_step(work, forked, monkeypatch):
    import signal

    parent = os.getpid()
    real_open = os.open

    def opener(path, *args, **kwargs):
        if os.getpid() != parent and str(path).endswith("text.log"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", opener)  # the writer opens each file it archives
    with pytest.raises(StepError, match="a process writing the archive failed .killed by signal 9"):
        run_step("tar", {"source": "src", "to": "x.tar"}, work)
    assert forked and all_reaped(forked)
    assert sorted(os.listdir(work)) == ["src"]


def test_timeout_stops_the_other_processes(work, forked):
    import time

    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    ctx = StepContext(fs=WorldView(), workdir=work)
    plan = tar.plan({"source": "src", "to": "x.tar"}, ctx)
    ctx.deadline = time.monotonic() - 1
    with pytest.raises(StepError, match="timed out"):
        tar.apply(plan, ctx)
    assert forked and all_reaped(forked)
    assert sorted(os.listdir(work)) == ["src"]


# ---- planning straight from the disk ---------------------------------------------


def test_disk_walk_plans_what_the_view_plans(work):
    os.mkfifo(os.path.join(work, "src", "pipe"))
    os.makedirs(os.path.join(work, "src", "skip", "deep"))
    os.symlink("src/a.txt", os.path.join(work, "extra"))
    messages_disk: list[str] = []
    messages_view: list[str] = []
    from wsrun.core.step import StepContext, load_step

    tar = load_step("tar")
    params = {"source": ["src", "extra"], "base": work, "to": "x.tar", "exclude": ["skip"]}
    disk = StepContext(fs=WorldView(), workdir=work, log=messages_disk.append)
    view = WorldView()
    view.record(create_file(os.path.join(work, "elsewhere"), bytes=1))  # makes the view virtual
    assert view.virtual
    virtual = StepContext(fs=view, workdir=work, log=messages_view.append, dry_run=True)
    a = tar.plan(params, disk)
    b = tar.plan(params, virtual)
    assert a.data.members == b.data.members
    assert effect_dicts(a.effects) == effect_dicts(b.effects)
    assert (
        messages_disk
        == messages_view
        == [f"{work}/src/pipe: not a file, directory or symlink; left out of the archive"]
    )
    assert not any("skip" in m[0] for m in a.data.members)


def test_member_headers_match_the_general_form(tmp_path):
    """The writer builds the usual header inline; every member it writes
    must be what the general form (``_member_header``) gives for the file's
    stat, for short and long, ASCII and non-ASCII names, each kind, and
    mtimes that do and do not fit in octal."""

    class Sink:
        direct, chunk = False, 1 << 20

        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, view: memoryview) -> None:
            self.data += view

    members, expected = [], b""
    for i, (name, kind, mtime) in enumerate(
        [
            ("a.txt", "file", MTIME),
            ("x" * 100, "file", MTIME),
            ("x" * 101, "file", MTIME),
            ("é" * 60, "file", MTIME),  # 60 characters, 120 bytes
            ("old", "file", -(10**9) - 1),
            ("far", "file", 8**11 + 5),  # beyond octal's 11 digits
            ("dir/", "dir", MTIME),
            ("d" * 120 + "/", "dir", MTIME),
            ("olddir/", "dir", -5),
            ("link", "symlink", MTIME),
            ("longlink", "symlink", MTIME),
        ]
    ):
        path = tmp_path / f"m{i}"
        if kind == "file":
            path.write_bytes(b"z" * (i * 7))
        elif kind == "dir":
            path.mkdir()
        else:
            os.symlink("t" * (i * 20), path)
        os.utime(path, ns=(0, mtime * 10**9), follow_symlinks=False)
        st = os.lstat(path)
        size = st.st_size if kind == "file" else 0
        link = os.readlink(path) if kind == "symlink" else ""
        m = tarball.Member(name, kind, str(path), size, 0, mtime, link)
        members.append(m)
        expected += tarball._member_header(m, st) + b"z" * size + bytes(-size % 512)
    sink = Sink()
    w = tarball._Writer(sink)
    tarball._write_members(w, members, None)
    w.flush()
    assert bytes(sink.data) == expected
    assert len(expected) == sum(map(tarball._span, members))
    # and the general form is what tarfile writes
    info = tarfile.TarInfo("a.txt")
    info.size, info.mode, info.mtime = 0, 0o640, MTIME
    info.uid, info.gid, info.uname, info.gname = 1000, 100, "", ""
    st = SimpleNamespace(st_mode=0o100640, st_uid=1000, st_gid=100, st_mtime_ns=MTIME * 10**9)
    member = tarball.Member("a.txt", "file", "", 0)
    assert tarball._member_header(member, st) == info.tobuf(tarfile.GNU_FORMAT)


def test_size_of_non_ascii_names(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ("é" * 60)).write_bytes(b"x")  # fits 100 characters, not 100 bytes
    plan, result = run_step("tar", {"source": "s", "to": "x.tar"}, str(tmp_path))
    assert plan.effects[-1].bytes == os.path.getsize(tmp_path / "x.tar")
    assert tarfile.open(tmp_path / "x.tar").getnames() == ["s", "s/" + "é" * 60]


# ---- members: a map of names, follow_symlinks, checksum -------------------------------


def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _mapped(work: str) -> dict:
    cache = os.path.join(work, "cache")
    os.makedirs(os.path.join(cache, "eb"))
    with open(os.path.join(cache, "eb", "data.bin"), "wb") as f:
        f.write(os.urandom(tarball.DIRECT_MIN + 10))
    os.symlink(os.path.join(cache, "eb"), os.path.join(work, "src", "eb-link"))
    return {
        "members": {
            "top/": "src",
            "top/images/": "src",
            "top/images/a.txt": "src/a.txt",
            "top/eb": "src/eb-link",
            "top/block.bin": "src/sub/block.bin",
        },
        "to": "out/top.tar",
        "follow_symlinks": True,
        "checksum": "sha256",
    }


def test_members_are_stored_as_given_with_their_digests(work, monkeypatch):
    monkeypatch.setenv("WSRUN_HOME", os.path.join(work, "home"))
    params = _mapped(work)
    plan, result = run_step("tar", params, work)
    archive = os.path.join(work, "out", "top.tar")
    with tarfile.open(archive) as t:
        names = [(m.name, m.type) for m in t.getmembers()]
        data = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    assert names == [
        ("top", tarfile.DIRTYPE),
        ("top/images", tarfile.DIRTYPE),
        ("top/images/a.txt", tarfile.REGTYPE),
        ("top/eb", tarfile.DIRTYPE),  # the link followed: a directory, with its contents
        ("top/eb/data.bin", tarfile.REGTYPE),
        ("top/block.bin", tarfile.REGTYPE),
    ]
    expected = {name: hashlib.sha256(content).hexdigest() for name, content in data.items()}
    assert result.outputs["checksums"] == {**expected, archive: _sha(archive)}
    # unchanged: nothing written, the digests are the recorded ones (no file read)
    monkeypatch.setattr(
        "wsrun.steps.tar.hash_file", lambda *a, **k: pytest.fail(f"read again: {a[0]}")
    )
    plan, again = run_step("tar", params, work)
    assert plan.effects == [] and again.outputs["checksums"] == result.outputs["checksums"]


def test_an_unrecorded_or_changed_file_is_read_again(work, monkeypatch):
    monkeypatch.setenv("WSRUN_HOME", os.path.join(work, "home"))
    params = _mapped(work)
    _, first = run_step("tar", params, work)
    monkeypatch.setenv("WSRUN_HOME", os.path.join(work, "other-home"))  # another host
    dry = plan_step("tar", params, work, view=WorldView())
    assert dry.effects == [] and set(dry.outputs["checksums"].values()) == {None}
    _, again = run_step("tar", params, work)
    assert again.outputs["checksums"] == first.outputs["checksums"]


def test_members_refuse_bad_names_and_dangling_links(work):
    base = {"to": "out/x.tar", "follow_symlinks": True}
    for bad in ("/abs", "../up", "a/../../b", "/"):
        with pytest.raises(StepError, match="relative path"):
            plan_step("tar", {**base, "members": {bad: "src/a.txt"}}, work)
    for bad_path in ("", None, 3):
        with pytest.raises(StepError, match="not a path"):
            plan_step("tar", {**base, "members": {"x": bad_path}}, work)
    with pytest.raises(StepError, match="names a directory"):
        plan_step("tar", {**base, "members": {"x/": "src/a.txt"}}, work)
    os.symlink(os.path.join(work, "nowhere"), os.path.join(work, "gone"))
    with pytest.raises(StepError, match="dangling"):
        plan_step("tar", {**base, "members": {"x": "gone"}}, work)
    with pytest.raises(StepError, match="same name"):
        plan_step("tar", {**base, "members": {"a": "src/a.txt", "a/": "src"}}, work)


@pytest.mark.parametrize("compression", ["none", "gz"])
def test_the_archive_digest_made_while_writing_is_the_files(work, monkeypatch, compression):
    """With checksum the archive is hashed as it grows (wsrun.steps.tar._TrailingHash):
    its digest must be that of every byte of the finished file, also past many
    read buffers and when a compressor writes it."""
    monkeypatch.setenv("WSRUN_HOME", os.path.join(work, "home"))
    big = os.path.join(work, "src", "sub", "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(5 << 20) + bytes(7 << 20))
    to = os.path.join(work, "out", "a.tar" + (".gz" if compression == "gz" else ""))
    params = {"source": "src", "to": to, "checksum": "sha256"}
    _, result = run_step("tar", params, work)
    assert result.outputs["checksums"][to] == _sha(to)
    with tarfile.open(to) as t:
        digests = {
            m.name: hashlib.sha256(t.extractfile(m).read()).hexdigest()
            for m in t.getmembers()
            if m.isfile()
        }
    assert {k: v for k, v in result.outputs["checksums"].items() if k != to} == digests
