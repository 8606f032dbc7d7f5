"""Bench cases of issue 15: one big file, and the resume of a killed copy.

The big file (2 GiB by default; ``--big-file 20GiB`` for the issue's full size)
is generated once from a seeded generator and cached under ``$BENCH_CACHE``
(default ``~/.cache/wsrun-bench``), since writing 20 GB of random bytes takes
longer than the runs that read it. Free space is checked first: when the disk
cannot hold the file and one copy of it (plus a margin), the size is scaled
down and a note says so. moto's server keeps uploaded objects in memory and
copies a whole object to complete a multipart upload, so the S3 case sends at
most 512 MiB (``$BENCH_S3_MAX``) and a quarter of the available memory (noted).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from run import Bench, Case, Outcome

MiB = 1 << 20
GiB = 1 << 30
#: Left free on the disk beyond the file and one copy of it (the machine is shared).
MARGIN = 2 * GiB
DEFAULT_SIZE = 2 * GiB
#: The issue's size, taken by the big20-* cases when the disk has FULL_FREE free
#: (the file, one copy of it, and room for the other users of a shared machine).
FULL_SIZE = 20 * GiB
FULL_FREE = 50 * 10**9
SEED = 20261207


def parse_size(text: str) -> int:
    """``20GiB``, ``512MiB``, ``2G`` or a number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * (1 << (10 * power)))


def cache_dir() -> str:
    return os.environ.get("BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "wsrun-bench"
    )


def fitting_size(wanted: int, cache: str, out: str, log: Callable[[str], None]) -> int:
    """``wanted``, or less if the disks cannot hold the file and a copy (with a
    margin); a cached file of that size already counts as held."""
    os.makedirs(cache, exist_ok=True)
    cached = os.path.exists(big_path(cache, wanted))
    free_cache = shutil.disk_usage(cache).free
    free_out = shutil.disk_usage(out).free
    same_disk = os.stat(cache).st_dev == os.stat(out).st_dev
    if same_disk:
        room = (free_cache - MARGIN) // (1 if cached else 2)
    else:
        room = min(free_out - MARGIN, free_cache - MARGIN if not cached else wanted)
    if room >= wanted:
        return wanted
    size = max(64 * MiB, room // GiB * GiB if room >= GiB else room // MiB * MiB)
    log(
        f"  note: {wanted / GiB:.1f} GiB wanted, but the disk has {free_cache / GiB:.1f} GiB free "
        f"(need the file, a copy and {MARGIN / GiB:.0f} GiB margin): scaled down to "
        f"{size / GiB:.2f} GiB"
    )
    return size


def big_path(cache: str, size: int) -> str:
    return os.path.join(cache, f"big-{size}", "big.dat")


def full_size(b: Bench) -> int:
    """The big20-* cases' file size: FULL_SIZE (scaled) when it is cached or the
    disk has FULL_FREE (scaled) free, else what 40 % of the free space holds
    (the file and a copy, with a fifth left to others), with a note. Free space
    is always reported."""
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    wanted = max(MiB, int(FULL_SIZE * b.scale))
    free = shutil.disk_usage(cache).free
    if os.path.exists(big_path(cache, wanted)):
        b.log(f"  disk: {free / 1e9:.0f} GB free; the {wanted / GiB:.2f} GiB file is cached")
        return wanted
    if free >= FULL_FREE * b.scale:
        b.log(
            f"  disk: {free / 1e9:.0f} GB free (>= {FULL_FREE * b.scale / 1e9:.0f} GB): "
            f"{wanted / GiB:.2f} GiB file"
        )
        return wanted
    room = int(free * 0.4)
    size = max(64 * MiB, room // GiB * GiB if room >= GiB else room // MiB * MiB)
    b.log(
        f"  note: disk has {free / 1e9:.0f} GB free, under the {FULL_FREE * b.scale / 1e9:.0f} GB "
        f"a {wanted / GiB:.2f} GiB file and its copy need on a shared machine: scaled down "
        f"to {size / GiB:.2f} GiB"
    )
    return size


def full_size_case(run: Callable[[Bench, Case], Outcome]) -> Callable[[Bench, Case], Outcome]:
    """``run`` (a big-* case) with the issue's full-size file (see full_size)."""

    def case(b: Bench, c: Case) -> Outcome:
        saved, scale = b.big_file_size, b.scale
        b.big_file_size, b.scale = full_size(b), 1.0
        try:
            return run(b, c)
        finally:
            b.big_file_size, b.scale = saved, scale

    return case


def _random_blocks(size: int) -> Iterator[bytes]:
    """``size`` seeded random bytes in 16 MiB blocks: numpy's PCG64 when there
    (over 1 GB/s, where random.randbytes makes 50 MB/s: 20 GiB in 7 minutes)."""
    try:
        import numpy

        gen = numpy.random.Generator(numpy.random.PCG64(SEED))
        make: Callable[[int], bytes] = gen.bytes
    except ImportError:
        make = random.Random(SEED).randbytes
    left = size
    while left:
        n = min(left, 16 * MiB)
        yield make(n)
        left -= n


def big_file(b: Bench) -> str:
    """The directory holding the one big file, generated once and cached."""
    wanted = int(getattr(b, "big_file_size", DEFAULT_SIZE) * b.scale)
    size = fitting_size(wanted, cache_dir(), b.out if os.path.isdir(b.out) else b.root, b.log)
    path = big_path(cache_dir(), size)
    if os.path.exists(path) and os.path.getsize(path) == size:
        b.log(f"  big file: {size / GiB:.2f} GiB, cached at {path}")
        return os.path.dirname(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    started = time.perf_counter()
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        for block in _random_blocks(size):
            f.write(block)
    os.replace(tmp, path)
    b.log(
        f"  big file: {size / GiB:.2f} GiB generated in {time.perf_counter() - started:.0f}s, "
        f"cached at {path}"
    )
    return os.path.dirname(path)


def read_through(path: str) -> None:
    """Read the file once (page cache hot, as the other cases do), if it fits in memory."""
    size = os.path.getsize(path)
    avail = _available_memory()
    if avail is not None and size > avail // 2:
        return  # would only evict itself: every run reads from the disk
    with open(path, "rb") as f:
        while f.read(64 * MiB):
            pass


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _note(
    size: int, w: float, base: float, baseline: str, cpu: dict[str, float] | None = None
) -> str:
    text = (
        f"one file of {size / GiB:.2f} GiB; wsrun {size / MiB / w:.0f} MiB/s, "
        f"{baseline} {size / MiB / base:.0f} MiB/s"
    )
    if cpu and cpu.get("baseline"):
        # what a busy machine disturbs less than the clock
        text += (
            f"; CPU seconds (least of the runs): wsrun {cpu['wsrun']:.2f}, baseline "
            f"{cpu['baseline']:.2f} ({cpu['wsrun'] / cpu['baseline']:.2f})"
        )
    return text


def big_copy_case(b: Bench, case: Case) -> Outcome:
    from run import COPY_RECIPE, same_tree, scored

    source = big_file(b)
    big = os.path.join(source, "big.dat")
    read_through(big)
    dest = os.path.join(b.out, "dest")
    b.cpu = {}
    wsrun = b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "-q")
    baseline = ["sh", "-c", 'cp -a "$1" "$2"/ && sha256sum "$2"/*/big.dat >/dev/null', "sh"]
    baseline += [source, dest]
    w, base = b.best_pair(
        wsrun,
        baseline,
        [dest],
        prepare=lambda: os.makedirs(dest),
        check=same_tree(source, os.path.join(dest, os.path.basename(source))),
    )
    size = os.path.getsize(big)
    return scored(case, w, base, w / base, _note(size, w, base, "cp -a + sha256sum", b.cpu))


def big_tar_case(b: Bench, case: Case) -> Outcome:
    from run import TAR_RECIPE, check_members, scored

    source = big_file(b)
    read_through(os.path.join(source, "big.dat"))
    archive = os.path.join(b.out, "wsrun.tar")
    gnu = os.path.join(b.out, "gnu.tar")
    parent, name = os.path.split(source)
    b.cpu = {}
    wsrun = b.wsrun(TAR_RECIPE, source, archive, "--compression", "none", "-q")
    baseline = ["tar", "-cf", gnu, "-C", parent, name]

    def check(which: str) -> None:
        if which == "wsrun":
            check_members(source, archive)

    w, base = b.best_pair(wsrun, baseline, [archive, gnu], check=check)
    size = os.path.getsize(os.path.join(source, "big.dat"))
    return scored(case, w, base, w / base, _note(size, w, base, "tar -cf", b.cpu))


def big_s3_case(b: Bench, case: Case) -> Outcome:
    """s3-upload of the big file (multipart, 8 MiB parts) against boto3's
    upload_file, both to moto's server. moto holds objects in memory: the file
    sent is cut to a quarter of the available memory when needed (noted)."""
    from run import BOTO3_UPLOAD, S3_RECIPE, CaseError, Outcome, moto_bucket, scored

    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as e:
        return Outcome(case.name, case.title, "missing", note=f"needs moto[server] and boto3: {e}")
    source = big_file(b)
    size = os.path.getsize(os.path.join(source, "big.dat"))
    avail = _available_memory() or size * 4
    cap = min(avail // 4 // GiB * GiB, parse_size(os.environ.get("BENCH_S3_MAX", "512MiB")))
    note = ""
    if size > cap:
        cut = max(64 * MiB, cap)
        note = (
            f"; sent the first {cut / GiB:.2f} GiB only: moto keeps objects in memory and "
            "copies the whole object to complete a multipart upload (over the clients' 60 s "
            "read timeout for 2 GiB on a busy 2-core machine); $BENCH_S3_MAX raises the cap"
        )
        part = os.path.join(b.out, "s3-source")
        os.makedirs(part, exist_ok=True)
        with open(os.path.join(source, "big.dat"), "rb") as r:
            with open(os.path.join(part, "big.dat"), "wb") as w:
                left = cut
                while left and (chunk := r.read(min(left, 64 * MiB))):
                    w.write(chunk)
                    left -= len(chunk)
        source, size = part, cut
    read_through(os.path.join(source, "big.dat"))
    try:
        with moto_bucket(b) as (endpoint, client):
            wsrun = b.wsrun(S3_RECIPE, source, "s3://bench/up", "--endpoint", endpoint, "-q")
            baseline = [sys.executable, "-c", BOTO3_UPLOAD, source, endpoint, "bench", "up"]
            etags: dict[str, str] = {}

            def empty() -> None:
                with_key = client.list_objects_v2(Bucket="bench").get("Contents", [])
                for o in with_key:
                    client.delete_object(Bucket="bench", Key=o["Key"])

            def check(which: str) -> None:
                head = client.head_object(Bucket="bench", Key="up/big.dat")
                if head["ContentLength"] != size:
                    raise CaseError(f"{which} stored {head['ContentLength']} bytes, want {size}")
                etags[which] = head["ETag"]
                if len(etags) == 2 and etags["wsrun"] != etags["baseline"]:
                    raise CaseError("wsrun's and boto3's objects have different ETags")

            w, base = b.best_pair(wsrun, baseline, [], prepare=empty, check=check)
            empty()
    finally:
        shutil.rmtree(os.path.join(b.out, "s3-source"), ignore_errors=True)
    text = _note(size, w, base, "boto3") + f": {base / w:.2f} x boto3's throughput" + note
    return scored(case, w, base, w / base, text)


def resume_case(b: Bench, case: Case) -> Outcome:
    """A copy of a tree (64 files of 16 MiB, scaled) SIGKILLed once about half
    of its bytes are in place, then run again: the ratio is the bytes the
    re-run writes over the bytes that were missing (1.00: nothing redone)."""
    from run import COPY_RECIPE, CaseError, scored, write_random

    source = os.path.join(b.data, "resume")
    if not os.path.isdir(source):
        os.makedirs(source)
        rng = random.Random(SEED + 1)
        for i in range(64):
            size = max(64 * 1024, int(16 * MiB * b.scale))
            write_random(os.path.join(source, f"f{i:02d}.dat"), size, rng)
    total = sum(os.path.getsize(os.path.join(source, n)) for n in os.listdir(source))
    dest = os.path.join(b.out, "resume")
    copied = os.path.join(dest, "resume")
    cmd = b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "-q")
    b.fresh(dest)
    os.makedirs(dest)
    full = b.timed(cmd, "full copy")
    b.fresh(dest)
    os.makedirs(dest)
    proc = subprocess.Popen(cmd, env=b.env, cwd=b.root, stdout=subprocess.DEVNULL)
    while proc.poll() is None and _in_place(copied) < total // 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    present = _in_place(copied)
    how = "killed"
    if present >= total:  # tiny data (a smoke test): as if killed half-way
        for name in sorted(os.listdir(copied))[len(os.listdir(copied)) // 2 :]:
            os.remove(os.path.join(copied, name))
        present, how = _in_place(copied), "finished before the kill; half removed,"
    rerun = b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "--json")
    started = time.perf_counter()
    done = subprocess.run(rerun, env=b.env, cwd=b.root, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise CaseError(f"the re-run failed: {done.stderr.strip()[-300:]}")
    effects = [e for s in json.loads(done.stdout)["steps"] for e in s.get("effects", [])]
    written = sum(e.get("bytes") or 0 for e in effects if e["op"] == "create_file")
    b.fresh(dest)
    missing = total - present
    ratio = written / missing
    note = (
        f"{how} with {present / total:.0%} of {total / MiB:.0f} MiB in place; the re-run wrote "
        f"{written / total:.0%} ({ratio:.2f} x what was missing) in {seconds:.2f} s, "
        f"{seconds / full:.2f} x a full run ({full:.2f} s)"
    )
    return scored(case, seconds, full, ratio, note)


def _in_place(root: str) -> int:
    """Bytes of the files at their final names below ``root`` (temps not counted)."""
    total = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        if not name.endswith(".wsrun-tmp"):
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
