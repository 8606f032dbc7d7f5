#!/usr/bin/env python3
"""wsrun's benchmark suite: wsrun against the plain tools, on the same data, in one run.

Each case builds a deterministic data set under a temporary directory (random
bytes from a seeded generator), reads it once so the page cache is hot, then
times wsrun (its command line, as a subprocess, on a recipe in bench/recipes/)
and the plain tool (cp, GNU tar, sha256sum) alternately, best of N runs. Every
destination is deleted and the disk synced before each run, outside the timed
region, so every run really writes. The data is removed at the end.

    .venv/bin/python bench/run.py [--scale 1.0] [--repeat 3] [--only CASE]... [--json]

``--scale`` shrinks the data: the size of the big files and the number of small
files (at least one) and of generated steps. Exit status: 0 when every case
ran (pass or fail), 1 when a case hit an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "bench", "recipes")
MiB = 1 << 20
KiB = 1 << 10
SEED = 20240611
#: Bytes generated per call: random.randbytes cannot make more than 256 MiB at once.
GEN_CHUNK = 16 * MiB
#: A byte translation that leaves 4 bits of entropy per byte: data that
#: compresses to about half, like many instrument products.
HALF_ENTROPY = bytes(65 + (i % 16) for i in range(256))


#: How much of a failed command's error output a case keeps (its last characters).
STDERR_KEPT = 4000


class CaseError(Exception):
    """A run inside a case failed; the case is reported as an error, with
    ``stderr`` (the end of the failed command's error output, when a command
    failed) in its details and in the log, so a failure says why."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr[-STDERR_KEPT:]


@dataclass
class Outcome:
    """One row of the table."""

    case: str
    title: str
    status: str  # pass, fail, info, missing, error
    wsrun_seconds: float | None = None
    baseline_seconds: float | None = None
    ratio: float | None = None
    target: str = ""
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    name: str
    title: str
    #: ratio or seconds the case must not exceed; None for informational cases
    target: float | None
    #: step types the case needs: missing ones make the case "missing"
    steps: tuple[str, ...]
    run: Callable[[Bench, Case], Outcome]
    #: the target's unit for absolute targets ("s"); empty for ratios
    unit: str = ""


def scored(case: Case, wsrun: float, baseline: float | None, ratio: float, note: str) -> Outcome:
    """An outcome judged against the case's target; ``ratio`` is what the target bounds."""
    if case.target is None:
        status, target = "info", "info"
    else:
        # an absolute target's ratio is measured / target: it passes up to 1
        status = "pass" if ratio <= (1.0 if case.unit else case.target) else "fail"
        target = f"<= {case.target:g}" + (f" {case.unit}" if case.unit else "")
    return Outcome(case.name, case.title, status, wsrun, baseline, ratio, target, note)


# ---- data sets -----------------------------------------------------------------


def write_random(path: str, size: int, rng: random.Random, squeeze: bool = False) -> None:
    """A file of ``size`` seeded random bytes; ``squeeze`` makes it compressible."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, GEN_CHUNK)
            data = rng.randbytes(n)
            f.write(data.translate(HALF_ENTROPY) if squeeze else data)
            left -= n


class _RandomStream:
    """``size`` seeded random bytes to read, never all in memory."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.left = size
        self.rng = rng

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def write_random_tar(path: str, size: int, rng: random.Random) -> None:
    """A real tar archive (gzip-compressed for ``.tgz``) of about ``size`` bytes: one
    member of seeded random bytes (the ingest reads tar products through)."""
    member = max(0, size - 3 * tarfile.BLOCKSIZE)
    with tarfile.open(path, "w:gz" if path.endswith(".tgz") else "w") as tar:
        info = tarfile.TarInfo("data.bin")
        info.size, info.mtime = member, 1_700_000_000
        tar.addfile(info, _RandomStream(member, rng))  # type: ignore[arg-type]


def tree_dir(root: str, index: int) -> str:
    """The directory of the ``index``-th leaf in a two-level tree (10 leaves per top dir)."""
    return os.path.join(root, f"d{index // 10:03d}", f"s{index % 10}")


def build_tree(root: str, count: int, dirs: int, low: int, high: int, seed: int) -> None:
    """``count`` files of ``low``..``high`` random bytes spread over ``dirs`` directories."""
    rng = random.Random(seed)
    for d in range(dirs):
        os.makedirs(tree_dir(root, d))
    for i in range(count):
        size = rng.randint(low, high)
        with open(os.path.join(tree_dir(root, i % dirs), f"f{i:06d}.dat"), "wb") as f:
            f.write(rng.randbytes(size))


def scaled_count(count: int, scale: float, least: int = 1) -> int:
    return max(least, round(count * scale))


def scaled_size(size: int, scale: float) -> int:
    return max(1, round(size * scale))


def tree_stats(root: str) -> tuple[int, int]:
    """(regular files, bytes) under ``root``."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return files, size


def read_all(root: str) -> None:
    """Read every file once so the timed runs start with a hot page cache."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while f.read(8 * MiB):
                    pass


# ---- the harness -----------------------------------------------------------------


class Bench:
    def __init__(
        self, root: str, scale: float, repeat: int, sync: bool, log: Callable[[str], None]
    ) -> None:
        self.root = root
        self.scale = scale
        self.repeat = repeat
        self.sync = sync
        self.log = log
        self.data = os.path.join(root, "data")
        self.out = os.path.join(root, "out")
        self.cpu: dict[str, float] = {}
        self.home = os.path.join(root, "wsrun-home")
        os.makedirs(self.data)
        os.makedirs(self.home)
        self.env = dict(os.environ, WSRUN_HOME=self.home)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.join(REPO, "engine"), os.environ.get("PYTHONPATH")) if p
        )
        self.env.pop("WSRUN_PROFILE", None)
        # Byte-code caches, as an installed wsrun has: kept in the temporary
        # directory so the source tree is left alone.
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.env["PYTHONPYCACHEPREFIX"] = os.path.join(root, "pycache")
        script = os.path.join(os.path.dirname(sys.executable), "wsrun")
        self.wsrun_cmd = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "wsrun"]
        self.built: dict[str, str] = {}
        #: bytes of the big-* cases' file (--big-file)
        self.big_file_size = bigfile.DEFAULT_SIZE
        self.available: dict[str, bool] = {}
        #: outcomes so far, by case name (zst-vs-gzip reads two of them)
        self.results: dict[str, Outcome] = {}

    # -- data sets, built on first use so --only builds only what it needs --

    def dataset(self, name: str) -> str:
        if name not in self.built:
            path = os.path.join(self.data, name)
            os.makedirs(path)
            started = time.perf_counter()
            getattr(self, "build_" + name)(path)
            files, size = tree_stats(path)
            self.log(
                f"  data set {name}: {files} files, {size / MiB:.1f} MiB ({time.perf_counter() - started:.1f}s)"
            )
            self.built[name] = path
        return self.built[name]

    def build_large(self, path: str) -> None:
        """4 files of 512 MiB (scaled) of random bytes."""
        rng = random.Random(SEED)
        for i in range(4):
            write_random(
                os.path.join(path, f"large{i}.dat"), scaled_size(512 * MiB, self.scale), rng
            )

    def build_small(self, path: str) -> None:
        """20,000 files (scaled) of 1-64 KiB in 100 directories."""
        count = scaled_count(20_000, self.scale)
        build_tree(path, count, max(1, min(100, count // 200)), KiB, 64 * KiB, SEED + 1)

    def build_tiny(self, path: str) -> None:
        """100,000 files (scaled) of 0-1 KiB in 1,000 directories."""
        count = scaled_count(100_000, self.scale)
        build_tree(path, count, max(1, min(1000, count // 100)), 0, KiB, SEED + 2)

    def million(self) -> str:
        """The 1,000,000 files (scaled) of 0-1 KiB in 1,000 directories of the
        million-* cases, built once and kept in ``$WSRUN_BENCH_CACHE`` (default
        /tmp/wsrun-bench-cache; a minute per 100,000 files to build). With too
        little free disk for it and two copies, fewer files, with a note."""
        if "million" in self.built:
            return self.built["million"]
        cache = os.environ.get(
            "WSRUN_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "wsrun-bench-cache")
        )
        os.makedirs(cache, exist_ok=True)
        count = scaled_count(1_000_000, self.scale)
        path = os.path.join(cache, f"million-{count}")
        if not os.path.exists(path + ".done"):
            # about 4 KiB of disk a file (a block and its inode): the tree, the
            # copy and cp's copy; a tar of it is about 1.5 KiB a file
            free = shutil.disk_usage(cache).free + shutil.disk_usage(self.root).free
            fits = int(free * 0.8 / (4 * KiB * 3 + 1536))
            if fits < count:
                self.log(f"  NOTE: {free / 2**30:.0f} GiB free: {fits} files instead of {count}")
                count = max(1, fits)
                path = os.path.join(cache, f"million-{count}")
        if not os.path.exists(path + ".done"):
            shutil.rmtree(path, ignore_errors=True)
            started = time.perf_counter()
            build_tree(path, count, max(1, min(1000, count // 100)), 0, KiB, SEED + 2)
            Path(path + ".done").write_text(f"{count}\n")
            self.log(
                f"  data set million: {count} files built in {time.perf_counter() - started:.0f}s, cached in {path}"
            )
        self.built["million"] = path
        return path

    def build_journal(self, path: str) -> None:
        """20,000 files (scaled) of 0-256 bytes in 100 directories: the journal's
        size per file, not the copy's speed, is what the journal case measures."""
        count = scaled_count(20_000, self.scale)
        build_tree(path, count, max(1, min(100, count // 200)), 0, 256, SEED + 7)

    def build_mixed(self, path: str) -> None:
        """4 files of 64 MiB (scaled): two compressible to about half, two random."""
        rng = random.Random(SEED + 3)
        for i in range(4):
            write_random(
                os.path.join(path, f"mixed{i}.dat"),
                scaled_size(64 * MiB, self.scale),
                rng,
                squeeze=i % 2 == 0,
            )

    def build_mixed_small(self, path: str) -> None:
        """2 files of 4 MiB (scaled): one compressible, one random. bz2 and xz run at
        1-4 MiB/s on a busy machine; 8 MiB is enough to compare wsrun with GNU tar."""
        rng = random.Random(SEED + 4)
        for i in range(2):
            write_random(
                os.path.join(path, f"mixed{i}.dat"),
                scaled_size(4 * MiB, self.scale),
                rng,
                squeeze=i == 0,
            )

    def build_processing(self, path: str) -> None:
        """A 2 GiB processing directory (scaled) as deliver sees one: three 600 MiB
        images, a 50 MiB weblog and 500 small files of 1-64 KiB in products/."""
        self.build_processing_of(path, 600 * MiB)

    def build_processing_4g(self, path: str) -> None:
        """The processing directory at issue 15's size, 4.3 GB (scaled): three
        images of 1,340 MiB, the same weblog and small files."""
        self.build_processing_of(path, 1340 * MiB)

    def build_processing_of(self, path: str, image_size: int) -> None:
        """A processing directory with three images of ``image_size`` (scaled)."""
        rng = random.Random(SEED + 5)
        products = os.path.join(path, "products")
        for name in ("rawdata", "working"):
            os.makedirs(os.path.join(path, name))
        os.makedirs(products)
        for i in range(3):
            write_random(
                os.path.join(products, f"target{i}.I.pbcor.fits"),
                scaled_size(image_size, self.scale),
                rng,
            )
        write_random(os.path.join(products, "weblog.tgz"), scaled_size(50 * MiB, self.scale), rng)
        build_tree(
            os.path.join(products, "qa"), scaled_count(500, self.scale), 5, KiB, 64 * KiB, SEED + 6
        )
        with open(os.path.join(path, "metadata.json"), "w") as f:
            f.write(
                '{"workflowName": "std_calibration", "systemId": "2", "productLocator": "uid://evla/execblock/1"}\n'
            )

    def build_staging(self, path: str) -> None:
        """A 2 GiB calibration staging area (scaled): three 600 MiB calibration tars, a
        50 MiB weblog and 100 log files of 1-64 KiB."""
        rng = random.Random(SEED + 7)
        for i in range(3):
            size = scaled_size(600 * MiB, self.scale)
            write_random_tar(os.path.join(path, f"cal{i}.tar"), size, rng)
        write_random_tar(os.path.join(path, "weblog.tgz"), scaled_size(50 * MiB, self.scale), rng)
        for i in range(scaled_count(100, self.scale)):
            write_random(os.path.join(path, f"casa-{i:03d}.log"), rng.randint(KiB, 64 * KiB), rng)

    def build_staging_many(self, path: str) -> None:
        """A staging area of 1,000 (scaled) small calibration tars of 1-16 KiB."""
        rng = random.Random(SEED + 8)
        for i in range(scaled_count(1000, self.scale)):
            write_random_tar(os.path.join(path, f"p{i:05d}.tar"), rng.randint(KiB, 16 * KiB), rng)

    def build_objects(self, path: str) -> None:
        """What an archive sends to object storage: 16 files of 16 MiB (scaled; multipart
        at 8 MiB parts) and 100 small files of 4-64 KiB in 4 directories."""
        rng = random.Random(SEED + 9)
        for i in range(16):
            write_random(
                os.path.join(path, f"master{i:02d}.jp2"), scaled_size(16 * MiB, self.scale), rng
            )
        build_tree(
            os.path.join(path, "small"),
            scaled_count(100, self.scale),
            4,
            4 * KiB,
            64 * KiB,
            SEED + 10,
        )

    def build_tiffs(self, path: str) -> None:
        """20 RGB TIFFs of 20 MB (scaled): gradients, a fractal and noise, like a scan
        (pure noise would be no picture at all, and no codec's case)."""
        from PIL import Image, ImageChops

        side = max(8, round(math.sqrt(20_000_000 * self.scale / 3)))
        for i in range(20):
            gradient = Image.linear_gradient("L").resize((side, side)).rotate(i * 17)
            fractal = Image.effect_mandelbrot((side, side), (-2.0 + i * 0.01, -1.2, 0.8, 1.2), 100)
            noise = Image.effect_noise((side, side), 12 + i)
            # one picture (light) seen through three channels, as in a colour scan
            light = ImageChops.add(ImageChops.blend(gradient, fractal, 0.5), noise, scale=1.5)
            channels = (
                light,
                ImageChops.blend(light, gradient, 0.2),
                ImageChops.blend(light, noise, 0.2),
            )
            Image.merge("RGB", channels).save(os.path.join(path, f"scan{i:03d}.tif"))

    def build_tiff_one(self, path: str) -> None:
        """The first of the 20 TIFFs alone (a hard link), for the one-image case."""
        first = os.path.join(self.dataset("tiffs"), "scan000.tif")
        try:
            os.link(first, os.path.join(path, "scan000.tif"))
        except OSError:
            shutil.copyfile(first, os.path.join(path, "scan000.tif"))

    # -- running things --

    def warm_up(self) -> None:
        """Run wsrun once, untimed, so its byte-code caches exist and modules
        are in the page cache; step modules are compiled by validating the recipes."""
        recipe = noop_recipe(os.path.join(self.root, "warm-up.yaml"), 1)
        for args in (("validate", COPY_RECIPE, TAR_RECIPE), (recipe, "-q")):
            subprocess.run(self.wsrun(*args), env=self.env, capture_output=True)

    def step_available(self, name: str) -> bool:
        """Whether step type ``name`` loads in the wsrun under test."""
        if name not in self.available:
            probe = "import sys; from wsrun.core.step import load_step; load_step(sys.argv[1])"
            done = subprocess.run(
                [sys.executable, "-c", probe, name], env=self.env, capture_output=True
            )
            self.available[name] = done.returncode == 0
        return self.available[name]

    def wsrun(self, *args: str) -> list[str]:
        return [*self.wsrun_cmd, *args]

    def timed(self, cmd: Sequence[str], what: str) -> float:
        """Seconds ``cmd`` took; CaseError with its last words when it fails. The
        least CPU seconds (user + system, children included) each ``what`` took
        go into ``self.cpu``, which a busy machine disturbs less than the clock."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root
        )
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.cpu[what] = min(self.cpu.get(what, math.inf), cpu)
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace")
            lines = [
                line for line in err.splitlines() if line.strip() and not line.startswith("(resume")
            ]
            raise CaseError(
                f"{what} failed: {(lines or [f'exit status {done.returncode}'])[-1][:300]}", err
            )
        return seconds

    def measured(
        self, cmd: Sequence[str], what: str, env: dict[str, str] | None = None
    ) -> tuple[float, float]:
        """(seconds, peak resident MiB) of ``cmd``, the peak read from the child's
        own rusage (os.wait4), not the sum over every child so far."""
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=env or self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.root,
        )
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            text = err.decode(errors="replace")
            last = text.strip().splitlines() or [f"exit {proc.returncode}"]
            raise CaseError(f"{what} failed: {last[-1][:300]}", text)
        return seconds, usage.ru_maxrss / KiB

    def fresh(self, *paths: str) -> None:
        """Delete earlier output and flush dirty pages: done outside the timed region."""
        for path in paths:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        os.makedirs(self.out, exist_ok=True)
        if self.sync:
            os.sync()

    def best_pair(
        self,
        wsrun_cmd: Sequence[str],
        baseline_cmd: Sequence[str],
        outputs: Sequence[str],
        prepare: Callable[[], None] | None = None,
        check: Callable[[str], None] | None = None,
    ) -> tuple[float, float]:
        """Best seconds of wsrun and of the baseline, run alternately ``repeat`` times;
        ``check("wsrun")`` and ``check("baseline")`` look at the first outputs of each."""
        best_w = best_b = math.inf
        for i in range(self.repeat):
            for which, cmd in (("wsrun", wsrun_cmd), ("baseline", baseline_cmd)):
                self.fresh(*outputs)
                if prepare:
                    prepare()
                seconds = self.timed(cmd, which)
                if i == 0 and check:
                    check(which)
                if which == "wsrun":
                    best_w = min(best_w, seconds)
                else:
                    best_b = min(best_b, seconds)
        self.fresh(*outputs)
        return best_w, best_b

    def best(self, cmd: Sequence[str], times: int, what: str) -> float:
        return min(self.timed(cmd, what) for _ in range(times))


def same_tree(source: str, copy: str) -> Callable[[str], None]:
    """A check that wsrun's ``copy`` holds as many files and bytes as ``source``."""

    def check(which: str) -> None:
        if which != "wsrun":
            return
        want, got = tree_stats(source), tree_stats(copy)
        if want != got:
            raise CaseError(
                f"wsrun's copy differs: {got[0]} files/{got[1]} bytes, want {want[0]}/{want[1]}"
            )

    return check


def check_members(source: str, archive: str) -> None:
    """Fail unless ``archive`` holds every file of ``source`` (read through the codec)."""
    want = tree_stats(source)
    with tarfile.open(archive) as tar:
        sizes = [m.size for m in tar if m.isfile()]
    if (len(sizes), sum(sizes)) != want:
        raise CaseError(
            f"wsrun's archive differs: {len(sizes)} files/{sum(sizes)} bytes, want {want[0]}/{want[1]}"
        )


# ---- the cases -----------------------------------------------------------------

# bench/bigfile.py imports from this module by name, also when it runs as a script.
sys.modules.setdefault("run", sys.modules[__name__])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bigfile  # noqa: E402

COPY_RECIPE = os.path.join(RECIPES, "copy.yaml")
TAR_RECIPE = os.path.join(RECIPES, "tar.yaml")


def copy_case(dataset: str, checksum: bool = False) -> Callable[[Bench, Case], Outcome]:
    def run(b: Bench, case: Case) -> Outcome:
        source = b.dataset(dataset)
        read_all(source)
        dest = os.path.join(b.out, "dest")
        copied = os.path.join(dest, os.path.basename(source))
        wsrun = b.wsrun(
            COPY_RECIPE, source, dest, "--checksum", "sha256" if checksum else "none", "-q"
        )
        if checksum:
            baseline = [
                "sh",
                "-c",
                'cp -a "$1" "$2"/ && find "$2" -type f -exec sha256sum {} + >/dev/null',
                "sh",
                source,
                dest,
            ]
        else:
            baseline = ["cp", "-a", source, dest + "/"]
        w, base = b.best_pair(
            wsrun,
            baseline,
            [dest],
            prepare=lambda: os.makedirs(dest),
            check=same_tree(source, copied),
        )
        files, size = tree_stats(source)
        ratio = w / base
        note = f"{files} files, {size / MiB:.0f} MiB; wsrun {size / MiB / w:.0f} MiB/s, baseline {size / MiB / base:.0f} MiB/s"
        return scored(case, w, base, ratio, note)

    return run


def tar_case(dataset: str, compression: str, flag: str | None) -> Callable[[Bench, Case], Outcome]:
    def run(b: Bench, case: Case) -> Outcome:
        source = b.dataset(dataset)
        read_all(source)
        suffix = "" if compression == "none" else "." + compression
        archive = os.path.join(b.out, "wsrun.tar" + suffix)
        gnu_archive = os.path.join(b.out, "gnu.tar" + suffix)
        parent, name = os.path.split(source)
        wsrun = b.wsrun(TAR_RECIPE, source, archive, "--compression", compression, "-q")
        baseline = ["tar", *([flag] if flag else []), "-cf", gnu_archive, "-C", parent, name]
        sizes: dict[str, int] = {}

        def check(which: str) -> None:
            sizes[which] = os.path.getsize(archive if which == "wsrun" else gnu_archive)
            if which == "wsrun" and compression in ("none", "gz"):  # quick to read back
                check_members(source, archive)

        w, base = b.best_pair(wsrun, baseline, [archive, gnu_archive], check=check)
        files, size = tree_stats(source)
        ratio = w / base
        note = f"{files} files, {size / MiB:.0f} MiB in; wsrun {size / MiB / w:.0f} MiB/s"
        if compression != "none":
            note += f"; archive wsrun {sizes['wsrun'] / size:.1%} vs baseline {sizes['baseline'] / size:.1%} of input"
        outcome = scored(case, w, base, ratio, note)
        outcome.details = {"archive_bytes": sizes, "input_bytes": size}
        return outcome

    return run


def deliver_case(tar: bool) -> Callable[[Bench, Case], Outcome]:
    """`deliver` (one pass: copy and hash) against cp -a + sha256sum, or with -t
    against tar -cf + sha256sum of the archive, on the same processing directory."""

    def run(b: Bench, case: Case) -> Outcome:
        source = b.dataset("processing")
        read_all(source)
        dest = os.path.join(b.out, "delivered")
        wsrun = b.wsrun(
            "nrao/deliver",
            source,
            "-l",
            dest,
            "--prefix",
            "req-1",
            "-P",
            "-q",
            *(["-t"] if tar else []),
        )
        if tar:
            baseline = [
                "sh",
                "-c",
                'mkdir -p "$2" && tar -cf "$2/req-1.tar" -C "$1" products && sha256sum "$2/req-1.tar" >/dev/null',
                "sh",
                source,
                dest,
            ]
        else:
            baseline = [
                "sh",
                "-c",
                'mkdir -p "$2" && cp -a "$1/products" "$2/" && find "$2" -type f -exec sha256sum {} + >/dev/null',
                "sh",
                source,
                dest,
            ]

        def check(which: str) -> None:
            if which == "wsrun" and not os.path.exists(os.path.join(dest, "req-1", "SHA256SUMS")):
                raise CaseError("deliver wrote no SHA256SUMS")

        w, base = b.best_pair(wsrun, baseline, [dest], check=check)
        files, size = tree_stats(os.path.join(source, "products"))
        note = f"{files} files, {size / MiB:.0f} MiB; wsrun {size / MiB / w:.0f} MiB/s"
        return scored(case, w, base, w / base, note)

    return run


#: Runs wsrun's command line (argv[2:]) and SIGKILLs itself once deliver has
#: copied argv[1] bytes into its staging area.
KILL_HALF_WAY = """
import os, signal, sys, threading
from wsrun.cli.main import main
from wsrun.steps import copy

limit, done, lock = int(sys.argv[1]), [0], threading.Lock()
real = copy.copy_file_placed

def copy_file(source, *args, **kwargs):
    digest = real(source, *args, **kwargs)
    with lock:
        done[0] += os.stat(source).st_size
        if done[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
    return digest

copy.copy_file_placed = copy_file
sys.exit(main(sys.argv[2:]))
"""


def deliver_resume(dataset: str) -> Callable[[Bench, Case], Outcome]:
    """Issue 15: `deliver` of the processing directory ``dataset`` killed
    (SIGKILL) once half the bytes are staged, then run again: the re-run
    continues the staging area with the digests recorded there. ratio = best
    re-run / best full run; each result is checked with `sha256sum -c`."""
    return lambda b, case: deliver_resume_run(b, case, dataset)


def deliver_resume_run(b: Bench, case: Case, dataset: str) -> Outcome:
    """One deliver-resume case on ``dataset`` (see deliver_resume)."""
    source = b.dataset(dataset)
    read_all(source)
    dest = os.path.join(b.out, "delivered")
    final = os.path.join(dest, "req-1")
    # The group renames `delivered` into place (the topmost new directory); its
    # staging directory and digest record are beside it (wsrun.core.groups).
    record = os.path.join(b.out, ".delivered.wsrun-digests")
    staging = os.path.join(b.out, ".delivered.wsrun-staging")
    cmd = b.wsrun("nrao/deliver", source, "-l", dest, "--prefix", "req-1", "-P", "-q")
    total = tree_stats(os.path.join(source, "products"))[1]

    def verify(what: str) -> None:
        done = subprocess.run(
            ["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"],
            cwd=final,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise CaseError(f"{what}: sha256sum -c failed: {(done.stdout + done.stderr)[-300:]}")

    full = rerun = math.inf
    staged_share = []
    for _ in range(b.repeat):
        b.fresh(dest, staging, record)
        full = min(full, b.timed(cmd, "full run"))
        verify("full run")
        b.fresh(dest, staging, record)
        # Killed from inside once half the bytes are staged, so the point does
        # not depend on the machine's speed (or the scale).
        script = b.wsrun_cmd[0]
        python = (
            os.path.join(os.path.dirname(script), "python") if len(b.wsrun_cmd) == 1 else script
        )
        args = cmd[len(b.wsrun_cmd) :]
        killed = [python, "-c", KILL_HALF_WAY, str(total // 2), *args]
        done = subprocess.run(killed, env=b.env, capture_output=True, cwd=b.root)
        if done.returncode != -signal.SIGKILL:
            raise CaseError(f"the delivery was not killed (exit status {done.returncode})")
        with open(record, "rb") as f:
            staged = sum(json.loads(line)[1] for line in f.read().splitlines() if line.strip())
        staged_share.append(staged / total)
        if os.path.exists(final) or not os.path.isdir(staging):
            raise CaseError("the killed delivery did not leave its staging area")
        if b.sync:
            os.sync()
        rerun = min(rerun, b.timed(cmd, "re-run"))
        verify("re-run")
    b.fresh(dest, staging, record)
    share = ", ".join(f"{x:.0%}" for x in staged_share)
    note = (
        f"killed with {share} of {total / MiB:.0f} MiB ({total / 1e9:.2f} GB) staged; "
        f"full run {full:.2f} s; sha256sum -c ok"
    )
    outcome = scored(case, rerun, full, rerun / full, note)
    outcome.details = {"bytes": total, "staged_share": staged_share}
    return outcome


#: The PostgreSQL server of the ``ingest-pg`` case (a schema of its own, dropped after).
BENCH_PG_URL = os.environ.get("WSRUN_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def pg_schema(b: Bench) -> Iterator[str]:
    """A fresh schema on BENCH_PG_URL with wsrun's tables (``wsrun db upgrade``); its URL."""
    import psycopg

    schema = f"wsrun_bench_{os.getpid()}"
    try:
        admin = psycopg.connect(BENCH_PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        raise CaseError(f"PostgreSQL at {BENCH_PG_URL}: {str(e).strip()[:200]}") from None
    with admin:
        admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.execute(f"CREATE SCHEMA {schema}")
        url = f"{BENCH_PG_URL}?options=-csearch_path%3D{schema}"
        try:
            b.timed(b.wsrun("db", "upgrade", "--url", url), "wsrun db upgrade")
            yield url
        finally:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def ingest_case(dataset: str, postgres: bool = False) -> Callable[[Bench, Case], Outcome]:
    """`ingest_envoy --calibration` of a staging area (manifest, then copy, verify and
    record in a fresh archive) against cp -a + sha256sum of the same files. With
    ``postgres``, the archive's metadata is in PostgreSQL and its files in a directory."""

    def run(b: Bench, case: Case) -> Outcome:
        if not postgres:
            return measure(b, case, os.path.join(b.out, "archive"), None)
        with pg_schema(b) as url:
            return measure(b, case, os.path.join(b.out, "archive"), url)

    def measure(b: Bench, case: Case, archive: str, pg_url: str | None) -> Outcome:
        stage = b.dataset(dataset)
        dest = os.path.join(b.out, "ingested")
        url = f"{pg_url}&files={archive}" if pg_url else archive
        # The first run writes the manifest and the artifacts tar into the staging area;
        # later runs (and cp) find them there.
        wsrun = b.wsrun(
            "nrao/ingest_envoy",
            "--calibration",
            stage,
            "--input",
            "uid://evla/execblock/bench",
            "--set",
            f"edu.nrao.archive.url={url}",
            "-q",
        )
        baseline = [
            "sh",
            "-c",
            'mkdir -p "$2" && cp -a "$1/." "$2/" && find "$2" -type f -exec sha256sum {} + >/dev/null',
            "sh",
            stage,
            dest,
        ]

        def check(which: str) -> None:
            if which != "wsrun":
                return
            if pg_url is None and not os.path.exists(os.path.join(archive, "archive.db")):
                raise CaseError("ingest wrote no archive.db")
            if pg_url is not None and not ingested_products(pg_url):
                raise CaseError("ingest recorded no product in PostgreSQL")

        def empty() -> None:
            if pg_url is not None:
                import psycopg

                with psycopg.connect(pg_url) as conn:
                    conn.execute(
                        "TRUNCATE archive_provenance, archive_files, archive_products,"
                        " archive_ingestions, archive_unreferenced"
                    )

        read_all(stage)
        w, base = b.best_pair(wsrun, baseline, [archive, dest], prepare=empty, check=check)
        files, size = tree_stats(stage)
        note = f"{files} files, {size / MiB:.0f} MiB; wsrun {size / MiB / w:.0f} MiB/s"
        if pg_url is not None and "ingest" in b.results:
            note += f"; embedded (SQLite) {b.results['ingest'].wsrun_seconds:.2f}s"
        if case.target is None:
            products = sum(1 for n in os.listdir(stage) if n.endswith(".tar") and n.startswith("p"))
            note = f"{products} products; {products / w:.0f} products/s; cp+sha256sum {base:.2f}s"
        return scored(case, w, base, w / base, note)

    return run


def ingested_products(pg_url: str) -> int:
    """How many products the archive in ``pg_url``'s schema holds."""
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM archive_products").fetchone()
    return int(row[0]) if row else 0


JP2_RECIPE = os.path.join(RECIPES, "jp2.yaml")


def jp2_case(data: str) -> Callable[[Bench, Case], Outcome]:
    """image-derivative's lossless JPEG 2000 with its decode-and-compare proof (OpenJPEG
    on every core for both) against opj_compress, single-threaded as it runs by default,
    on the same TIFFs (data set ``data``), one image at a time each: seconds per image."""

    def run(b: Bench, case: Case) -> Outcome:
        if shutil.which("opj_compress") is None:
            return Outcome(case.name, case.title, "missing", note="opj_compress not installed")
        source = b.dataset(data)
        read_all(source)
        files, size = tree_stats(source)
        dest = os.path.join(b.out, "jp2-wsrun")
        opj_dest = os.path.join(b.out, "jp2-opj")
        wsrun = b.wsrun(JP2_RECIPE, source, dest, "-q")
        baseline = [
            "sh",
            "-c",
            'mkdir -p "$2" && for f in "$1"/*.tif; do n=$(basename "$f" .tif); '
            'opj_compress -i "$f" -o "$2/$n.jp2" >/dev/null || exit 1; done',
            "sh",
            source,
            opj_dest,
        ]
        sizes: dict[str, int] = {}

        def check(which: str) -> None:
            out = dest if which == "wsrun" else opj_dest
            names = sorted(os.listdir(out))
            if len(names) != files:
                raise CaseError(f"{which} wrote {len(names)} JPEG 2000 files, want {files}")
            sizes[which] = tree_stats(out)[1]

        b.cpu = {}
        w, base = b.best_pair(wsrun, baseline, [dest, opj_dest], check=check)
        cpu = {which: b.cpu[which] / files for which in ("wsrun", "baseline")}
        note = (
            f"{files} TIFF{'s' if files > 1 else ''} of {size / files / 1e6:.0f} MB; "
            f"wsrun {w / files:.2f} s/image (proof included), opj_compress {base / files:.2f}"
            f" s/image; CPU {cpu['wsrun']:.2f} vs {cpu['baseline']:.2f} s/image; "
            f"JP2 {sizes['wsrun'] / size:.0%} vs {sizes['baseline'] / size:.0%} of the TIFFs"
        )
        outcome = scored(case, w, base, w / base, note)
        outcome.details = {
            "seconds_per_image": {"wsrun": w / files, "opj_compress": base / files},
            "cpu_seconds_per_image": {"wsrun": cpu["wsrun"], "opj_compress": cpu["baseline"]},
            "jp2_bytes": sizes,
            "tiff_bytes": size,
        }
        return outcome

    return run


S3_RECIPE = os.path.join(RECIPES, "s3-upload.yaml")
#: The baseline: boto3's own upload_file (its default 8 MiB parts, 10 threads per file)
#: on every file of a tree, keys relative to the tree, as a script would do it.
BOTO3_UPLOAD = """
import os, sys, boto3
source, endpoint, bucket, prefix = sys.argv[1:]
client = boto3.client("s3", endpoint_url=endpoint)
for dirpath, _dirs, names in os.walk(source):
    for name in sorted(names):
        path = os.path.join(dirpath, name)
        client.upload_file(path, bucket, prefix + "/" + os.path.relpath(path, source))
"""


@contextlib.contextmanager
def moto_s3(b: Bench) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, as its own process; yields the endpoint."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=b.env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise CaseError("moto's server exited at start") from None
                time.sleep(0.1)
        else:
            raise CaseError("moto's server did not answer in 30 s")
        yield endpoint
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def moto_bucket(b: Bench) -> Iterator[tuple[str, Any]]:
    """moto's S3 server with the bucket "bench" and a boto3 client of it; yields
    (endpoint, client). The bench's environment has fake credentials meanwhile."""
    import boto3

    saved = dict(b.env)
    b.env.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        with moto_s3(b) as endpoint:
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
            )
            client.create_bucket(Bucket="bench")
            yield endpoint, client
    finally:
        b.env.clear()
        b.env.update(saved)


def s3_upload_case(b: Bench, case: Case) -> Outcome:
    """s3-upload of a tree to a local S3 API (moto's server) against boto3's upload_file
    of the same files to the same server; both end with the same keys and ETags."""
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as e:
        return Outcome(case.name, case.title, "missing", note=f"needs moto[server] and boto3: {e}")
    source = b.dataset("objects")
    read_all(source)
    with moto_bucket(b) as (endpoint, client):
        wsrun = b.wsrun(S3_RECIPE, source, "s3://bench/up", "--endpoint", endpoint, "-q")
        baseline = [sys.executable, "-c", BOTO3_UPLOAD, source, endpoint, "bench", "up"]
        etags: dict[str, dict[str, tuple[int, str]]] = {}

        def stored() -> dict[str, tuple[int, str]]:
            out = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench"):
                for o in page.get("Contents", []):
                    out[o["Key"]] = (o["Size"], o["ETag"])
            return out

        def empty() -> None:
            for key in stored():
                client.delete_object(Bucket="bench", Key=key)

        def check(which: str) -> None:
            etags[which] = stored()
            files, size = tree_stats(source)
            got = etags[which]
            if (len(got), sum(s for s, _ in got.values())) != (files, size):
                raise CaseError(f"{which} stored {len(got)} objects, want {files}")
            if len(etags) == 2 and etags["wsrun"] != etags["baseline"]:
                raise CaseError("wsrun's and boto3's objects have different ETags")

        w, base = b.best_pair(wsrun, baseline, [], prepare=empty, check=check)
    files, size = tree_stats(source)
    note = (
        f"{files} files, {size / MiB:.0f} MiB; wsrun {size / MiB / w:.0f} MiB/s, "
        f"boto3 {size / MiB / base:.0f} MiB/s: {base / w:.2f} x boto3's throughput"
    )
    return scored(case, w, base, w / base, note)


def zst_vs_gzip(b: Bench, case: Case) -> Outcome:
    """wsrun's tar.zst against GNU tar -czf on the same data: zstd's speed-up."""
    zst = b.results.get("tar-zst")
    gz = b.results.get("tar-gz")
    if not zst or not gz or zst.wsrun_seconds is None or gz.baseline_seconds is None:
        return Outcome(
            case.name, case.title, "missing", note="needs tar-zst and tar-gz in the same run"
        )
    ratio = zst.wsrun_seconds / gz.baseline_seconds
    note = f"wsrun zst is {1 / ratio:.1f}x as fast as tar -czf"
    return scored(case, zst.wsrun_seconds, gz.baseline_seconds, ratio, note)


def help_case(b: Bench, case: Case) -> Outcome:
    seconds = b.best(b.wsrun("--help"), max(5, b.repeat), "wsrun --help")
    ratio = seconds / (case.target or 1)
    return scored(case, seconds, None, ratio, "ratio = seconds / target")


def noop_recipe(path: str, steps: int) -> str:
    lines = [f"recipe: bench-noop-{steps}", "steps:"]
    lines += [f"  - uses: noop\n    with: {{index: {i}}}" for i in range(steps)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def overhead_case(b: Bench, case: Case) -> Outcome:
    steps = scaled_count(1000, b.scale, least=10)
    many = noop_recipe(os.path.join(b.root, f"noop-{steps}.yaml"), steps)
    one = noop_recipe(os.path.join(b.root, "noop-1.yaml"), 1)
    best_many = best_one = math.inf
    for _ in range(b.repeat):
        best_many = min(best_many, b.timed(b.wsrun(many, "-q"), f"{steps}-step recipe"))
        best_one = min(best_one, b.timed(b.wsrun(one, "-q"), "1-step recipe"))
    per_step = max(0.0, best_many - best_one) / (steps - 1)
    ratio = per_step / (case.target or 1)
    note = f"{per_step * 1000:.2f} ms/step over {steps - 1} steps; baseline = the 1-step recipe"
    return scored(case, best_many, best_one, ratio, note)


#: Times N progress reports through a run's sinks (heartbeat lines to /dev/null,
#: the journal's throttled copy in SQLite) and through the no-op Progress.
PROGRESS_SCRIPT = """
import json, os, sys, time
from wsrun.core.journal import Journal
from wsrun.core.progress import Heartbeat, JournalProgress, Tracker
from wsrun.core.step import Progress

n, home = int(sys.argv[1]), sys.argv[2]
journal = Journal(home=home)
journal.start_run("bench", "bench", "bench.yaml", {}, {}, False, home)
journal.start_step("bench", "copy", 1, "copy", planned=[])
writes = [0]
real = journal.set_progress
def counted(*args):
    writes[0] += 1
    real(*args)
journal.set_progress = counted
with open(os.devnull, "w") as devnull:
    sinks = [Heartbeat(devnull, 5.0), JournalProgress(journal, "bench")]
    for name, progress in (("bare", Progress()), ("tracked", Tracker(sinks, key="copy", label="copy"))):
        task = progress.task("copy", total_bytes=n * 1000, total_files=n)
        start = time.perf_counter()
        for _ in range(n):
            task.advance(bytes=1000, files=1)
        task.close()
        print(json.dumps({name: time.perf_counter() - start}))
journal.close()
print(json.dumps({"writes": writes[0]}))
"""


def progress_case(b: Bench, case: Case) -> Outcome:
    """What a long step pays per progress report (a file copied, a chunk hashed)
    for its rates, ETA, heartbeat and journal copy."""
    n = scaled_count(1_000_000, b.scale, least=1000)
    best = {"bare": math.inf, "tracked": math.inf}
    writes = 0
    for _ in range(b.repeat):
        home = tempfile.mkdtemp(dir=b.root)
        proc = subprocess.run(
            [sys.executable, "-c", PROGRESS_SCRIPT, str(n), home],
            env=b.env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise CaseError(f"progress script failed: {proc.stderr.strip()[-500:]}")
        for line in proc.stdout.splitlines():
            for key, value in json.loads(line).items():
                if key == "writes":
                    writes = value
                else:
                    best[key] = min(best[key], value)
        shutil.rmtree(home, ignore_errors=True)
    per = max(0.0, best["tracked"] - best["bare"]) / n
    ratio = per / (case.target or 1)
    note = (
        f"{per * 1e6:.2f} us per report over {n:,} reports;"
        f" {writes} journal writes in {best['tracked']:.2f} s; baseline = the no-op Progress"
    )
    return scored(case, best["tracked"], best["bare"], ratio, note)


def dry_run_case(b: Bench, case: Case) -> Outcome:
    source = b.dataset("tiny")
    read_all(source)
    dest = os.path.join(b.out, "dest")
    b.fresh(dest)
    seconds = b.best(b.wsrun(COPY_RECIPE, source, dest, "--dry-run", "--json"), b.repeat, "dry run")
    if os.path.exists(dest):
        raise CaseError("the dry run wrote the destination")
    files, _ = tree_stats(source)
    ratio = seconds / (case.target or 1)
    note = f"{files} files; {seconds / files * 1e6:.0f} us/file; ratio = seconds / target"
    return scored(case, seconds, None, ratio, note)


def journal_bytes(home: str) -> int:
    """Bytes of the SQLite journal in ``home`` (its WAL too, if a run left one)."""
    path = os.path.join(home, "journal.db")
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def journal_case(b: Bench, case: Case, source: str | None = None) -> Outcome:
    """What the run journal grows by per file: a dry run and the real copy (with
    sha256, whose checksums are the journal's least compressible part), each on
    an empty journal of its own, then a re-run that changes nothing."""
    source = source or b.dataset("journal")
    files, _ = tree_stats(source)
    dest = os.path.join(b.out, "dest")
    b.fresh(dest)
    grown: dict[str, int] = {}
    seconds = 0.0
    for what, extra, journal in (
        ("dry run", ["--dry-run"], "journal-dry"),
        ("real run", [], "journal-real"),
        ("no-op re-run", [], "journal-real"),
    ):
        home = os.path.join(b.root, journal)
        if what != "no-op re-run":
            shutil.rmtree(home, ignore_errors=True)
            os.makedirs(home)
        env = dict(b.env, WSRUN_HOME=home)
        env.pop("WSRUN_JOURNAL_URL", None)
        before = journal_bytes(home)
        started = time.perf_counter()
        cmd = b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "-q", *extra)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=b.root)
        if done.returncode != 0:
            raise CaseError(f"{what}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        if what == "real run":
            seconds = time.perf_counter() - started
        grown[what] = journal_bytes(home) - before
    per_file = {k: v / files for k, v in grown.items()}
    ratio = per_file["real run"] / (case.target or 1)
    note = (
        f"{files} files; bytes/file: real {per_file['real run']:.1f},"
        f" dry run {per_file['dry run']:.1f}, no-op re-run {per_file['no-op re-run']:.1f}"
        f" (+{grown['no-op re-run'] / KiB:.0f} KiB)"
    )
    outcome = scored(case, seconds, None, ratio, note)
    outcome.details = {"files": files, "bytes_added": grown, "bytes_per_file": per_file}
    return outcome


# ---- a million files (issue 15): time against cp -a and GNU tar, peak memory ----

#: Peak resident memory wsrun may use on the million-file cases (MiB).
MILLION_RSS_MIB = 300


def own_peak(
    b: Bench, cmd: list[str], what: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """``b.measured``, with the peak RSS of ``cmd`` itself: a child forked from
    this process starts with its resident size as its peak (a million names
    read by an earlier case), so ``cmd`` runs under /usr/bin/time, whose own
    child starts small. Without /usr/bin/time, what ``b.measured`` reads."""
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer is None:
        return b.measured(cmd, what, env)
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as f:
        seconds, _ = b.measured([timer, "-q", "-f", "%M", "-o", f.name, *cmd], what, env)
        return seconds, int(f.read().split()[-1]) / KiB


def million_copy_case(b: Bench, case: Case) -> Outcome:
    """copy + sha256 of the million files against plain ``cp -a``, once each
    (minutes a run); the note gives both peak RSS."""
    source = b.million()
    read_all(source)
    dest = os.path.join(b.out, "dest")
    b.fresh(dest)
    os.makedirs(dest)
    w, w_rss = own_peak(
        b, b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "-q"), "wsrun copy"
    )
    same_tree(source, os.path.join(dest, os.path.basename(source)))("wsrun")
    b.fresh(dest)
    os.makedirs(dest)
    base, base_rss = own_peak(b, ["cp", "-a", source, dest + "/"], "cp -a")
    b.fresh(dest)
    files, size = tree_stats(source)
    note = f"{files} files, {size / MiB:.0f} MiB; peak RSS wsrun {w_rss:.0f} MiB, cp -a {base_rss:.0f} MiB"
    outcome = scored(case, w, base, w / base, note)
    outcome.details = {"files": files, "peak_rss_mib": w_rss, "baseline_peak_rss_mib": base_rss}
    return outcome


def million_tar_case(b: Bench, case: Case) -> Outcome:
    source = b.million()
    read_all(source)
    archive = os.path.join(b.out, "million.tar")
    b.fresh(archive)
    w, w_rss = own_peak(
        b, b.wsrun(TAR_RECIPE, source, archive, "--compression", "none", "-q"), "wsrun tar"
    )
    check_members(source, archive)
    b.fresh(archive)
    parent, name = os.path.split(source)
    base, base_rss = own_peak(b, ["tar", "-cf", archive, "-C", parent, name], "tar -cf")
    b.fresh(archive)
    files, _ = tree_stats(source)
    note = f"{files} files; peak RSS wsrun {w_rss:.0f} MiB, tar {base_rss:.0f} MiB"
    outcome = scored(case, w, base, w / base, note)
    outcome.details = {"files": files, "peak_rss_mib": w_rss, "baseline_peak_rss_mib": base_rss}
    return outcome


CHECKSUM_RECIPE = os.path.join(RECIPES, "checksum.yaml")
MANIFEST_RECIPE = os.path.join(RECIPES, "manifest.yaml")


def million_hash_case(recipe: str, what: str) -> Callable[[Bench, Case], Outcome]:
    """A checksum list or a manifest of the million files against
    ``find -type f -exec sha256sum {} +``, once each; the note gives both peak
    RSS. Digests recorded by earlier runs are not reused (WSRUN_RESUME=off),
    so wsrun hashes every file as sha256sum does."""

    def run(b: Bench, case: Case) -> Outcome:
        source = b.million()
        read_all(source)
        out = os.path.join(b.out, what)
        b.fresh(out)
        env = dict(b.env, WSRUN_RESUME="off")
        w, w_rss = own_peak(b, b.wsrun(recipe, source, out, "-q"), f"wsrun {what}", env)
        files, _ = tree_stats(source)
        if what == "SHA256SUMS":
            with open(out, "rb") as f:
                listed = sum(1 for _ in f)
        else:
            with open(out, encoding="utf-8") as f:
                listed = json.load(f)["count"]
        if listed != files:
            raise CaseError(f"wsrun {what} lists {listed} files of {files}")
        b.fresh(out)
        script = 'cd "$1" && find . -type f -exec sha256sum {} + > "$2"'
        base, base_rss = own_peak(b, ["sh", "-c", script, "sh", source, out], "sha256sum")
        b.fresh(out)
        note = f"{files} files; peak RSS wsrun {w_rss:.0f} MiB, sha256sum {base_rss:.0f} MiB"
        outcome = scored(case, w, base, w / base, note)
        outcome.details = {"files": files, "peak_rss_mib": w_rss, "baseline_peak_rss_mib": base_rss}
        return outcome

    return run


INGEST_RECIPE = os.path.join(RECIPES, "ingest.yaml")


def million_ingest_case(postgres: bool = False) -> Callable[[Bench, Case], Outcome]:
    """`ingest` of one execution block whose directory holds the million files
    (as ``ingest_envoy --observation`` names an SDM) into a fresh archive, once,
    against ``cp -a`` of the directory and ``sha256sum`` of the copy; the note
    gives both peak RSS (the command's own, through /usr/bin/time). With
    ``postgres``, the metadata is in PostgreSQL and the files in a directory."""

    def run(b: Bench, case: Case) -> Outcome:
        if not postgres:
            return measure(b, case, None)
        with pg_schema(b) as url:
            return measure(b, case, url)

    def measure(b: Bench, case: Case, pg_url: str | None) -> Outcome:
        source = b.million()
        read_all(source)
        archive = os.path.join(b.out, "million-archive")
        b.fresh(archive)
        manifest = os.path.join(b.out, "million-ingest.json")
        parameters = {"telescope": "EVLA", "ingestion_path": os.path.dirname(source)}
        product = {"type": "execution_block", "filename": os.path.basename(source)}
        document = {"parameters": parameters, "output_group": {"science_products": [product]}}
        Path(manifest).write_text(json.dumps(document, indent=2) + "\n")
        url = f"{pg_url}&files={archive}" if pg_url else archive
        cmd = b.wsrun(INGEST_RECIPE, manifest, url, "-q")
        w, w_rss = own_peak(b, cmd, "wsrun ingest")
        files, size = tree_stats(source)
        stored = ingested_files(pg_url, archive)
        if stored != files:
            raise CaseError(f"the archive records {stored} files of {files}")
        b.fresh(archive)
        dest = os.path.join(b.out, "million-cp")
        b.fresh(dest)
        script = (
            'mkdir -p "$2" && cp -a "$1" "$2/" && find "$2" -type f -exec sha256sum {} + >/dev/null'
        )
        base, base_rss = own_peak(b, ["sh", "-c", script, "sh", source, dest], "cp -a + sha256sum")
        b.fresh(dest)
        note = (
            f"{files} files, {size / MiB:.0f} MiB; peak RSS wsrun {w_rss:.0f} MiB,"
            f" cp -a + sha256sum {base_rss:.0f} MiB"
        )
        outcome = scored(case, w, base, w / base, note)
        outcome.details = {"files": files, "peak_rss_mib": w_rss, "baseline_peak_rss_mib": base_rss}
        return outcome

    return run


def ingested_files(pg_url: str | None, archive: str) -> int:
    """How many file records the archive holds (PostgreSQL's, or the embedded one's)."""
    if pg_url is None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(os.path.join(archive, "archive.db"))) as db:
            return int(db.execute("SELECT count(*) FROM files").fetchone()[0])
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM archive_files").fetchone()
    return int(row[0]) if row else 0


def million_dry_case(b: Bench, case: Case) -> Outcome:
    source = b.million()
    read_all(source)
    dest = os.path.join(b.out, "dest")
    b.fresh(dest)
    cmd = b.wsrun(COPY_RECIPE, source, dest, "--checksum", "sha256", "--dry-run", "--json")
    seconds, rss = own_peak(b, cmd, "dry run")
    if os.path.exists(dest):
        raise CaseError("the dry run wrote the destination")
    files, _ = tree_stats(source)
    note = f"{files} files; peak RSS {rss:.0f} MiB; ratio = seconds / target"
    outcome = scored(case, seconds, None, seconds / (case.target or 1), note)
    outcome.details = {"files": files, "peak_rss_mib": rss}
    return outcome


def million_processing(b: Bench, source: str) -> str:
    """A processing directory whose raw data is the million files (``source``):
    its rawdata/ links to the cached tree (deliver follows links), so a
    ``deliver -r`` delivers them all as one product."""
    path = os.path.join(b.data, "million-processing")
    if not os.path.isdir(path):
        for name in ("rawdata", "products", "working"):
            os.makedirs(os.path.join(path, name))
        os.symlink(source, os.path.join(path, "rawdata", os.path.basename(source)))
    return path


def million_deliver_case(tar: bool) -> Callable[[Bench, Case], Outcome]:
    """``deliver -r`` (with -t: one archive) of the million files, its own peak
    RSS in the real run and in a dry run; time against ``cp -a`` + ``sha256sum``
    (with -t: ``tar -chf`` + ``sha256sum`` of the archive), as information."""

    def run(b: Bench, case: Case) -> Outcome:
        source = b.million()
        processing = million_processing(b, source)
        read_all(source)
        dest = os.path.join(b.out, "delivered")
        final = os.path.join(dest, "req-1")
        b.fresh(dest)
        flags = ["-t"] if tar else []
        cmd = b.wsrun(
            "nrao/deliver", processing, "-r", "-l", dest, "--prefix", "req-1", "-q", *flags
        )
        dry_seconds, dry_rss = own_peak(b, [*cmd, "--dry-run"], "wsrun deliver --dry-run")
        if os.path.exists(dest):
            raise CaseError("the dry run wrote the destination")
        # the real run on an empty journal of its own: what one delivery adds to it
        home = os.path.join(b.root, "journal-deliver")
        shutil.rmtree(home, ignore_errors=True)
        os.makedirs(home)
        env = dict(b.env, WSRUN_HOME=home)
        env.pop("WSRUN_JOURNAL_URL", None)
        w, w_rss = own_peak(b, cmd, "wsrun deliver", env)
        journal_total = journal_bytes(home)
        shutil.rmtree(home, ignore_errors=True)
        files, size = tree_stats(source)
        journal_per_file = journal_total / max(1, files)
        with open(os.path.join(final, "SHA256SUMS"), "rb") as f:
            listed = sum(1 for _ in f)
        if listed != (2 if tar else files + 1):  # and delivery.json
            raise CaseError(f"SHA256SUMS lists {listed} files, for {files}")
        if tar:  # two files: checked whole (a million loose ones would take minutes)
            checked = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=final)
            if checked.returncode != 0:
                raise CaseError("sha256sum -c failed")
        b.fresh(dest)
        os.makedirs(final)
        if tar:
            script = 'tar -chf "$2/req-1.tar" -C "$(dirname "$1")" "$(basename "$1")" && sha256sum "$2/req-1.tar" >/dev/null'
        else:
            script = 'cp -a "$1" "$2/" && find "$2" -type f -exec sha256sum {} + >/dev/null'
        base, base_rss = own_peak(b, ["sh", "-c", script, "sh", source, final], "baseline")
        b.fresh(dest)
        plain = "tar -chf + sha256sum" if tar else "cp -a + sha256sum"
        note = (
            f"{files} files, {size / MiB:.0f} MiB; peak RSS wsrun {w_rss:.0f} MiB, dry run "
            f"{dry_rss:.0f} MiB ({dry_seconds:.0f} s), {plain} {base_rss:.0f} MiB;"
            f" journal {journal_per_file:.1f} B/file"
        )
        outcome = scored(case, w, base, w / base, note)
        outcome.details = {
            "files": files,
            "journal_bytes_per_file": journal_per_file,
            "peak_rss_mib": max(w_rss, dry_rss),
            "real_peak_rss_mib": w_rss,
            "dry_peak_rss_mib": dry_rss,
            "dry_seconds": dry_seconds,
            "baseline_peak_rss_mib": base_rss,
        }
        return outcome

    return run


def million_memory_case(b: Bench, case: Case) -> Outcome:
    """The largest peak RSS of the million-* cases run before it, against
    MILLION_RSS_MIB (ratio = MiB / target)."""
    peaks = {
        name: o.details["peak_rss_mib"]
        for name, o in b.results.items()
        if name.startswith("million-") and "peak_rss_mib" in o.details
    }
    if not peaks:
        raise CaseError(
            "run it after million-copy, million-tar, million-dry, million-checksum, million-manifest"
            " or million-deliver(-t)"
        )
    worst = max(peaks, key=peaks.__getitem__)
    note = ", ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items())
    return scored(case, peaks[worst], None, peaks[worst] / MILLION_RSS_MIB, note)


def million_journal_case(b: Bench, case: Case) -> Outcome:
    return journal_case(b, case, b.million())


BUS_LOAD = os.path.join(REPO, "bench", "bus_load.py")


def bus_load(b: Bench, *args: str) -> dict[str, Any]:
    """Run bench/bus_load.py on a fresh bus file; its JSON result."""
    where = os.path.join(b.out, "bus")
    b.fresh(where)
    os.makedirs(where)
    done = subprocess.run(
        [sys.executable, BUS_LOAD, args[0], os.path.join(where, "bus.db"), *args[1:]],
        env=b.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    b.fresh(where)
    if done.returncode != 0:
        raise CaseError(f"bus_load.py {args[0]} failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout)


def bus_throughput_case(consumers: int) -> Callable[[Bench, Case], Outcome]:
    """One producer publishing as fast as it can, ``consumers`` processes claiming
    and acking; seconds from the first publish to the last ack (best of N)."""

    def run(b: Bench, case: Case) -> Outcome:
        messages = scaled_count(5000, b.scale, least=50)
        best = min(
            bus_load(b, "throughput", str(messages), str(consumers))["seconds"]
            for _ in range(b.repeat)
        )
        note = f"{messages} messages, {consumers} consumer process(es): {messages / best:.0f} messages/s"
        return scored(case, best, None, best / messages * 1000, note + "; ratio = ms/message")

    return run


def bus_latency_case(b: Bench, case: Case) -> Outcome:
    """Publish to claim by an idle consumer process, a message every 30 ms."""
    messages = scaled_count(300, b.scale, least=20)
    result = bus_load(b, "latency", str(messages))
    p50, p99 = result["p50"], result["p99"]
    note = f"{result['n']} messages: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; ratio = p99 / target"
    return scored(case, p99, None, p99 / (case.target or 1), note)


AMQP_LOAD = os.path.join(REPO, "bench", "amqp_load.py")
#: The RabbitMQ broker of the ``bus-amqp-*`` cases (a name prefix of their own, deleted after).
BENCH_AMQP_URL = os.environ.get("WSRUN_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def amqp_load(
    b: Bench, command: str, kind: str, messages: int, prefetch: int = 1
) -> dict[str, Any]:
    """Run bench/amqp_load.py for wsrun's bus or bare pika under a fresh prefix."""
    sep = "&" if "?" in BENCH_AMQP_URL else "?"
    url = f"{BENCH_AMQP_URL}{sep}prefix=wsrun-bench-{os.getpid()}.&prefetch={prefetch}"
    done = subprocess.run(
        [sys.executable, AMQP_LOAD, command, kind, url, str(messages)],
        env=b.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        from wsrun.stores.bus.base import mask

        raise CaseError(
            f"amqp_load.py {command} {kind} on {mask(url)} failed: {done.stderr.strip()[-300:]}"
        )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def amqp_throughput_case(b: Bench, case: Case) -> Outcome:
    """One producer, one consumer process, through wsrun's amqp:// bus and through
    bare pika doing the same durable work (persistent messages, a confirm per
    publish, manual acks, prefetch 1); best of N each, alternating."""
    messages = scaled_count(1500, b.scale, least=20)
    ours = theirs = math.inf
    for _ in range(b.repeat):
        ours = min(ours, amqp_load(b, "throughput", "wsrun", messages)["seconds"])
        theirs = min(theirs, amqp_load(b, "throughput", "pika", messages)["seconds"])
    note = (
        f"{messages} messages: wsrun {messages / ours:.0f}/s, bare pika {messages / theirs:.0f}/s"
        f" ({theirs / ours:.2f}x); ratio = wsrun s / pika s"
    )
    return scored(case, ours, theirs, ours / theirs, note)


def amqp_latency_case(b: Bench, case: Case) -> Outcome:
    """Publish to handler start on an idle consumer, a message every 30 ms, through
    wsrun's amqp:// bus and through bare pika."""
    messages = scaled_count(300, b.scale, least=20)
    ours = amqp_load(b, "latency", "wsrun", messages)
    theirs = amqp_load(b, "latency", "pika", messages)
    note = (
        f"{ours['n']} messages: wsrun p50 {ours['p50'] * 1000:.1f} ms, p99 {ours['p99'] * 1000:.1f} ms;"
        f" bare pika p50 {theirs['p50'] * 1000:.1f} ms, p99 {theirs['p99'] * 1000:.1f} ms;"
        " ratio = p99 / target"
    )
    return scored(case, ours["p99"], theirs["p99"], ours["p99"] / (case.target or 1), note)


STATE_LOAD = os.path.join(REPO, "bench", "state_load.py")


def state_transitions_case(postgres: bool) -> Callable[[Bench, Case], Outcome]:
    """4 worker processes moving their own OUSs along the whole OUS lifecycle
    (7 checked transitions each, with history): transitions per second on the
    embedded SQLite store or on PostgreSQL (a fresh schema; every commit durable)."""

    def run(b: Bench, case: Case) -> Outcome:
        if postgres:
            with pg_schema(b) as url:
                return measure(b, case, lambda: url, note_embedded=True)
        where = os.path.join(b.out, "state")

        def fresh_file() -> str:
            b.fresh(where)
            os.makedirs(where)
            return "sqlite://" + os.path.join(where, "state.db")

        try:
            return measure(b, case, fresh_file, note_embedded=False)
        finally:
            b.fresh(where)

    def measure(b: Bench, case: Case, store: Callable[[], str], note_embedded: bool) -> Outcome:
        workers, per_worker = 4, scaled_count(100, b.scale, least=2)
        best: dict[str, Any] | None = None
        for attempt in range(b.repeat):
            url = store()
            if postgres and attempt:
                _empty_state_tables(url)
            done = subprocess.run(
                [sys.executable, STATE_LOAD, url, str(workers), str(per_worker)],
                env=b.env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            if done.returncode != 0:
                raise CaseError(f"state_load.py failed: {done.stderr.strip()[-300:]}")
            result = json.loads(done.stdout)
            if best is None or result["seconds"] < best["seconds"]:
                best = result
        assert best is not None
        rate = best["per_second"]
        note = f"{best['transitions']} transitions, {workers} processes: {rate:.0f} transitions/s"
        embedded = b.results.get("state-sqlite")
        if note_embedded and embedded is not None and "per_second" in embedded.details:
            note += f"; embedded (SQLite) {embedded.details.get('per_second', 0):.0f}/s"
        outcome = scored(case, best["seconds"], None, 1000 / rate, note + "; ratio = ms/transition")
        outcome.details = best
        return outcome

    return run


def _empty_state_tables(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("TRUNCATE state_history, state_entities, state_lifecycles")


ALMA_DEMO = os.path.join(REPO, "examples", "alma", "demo.py")


@contextlib.contextmanager
def alma_system(b: Bench, **options: Any) -> Iterator[Any]:
    """The ALMA workflow of examples/alma/demo.py, started in a fresh directory
    with zero simulated delays and failures, stopped (SIGTERM) afterwards."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("alma_demo", ALMA_DEMO)
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    sys.modules["alma_demo"] = demo
    spec.loader.exec_module(demo)
    root = os.path.join(b.out, "alma")
    b.fresh(root)
    env = {k: v for k, v in b.env.items() if k != "WSRUN_HOME"}
    system = demo.System(Path(root), base_env=env, auto_review="Pass", **options)
    try:
        system.start()
        yield system
    except (TimeoutError, RuntimeError) as e:
        raise CaseError(str(e)[-500:]) from None
    finally:
        codes = system.stop()
        b.fresh(root)
    if any(codes.values()):
        raise CaseError(f"workers did not stop cleanly: {codes}")


def alma_one_case(b: Bench, case: Case) -> Outcome:
    """One OUS from launch to Delivered, the QA2 review automatic, every component
    its own worker process (the seed's set-up); best of N OUSs."""
    best = math.inf
    with alma_system(b) as system:
        for i in range(b.repeat):
            ous = f"uid://X1/X1/Xc{i}"
            started = time.monotonic()
            system.launch(ous)
            system.wait_for(ous, "Delivered")
            best = min(best, time.monotonic() - started)
    note = "launch to Delivered, 8 worker processes, zero delays; ratio = seconds / target"
    return scored(case, best, None, best / (case.target or 1), note)


@contextlib.contextmanager
def scale_out_backends(b: Bench) -> Iterator[dict[str, str]]:
    """``System`` options putting the ALMA system on PostgreSQL (state store,
    archive metadata with files in a directory, run journal; a fresh schema)
    and RabbitMQ (a name prefix of its own); all of it removed afterwards."""
    from wsrun.stores.bus.amqp import AmqpBus

    sep = "&" if "?" in BENCH_AMQP_URL else "?"
    bus = f"{BENCH_AMQP_URL}{sep}prefix=wsrun-bench-alma-{os.getpid()}."
    with pg_schema(b) as pg:
        files = os.path.join(b.out, "alma-archive-files")
        try:
            AmqpBus(bus).destroy()  # left by an earlier run that was killed
            yield {
                "state_url": pg,
                "journal_url": pg,
                "archive_url": f"{pg}&files={files}",
                "bus_url": bus,
            }
        finally:
            AmqpBus(bus).destroy()
            b.fresh(files)


def alma_many_case(scale_out: bool) -> Callable[[Bench, Case], Outcome]:
    """100 OUSs launched at once through 2 worker processes that each run every
    recipe (Pipeline at JAO); all must be Delivered with exactly their products.
    With ``scale_out``, on PostgreSQL and RabbitMQ instead of the embedded stores."""

    def run(b: Bench, case: Case) -> Outcome:
        if not scale_out:
            return measure(b, case, {})
        with scale_out_backends(b) as backends:
            return measure(b, case, backends)

    def measure(b: Bench, case: Case, backends: dict[str, str]) -> Outcome:
        count = scaled_count(100, b.scale, least=4)
        ids = [f"uid://X1/X2/Xd{i}" for i in range(count)]
        with alma_system(
            b, topology="all-in-one", processes=2, concurrency=4, **backends
        ) as system:
            seconds, note = launch_all(system, ids)
        embedded = b.results.get("alma-100-ous")
        if backends and embedded is not None and embedded.wsrun_seconds:
            note += f"; embedded (SQLite) in the same run {embedded.wsrun_seconds:.1f} s"
        return scored(case, seconds, None, seconds / count, note + "; ratio = s/OUS")

    return run


def launch_all(system: Any, ids: list[str]) -> tuple[float, str]:
    """Launch every OUS of ``ids`` at once and wait until all are Delivered, each
    with exactly its five products, once, and no message left: the seconds it
    took and a note."""
    count = len(ids)
    started = time.monotonic()
    system.launch_many(ids)
    deadline = started + 60 + 6 * count
    while (states := system.states(ids)) and any(s != "Delivered" for s in states.values()):
        if time.monotonic() > deadline:
            bus = system.bus()
            try:
                dead = [f"{m.selector}: {m.error}" for m in bus.messages(status="dead", limit=3)]
            finally:
                bus.close()
            raise CaseError(f"not all Delivered: {sorted(set(states.values()))}; dead: {dead}")
        time.sleep(0.1)
    seconds = time.monotonic() - started
    system.settle()
    archive = system.archive()
    try:
        products = archive.products()
    finally:
        archive.close()
    with system.state_store() as store:
        passes = [sum(c.state == "Delivered" for c in store.history("ous", o)) for o in ids]
    unconsumed = system.messages()
    data = [p for p in products if p.type == "alma_data_product"]
    names = [p.filename for p in data]
    if len(data) != 5 * count or len(set(names)) != len(names) or set(passes) != {1}:
        raise CaseError(
            f"{len(data)} products for {count} OUSs ({len(set(names))} distinct), "
            f"delivered {sorted(set(passes))} times"
        )
    if unconsumed:
        raise CaseError(f"messages left: {unconsumed}")
    note = (
        f"{count} OUSs, 2 workers x 4 runs: all Delivered, {len(data)} products, none lost or "
        f"duplicated; {count / seconds:.1f} OUS/s"
    )
    return seconds, note


COPY, TAR, NOOP = ("copy",), ("tar",), ("noop",)
DELIVER = ("find-products", "copy", "tar", "write-json", "checksum")
INGEST = ("ingestion-manifest", "ingest")
CASES = [
    Case("copy-large", "copy 4 x 512 MiB vs cp -a", 1.10, COPY, copy_case("large")),
    Case("copy-small", "copy 20,000 files of 1-64 KiB vs cp -a", 1.3, COPY, copy_case("small")),
    Case(
        "copy-sha256",
        "copy+sha256 4 x 512 MiB vs cp -a; sha256sum",
        0.2,
        COPY,
        copy_case("large", True),
    ),
    Case("tar-large", "tar 4 x 512 MiB vs tar -cf", 1.1, TAR, tar_case("large", "none", None)),
    Case(
        "tar-small", "tar 20,000 small files vs tar -cf", 1.3, TAR, tar_case("small", "none", None)
    ),
    Case("tar-gz", "tar.gz 256 MiB mixed vs tar -czf", None, TAR, tar_case("mixed", "gz", "-z")),
    Case(
        "tar-zst",
        "tar.zst 256 MiB vs tar --zstd -cf",
        None,
        TAR,
        tar_case("mixed", "zst", "--zstd"),
    ),
    Case("zst-vs-gzip", "wsrun tar.zst vs tar -czf (speed-up)", None, TAR, zst_vs_gzip),
    Case(
        "tar-bz2",
        "tar.bz2 8 MiB mixed vs tar -cjf",
        None,
        TAR,
        tar_case("mixed_small", "bz2", "-j"),
    ),
    Case(
        "tar-xz", "tar.xz 8 MiB mixed vs tar -cJf", None, TAR, tar_case("mixed_small", "xz", "-J")
    ),
    Case(
        "deliver",
        "deliver 2 GiB vs cp -a + sha256sum",
        0.35,
        ("find-products",),
        deliver_case(False),
    ),
    Case(
        "deliver-tar",
        "deliver -t 2 GiB vs tar -cf + sha256sum",
        0.35,
        ("find-products",),
        deliver_case(True),
    ),
    Case(
        "deliver-resume",
        "deliver 2 GiB killed half way, re-run vs a full run",
        0.6,
        ("find-products",),
        deliver_resume("processing"),
    ),
    Case(
        "deliver-resume-4g",
        "deliver 4.3 GB (issue 15's size) killed half way, re-run vs a full run",
        0.6,
        ("find-products",),
        deliver_resume("processing_4g"),
    ),
    Case(
        "ingest",
        "ingest 2 GiB staging area vs cp -a + sha256sum",
        0.4,
        INGEST,
        ingest_case("staging"),
    ),
    Case(
        "ingest-many",
        "ingest 1,000 small products (products/s)",
        None,
        INGEST,
        ingest_case("staging_many"),
    ),
    Case(
        "ingest-pg",
        "ingest 2 GiB staging area into PostgreSQL + files vs cp -a + sha256sum",
        0.4,
        INGEST,
        ingest_case("staging", postgres=True),
    ),
    Case(
        "jp2-lossless",
        "lossless JPEG 2000 + proof of 20 TIFFs of 20 MB vs opj_compress (1 thread)",
        1.0,
        ("find", "image-derivative"),
        jp2_case("tiffs"),
    ),
    Case(
        "jp2-lossless-one",
        "lossless JPEG 2000 + proof of one 20 MB TIFF vs opj_compress (1 thread)",
        1.0,
        ("find", "image-derivative"),
        jp2_case("tiff_one"),
    ),
    Case(
        "s3-upload",
        "s3-upload 16 x 16 MiB + 100 small files to local S3 (moto) vs boto3 upload_file",
        round(1 / 0.9, 2),
        ("s3-upload",),
        s3_upload_case,
    ),
    Case(
        "big-copy-sha256",
        "copy + sha256 of one big file (2 GiB; --big-file 20GiB) vs cp -a + sha256sum",
        0.2,
        COPY,
        bigfile.big_copy_case,
    ),
    Case(
        "big-tar",
        "tar of one big file (2 GiB; --big-file 20GiB) vs tar -cf",
        1.1,
        ("tar",),
        bigfile.big_tar_case,
    ),
    Case(
        "big-s3-upload",
        "s3-upload of one big file (multipart) to local S3 (moto) vs boto3 upload_file",
        round(1 / 0.9, 2),
        ("s3-upload",),
        bigfile.big_s3_case,
    ),
    Case(
        "big20-copy-sha256",
        "copy + sha256 of one 20 GiB file (less when the disk has < 50 GB free) vs cp -a + sha256sum",
        0.2,
        COPY,
        bigfile.full_size_case(bigfile.big_copy_case),
    ),
    Case(
        "big20-tar",
        "tar of one 20 GiB file (less when the disk has < 50 GB free) vs tar -cf",
        1.1,
        ("tar",),
        bigfile.full_size_case(bigfile.big_tar_case),
    ),
    Case(
        "resume-copy",
        "copy + sha256 killed half-way, re-run: bytes re-written / bytes missing",
        1.0,
        COPY,
        bigfile.resume_case,
    ),
    Case("help", "wsrun --help wall time (best of 5)", 0.25, (), help_case, "s"),
    Case("overhead", "engine overhead per noop step", 0.002, NOOP, overhead_case, "s/step"),
    Case("dry-run", "dry run of a copy of 100,000 files", 5.0, COPY, dry_run_case, "s"),
    Case("million-copy", "copy + sha256 of 1,000,000 files vs cp -a", 1.0, COPY, million_copy_case),
    Case("million-tar", "tar of 1,000,000 files vs tar -cf", 1.3, TAR, million_tar_case),
    Case(
        "million-checksum",
        "checksum list of 1,000,000 files vs find + sha256sum",
        None,
        ("checksum",),
        million_hash_case(CHECKSUM_RECIPE, "SHA256SUMS"),
    ),
    Case(
        "million-manifest",
        "manifest of 1,000,000 files vs find + sha256sum",
        None,
        ("manifest",),
        million_hash_case(MANIFEST_RECIPE, "MANIFEST.json"),
    ),
    Case(
        "million-dry",
        "dry run of a copy + sha256 of 1,000,000 files",
        30.0,
        COPY,
        million_dry_case,
        "s",
    ),
    Case(
        "million-ingest",
        "ingest of an execution block of 1,000,000 files vs cp -a + sha256sum",
        None,
        ("ingest",),
        million_ingest_case(),
    ),
    Case(
        "million-ingest-pg",
        "the same into PostgreSQL (metadata) + a directory (files)",
        None,
        ("ingest",),
        million_ingest_case(postgres=True),
    ),
    Case(
        "million-deliver",
        "deliver -r of 1,000,000 files vs cp -a + sha256sum (peak RSS: real and dry run)",
        None,
        DELIVER,
        million_deliver_case(tar=False),
    ),
    Case(
        "million-deliver-t",
        "deliver -r -t of 1,000,000 files vs tar -chf + sha256sum (peak RSS: real and dry run)",
        None,
        DELIVER,
        million_deliver_case(tar=True),
    ),
    Case(
        "million-memory",
        "peak RSS of the million-* cases (MiB)",
        MILLION_RSS_MIB,
        COPY,
        million_memory_case,
        "MiB",
    ),
    Case(
        "million-journal",
        "journal bytes per file, copy + sha256 of 1,000,000 files",
        64,
        COPY,
        million_journal_case,
        "B/file",
    ),
    Case(
        "progress",
        "progress report cost: rates, ETA, heartbeat and journal copy (s/report)",
        0.000005,
        (),
        progress_case,
        "s/report",
    ),
    Case(
        "bus-throughput-1",
        "bus: 1 producer, 1 consumer process (messages/s)",
        None,
        (),
        bus_throughput_case(1),
    ),
    Case(
        "bus-throughput-4",
        "bus: 1 producer, 4 consumer processes (messages/s)",
        None,
        (),
        bus_throughput_case(4),
    ),
    Case(
        "bus-latency",
        "bus: publish-to-handler latency p99",
        0.05,
        ("publish",),
        bus_latency_case,
        "s",
    ),
    Case(
        "bus-amqp-throughput",
        "bus on RabbitMQ: 1 producer, 1 consumer vs bare pika (>= 0.7x)",
        round(1 / 0.7, 2),
        (),
        amqp_throughput_case,
    ),
    Case(
        "bus-amqp-latency",
        "bus on RabbitMQ: publish-to-handler latency p99",
        0.05,
        ("publish",),
        amqp_latency_case,
        "s",
    ),
    Case(
        "journal-bytes",
        "journal growth per file: copy of 20,000 files (dry, real, no-op re-run)",
        64,
        COPY,
        journal_case,
        "B/file",
    ),
    Case(
        "state-sqlite",
        "state store: transitions/s, 4 worker processes, embedded SQLite",
        None,
        (),
        state_transitions_case(postgres=False),
    ),
    Case(
        "state-pg",
        "state store: transitions/s, 4 worker processes, PostgreSQL",
        None,
        (),
        state_transitions_case(postgres=True),
    ),
    Case(
        "alma-one-ous",
        "ALMA: one OUS from launch to Delivered, zero delays",
        None,
        ("alma-pipeline", "publish", "set-state"),
        alma_one_case,
    ),
    Case(
        "alma-100-ous",
        "ALMA: 100 OUSs launched at once through 2 workers",
        None,
        ("alma-pipeline", "publish", "set-state"),
        alma_many_case(scale_out=False),
    ),
    Case(
        "alma-100-ous-pg-amqp",
        "ALMA: 100 OUSs at once through 2 workers, PostgreSQL + RabbitMQ",
        None,
        ("alma-pipeline", "publish", "set-state"),
        alma_many_case(scale_out=True),
    ),
]


def run_case(b: Bench, case: Case) -> Outcome:
    missing = [s for s in case.steps if not b.step_available(s)]
    if missing:
        return Outcome(
            case.name, case.title, "missing", note=f"step type {', '.join(missing)} not available"
        )
    try:
        return case.run(b, case)
    except (CaseError, OSError, tarfile.TarError) as e:
        outcome = Outcome(case.name, case.title, "error", note=str(e))
        if isinstance(e, CaseError) and e.stderr:
            outcome.details["stderr"] = e.stderr
        return outcome


# ---- output ------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(outcomes: Sequence[Outcome]) -> Iterator[str]:
    header = ("case", "wsrun s", "baseline s", "ratio", "target", "result", "note")
    rows = [
        (
            o.case,
            fmt(o.wsrun_seconds),
            fmt(o.baseline_seconds),
            fmt(o.ratio, 2),
            o.target or "-",
            o.status.upper() if o.status == "fail" else o.status,
            o.note,
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, tuple("-" * w for w in widths) + ("-" * 4,), *rows]:
        cells = [
            c.rjust(w) if 0 < i < 4 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        yield " | ".join([*cells, row[-1]]).rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink the data sets by this factor (default 1.0)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per tool; the best counts (default 3)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[c.name for c in CASES],
        metavar="CASE",
        help="run only this case (repeatable): " + ", ".join(c.name for c in CASES),
    )
    parser.add_argument(
        "--json", action="store_true", help="print the results as JSON instead of a table"
    )
    parser.add_argument(
        "--big-file",
        default="2GiB",
        metavar="SIZE",
        help="size of the big-* cases' one file (default 2GiB; the issue's full size is "
        "20GiB), cached under $BENCH_CACHE (default ~/.cache/wsrun-bench); scaled down "
        "with a note when the disk is too small",
    )
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="do not flush the disk before each run (quicker; for smoke tests)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary data (for debugging)"
    )
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        parser.error("--scale must be > 0 and --repeat >= 1")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # a terminated run still removes its data (the finally below)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = os.environ.get("BENCH_DIR") or "/tmp"
    root = tempfile.mkdtemp(prefix="wsrun-bench-", dir=base)
    log(f"wsrun bench: scale {args.scale}, best of {args.repeat}, data in {root}")
    bench = Bench(root, args.scale, args.repeat, not args.no_sync, log)
    bench.big_file_size = bigfile.parse_size(args.big_file)
    outcomes: list[Outcome] = []
    try:
        bench.warm_up()
        for case in CASES:
            if args.only and case.name not in args.only:
                continue
            log(f"{case.name}: {case.title}")
            started = time.perf_counter()
            outcome = run_case(bench, case)
            bench.results[case.name] = outcome
            outcomes.append(outcome)
            log(f"  {outcome.status} ({time.perf_counter() - started:.1f}s) {outcome.note}")
            if outcome.details.get("stderr"):
                log("  its stderr:\n" + outcome.details["stderr"].rstrip())
    finally:
        if args.keep:
            log(f"data kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        doc = {
            "scale": args.scale,
            "repeat": args.repeat,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "cases": [asdict(o) for o in outcomes],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(
            f"wsrun bench: scale {args.scale}, best of {args.repeat}, {os.cpu_count()} CPUs (a shared machine makes timings noisy)"
        )
        for line in table(outcomes):
            print(line)
    return 1 if any(o.status == "error" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
