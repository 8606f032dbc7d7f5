"""Masters of a loop's next image encoded while this one is proven (issue 18).

In a real run's ``for_each`` over image-derivative, the next TIFF's master is
encoded in memory (the step's ``prefetch``) while opj_decompress proves the
current one. These tests make the two overlap for certain (each side waits for
the other) and attack what must still hold: an image is reported only after its
own proof, a failed proof leaves no master, what was encoded ahead is used only
for the very file it was made from, and a killed run leaves no master and no
decoder behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from conftest import write
from fixtures.jp2 import decode_pnm, need_opj_decompress
from fixtures.writers import leftovers
from wsrun.packs.distillery import image_derivative, lossless

H, W = 40, 56
NAMES = ("scan1", "scan2", "scan3")

RECIPE = """
recipe: masters
inputs:
  source: {type: path, positional: true}
steps:
  - id: tiffs
    uses: find
    with:
      root: "{{ inputs.source }}"
      patterns: ["*.tif"]
  - id: master
    for_each: "{{ steps.tiffs.outputs.files }}"
    uses: image-derivative
    with:
      source: "{{ item }}"
      derivatives:
        - {to: "masters/{{ (item | basename)[:-4] }}.jp2", lossless: true}
"""

#: Long enough never to expire when the two sides do overlap; a guard, not a timing.
PATIENCE = 120


@pytest.fixture(autouse=True)
def _opj() -> Iterator[None]:
    need_opj_decompress()
    yield
    for thread in threading.enumerate():  # no encoding ahead outlives its test
        if thread.name == "wsrun-encode-ahead":
            thread.join(PATIENCE)
    image_derivative._ahead.clear()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write(tmp_path / "masters.yaml", RECIPE)


def samples(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << 16, (H, W, 3), dtype=np.uint16)


def tiffs(tmp_path: Path) -> dict[str, np.ndarray]:
    """Three 16-bit RGB TIFFs in tmp_path/in, by name."""
    (tmp_path / "in").mkdir()
    images = {name: samples(i) for i, name in enumerate(NAMES)}
    for name, data in images.items():
        tifffile.imwrite(tmp_path / "in" / f"{name}.tif", data, photometric="rgb")
    return images


def named(images: dict[str, np.ndarray]) -> dict[str, str]:
    """Which image some pixels are (by their bytes)."""
    return {hashlib.sha256(data.tobytes()).hexdigest(): name for name, data in images.items()}


class Log:
    """What the encoder and the proof's decoder did, in order, from any thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def add(self, what: str, name: str) -> None:
        with self.lock:
            self.events.append((what, name, threading.current_thread().name))

    def index(self, what: str, name: str) -> int:
        return next(i for i, e in enumerate(self.events) if e[:2] == (what, name))


def test_a_failed_proof_while_the_next_image_encodes_leaves_no_master_and_stops(
    cli: Any, tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scan2's encoder changes one sample; scan3 is being encoded while scan2 is
    proven (each waits for the other to begin). scan2's proof fails: the step
    fails naming scan2's master, scan1's master is in place, and neither scan2's
    nor scan3's master (nor a temporary file) is at the destination."""
    images = tiffs(tmp_path)
    which = named(images)
    log = Log()
    encoding3, proving2 = threading.Event(), threading.Event()
    overlapped: list[bool] = []
    encode, decode = lossless.encode, lossless.decode_master

    def spy_encode(pixels: lossless.Pixels) -> bytes:
        name = which[hashlib.sha256(pixels.samples.tobytes()).hexdigest()]
        log.add("encode", name)
        if name == "scan3":
            encoding3.set()
            overlapped.append(proving2.wait(PATIENCE))
        if name == "scan2":
            changed = pixels.samples.copy()
            changed[3, 4, 1] ^= 1
            pixels = lossless.Pixels(changed, pixels.bits, pixels.alpha)
        return encode(pixels)

    def spy_decode(path: str) -> lossless.Pixels:
        name = next(n for n in NAMES if n in os.path.basename(path))
        log.add("proof", name)
        if name == "scan2":
            proving2.set()
            overlapped.append(encoding3.wait(PATIENCE))
        result = decode(path)
        log.add("proven", name)
        return result

    monkeypatch.setattr(lossless, "encode", spy_encode)
    monkeypatch.setattr(lossless, "decode_master", spy_decode)
    r = cli(recipe, tmp_path / "in")
    assert r.code == 1, r.out
    [line] = [ln for ln in r.err.splitlines() if "lossless proof failed" in ln]
    assert str(tmp_path / "masters" / "scan2.jp2") in line and "not written" in line
    assert f"1 of {H * W * 3} samples differ (first at row 3, column 4, component 1" in line
    assert sorted(os.listdir(tmp_path / "masters")) == ["scan1.jp2"]
    assert overlapped == [True, True]  # scan3 was encoding while scan2 was proven
    assert log.index("encode", "scan3") < log.index("proven", "scan2")
    assert {e[2] for e in log.events if e[:2] == ("encode", "scan3")} == {"wsrun-encode-ahead"}
    assert not any(e[:2] == ("proof", "scan3") for e in log.events)
    scan1, bits = decode_pnm(tmp_path / "masters" / "scan1.jp2")
    assert bits == 16 and np.array_equal(scan1, images["scan1"])


def test_every_master_of_a_loop_is_proven_and_nothing_is_encoded_twice(
    cli: Any, tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each image is encoded once (the later ones ahead, on their own thread) and
    proven once, and holds its TIFF's samples; a second run finds them up to date
    and encodes nothing, not even ahead."""
    images = tiffs(tmp_path)
    which = named(images)
    log = Log()
    encode, decode = lossless.encode, lossless.decode_master

    def spy_encode(pixels: lossless.Pixels) -> bytes:
        log.add("encode", which[hashlib.sha256(pixels.samples.tobytes()).hexdigest()])
        return encode(pixels)

    def spy_decode(path: str) -> lossless.Pixels:
        log.add("proof", next(n for n in NAMES if n in os.path.basename(path)))
        return decode(path)

    monkeypatch.setattr(lossless, "encode", spy_encode)
    monkeypatch.setattr(lossless, "decode_master", spy_decode)
    r = cli(recipe, tmp_path / "in")
    assert r.code == 0, r.err
    assert sorted(e[:2] for e in log.events) == sorted(
        [("encode", n) for n in NAMES] + [("proof", n) for n in NAMES]
    )
    assert {e[2] for e in log.events if e[0] == "encode" and e[1] != "scan1"} == {
        "wsrun-encode-ahead"
    }
    for name, data in images.items():
        got, bits = decode_pnm(tmp_path / "masters" / f"{name}.jp2")
        assert bits == 16 and np.array_equal(got, data)
    log.events.clear()
    r = cli(recipe, tmp_path / "in")
    assert r.code == 0, r.err
    for thread in threading.enumerate():
        if thread.name == "wsrun-encode-ahead":
            thread.join(PATIENCE)
    assert log.events == []


def test_a_tiff_changed_after_it_was_encoded_ahead_is_encoded_again(
    cli: Any, tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scan2 is rewritten with other pixels just after its master was encoded ahead:
    that codestream is not used, scan2 is encoded again from the new TIFF, and
    its master holds the new pixels (the proof passes on them)."""
    images = tiffs(tmp_path)
    which = named(images)
    newer = samples(99)
    which[hashlib.sha256(newer.tobytes()).hexdigest()] = "scan2 (newer)"
    log = Log()
    encode = lossless.encode

    def spy_encode(pixels: lossless.Pixels) -> bytes:
        name = which[hashlib.sha256(pixels.samples.tobytes()).hexdigest()]
        log.add("encode", name)
        done = encode(pixels)
        if name == "scan2":
            time.sleep(0.01)  # a later modification time, even on coarse clocks
            tifffile.imwrite(tmp_path / "in" / "scan2.tif", newer, photometric="rgb")
        return done

    monkeypatch.setattr(lossless, "encode", spy_encode)
    r = cli(recipe, tmp_path / "in")
    assert r.code == 0, r.err
    assert [e[:2] for e in log.events if e[1].startswith("scan2")] == [
        ("encode", "scan2"),
        ("encode", "scan2 (newer)"),
    ]
    got, bits = decode_pnm(tmp_path / "masters" / "scan2.jp2")
    assert bits == 16 and np.array_equal(got, newer)


HANGING_DECODER = """#!/bin/sh
# A stand-in for opj_decompress that hangs in the middle of the first proof.
echo $$ > "{pidfile}"
exec sleep 600
"""


def test_a_loop_killed_during_a_proof_leaves_no_master_then_a_rerun_makes_all(
    cli: Any, tmp_path: Path, recipe: Path
) -> None:
    """SIGKILL while scan1 is being proven (scan2 encoded ahead in memory): no
    master is at the destination, the decoder is gone, and a re-run writes and
    proves all three with no temporary file left."""
    images = tiffs(tmp_path)
    pidfile = tmp_path / "decoder.pid"
    fake = tmp_path / "bin" / "opj_decompress"
    fake.parent.mkdir()
    fake.write_text(HANGING_DECODER.format(pidfile=pidfile))
    fake.chmod(0o755)
    run = subprocess.Popen(
        [sys.executable, "-m", "wsrun", str(recipe), str(tmp_path / "in"), "-q"],
        cwd=tmp_path,
        env=dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert run.poll() is None, "wsrun ended before the proof began"
            time.sleep(0.02)
        decoder = int(pidfile.read_text())
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + PATIENCE  # a guard against a hang
    while alive(decoder) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(decoder), "the proof's decoder outlived the run"
    assert not [n for n in os.listdir(tmp_path / "masters") if n.endswith(".jp2")]
    r = cli(recipe, tmp_path / "in")
    assert r.code == 0, r.err
    assert sorted(os.listdir(tmp_path / "masters")) == [f"{n}.jp2" for n in NAMES]
    assert leftovers(tmp_path) == []
    for name, data in images.items():
        got, bits = decode_pnm(tmp_path / "masters" / f"{name}.jp2")
        assert bits == 16 and np.array_equal(got, data)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_dry_run_of_a_loop_encodes_nothing(
    cli: Any, tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run plans every master and encodes none, not even ahead."""
    tiffs(tmp_path)
    calls: list[str] = []
    monkeypatch.setattr(lossless, "encode", lambda pixels: calls.append("encode") or b"")
    r = cli(recipe, tmp_path / "in", "--dry-run")
    assert r.code == 0, r.err
    assert r.out.count("masters/scan") >= len(NAMES)
    for thread in threading.enumerate():
        if thread.name == "wsrun-encode-ahead":
            thread.join(PATIENCE)
    assert calls == [] and not (tmp_path / "masters").exists()
