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
from fixtures.masters import (
    LOOP,
    PATIENCE,
    H,
    W,
    alive,
    end_encoding_ahead,
    hanging_decoder,
    join_encoding_ahead,
    killed_during_proof,
    loop_tiffs,
    samples,
    wait_gone,
)
from fixtures.writers import leftovers
from wsrun.packs.distillery import lossless

NAMES = ("scan1", "scan2", "scan3")


@pytest.fixture(autouse=True)
def _opj() -> Iterator[None]:
    need_opj_decompress()
    yield
    end_encoding_ahead()


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    return write(tmp_path / "masters.yaml", LOOP)


def tiffs(tmp_path: Path) -> dict[str, np.ndarray]:
    """Three 16-bit RGB TIFFs in tmp_path/in, by name."""
    return loop_tiffs(tmp_path, {name: i for i, name in enumerate(NAMES)})


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
    join_encoding_ahead()
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


def test_a_loop_killed_during_a_proof_leaves_no_master_then_a_rerun_makes_all(
    cli: Any, tmp_path: Path, recipe: Path
) -> None:
    """SIGKILL while scan1 is being proven (scan2 encoded ahead in memory): no
    master is at the destination, the decoder is gone, and a re-run writes and
    proves all three with no temporary file left."""
    images = tiffs(tmp_path)
    bin_dir, pidfile = hanging_decoder(tmp_path)
    decoder = killed_during_proof(
        [str(recipe), str(tmp_path / "in"), "-q"],
        tmp_path,
        f"{bin_dir}:{os.environ['PATH']}",
        pidfile,
    )
    wait_gone(decoder)
    assert not alive(decoder), "the proof's decoder outlived the run"
    assert not [n for n in os.listdir(tmp_path / "masters") if n.endswith(".jp2")]
    r = cli(recipe, tmp_path / "in")
    assert r.code == 0, r.err
    assert sorted(os.listdir(tmp_path / "masters")) == [f"{n}.jp2" for n in NAMES]
    assert leftovers(tmp_path) == []
    for name, data in images.items():
        got, bits = decode_pnm(tmp_path / "masters" / f"{name}.jp2")
        assert bits == 16 and np.array_equal(got, data)


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
    join_encoding_ahead()
    assert calls == [] and not (tmp_path / "masters").exists()
